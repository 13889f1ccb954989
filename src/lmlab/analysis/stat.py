"""One metric over a variant's runs (``Stat``: mean, sample std, count) and how compare prints
numbers (``fmt``, ``fmt_stat``), shared by the table, the plot and the summary lines."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lmlab.analysis.multirun import MISSING, result_key

# Shown with k/M/B suffixes.
SIZE_KEYS = frozenset({"params", "active_params", "non_embedding_params", "tokens", "flops"})
HUMAN_KEYS = SIZE_KEYS | {"tokens_per_second"}
# Fixed by the config, not by the seed: no std shown.
NO_STD_KEYS = SIZE_KEYS
ERROR_WIDTH = 60


@dataclass
class Stat:
    """Mean, sample standard deviation (None for n < 2) and count of the finite values."""

    mean: float | None
    std: float | None
    n: int


def stat(values: Iterable[float | None]) -> Stat:
    """Mean and sample std (ddof=1) of the finite values; std is None when n < 2."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Stat(None, None, 0)
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return Stat(float(np.mean(finite)), std, len(finite))


def fmt(value: float | None, key: str = "", like: float | None = None) -> str:
    """A number for the table: k/M/B for sizes and throughput, FLOPs as 1.40e11, wall time
    to a tenth of a second, else 4 decimals below 10 and 2 above, and 3 significant digits
    below 0.001 (a learning rate of 3e-05 read 0.0000); ``like`` formats a std with the
    decimals of its mean."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    key = result_key(key)  # perf/tokens_per_second as tokens_per_second
    ref = abs(value if like is None else like)
    if key == "flops":  # 1.40e11, not 140B (which reads as bytes)
        return f"{value:.3g}".replace("e+", "e")
    if key in HUMAN_KEYS or ref >= 1e4:
        return _human(value)
    if key == "wall_seconds":  # seconds to a tenth: 3.0, not 2.9951
        return f"{value:.1f}"
    if 0 < ref < 1e-3:  # 4 decimals would leave one significant digit or none
        return f"{value:.3g}"
    return f"{value:.4f}" if ref < 10 else f"{value:.2f}"


def _human(value: float) -> str:
    if abs(value) >= 1e15:  # past the units: a diverged run's perplexity, say
        return f"{value:.3g}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def fmt_stat(s: Stat, key: str = "") -> str:
    """``mean ± std`` (just the mean when n < 2 or for sizes); ``-`` when unknown."""
    if s.mean is None:
        return MISSING
    if s.std is None or result_key(key) in NO_STD_KEYS:
        return fmt(s.mean, key)
    return f"{fmt(s.mean, key)} ± {fmt(s.std, key, like=s.mean)}"


def truncate(text: str, width: int = ERROR_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
