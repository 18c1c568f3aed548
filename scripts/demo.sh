#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: `brims demo` (extra arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
brims demo "$@"
