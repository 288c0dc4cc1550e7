#!/usr/bin/env bash
# The test command: installs what the tests need, provides the control-plane binaries
# (built from Go modules once, then cached under ~/.cache/training-hub), and runs pytest.
# The cluster tests start their own kwokctl cluster and tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
eval "$(bash hack/control-plane.sh env)"
exec .venv/bin/python -m pytest "$@"
