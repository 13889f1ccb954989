"""Normalisation layers and the residual wrappers that place them (pre / post / sandwich)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmlab.config import ModelConfig, Norm, NormPlacement


def make_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm carries a bias only when ``cfg.bias``; RMSNorm never has one."""
    return NORMS[cfg.norm](cfg)


NORMS: dict[Norm, Callable[[ModelConfig], nn.Module]] = {
    Norm.layernorm: lambda c: nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=c.bias),
    Norm.rmsnorm: lambda c: nn.RMSNorm(c.d_model, eps=c.norm_eps),
}

Sublayer = Callable[[torch.Tensor], torch.Tensor]


class PreNorm(nn.Module):
    """x + f(norm(x)). The residual stream is never normalised, so the stack needs a final norm."""

    needs_final_norm = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg)

    def forward(self, x: torch.Tensor, sublayer: Sublayer) -> torch.Tensor:
        return x + sublayer(self.norm(x))


class PostNorm(nn.Module):
    """norm(x + f(x)), as in Vaswani et al. (2017) and BERT: the output is already normalised."""

    needs_final_norm = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg)

    def forward(self, x: torch.Tensor, sublayer: Sublayer) -> torch.Tensor:
        return self.norm(x + sublayer(x))


class SandwichNorm(nn.Module):
    """x + norm_out(f(norm(x))) (Ding et al. 2021, CogView): bounds what each sublayer adds."""

    needs_final_norm = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg)
        self.norm_out = make_norm(cfg)

    def forward(self, x: torch.Tensor, sublayer: Sublayer) -> torch.Tensor:
        return x + self.norm_out(sublayer(self.norm(x)))


PLACEMENTS: dict[NormPlacement, type[nn.Module]] = {
    NormPlacement.pre: PreNorm,
    NormPlacement.post: PostNorm,
    NormPlacement.sandwich: SandwichNorm,
}


def final_norm(cfg: ModelConfig) -> nn.Module:
    """The norm after a stack's last block where the placement needs one (pre-LN, sandwich:
    the residual stream is not normalised), else ``nn.Identity`` (post-LN's blocks end
    normalised)."""
    return make_norm(cfg) if PLACEMENTS[cfg.norm_placement].needs_final_norm else nn.Identity()
