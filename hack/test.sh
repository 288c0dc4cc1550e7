#!/usr/bin/env bash
# The test command: installs what the tests need, provides the control-plane binaries
# (built from Go modules once, then cached under ~/.cache/training-hub), installs podman, buildah and
# mmdebstrap for the image tests (Debian packages), builds the images, and runs pytest.
# The cluster tests start their own kwokctl cluster and tear it down.
#
# Set-up runs in two lanes so a cold machine pays for the longer one only (docs/control-plane.md, "CI time"):
#   - compile lane (CPU): the Go builds — control plane, Kueue, kubelet/CoreDNS/pause — one after another, with
#     every later build's modules downloaded beside the first one (hack/control-plane.sh prefetch); the benchmarks'
#     peer (training-operator) is then built in the background while the tests run;
#   - I/O lane (network, disk): Debian packages, the venv, the images (hack/images.sh), their import into the
#     real nodes' image store.
# Warm, both lanes are no-ops (about 5 s in all). Each step's time is printed as "setup: ...".
# TRAINING_HUB_SETUP_IMAGES=0 leaves the images to the first image or real-node test (as before: built only when
# such a test is selected).
set -euo pipefail
cd "$(dirname "$0")/.."
setup_started=$SECONDS
logs=$(mktemp -d "${TMPDIR:-/tmp}/training-hub-setup.XXXXXX")

timed() {  # NAME COMMAND...: runs it, prints its time; keeps its status. TIMED_LOG=FILE: its output goes there.
  local name=$1 started=$SECONDS status=0; shift
  if [[ -n ${TIMED_LOG:-} ]]; then "$@" >"$TIMED_LOG" 2>&1 || status=$?; else "$@" || status=$?; fi
  echo "setup: $name $((SECONDS - started)) s$([[ $status -eq 0 ]] || echo " (failed: exit $status)")" >&2
  return $status
}

# --- I/O lane, in the background ------------------------------------------------------------------
io_lane() {
  # Debian packages (one dpkg at a time) beside the venv's download.
  local apt_status=0
  {
    # Without them the image tests skip, naming what is missing (CI requires them: TRAINING_HUB_REQUIRE_IMAGES=1).
    timed "apt: podman buildah mmdebstrap" bash hack/images.sh prereqs \
      || echo "test.sh: warning: could not install the image tools; the image tests will say what is missing" >&2
    # Real kubelet nodes (tests marked realnode): Debian's containerd + runc.
    timed "apt: containerd runc busybox" bash hack/control-plane.sh node-deps \
      || echo "test: real-node packages unavailable here; tests marked realnode will say why" >&2
  } &
  local apt_pid=$!
  timed "venv (hack/bootstrap.sh)" bash hack/bootstrap.sh || return 1
  wait "$apt_pid" || apt_status=$?
  [[ ${TRAINING_HUB_SETUP_IMAGES:-1} != 0 ]] || return 0
  bash hack/images.sh check >/dev/null 2>&1 || return 0   # the image tests will say why
  TIMED_LOG=$logs/images.log timed "images (hack/images.sh build)" bash hack/images.sh build operator trainer \
    || { echo "test.sh: warning: image build failed (the image tests will report it):" >&2; tail -20 "$logs/images.log" >&2; return 0; }
  # The real nodes' image store: exported and imported now rather than in the first real-node test's set-up.
  if [[ $(id -u) -eq 0 ]] && command -v ctr >/dev/null; then
    TIMED_LOG=$logs/store.log timed "real-node image store (export + import)" python3 tests/support/real_nodes.py seed-images \
      || { echo "test.sh: warning: the image store was not seeded (the real-node fixture retries):" >&2; tail -5 "$logs/store.log" >&2; }
  fi
  return 0
}
io_lane > >(sed -u 's/^/[io] /' >&2) 2>&1 &
io_pid=$!

# --- compile lane, in the foreground ----------------------------------------------------------------
compile_status=0
if command -v go >/dev/null; then
  TIMED_LOG=$logs/prefetch.log timed "Go module prefetch (beside the builds)" bash hack/control-plane.sh prefetch &
  prefetch_pid=$!
  timed "control plane + Kueue (hack/control-plane.sh env)" bash hack/control-plane.sh env >"$logs/env.sh" || compile_status=$?
  if [[ $compile_status -eq 0 ]]; then
    # kubelet, CoreDNS and pause for real nodes; where that cannot be had, tests marked realnode say why.
    if node_bin=$(timed "kubelet + CoreDNS + pause (hack/control-plane.sh node-build)" bash hack/control-plane.sh node-build); then
      echo "export TRAINING_HUB_NODE_BIN=$(printf %q "$node_bin")" >>"$logs/env.sh"
    else
      echo "test: real nodes unavailable here; tests marked realnode will say why" >&2
    fi
  fi
  wait "$prefetch_pid" || true
  # The benchmarks' Go peer (Kubeflow training-operator; bench/operator_peer.py), for the bench smoke test: built in
  # the background while the first tests run (cold: ~4 min of 2 cores; cached: instant), after the builds every test
  # needs. The smoke test waits for it (same lock) and reports a failed build itself.
  peer_log="${TRAINING_HUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/training-hub}/peer-build.log"
  mkdir -p "$(dirname "$peer_log")"
  bash hack/control-plane.sh peer-build > "$peer_log" 2>&1 &
else
  # No Go: hack/control-plane.sh env names what is missing (or TRAINING_HUB_K8S_BIN brings the binaries).
  bash hack/control-plane.sh env >"$logs/env.sh" || compile_status=$?
fi

io_status=0
wait "$io_pid" || io_status=$?
[[ $io_status -eq 0 ]] || { echo "test.sh: set-up failed (the venv could not be installed)" >&2; exit "$io_status"; }
# As before: without the binaries the cluster tests skip naming what is missing (CI requires them and fails).
[[ $compile_status -eq 0 ]] || echo "test.sh: warning: the control-plane binaries could not be built (see above)" >&2
# shellcheck disable=SC1091
source "$logs/env.sh"
rm -rf "$logs"
echo "setup: all $((SECONDS - setup_started)) s (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
exec .venv/bin/python -m pytest "$@"
