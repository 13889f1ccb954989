"""Peak FLOP/s per device for MFU: a table for GPUs, a measured (and cached) value for CPUs."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

# Dense (no sparsity) peak FLOP/s from the vendors' data sheets.
GPU_PEAKS = {  # name fragment -> {dtype: FLOP/s}
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "A10G": {"bf16": 70e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 82.6e12},
    "V100": {"bf16": 125e12, "fp32": 15.7e12},
}


def precision_dtype(precision: str) -> str:
    return "bf16" if "bf16" in str(precision) else "fp32"


def measure_cpu_matmul_flops(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    """Best FLOP/s of repeated n x n matmuls on the CPU with the current thread count, in the
    layout ``F.linear`` uses (``x @ w.T``): on CPUs without native bf16, ``a @ b`` in bf16
    takes a path ten times slower than the one training takes, and is no peak."""
    gen = torch.Generator().manual_seed(0)  # not the global RNG: training's stream stays put
    a = torch.randn(n, n, dtype=dtype, generator=gen)
    w = torch.randn(n, n, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ w.T
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(4):
            a @ w.T
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


def cpu_peak_flops(dtype_name: str, cache_dir: str | Path) -> float:
    """Measured once per (cpu, threads, dtype) and cached in ``cache_dir/peak_flops.json``."""
    path = Path(cache_dir).expanduser() / "peak_flops.json"
    # "linear": the x @ w.T measurement (older entries timed a @ b)
    cpu = platform.processor() or platform.machine()
    key = f"{cpu}|{torch.get_num_threads()}|{dtype_name}|linear"
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key not in cache:
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        cache[key] = measure_cpu_matmul_flops(dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache, indent=2))
    return cache[key]


def peak_flops(device: torch.device, precision: str, cache_dir: str | Path) -> float | None:
    """Peak FLOP/s for ``device`` at the training precision; None for an unknown GPU."""
    dtype_name = precision_dtype(precision)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((p[dtype_name] for k, p in GPU_PEAKS.items() if k in name), None)
    if device.type == "cpu":
        return cpu_peak_flops(dtype_name, cache_dir)
    return None
