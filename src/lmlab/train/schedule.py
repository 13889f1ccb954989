"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio`` (nanoGPT)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

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


def warmup_used(warmup_steps: int, total_steps: int) -> int:
    """The warmup a run of ``total_steps`` takes: at most ``total_steps - 1`` steps, so the
    last step trains at the peak learning rate rather than on its way to it."""
    return min(warmup_steps, max(0, total_steps - 1))


def warmup_cut(scheduler_cfg: Mapping[str, Any], total_steps: int) -> str | None:
    """What to say where ``warmup_cosine``'s ``scheduler.warmup_steps`` is more than a run of
    ``total_steps`` (the plan's) takes (``warmup_used``): it is cut, and the run never decays
    from the peak. None where it fits, or for another schedule."""
    if scheduler_cfg.get("_target_") != f"{__name__}.{warmup_cosine.__name__}":
        return None
    asked = int(scheduler_cfg.get("warmup_steps", 0))
    used = warmup_used(asked, total_steps)
    if used == asked:
        return None
    return (
        f"scheduler.warmup_steps={asked} is cut to {used} steps of this run's {total_steps}: "
        "the learning rate reaches its peak at the last step and never decays; lower "
        "scheduler.warmup_steps (or train more steps) for the schedule asked for"
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """Linear warmup over ``warmup_used(warmup_steps, total_steps)`` steps, then cosine decay
    to ``min_lr_ratio`` x lr at ``total_steps``."""
    warmup = warmup_used(warmup_steps, total_steps)
    fn = partial(
        warmup_cosine_factor,
        warmup_steps=warmup,
        total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, fn)
