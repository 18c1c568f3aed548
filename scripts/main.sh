#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), fetch MNIST, train the CPU preset of sequential
# MNIST for BRIMs and for the LSTM baseline, and print their comparison table.
# Runs land in runs/ (RUNS_DIR to change); a rerun resumes or skips finished runs.
# Extra arguments are config overrides for both runs, e.g. train.threads=2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
RUNS="${RUNS_DIR:-runs}"
brims fetch mnist
for kind in brims lstm; do
  run="$RUNS/smnist-cpu-$kind"
  if [ -f "$run/metrics.json" ]; then
    echo "$run is finished (delete it to train again)"
  elif [ -f "$run/config.yaml" ]; then
    brims train "$run"
  else
    brims train smnist-cpu --run-dir "$run" --set model.core.kind="$kind" "$@"
  fi
done
brims compare "$RUNS/smnist-cpu-brims" "$RUNS/smnist-cpu-lstm"
