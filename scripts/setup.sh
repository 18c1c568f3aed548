#!/usr/bin/env bash
# Set up a virtual environment in .venv with torch (CPU build first, so pip never pulls a
# multi-GB CUDA build for the dependency range) and brims installed editable with test extras.
# Override the torch requirement with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0+cu126".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
pip install -q -e ".[test]"
