#!/usr/bin/env bash
# The GPU checks of #17 as one prepared script for a machine with a CUDA GPU whose Python
# already has torch, lightning and the rest of lmlab's stack but no registry access:
#   bench/gpu_check.sh tests   # the tests marked gpu (tests/train/test_gpu.py)
#   bench/gpu_check.sh bench   # make bench-gpu: BENCHMARKS.md's GPU section
#   bench/gpu_check.sh all     # both in one device call: the tests, then the benchmark
# LIMIT (default 570): the seconds the script may take in all, under a device call's 600. In
# `all` the tests get TESTS_LIMIT (default 280) of them: the training runs first, none started
# in the last 90 s (pytest-timeout's --session-timeout, where the image has it), then the
# quick unit tests; `timeout` ends what still runs. The benchmark runs its cheap cases
# first (bench/cases/gpu.py), starts none in its last 60 s, and rewrites its report after
# each case: a case cut at the limit loses only itself. BENCH_ONLY (default gpu) picks cases,
# e.g. those a first call did not reach; REPEATS the runs per case (1 in `all`, else 2).
# The packages such an image lacks travel as wheels in .whl/ (`make gpu-wheels` fetches them
# here) and are installed into /tmp/site; datasets falls back to an older release where the
# image's pyarrow is too old for the newer one. Everything goes to $OUT (default gpu-check/)
# as it is written: gpu.txt (machine, versions, timings), test-gpu.log, bench-gpu.log,
# BENCHMARKS.md and profiles.tgz. W&B is off: the tests and the benchmark log to CSV or nowhere.
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
limit=${LIMIT:-570}
mkdir -p "$out"
note() { echo "$*" | tee -a "$out/gpu.txt"; }

install() { # $1: datasets' version; the other wheels' one version each
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site --find-links .whl hydra-core omegaconf antlr4-python3-runtime \
        "datasets==$1" dill multiprocess
}
preflight() { # the versions, then what lmlab's data path asks of datasets and pyarrow
    python3 - <<'EOF'
import importlib
import sys
import tempfile

names = "torch lightning hydra omegaconf datasets pyarrow fsspec huggingface_hub tokenizers"
names += " transformers torchmetrics"
modules = [importlib.import_module(n) for n in names.split()]
print("python", sys.version.split()[0], *(f"{m.__name__} {m.__version__}" for m in modules))
import datasets
import torch

name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print("cuda", torch.version.cuda, "device", name)
datasets.disable_progress_bars()
with tempfile.TemporaryDirectory() as folder:
    rows = datasets.Dataset.from_dict({"text": ["a b", "c"]}).map(lambda r: {"n": len(r["text"])})
    rows.save_to_disk(folder)
    assert datasets.load_from_disk(folder)["n"] == [3, 1]
import lmlab.data.datamodule  # noqa: F401
import lmlab.train.run  # noqa: F401
EOF
}

site=""
if compgen -G ".whl/*.whl" >/dev/null; then
    site=/tmp/site
    install "${DATASETS:-5.2.0}" 2>&1 | tee -a "$out/gpu.txt"
fi
export PYTHONPATH="src:.${site:+:$site}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/gpu.txt"
if ! preflight >>"$out/gpu.txt" 2>&1; then
    tail -5 "$out/gpu.txt"
    note "preflight failed with datasets ${DATASETS:-5.2.0}: trying 5.0.0 (pyarrow >= 21)"
    if [ -z "$site" ] || ! install 5.0.0 || ! preflight >>"$out/gpu.txt" 2>&1; then
        tail -30 "$out/gpu.txt"
        note "preflight failed: nothing run (gpu.txt says why)"
        exit 3
    fi
fi
tail -2 "$out/gpu.txt"

run_tests() { # $1: seconds
    # the training runs first: the first H200 call (2026-12-04) passed every quick unit test
    # but cut the training runs after two of them; the quick ones get what is left
    local t0=$SECONDS args=(-o addopts= -v -rfEs --durations=0 -p no:cacheprovider)
    local quick="cached_generation or flex_attention_forward or chunked_cross_entropy"
    local session=() budget=$(($1 > 120 ? $1 - 60 : $1))
    if python3 -m pytest --help 2>/dev/null | grep -q -- --session-timeout; then
        session=(--session-timeout=$((budget > 60 ? budget - 30 : 30)))
    fi
    # the test file alone: collecting the whole suite would import lm-eval, which the image lacks
    timeout -k 10 "$budget" python3 -m pytest tests/train/test_gpu.py -k "not ($quick)" \
        "${session[@]}" "${args[@]}" 2>&1 | tee "$out/test-gpu.log"
    local first=${PIPESTATUS[0]} left=$(($1 - (SECONDS - t0)))
    timeout -k 10 $((left > 30 ? left : 30)) python3 -m pytest tests/train/test_gpu.py \
        -k "$quick" "${args[@]}" 2>&1 | tee -a "$out/test-gpu.log"
    local second=${PIPESTATUS[0]}
    note "tests: exit $first (training runs), $second (unit tests) after ${SECONDS} s"
    return $((first || second))
}
run_bench() { # $1: seconds; $2: runs per case
    cp BENCHMARKS.md "$out/BENCHMARKS.md" # the report rewrites its GPU section in place
    # profiler tables of each case's first run, in one archive (a device call returns at most
    # 8 files)
    timeout -k 10 "$1" python3 bench/run.py --only "${BENCH_ONLY:-gpu}" --repeats "$2" \
        --budget $(($1 > 120 ? $1 - 60 : 60)) --out "$out/BENCHMARKS.md" \
        --profile "$out/profiles" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench-gpu.log"
    local status=${PIPESTATUS[0]}
    if [ -d "$out/profiles" ]; then
        tar czf "$out/profiles.tgz" -C "$out" profiles && rm -rf "$out/profiles"
    fi
    note "bench: exit $status; ${SECONDS} s in all"
    return "$status"
}
case "$what" in
tests)
    run_tests $((limit - SECONDS))
    ;;
bench)
    run_bench $((limit - SECONDS - 15)) "${REPEATS:-2}"
    ;;
all)
    run_tests "${TESTS_LIMIT:-280}"
    tests=$?
    run_bench $((limit - SECONDS - 15)) "${REPEATS:-1}"
    bench=$?
    exit $((tests || bench))
    ;;
esac
