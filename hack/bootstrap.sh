#!/usr/bin/env bash
# Creates ./.venv with the library and the extras named (default: train,operator,dev: everything the tests need).
#
#   bash hack/bootstrap.sh                  the library, the training stack (torch, instructlab-training: ~6 GB),
#                                           the operator and the test tools
#   bash hack/bootstrap.sh operator         the library and the operator only (what hack/demo.sh runs; ~100 MB)
#
# Extras already installed stay (a venv set up for the tests keeps working for the demo). Uses uv (from PyPI) for
# speed; its cache (~/.cache/uv) makes a second run take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-train,operator,dev}
[[ $# -le 1 && $EXTRAS =~ ^[a-z]+(,[a-z]+)*$ ]] || { echo "usage: bash hack/bootstrap.sh [EXTRA[,EXTRA...]] (extras: train, operator, dev)" >&2; exit 2; }
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check uv
fi
if [ ! -x .venv/bin/python ]; then
  uv venv -q .venv --python "${PYTHON:-python3}"
fi
uv pip install -q --python .venv/bin/python -e ".[$EXTRAS]"
