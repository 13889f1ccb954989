"""Peak FLOP/s per device for MFU (the data sheets' dense figures for GPUs, a measured value for
CPUs), and the fp32 matmul precision on CUDA."""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from lmlab.files import write_json

log = logging.getLogger(__name__)

# Lightning's peak table (lightning.fabric.utilities.throughput.get_available_flops) serves
# most GPUs. lmlab takes the dense per-GPU data-sheet figures (NVIDIA's data sheets and its
# Ampere GA102 and Ada whitepapers) where that table's are not (found by name fragment, whole
# words, the first that matches: longer names first):
# - Hopper NVL and H200: Lightning's H200 rows hold sparse figures under names the driver does
#   not report ("NVIDIA H200" matches neither "sxm1" nor "nvl1"), its "h100 nvl" row a pair of
#   cards' sparse figures (2x one card's dense). Lightning's H100 SXM row is dense (989 TFLOP/s
#   bf16), as these are.
# - RTX A4000, A4500, A5000, A6000, A40 and GeForce RTX 30 and 40: Lightning gives bf16 and
#   fp16 the shaders' fp32 rate, not the tensor cores' (a quarter of an A6000's 154.8 TFLOP/s,
#   half of an RTX 4090's 165.2), so MFU read 2x to 4x too high, above 100% for a fast run.
#   The tensor-core figures here accumulate in fp32, as torch's bf16 and fp16 matmuls do
#   (GeForce cards run fp16 accumulation at twice that, which torch does not use).


def _dense(half: float, tf32: float, fp32: float, fp64: float | None = None) -> dict:
    """Peaks per compute dtype: bf16 and fp16 (``half``), TF32 and fp32 in TFLOP/s."""
    peaks = {torch.bfloat16: half, torch.float16: half, "tfloat32": tf32, torch.float32: fp32}
    if fp64 is not None:
        peaks[torch.float64] = fp64
    return {k: v * 1e12 for k, v in peaks.items()}


NVL_DENSE = _dense(835.5, 417.5, 60.0, 30.0)
DENSE_OVERRIDES = {
    "H100 NVL": NVL_DENSE,
    "H200 NVL": NVL_DENSE,
    "H200": _dense(989.4, 494.7, 66.9, 33.5),
    "RTX A6000": _dense(154.8, 77.4, 38.7),
    "RTX A5000": _dense(111.1, 55.6, 27.8),
    "RTX A4500": _dense(94.6, 47.3, 23.7),
    "RTX A4000": _dense(76.7, 38.4, 19.2),  # Lightning reads its name as the A40's
    "A40": _dense(149.7, 74.8, 37.4),
    "RTX 4090": _dense(165.2, 82.6, 82.6),
    "RTX 4080 SUPER": _dense(104.4, 52.2, 52.2),
    "RTX 4080": _dense(97.5, 48.7, 48.7),
    "RTX 3090 Ti": _dense(80.0, 40.0, 40.0),
    "RTX 3090": _dense(71.0, 35.6, 35.6),
    "RTX 3080 Ti": _dense(68.2, 34.1, 34.1),
    "RTX 3080": _dense(59.5, 29.8, 29.8),
    "RTX 3070": _dense(40.6, 20.3, 20.3),
}
# Lightning's ``trainer.precision`` -> the dtype its matmuls run in (autocast's under a mixed
# precision, the weights' own under a true one): the peak MFU is taken against. Others: fp32.
# Transformer Engine's two are Lightning's weights_dtype for them (bf16, fp16), which the
# layers it does not convert to fp8 compute in: taken as fp32 they gave MFU against the TF32
# peak (half the bf16 one on an H100), or fp32's (a fifteenth) with matmul_precision=highest.
COMPUTE_DTYPES = {
    **dict.fromkeys(("bf16-mixed", "bf16-true", "bf16", "transformer-engine"), torch.bfloat16),
    **dict.fromkeys(("16-mixed", "16-true", "16", "transformer-engine-float16"), torch.float16),
    **dict.fromkeys(("64-true", "64"), torch.float64),
}
# the CPU peak cache's key for each (fp32 and bf16 as before there were others)
DTYPE_NAMES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}


def set_matmul_precision(value: str, device: torch.device) -> None:
    """Applies ``matmul_precision`` (checked by ``RunConfig``) to a CUDA run; a CPU run keeps
    full fp32 matmuls (there the setting would change results, not speed them up)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision(value)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls of a run at ``precision`` run in (``COMPUTE_DTYPES``)."""
    return COMPUTE_DTYPES.get(str(precision), torch.float32)


def autocast(device: torch.device, precision: str) -> Any:
    """A step's matmuls in the run's compute dtype outside Lightning (timed steps, probes): a
    true 16-bit precision's weights are fp32 there, and autocast gives its matmuls' dtype."""
    dtype = compute_dtype(precision)
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


