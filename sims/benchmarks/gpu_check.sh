#!/usr/bin/env bash
# The GPU checks, as one prepared script for a machine with an NVIDIA GPU, CuPy, PyTorch (CUDA),
# h5py, scipy, matplotlib, tqdm and pytest already installed (no network needed). From the repository root:
#
#     bash sims/benchmarks/gpu_check.sh [OUT_DIR]         # on the GPU machine (about 5 minutes)
#     DRY_RUN=1 bash sims/benchmarks/gpu_check.sh /tmp/x   # the same steps, small, on a CPU
#
# 0. the device (CuPy compiles and runs a kernel), 1. the GPU tests with BIOPLAUS_REQUIRE_GPU=1 (a
# broken GPU fails instead of skipping; the full pytest log is kept), 2. step time and memory against
# the PyTorch twin, with a per-op profile, 3. a short real run of vgg8b on the embedded data with
# --device auto (it must pick the GPU), 4. the layer-parallel prediction from measured per-block
# times (bench_pipeline.py --predict 8), 5. where mpiexec and mpi4py work, a 2-rank layer-parallel
# run on this device against the sequential one, bit for bit. Exits non-zero if a step failed. The
# interpreter is $PYTHON, else python3; TEST_TIMEOUT and BENCH_TIMEOUT (seconds, default 300) bound
# steps 1 and 2; BENCH_TF32=1 adds a benchmark with TF32 allowed on both sides.
set -uo pipefail
OUT=${1:-${OUT:-gpu-check}}
# The folder is this script's: a new or empty one, or one it wrote before (marked), whose files it replaces.
if [ -e "$OUT" ] && [ ! -e "$OUT/.gpu_check" ] && [ -n "$(ls -A "$OUT" 2>/dev/null || echo x)" ]; then
    echo "error: $OUT is not an empty folder or one this script wrote before; give a new folder." >&2
    exit 2
fi
mkdir -p "$OUT" && touch "$OUT/.gpu_check" || { echo "error: cannot write in $OUT." >&2; exit 2; }
rm -f "$OUT/bench_gpu.json"  # its own, from an earlier run: the benchmark writes a new file
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "${DRY_RUN:-0}" = 1 ]; then
    DEV=cpu; BENCH="--device cpu --small --repeat 2 --warmup 1 --models mlp,vgg8b --variants predsim --profile-conv"
    RUN_ARGS="--device cpu --feat-mult 0.125"; TESTS_ENV=""; SMALL="--small"; PAR_FEAT=0.0625
else
    DEV=gpu; BENCH="--repeat ${BENCH_REPEAT:-10} --warmup 2 --profile vgg8b:predsim,mlp:predsim-bpf --profile-conv ${BENCH_EXTRA:-}"
    RUN_ARGS="--device auto"; TESTS_ENV="BIOPLAUS_REQUIRE_GPU=1"; SMALL=""; PAR_FEAT=0.25
fi
status=0
fail() { echo "FAILED: $*"; status=1; }
SECONDS=0

echo "== 0. the device ($PY)"
"$PY" - <<'PY' 2>&1 | tee "$OUT/device.txt" || fail "device probe"
import sys
import numpy
from bioplaus import backend
print("python", sys.version.split()[0], "numpy", numpy.__version__)
ok = backend.gpu_available()
print("gpu_available:", ok, "" if ok else backend._cupy_error)
if ok:
    b = backend.get_backend("gpu")
    print("device:", b.device, "CuPy", b.xp.__version__, "CUDA runtime", b.xp.cuda.runtime.runtimeGetVersion(),
          "memory GiB", round(backend.device_memory_bytes(b.xp) / 2**30, 1))
    print("auto picks:", backend.get_backend("auto").device)
PY
command -v nvidia-smi >/dev/null && nvidia-smi -L

echo "== 1. GPU tests (full log: $OUT/gpu_tests.txt)"
GPU_TESTS="tests/test_gpu.py tests/ops tests/test_optim.py tests/test_backend.py tests/test_data_batches.py"
if [ "$DEV" = gpu ]; then
    # shellcheck disable=SC2086
    env $TESTS_ENV timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rfEs $GPU_TESTS tests/test_ops_torch.py \
        > "$OUT/gpu_tests.txt" 2>&1 || fail "GPU tests (pytest exit $?)"
