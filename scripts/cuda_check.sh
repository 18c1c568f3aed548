#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run (about 8 minutes on an H100/H200):
#   1. the CUDA tests (tests/test_compile_cuda.py: CPU==CUDA in float64, compile on CUDA, ...);
#   2. the speed benchmark on the GPU (eager, compile_step, and compile_step(mode=reduce-overhead));
#   3. short Lightning training runs on the GPU in bf16-mixed (adding) and 16-mixed (Austen LM,
#      when its data is under $BRIMS_DATA), each followed by `brims test`;
#   4. the whole test suite on the GPU machine (pytest-xdist when present).
# Budget: about 10 minutes at most (each step has its own timeout).
# Uses the python3 on the PATH (expects torch with CUDA, lightning, matplotlib, pyyaml, tqdm);
# installs nothing from the network. Logs go to $OUT (default: runs/cuda-check).
#
#     bash scripts/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cuda-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() {  # step NAME TIMEOUT COMMAND...: run, log to $OUT/NAME.log, remember failures
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 40
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi -L
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
step cuda-tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_compile_cuda.py
step speed 200 python3 benchmarks/speed.py --device cuda --compile-mode reduce-overhead
runs=$(mktemp -d)
step train-adding-bf16 100 python3 -m brims_experiments.cli train adding-cpu --run-dir "$runs/adding" --no-progress --set \
    train.accelerator=gpu train.precision=bf16-mixed train.max_steps=150 train.validate_every=50
step test-adding 60 sh -c "python3 -m brims_experiments.cli test $runs/adding --no-progress && cat $runs/adding/metrics.json"
if [ -d "${BRIMS_DATA:-$HOME/.cache/brims/data}/austen" ]; then
    step train-lm-fp16 100 python3 -m brims_experiments.cli train lm-austen-cpu --run-dir "$runs/lm" --no-progress --set \
        train.accelerator=gpu train.precision=16-mixed train.max_steps=150 train.validate_every=50
    step test-lm 90 sh -c "python3 -m brims_experiments.cli test $runs/lm --no-progress && cat $runs/lm/metrics.json"
fi
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
step full-suite 240 python3 -m pytest -q -p no:cacheprovider $parallel tests
exit $status
