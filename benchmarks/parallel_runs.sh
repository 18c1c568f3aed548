#!/usr/bin/env bash
# Is it faster overall to run a suite's runs two at a time, one thread each, or one after another
# with both threads? Times the same two BRIMs runs of `adding-cpu` (seeds 0 and 1, STEPS steps,
# then the test at lengths 50/100/200) both ways, after a warm-up that fills torch's compile cache
# for each thread count (inductor compiles the step anew per thread count), on an idle machine.
# Usage: bash benchmarks/parallel_runs.sh [STEPS]   (default 200; run from the repository root)
set -euo pipefail
steps="${1:-200}"
. "${VENV:-.venv}/bin/activate"
where="$(mktemp -d)"
# On any exit (Ctrl-C included: background runs ignore SIGINT) stop the runs, found by their folder.
trap 'pkill -f -- "$where" 2>/dev/null; rm -rf "$where"' EXIT
run() {  # run folder, seed, threads, steps
  brims train adding-cpu --run-dir "$1" --no-progress --set model.core.kind=brims train.max_steps="$4" \
    train.validate_every=100 train.checkpoint_every=100 "data.test_lengths=[100,200]" train.seed="$2" \
    train.threads="$3" > "$1.log" 2>&1 || { echo "run $1 failed: see its log" >&2; cat "$1.log" >&2; exit 1; }
}
echo "warming the compile cache for 1 and 2 threads ..."
run "$where/warm-1" 0 1 101
run "$where/warm-2" 0 2 101
start=$(date +%s.%N)
run "$where/one-0" 0 2 "$steps"
run "$where/one-1" 1 2 "$steps"
middle=$(date +%s.%N)
run "$where/two-0" 0 1 "$steps" &
first=$!
run "$where/two-1" 1 1 "$steps" &
second=$!
failed=0
wait "$first" || failed=1
wait "$second" || failed=1
[ "$failed" = 0 ] || { echo "a run side by side failed" >&2; exit 1; }
end=$(date +%s.%N)
awk -v a="$start" -v b="$middle" -v c="$end" 'BEGIN {
  printf "one after another, 2 threads each: %.1f s; two at a time, 1 thread each: %.1f s (%.2fx)\n",
         b - a, c - b, (b - a) / (c - b) }'
