#!/usr/bin/env bash
# The GPU checks, as one prepared script for a machine with an NVIDIA GPU, CuPy, PyTorch (CUDA) and
# cuDNN already installed (no network needed). Run from the repository root:
#
#     bash sims/benchmarks/gpu_check.sh [OUT_DIR]        # on the GPU machine
#     DRY_RUN=1 bash sims/benchmarks/gpu_check.sh /tmp/x  # the same steps, small, on a CPU
#
# 1. the GPU-marked tests (NumPy/CuPy parity of every op and of one step per variant; no host
#    transfer inside a step), 2. the step-time benchmark against the PyTorch twin, 3. a short real
#    run of vgg8b on the embedded data on the GPU and the same run on the CPU. A short table last.
set -uo pipefail
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${DRY_RUN:-0}" = 1 ]; then DEV=cpu; SMALL="--small --repeat 2 --warmup 1"; EPOCHS_ARGS="--feat-mult 0.125";
else DEV=gpu; SMALL=""; EPOCHS_ARGS=""; fi
status=0

python - <<'PY' || status=1
from bioplaus.backend import get_backend, gpu_available
print("gpu_available:", gpu_available())
try:
    print("device:", get_backend("gpu").device)
except Exception as e:
    print("no gpu:", e)
PY

echo "== 1. GPU tests"
if [ "$DEV" = gpu ]; then
    python -m pytest -q -m gpu tests/ 2>&1 | tail -n 15 | tee "$OUT/gpu_tests.txt" || status=1
    grep -q "failed" "$OUT/gpu_tests.txt" && status=1
else
    python -m pytest -q tests/test_gpu.py tests/test_ops.py -x 2>&1 | tail -n 3 | tee "$OUT/gpu_tests.txt"
fi

echo "== 2. step time against the PyTorch twin"
# shellcheck disable=SC2086
python sims/benchmarks/bench_gpu.py --device "$DEV" $SMALL --json "$OUT/bench_gpu.json" | tee "$OUT/bench_gpu.txt" || status=1

echo "== 3. a short real run: vgg8b on fashion-mnist-mini, GPU and CPU"
for d in "$DEV" cpu; do
    # shellcheck disable=SC2086
    python sims/run.py --variant predsim --model vgg8b --device "$d" --epochs 1 $EPOCHS_ARGS --no-progress \
        --out "$OUT/vgg8b-predsim-$d.h5" --overwrite > "$OUT/run-$d.txt" 2>&1 || status=1
    [ "$d" = cpu ] && [ "$DEV" = cpu ] && break
done

echo "== summary"
cat "$OUT/bench_gpu.txt"
python - "$OUT" <<'PY'
import glob, sys
from bioplaus.log import read_run
for path in sorted(glob.glob(sys.argv[1] + "/vgg8b-predsim-*.h5")):
    r = read_run(path)
    print(f"{path}: {r.attrs['device']} status {r.status} train {r.epochs['train_error'][-1]:.2f}% "
          f"test {r.epochs['test_error'][-1]:.2f}% in {r.epochs['seconds'][-1]:.1f}s")
PY
exit $status
