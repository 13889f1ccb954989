"""The token embedding every family looks its inputs up in: an ``nn.Embedding`` (its
checkpoint key stays ``embed.weight``, and a tied head shares that weight unscaled) whose
output ``model.embed_scale`` multiplies by sqrt(d_model), as the original Transformer does
(Vaswani et al. 2017, section 3.4: "we multiply those weights by sqrt(d_model)")."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.config import ModelConfig


class TokenEmbedding(nn.Embedding):
    """``weight[ids]``, times sqrt(d_model) with ``model.embed_scale``."""

    def __init__(self, cfg: ModelConfig) -> None:
        assert cfg.vocab_size is not None, "set model.vocab_size (train() takes the tokenizer's)"
        super().__init__(cfg.vocab_size, cfg.d_model)
        self.scale = math.sqrt(cfg.d_model) if cfg.embed_scale else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = super().forward(ids)
        return x if self.scale is None else x * self.scale

    def extra_repr(self) -> str:
        scaled = "" if self.scale is None else f", scale={self.scale:.4g}"
        return super().extra_repr() + scaled
