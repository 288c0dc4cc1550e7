#!/usr/bin/env bash
# Regenerates the SFTJob CRD from the models (`sftjob-operator crd`) and writes it to both places it ships:
#   deploy/crds/training-hub.io_sftjobs.yaml                      (kubectl apply -f deploy/crds/)
#   deploy/helm/training-hub-operator/crds/training-hub.io_sftjobs.yaml   (helm install)
#
#   hack/sync-crd.sh           write both files
#   hack/sync-crd.sh --check   change nothing; exit 1 if either file differs from what the models generate
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(deploy/crds/training-hub.io_sftjobs.yaml deploy/helm/training-hub-operator/crds/training-hub.io_sftjobs.yaml)
if [[ -x .venv/bin/sftjob-operator ]]; then
  GENERATE=(.venv/bin/sftjob-operator crd)
elif command -v sftjob-operator >/dev/null; then
  GENERATE=(sftjob-operator crd)
else
  echo "sync-crd: sftjob-operator not found; run 'bash hack/bootstrap.sh' first" >&2
  exit 2
fi

generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
"${GENERATE[@]}" > "$generated"
[[ -s "$generated" ]] || { echo "sync-crd: '${GENERATE[*]}' printed nothing" >&2; exit 2; }

if [[ "${1:-}" == "--check" ]]; then
  stale=0
  for target in "${TARGETS[@]}"; do
    if ! cmp -s "$generated" "$target"; then
      echo "sync-crd: $target is not what 'sftjob-operator crd' generates; run hack/sync-crd.sh" >&2
      diff -u "$target" "$generated" | head -40 >&2 || true
      stale=1
    fi
  done
  exit "$stale"
fi

for target in "${TARGETS[@]}"; do
  mkdir -p "$(dirname "$target")"
  cp "$generated" "$target"
  echo "sync-crd: wrote $target"
done
