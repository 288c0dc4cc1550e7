#!/usr/bin/env bash
# The test command: installs what the tests need, provides the control-plane binaries
# (built from Go modules once, then cached under ~/.cache/training-hub), installs podman, buildah and
# mmdebstrap for the image tests (Debian packages), and runs pytest.
# The cluster tests start their own kwokctl cluster and tear it down; the image tests build the images
# (hack/images.sh: cached, a no-op when their inputs did not change) before the first test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
eval "$(bash hack/control-plane.sh env)"
# The benchmarks' Go peer (Kubeflow training-operator; bench/operator_peer.py), for the bench smoke test: built in
# the background while the rest is set up and the first tests run (cold: ~4 min of 2 cores; cached: instant). The
# smoke test waits for it (same lock) and reports a failed build itself.
peer_log="${TRAINING_HUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/training-hub}/peer-build.log"
mkdir -p "$(dirname "$peer_log")"
bash hack/control-plane.sh peer-build > "$peer_log" 2>&1 &
# Real kubelet nodes (tests marked realnode): Debian's containerd + runc, and kubelet, CoreDNS and pause built
# once from Go modules / pause.c (cached like the control plane). Where that cannot be had (not root, no apt),
# those tests skip naming what is missing, or fail when TRAINING_HUB_REQUIRE_REAL_NODES=1 (CI).
if bash hack/control-plane.sh node-deps && node_bin=$(bash hack/control-plane.sh node-build); then
  export TRAINING_HUB_NODE_BIN="$node_bin"
else
  echo "test: real nodes unavailable here; tests marked realnode will say why" >&2
fi
if ! bash hack/images.sh prereqs; then
  # Without them the image tests skip, naming what is missing (CI requires them: TRAINING_HUB_REQUIRE_IMAGES=1).
  echo "test.sh: warning: could not install the image tools; the image tests will say what is missing" >&2
fi
exec .venv/bin/python -m pytest "$@"
