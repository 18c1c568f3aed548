#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite, one pytest worker a core (pytest-xdist; each
# test file on one worker, so its module fixtures are built once). Extra arguments go to pytest
# (`-n 0` runs in one process). pytest's exit code 5 (no tests collected) is turned into a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
python -m pytest -n "${PYTEST_WORKERS:-auto}" --dist loadfile "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
