"""The optimizer of a run: AdamW's two parameter groups (``decay_groups``: weight decay on
matmul weights only), the ``optim`` config as plain values (``optimizer_from``), and the
fused or foreach implementation by device (``build_optimizer``, ``optim.fused``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lmlab.config import check_fused

NO_DECAY_TYPES = (nn.Embedding, nn.LayerNorm, nn.RMSNorm)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matmul weights only; none on norms, biases and embeddings
    (a tied head shares the embedding's tensor and so goes undecayed). nanoGPT today decays
    every 2-D tensor, embeddings included; on its Tiny Shakespeare CPU run that made no
    measurable difference (1.8848 against 1.885)."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NO_DECAY_TYPES) or name == "bias" or p.ndim < 2:
                no_decay.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


# Devices where optim.fused=auto takes torch's fused AdamW (measured faster on both).
FUSED_DEVICES = ("cuda", "cpu")


def optimizer_from(optim_cfg: Any) -> Callable[..., torch.optim.Optimizer]:
    """The ``optim`` config as a partial whose arguments are plain Python values (``betas`` a
    list, not OmegaConf's ListConfig). torch 2.6's AdamW keeps ``betas`` as given in its
    param groups, and a checkpoint that holds a ListConfig does not load with
    ``torch.load(weights_only=True)``, which every lmlab reader uses (torch 2.11 and later
    make it a tuple)."""
    from hydra.utils import instantiate

    return instantiate(optim_cfg, _convert_="all")


def build_optimizer(
    optimizer: Callable[..., torch.optim.Optimizer], groups: list[dict], device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer (a partial) over ``groups``. Its ``fused`` setting (``optim.fused``:
    auto, true, false) picks the implementation: ``auto`` is the fused kernel on CUDA (one
    launch for all parameters, as nanoGPT uses) and on the CPU (3.3x to 5.4x faster than
    foreach there: BENCHMARKS.md, "AdamW on the CPU"), ``foreach`` elsewhere; ``false`` is
    foreach."""
    kwargs = dict(getattr(optimizer, "keywords", {}))
    if "fused" not in kwargs:  # an optimizer without the setting: as configured
        return optimizer(groups)
    fused = kwargs.pop("fused")
    check_fused(fused)
    if fused == "auto":
        fused = device.type in FUSED_DEVICES
    impl = {"fused": True} if fused else {"foreach": True}
    return optimizer.func(groups, *optimizer.args, **kwargs, **impl)
