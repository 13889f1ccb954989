"""The transformer blocks: the same residual sublayers for every placement and family. ``Block``
(self-attention, feed-forward) serves GPT, BERT and T5's encoder; ``DecoderBlock`` adds the
cross-attention sublayer of an encoder-decoder (Vaswani et al. 2017, section 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.model.attention import Attention
from lmlab.model.context import AttnContext
from lmlab.model.feedforward import make_feedforward
from lmlab.model.kv_cache import LayerCache
from lmlab.model.moe import ExpertLinear, MoEFeedForward
from lmlab.model.norms import PLACEMENTS


def make_block_feedforward(cfg: ModelConfig, layer: int) -> nn.Module:
    """The feed-forward of block ``layer`` (0-based in its stack): the Mixture-of-Experts one
    where ``model.moe`` puts it, the dense one elsewhere."""
    return MoEFeedForward(cfg) if cfg.moe.applies_to(layer) else make_feedforward(cfg)


class Block(nn.Module):
    """x <- residual(x, attn); x <- residual(x, ffn), where residual is the norm placement.
    ``layer`` (its index in the stack) decides whether its ffn is a Mixture of Experts."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        placement = PLACEMENTS[cfg.norm_placement]
        self.attn_res = placement(cfg)
        self.attn = Attention(cfg)
        self.ffn_res = placement(cfg)
        self.ffn = make_block_feedforward(cfg, layer)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x_BTD: torch.Tensor, ctx: AttnContext, kv: LayerCache | None = None
    ) -> torch.Tensor:
        x_BTD = self.attn_res(x_BTD, lambda h: self.drop(self.attn(h, ctx, cache=kv)))
        return self.ffn_res(x_BTD, lambda h: self.drop(self.ffn(h)))


class DecoderBlock(Block):
    """x <- residual(x, self-attn); x <- residual(x, cross-attn to memory); x <- residual(x, ffn).

    Subclasses ``Block`` so the checkpoint keys of the shared sublayers are the same."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__(cfg, layer)
        self.cross_res = PLACEMENTS[cfg.norm_placement](cfg)
        self.cross = Attention(cfg)

    def forward(
        self,
        x_BSD: torch.Tensor,
        ctx: AttnContext,
        memory_BTD: torch.Tensor,
        cross_ctx: AttnContext,
        kv: LayerCache | None = None,
    ) -> torch.Tensor:
        x_BSD = self.attn_res(x_BSD, lambda h: self.drop(self.attn(h, ctx, cache=kv)))
        x_BSD = self.cross_res(x_BSD, lambda h: self.drop(self.cross(h, cross_ctx, memory_BTD)))
        return self.ffn_res(x_BSD, lambda h: self.drop(self.ffn(h)))


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """GPT-2 init: N(0, 0.02) for matrices and embeddings, zero biases, and residual output
    projections scaled by 1/sqrt(2 * n_layers) (Radford et al. 2019, section 2.3). Stacked
    expert weights are initialised as the linear layers they stack."""
    for module in model.modules():
        if isinstance(module, nn.Linear | ExpertLinear):
            std = cfg.init_std
            if getattr(module, "residual_projection", False):
                std /= (2 * cfg.n_layers) ** 0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
