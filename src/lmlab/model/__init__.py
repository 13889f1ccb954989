"""Model families built from one block library; ``build_model`` is the only entry point."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lmlab.config import Family, ModelConfig
from lmlab.model.bert import BERT
from lmlab.model.gpt import GPT
from lmlab.model.params import flops_per_token, param_breakdown
from lmlab.model.t5 import T5

FAMILIES: dict[Family, Callable[[ModelConfig], nn.Module]] = {
    Family.gpt: GPT,
    Family.bert: BERT,
    Family.t5: T5,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the family's model from a validated ``ModelConfig`` (vocab_size must be set)."""
    return FAMILIES[cfg.family](cfg)


__all__ = ["FAMILIES", "build_model", "flops_per_token", "param_breakdown"]
