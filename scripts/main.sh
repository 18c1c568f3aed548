#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then `brims reproduce quick`: length generalisation on
# the adding task, the LSTM against BRIMs, three seeds each, two runs at a time, and print its
# tables with 95% intervals and what they say. About 11 minutes on 2 CPU cores after set-up.
# Run folders go to runs/quick/, the report to runs/results/quick/README.md; a rerun resumes or
# skips finished runs. Extra arguments go to `brims reproduce` (e.g. --dry-run, --jobs 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
brims reproduce quick "$@"
