"""The transformer blocks: the same residual sublayers for every placement and family. ``Block``
(self-attention, feed-forward) serves GPT, BERT and T5's encoder; ``DecoderBlock`` adds the
cross-attention sublayer of an encoder-decoder (Vaswani et al. 2017, section 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import Family, Init, ModelConfig
from lmlab.model.attention import Attention
from lmlab.model.context import AttnContext
from lmlab.model.feedforward import make_feedforward
from lmlab.model.kv_cache import LayerCache
from lmlab.model.moe import ExpertLinear, MoEFeedForward
from lmlab.model.norms import PLACEMENTS


def make_block_feedforward(cfg: ModelConfig, layer: int, hidden_dropout: float) -> nn.Module:
    """The feed-forward of block ``layer`` (0-based in its stack): the Mixture-of-Experts one
    where ``model.moe`` puts it, the dense one elsewhere; ``hidden_dropout`` on its hidden
    activations (``lmlab.model.feedforward``)."""
    if cfg.moe.applies_to(layer):
        return MoEFeedForward(cfg, hidden_dropout)
    return make_feedforward(cfg, hidden_dropout)


class Block(nn.Module):
    """x <- residual(x, attn); x <- residual(x, ffn), where residual is the norm placement.
    ``layer`` (its index in the stack) decides whether its ffn is a Mixture of Experts; the
    ffn gets the context's mask of real tokens (``AttnContext.real``), which only a MoE reads.
    ``ffn_dropout`` drops the ffn's hidden activations in training: T5 passes ``model.dropout``
    (its recipe), GPT and BERT leave it 0 (theirs drop the sublayer outputs only)."""

    def __init__(self, cfg: ModelConfig, layer: int = 0, ffn_dropout: float = 0.0) -> None:
        super().__init__()
        placement = PLACEMENTS[cfg.norm_placement]
        self.attn_res = placement(cfg)
        self.attn = Attention(cfg)
        self.ffn_res = placement(cfg)
        self.ffn = make_block_feedforward(cfg, layer, ffn_dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x_BTD: torch.Tensor, ctx: AttnContext, kv: LayerCache | None = None
    ) -> torch.Tensor:
        x_BTD = self.attn_res(x_BTD, lambda h: self.drop(self.attn(h, ctx, cache=kv)))
        return self.ffn_res(x_BTD, lambda h: self.drop(self.ffn(h, ctx.real)))


class DecoderBlock(Block):
    """x <- residual(x, self-attn); x <- residual(x, cross-attn to memory); x <- residual(x, ffn).

    Subclasses ``Block`` so the checkpoint keys of the shared sublayers are the same."""

    def __init__(self, cfg: ModelConfig, layer: int = 0, ffn_dropout: float = 0.0) -> None:
        super().__init__(cfg, layer, ffn_dropout)
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
        return self.ffn_res(x_BSD, lambda h: self.drop(self.ffn(h, ctx.real)))


def gpt2_std(module: nn.Module, cfg: ModelConfig, tied: bool) -> float:
    """GPT-2's: N(0, 0.02) for matrices and embeddings (a tied head too), residual output
    projections scaled by 1/sqrt(2 * n_layers) (Radford et al. 2019, section 2.3)."""
    if getattr(module, "residual_projection", False):
        return cfg.init_std / (2 * cfg.n_layers) ** 0.5
    return cfg.init_std


def t5_std(module: nn.Module, cfg: ModelConfig, tied: bool) -> float:
    """Mesh TensorFlow's (T5's, and transformers' ``T5PreTrainedModel._init_weights``): a
    linear layer N(0, 1/fan_in), an embedding N(0, 1), the relative bias N(0, 1/d_model). T5
    folds attention's 1/sqrt(d_head) into the query's init, (d_model d_head)^-1/2; lmlab
    scales the scores, so the query's fan-in rule gives the same scores at init. An embedding
    tied to the head keeps N(0, 1) under T5's head, which rescales by d_model**-0.5; under
    GPT's and BERT's, which do not, it is the head's N(0, 1/d_model) (unit-scale logits). A
    learned position table, which T5 has none of, is added to the token embedding's output
    and takes its scale (times sqrt(d_model) with ``model.embed_scale``): at N(0, 1) beside a
    tied GPT or BERT embedding's N(0, 1/d_model) it outweighed the tokens sqrt(d_model) times."""
    if getattr(module, "attention_bias", False):
        return cfg.d_model**-0.5
    if tied:
        return t5_token_std(cfg)
    if getattr(module, "added_to_tokens", False):
        return t5_token_std(cfg) * (cfg.d_model**0.5 if cfg.embed_scale else 1.0)
    if isinstance(module, nn.Embedding):
        return 1.0
    return module.weight.shape[-1] ** -0.5  # (out, in), stacked experts (E, out, in)


def t5_token_std(cfg: ModelConfig) -> float:
    """``t5_std``'s for the token embedding: N(0, 1), or a GPT or BERT head's N(0, 1/d_model)
    where it is tied to one (``model.tie_embeddings``)."""
    return cfg.d_model**-0.5 if cfg.tie_embeddings and cfg.family != Family.t5 else 1.0


# The std of each weight under ``model.init``, per module.
INITS = {Init.gpt2: gpt2_std, Init.t5: t5_std}


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Weights N(0, std) with the std ``model.init`` gives each module, zero biases. Stacked
    expert weights are initialised as the linear layers they stack. A model built on the meta
    device (shapes only: plans, conversions) has no values to draw, and is left as built: there
    the draws cost more than the build (torch's meta kernels for ``normal_`` run in Python)."""
    if any(p.is_meta for p in model.parameters()):
        return
    std_of = INITS[cfg.init]
    # the token embedding, which is also the head with tie_embeddings (BERT ties it after)
    token = getattr(model, "embed", None) if cfg.tie_embeddings else None
    for module in model.modules():
        if isinstance(module, nn.Linear | ExpertLinear | nn.Embedding):
            tied = token is not None and module.weight is token.weight
            nn.init.normal_(module.weight, mean=0.0, std=std_of(module, cfg, tied))
        if isinstance(module, nn.Linear | ExpertLinear) and module.bias is not None:
            nn.init.zeros_(module.bias)
