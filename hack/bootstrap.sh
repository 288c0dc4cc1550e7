#!/usr/bin/env bash
# Creates ./.venv with the library, the operator and the test tools.
# Uses uv (from PyPI) for speed; its cache (~/.cache/uv) makes a second run take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check uv
fi
if [ ! -x .venv/bin/python ]; then
  uv venv -q .venv --python "${PYTHON:-python3}"
fi
uv pip install -q --python .venv/bin/python -e ".[train,operator,dev]"
