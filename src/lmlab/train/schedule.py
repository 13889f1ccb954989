"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio`` (nanoGPT)."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """lr multiplier at ``step``: (step+1)/(warmup+1) during warmup, then cosine to the floor."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    warmup = min(warmup_steps, max(0, total_steps - 1))
    fn = partial(
        warmup_cosine_factor,
        warmup_steps=warmup,
        total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, fn)
