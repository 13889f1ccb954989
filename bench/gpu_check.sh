#!/usr/bin/env bash
# The GPU checks of #17 as one prepared script for a machine with a CUDA GPU whose Python
# already has torch, lightning and the rest of lmlab's stack but no registry access:
#   bench/gpu_check.sh tests   # the tests marked gpu (tests/train/test_gpu.py), ~5 min
#   bench/gpu_check.sh bench   # make bench-gpu: BENCHMARKS.md's GPU section, about 8 min
#   bench/gpu_check.sh all     # both in one device call of under 10 min (a lease has 15 with
#                              # the machine's start): the tests cut at 4 min, then the
#                              # benchmark with no case started after 7.5 min in all
# The packages such an image lacks travel as wheels in .whl/ (`make gpu-wheels` fetches them
# here); they are installed into /tmp/site. Logs and BENCHMARKS.md go to $OUT (default
# gpu-check/). W&B is off: the tests and the benchmark log to CSV or nowhere.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-tests}
case "$what" in
tests | bench | all) ;;
*)
    echo "usage: bench/gpu_check.sh tests|bench|all" >&2
    exit 2
    ;;
esac
out=${OUT:-gpu-check}
mkdir -p "$out"
site=""
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    site=/tmp/site
fi
export PYTHONPATH="src:.${site:+:$site}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$out/gpu.txt"
run_tests() {  # $1: a time limit (timeout's syntax) or nothing
    # the test file alone: collecting the whole suite would import lm-eval, which the image lacks
    ${1:+timeout "$1"} python3 -m pytest tests/train/test_gpu.py -v -rs -p no:cacheprovider 2>&1 \
        | tee "$out/test-gpu.log"
    return "${PIPESTATUS[0]}"
}
run_bench() {  # $1: the budget in seconds (no case started after it)
    # 2 interleaved pairs per race, profiler tables of each case's first run (one archive: a
    # device run returns at most 8 files)
    python3 bench/run.py --only gpu ${BENCH_ARGS:---repeats 2 --budget "$1"} \
        --profile "$out/profiles" 2>&1 | tee "$out/bench-gpu.log"
    local status=${PIPESTATUS[0]}
    cp BENCHMARKS.md "$out/"
    tar czf "$out/profiles.tgz" -C "$out" profiles && rm -rf "$out/profiles"
    return "$status"
}
case "$what" in
tests)
    run_tests
    ;;
bench)
    run_bench 420
    ;;
all)
    run_tests 240
    tests=$?
    echo "tests: exit $tests after ${SECONDS} s" | tee -a "$out/gpu.txt"
    run_bench $((450 - SECONDS > 60 ? 450 - SECONDS : 60))
    bench=$?
    echo "bench: exit $bench; ${SECONDS} s in all" | tee -a "$out/gpu.txt"
    exit $((tests || bench))
    ;;
esac
