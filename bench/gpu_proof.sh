#!/usr/bin/env bash
# GPU proof: a real SFT run through training_hub.sft() and through an SFTJob pod's command, on a
# machine with one NVIDIA GPU and no network. See docs/gpu-proof.md.
#
#   bench/gpu_proof/fetch_wheels.sh      # first, where there is network: the wheels the machine lacks
#   bench/gpu_proof.sh                   # then, on the GPU machine, from the repository root
#
# Installs the carried wheels offline (if bench/gpu_proof/wheels holds any) into a private target
# folder put first on PYTHONPATH, then runs the driver, which prints one line per step and, last,
# one JSON report. If $OUT is set (the device tool), the report and the logs are copied there.
#
# Environment: PYTHON (default python3), GPU_PROOF_WHEELS, GPU_PROOF_SITE, GPU_PROOF_WORK,
# GPU_PROOF_BUDGET_S (default 480), GPU_PROOF_STEPS (comma-separated subset), GPU_PROOF_INSTALL_ONLY=1
# (install and check the wheels, run nothing).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
python=${PYTHON:-python3}
wheels=${GPU_PROOF_WHEELS:-$here/gpu_proof/wheels}
site=${GPU_PROOF_SITE:-/tmp/gpu-proof-site}
work=${GPU_PROOF_WORK:-/tmp/gpu-proof}
budget=${GPU_PROOF_BUDGET_S:-480}
steps=${GPU_PROOF_STEPS:-environment,build,sft,entrypoint,preflight,resume,direct}

# No network: never let a library try the hub (each try costs retries and time).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false

if compgen -G "$wheels/*.whl" >/dev/null; then
  mapfile -t pins < <(grep -Ev '^\s*(#|$)' "$here/gpu_proof/wheels.txt" | sed 's/\s*#.*//')
  echo "[gpu-proof] installing ${#pins[@]} carried wheels + training-hub into $site (offline)"
  rm -rf "$site"
  # --no-deps: the machine's own torch/transformers/... must stay; --find-links + pins: a missing wheel fails here, by name
  if ! "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
        --no-cache-dir --target "$site" --find-links "$wheels" "${pins[@]}" "$wheels"/training_hub-*.whl; then
    echo "[gpu-proof] offline install failed" >&2
    exit 2
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$site/bin:$PATH"
else
  echo "[gpu-proof] no wheels in $wheels: using the packages already installed"
fi
# torchrun (instructlab launches it by name) lives next to the interpreter that has torch.
PATH="$(dirname "$("$python" -c 'import sys; print(sys.executable)')"):$PATH"
export PATH

# Requirements of the carried wheels that the machine does not meet: reported, not fatal (the
# steps show whether it matters).
"$python" - "$here/gpu_proof/wheels.txt" <<'EOF' || true
import importlib.metadata as md, re, sys
try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement
names = [re.split(r"[=<> ;#]", l.strip())[0] for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
for name in names + ["training-hub"]:
    try:
        requires = md.requires(name) or []
    except md.PackageNotFoundError:
        print(f"[gpu-proof] warning: {name} is not installed"); continue
    for text in requires:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            print(f"[gpu-proof] warning: {name} requires {text}: not installed"); continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            print(f"[gpu-proof] warning: {name} requires {text}: found {version}")
EOF

if [ -n "${GPU_PROOF_INSTALL_ONLY:-}" ]; then
  echo "[gpu-proof] install only: done"
  exit 0
fi

cd "$root"
report=$work.report.json
"$python" "$here/gpu_proof/driver.py" run --work "$work" --report "$report" --budget "$budget" --steps "$steps"
status=$?

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$report" "$OUT/gpu_proof_report.json" 2>/dev/null
  # logs: step logs, pod logs, instructlab's own logs (no checkpoints: they are large)
  (cd "$work" && find . \( -name '*.log' -o -name 'termination-log*' -o -name 'training_params_and_metrics_global*.jsonl' \
      -o -name 'params.json' -o -path './steps/*.json' \) -size -8M -print0 |
    tar --null -czf "$OUT/gpu_proof_logs.tar.gz" -T -) 2>/dev/null
fi
exit $status