else
    # shellcheck disable=SC2086
    "$PY" -m pytest -q -p no:cacheprovider $GPU_TESTS > "$OUT/gpu_tests.txt" 2>&1 || fail "tests (pytest exit $?)"
fi
tail -n 25 "$OUT/gpu_tests.txt"
grep -q " passed" "$OUT/gpu_tests.txt" || fail "no test passed"
echo "   ($SECONDS s so far)"

echo "== 2. step time and memory against the PyTorch twin"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-300}" "$PY" sims/benchmarks/bench_gpu.py $BENCH --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt" \
    || fail "benchmark"
echo "   ($SECONDS s so far)"

echo "== 3. a short real run: vgg8b predsim on fashion-mnist-mini ($RUN_ARGS)"
# shellcheck disable=SC2086
RUNS=$(mktemp -d)
"$PY" sims/run.py --variant predsim --model vgg8b --epochs 1 $RUN_ARGS --no-progress \
    --out "$RUNS/vgg8b-predsim.h5" > "$OUT/run.txt" 2>&1 || fail "real run"
tail -n 4 "$OUT/run.txt"
"$PY" - "$RUNS/vgg8b-predsim.h5" "$DEV" <<'PY' || fail "the run's log"
import sys
from bioplaus.log import read_run
r = read_run(sys.argv[1])
print(f"{sys.argv[1]}: {r.attrs['device']} status {r.status} train {r.epochs['train_error'][-1]:.2f}% "
      f"test {r.epochs['test_error'][-1]:.2f}% in {r.epochs['seconds'][-1]:.1f}s")
assert r.status == "completed", r.status
assert r.attrs["device"].startswith(sys.argv[2]), "--device auto did not pick the " + sys.argv[2]
PY
if [ "${BENCH_TF32:-0}" = 1 ] && [ "$DEV" = gpu ]; then
    echo "== 2b. the same with TF32 allowed on both sides"
    timeout "${BENCH_TIMEOUT:-300}" "$PY" sims/benchmarks/bench_gpu.py --tf32 --repeat 10 --warmup 2 \
        --models "${TF32_MODELS:-mlp,vgg8b,vgg11b}" \
        --json "$RUNS/bench_tf32.json" 2>&1 | tee "$OUT/bench_tf32.txt" || fail "TF32 benchmark"
fi

echo "== 4. layer-parallel throughput predicted from this device's per-block times"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-300}" "$PY" sims/benchmarks/bench_pipeline.py --predict 8 --device "$DEV" $SMALL \
    2>&1 | tee "$OUT/predict.txt" || fail "pipeline prediction"

echo "== 5. layer-parallel on this device: 2 ranks against the sequential run"
MPIEXEC=$(command -v mpiexec || true)
if [ -n "$MPIEXEC" ] && "$PY" -c "import mpi4py.MPI" 2>/dev/null; then
    ARGS="--variant predsim-bpf --model vgg6b --feat-mult $PAR_FEAT --num-hidden 128 --epochs 2 --dropout 0.1"
    ARGS="$ARGS --probe-every 1"
    ARGS="$ARGS --device $DEV --no-progress"
    # shellcheck disable=SC2086
    { "$PY" sims/run.py $ARGS --out "$RUNS/seq.h5" && \
      timeout "${PAR_TIMEOUT:-300}" "$MPIEXEC" -n 2 "$PY" sims/run.py $ARGS --parallel layers --out "$RUNS/pipe.h5" && \
      "$PY" - "$RUNS/seq.h5" "$RUNS/pipe.h5" <<'PY'
import sys
sys.path.insert(0, "tests")
from test_resume import assert_same_run
assert_same_run(sys.argv[1], sys.argv[2])
print("the 2-rank pipeline on this device is bit-identical to the sequential run")
PY
    } > "$OUT/parallel.txt" 2>&1 || fail "layer-parallel on the device"
    tail -n 3 "$OUT/parallel.txt"
else
    echo "   (skipped: no mpiexec or mpi4py here)" | tee "$OUT/parallel.txt"
fi
rm -rf "$RUNS"

echo "== done in $SECONDS s: $([ $status = 0 ] && echo all passed || echo SOME STEPS FAILED)"
exit $status
