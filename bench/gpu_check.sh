#!/usr/bin/env bash
# The GPU checks of #17 as one prepared script for a machine with a CUDA GPU whose Python
# already has torch, lightning and the rest of lmlab's stack but no registry access:
#   bench/gpu_check.sh tests   # the tests marked gpu (tests/train/test_gpu.py), ~5 min
#   bench/gpu_check.sh bench   # make bench-gpu: BENCHMARKS.md's GPU section, about 8 min
# The packages such an image lacks travel as wheels in .whl/ (`make gpu-wheels` fetches them
# here); they are installed into /tmp/site. Logs and BENCHMARKS.md go to $OUT (default
# gpu-check/). W&B is off: the tests and the benchmark log to CSV or nowhere.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-tests}
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
case "$what" in
tests)
    # the test file alone: collecting the whole suite would import lm-eval, which the image lacks
    python3 -m pytest tests/train/test_gpu.py -v -rs -p no:cacheprovider 2>&1 \
        | tee "$out/test-gpu.log"
    exit "${PIPESTATUS[0]}"
    ;;
bench)
    # 2 interleaved pairs per race, no case started after 7 minutes, profiler tables of each
    # case's first run (one archive: a device run returns at most 8 files)
    python3 bench/run.py --only gpu ${BENCH_ARGS:---repeats 2 --budget 420} \
        --profile "$out/profiles" 2>&1 | tee "$out/bench-gpu.log"
    status=${PIPESTATUS[0]}
    cp BENCHMARKS.md "$out/"
    tar czf "$out/profiles.tgz" -C "$out" profiles && rm -rf "$out/profiles"
    exit "$status"
    ;;
*)
    echo "usage: bench/gpu_check.sh tests|bench" >&2
    exit 2
    ;;
esac
