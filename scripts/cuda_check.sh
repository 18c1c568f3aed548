#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run of about 8 minutes on an H100/H200:
#   1. the CUDA tests: tests/test_compile_cuda.py (CPU==CUDA in float64, compile on CUDA, ...) and
#      tests/test_triton_backend.py (the fused Triton kernels compiled for the GPU, equal to the
#      torch backend over every switch, and at the released sizes);
#   2. the speed table of issue 14 (T=196, B=64): nn.LSTM (cuDNN), eager, compile_step(), the
#      Triton backend, eager and Triton replayed as CUDA graphs, the dense-masked reference;
#   3. the same without compile and dense at B=256, B=1024 and T=576 (24x24 testing);
#   4. a short Lightning training of smnist-paper on the Triton backend in bf16-mixed, then
#      `brims test` on 2,000 test images (needs MNIST under $BRIMS_DATA, see below), and one of
#      the adding task in 16-mixed on the torch backend.
# Each step has its own timeout and logs to $OUT/<step>.log (default OUT: runs/cuda-check).
# Uses the python3 on the PATH (torch with CUDA, triton, lightning, matplotlib, pyyaml, tqdm);
# installs nothing. The device machine has no network: carry the data, e.g.
#     mkdir -p data && cp -r ~/.cache/brims/data/mnist data/    # then carry "data", BRIMS_DATA=data
#     BRIMS_DATA=data bash scripts/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cuda-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0
step() {  # step NAME TIMEOUT COMMAND...: run, log to $OUT/NAME.log, remember failures
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 30
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi -L
python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__,
'lightning', lightning.__version__, torch.cuda.get_device_name())"
step cuda-tests 150 python3 -m pytest -q -p no:cacheprovider -x tests/test_compile_cuda.py tests/test_triton_backend.py
step speed 170 python3 benchmarks/speed.py --device cuda --triton --cuda-graphs --repeats 5
for shape in "--batch 256" "--batch 1024" "--steps 576"; do
    step "speed${shape// /}" 50 python3 benchmarks/speed.py --device cuda --no-compile --no-dense --triton \
        --cuda-graphs --repeats 3 --warmup 1 $shape
done
runs=$(mktemp -d)
if [ -d "${BRIMS_DATA:-$HOME/.cache/brims/data}/mnist" ]; then
    step train-smnist-triton-bf16 90 python3 -m brims_experiments.cli train smnist-paper --run-dir "$runs/smnist" \
        --no-progress --set train.accelerator=gpu train.precision=bf16-mixed train.max_steps=200 \
        train.validate_every=100 data.validation_size=1000 data.test_limit=2000 model.core.brims.backend=triton
    step test-smnist 60 sh -c "python3 -m brims_experiments.cli test $runs/smnist --no-progress && cat $runs/smnist/metrics.json"
else
    echo "=== no MNIST under ${BRIMS_DATA:-$HOME/.cache/brims/data}: smnist-paper skipped"
    status=1
fi
step train-adding-fp16 60 python3 -m brims_experiments.cli train adding-cpu --run-dir "$runs/adding" --no-progress --set \
    train.accelerator=gpu train.precision=16-mixed train.max_steps=150 train.validate_every=50
step test-adding 40 sh -c "python3 -m brims_experiments.cli test $runs/adding --no-progress && cat $runs/adding/metrics.json"
exit $status