def measure_cpu_matmul_flops(
    dtype: torch.dtype,
    n: int = 1024,
    seconds: float = 1.0,
    shape: tuple[int, int, int] | None = None,
    timings: int | None = None,
) -> float:
    """Best FLOP/s of repeated matmuls on the CPU with the current thread count, in the layout
    ``F.linear`` uses (``x @ w.T``; on CPUs without native bf16, ``a @ b`` in bf16 takes a path
    ten times slower than the one training takes, and is no peak): n x n by default, or
    ``shape`` = (rows, in, out), a linear layer of the model itself. Each timing is of four
    matmuls; the best is kept over ``seconds``, or over ``timings`` of them where those end
    sooner."""
    rows, k, out = shape or (n, n, n)
    gen = torch.Generator().manual_seed(0)  # not the global RNG: training's stream stays put
    a = torch.randn(rows, k, dtype=dtype, generator=gen)
    w = torch.randn(out, k, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ w.T
    best, deadline, left = 0.0, time.perf_counter() + seconds, timings or math.inf
    while time.perf_counter() < deadline and left > 0:
        left -= 1
        t = time.perf_counter()
        for _ in range(4):
            a @ w.T
        best = max(best, 4 * 2 * rows * k * out / (time.perf_counter() - t))
    return best


# timings of a run's own layer at its start (four matmuls each), at most: the best of 16 was
# within 1.5% of the best of 64 in 11 of 12 rounds for gpt_tiny's two layers on the 2-core
# machine (one round 23% lower: noise, which the cache's best over runs absorbs)
SHAPE_TIMINGS = 16
# seconds of square n = 1024 matmuls where the cache has no peak yet (a run's first start)
SQUARE_SECONDS = 1.0


def cpu_peak_flops(
    dtype: torch.dtype, cache_dir: str | Path, shapes: Iterable[tuple[int, int, int]] = ()
) -> float:
    """The best matmul FLOP/s this CPU has shown at this thread count and dtype, kept as the
    maximum over runs in ``cache_dir/peak_flops.json``: the square n = 1024 matmul (measured
    when the cache has no value), and at every run's start ``shapes``, the run's own largest
    linear layers (a twentieth of a second each, or seven matmuls where those take longer:
    every run pays it at start-up). A value measured while other work ran is raised by the
    next idle run, and the run's own matmuls, measured alone, cannot beat the peak their MFU
    is taken against. A small layer's matmul takes microseconds: the best of
    ``SHAPE_TIMINGS`` timings is its best, and its run starts without waiting the twentieth."""
    path = Path(cache_dir).expanduser() / "peak_flops.json"
    cpu = platform.processor() or platform.machine()
    key = f"{cpu}|{torch.get_num_threads()}|{DTYPE_NAMES[dtype]}|linear"
    cache = read_peak_cache(path)
    measured = [] if key in cache else [measure_cpu_matmul_flops(dtype, seconds=SQUARE_SECONDS)]
    measured += [
        measure_cpu_matmul_flops(dtype, seconds=0.05, shape=s, timings=SHAPE_TIMINGS)
        for s in shapes
    ]
    best = max([cache.get(key, 0.0), *measured])
    if best > cache.get(key, 0.0):
        try:
            write_json(path, {**cache, key: best})  # runs share it: never half-written
        except OSError as err:  # a read-only or shared cache: this run's figure stands
            log.warning("peak FLOP/s not kept in %s (%s): measured again next run", path, err)
    return best


def read_peak_cache(path: Path) -> dict[str, float]:
    """The cached peaks; empty when there is no file or it cannot be read as one (a damaged
    cache is measured again, not a failed run)."""
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict):
        return {}
    # a peak that is no positive finite number (NaN, Infinity, 0) is measured again
    good = {k: v for k, v in cache.items() if isinstance(v, int | float) and 0 < v < math.inf}
    return good


def gpu_peak_flops(device: torch.device, precision: str) -> float | None:
    """The data sheet's dense peak at the training precision's compute dtype (bf16, fp16, or
    fp32 / TF32 as ``matmul_precision`` allows); None for a GPU neither table knows."""
    from lightning.fabric.utilities.throughput import get_available_flops

    name = torch.cuda.get_device_name(device)
    dtype = compute_dtype(precision)
    for fragment, peaks in DENSE_OVERRIDES.items():
        if re.search(rf"\b{re.escape(fragment)}\b", name, flags=re.IGNORECASE):
            tf32 = dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest"
            return peaks.get("tfloat32" if tf32 else dtype)
    return get_available_flops(device, dtype)  # TF32 where the GPU has it and it is allowed


def largest_linears(model: torch.nn.Module, rows: int, n: int = 2) -> list[tuple[int, int, int]]:
    """(rows, in, out) of the model's ``n`` largest distinct linear layers over ``rows``
    tokens: the matmuls that bound how fast a step can run (a meta model's will do)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shapes = {(rows, m.in_features, m.out_features) for m in linears}
    return sorted(shapes, key=lambda s: s[1] * s[2], reverse=True)[:n]


def raised_peak(
    peak: float,
    achieved: float,
    precision: str,
    cache_dir: str | Path,
    shapes: Iterable[tuple[int, int, int]],
) -> float:
    """The CPU peak for a model that achieves ``achieved`` FLOP/s (a run, or a dry run's
    timed steps): a peak below that was measured while other work ran (the cache's, or the
    start's probe), so the model's own linear layers (``shapes``) are measured again, the cache
    raised, and the peak is at least the achieved rate: no MFU is above 1. The achieved rate
    is not cached: it is an estimate of the model's FLOPs, not a measured matmul."""
    if achieved <= peak:
        return peak
    measured = peak_flops(torch.device("cpu"), precision, cache_dir, shapes)
    log.info(
        "peak FLOP/s %.3g was below the %.3g this model achieves (measured while other work "
        "ran): measured again, %.3g",
        peak,
        achieved,
        measured,
    )
    return max(measured, achieved)


def peak_flops(
    device: torch.device,
    precision: str,
    cache_dir: str | Path,
    shapes: Iterable[tuple[int, int, int]] = (),
) -> float | None:
    """Peak FLOP/s for ``device`` at the training precision; None for an unknown GPU."""
    if device.type == "cuda":
        return gpu_peak_flops(device, precision)
    if device.type == "cpu":
        return cpu_peak_flops(compute_dtype(precision), cache_dir, shapes)
    return None
