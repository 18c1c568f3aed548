#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the one-minute check `brims demo` (extra arguments go to it); the main job is scripts/main.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
brims demo "$@"
