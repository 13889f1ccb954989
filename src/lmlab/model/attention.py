"""Multi-head attention (MHA, GQA, MQA) through one fused attention call.

Masks (causal, sliding window, key padding) and additive biases (ALiBi, T5's buckets) are
resolved by ``lmlab.model.context.build_context`` once per forward and shared by every layer:
one ``scaled_dot_product_attention`` call, or FlexAttention where ``model.attention_kernel``
takes it (``ctx.attend``).

With ``keep_weights`` set (``lmlab.infer.probe.record_attention`` sets it) a layer computes the same
attention explicitly and keeps its weights (B, H, T, S) for inspection; training never does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import ModelConfig
from lmlab.model.context import AttnContext

if TYPE_CHECKING:
    from lmlab.model.kv_cache import LayerCache


def attention_weights(q_BHTd: torch.Tensor, k_BHSd: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias, masked): what SDPA computes inside, made explicit.
    ``k`` has as many heads as ``q`` (GQA's shared heads repeated)."""
    scores = q_BHTd @ k_BHSd.transpose(-2, -1) / math.sqrt(q_BHTd.shape[-1])  # (B, H, T, S)
    if ctx.is_causal:
        T, S = scores.shape[-2:]
        causal_TS = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal_TS, float("-inf"))
    if ctx.mask is not None and ctx.mask.dtype == torch.bool:
        scores = scores.masked_fill(~ctx.mask, float("-inf"))
    elif ctx.mask is not None:
        scores = scores + ctx.mask
    wide = torch.promote_types(scores.dtype, torch.float32)  # bf16/fp16 softmax in fp32
    weights = scores.to(wide).softmax(-1)
    # a query every key is masked from (a padded one under a window) attends to nothing, as
    # in SDPA: zeros, not the NaN a softmax of -inf gives, which the next layer would spread
    weights = weights.masked_fill(scores.isneginf().all(-1, keepdim=True), 0.0)
    return weights.to(q_BHTd.dtype)


class Attention(nn.Module):
    """Queries from ``x``; keys and values from ``memory`` (cross-attention) or ``x``.

    ``wkv`` projects to ``n_kv_heads`` heads; SDPA's ``enable_gqa`` shares each across
    n_heads / n_kv_heads query heads (Ainslie et al. 2023), so nothing is copied.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.wkv = nn.Linear(cfg.d_model, 2 * cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        self.wo.residual_projection = True  # GPT-2 scaled init
        self.dropout_p = cfg.dropout
        self.keep_weights = False
        self.weights: torch.Tensor | None = None  # (B, H, T, S) of the last forward

    def project(
        self, x_BTD: torch.Tensor, memory: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries, and the keys and values side by side. Self-attention projects all
        three in one product over the two weights side by side, as one fused projection
        would: a step launches one matrix product forward and two backward where two
        projections launch two and four (the parameters, and so checkpoints and Hugging
        Face's mappings, stay ``wq`` and ``wkv``). Where nothing is differentiated
        (validation, scoring, decoding a token at a time) the two products run as they are:
        the side-by-side weight is a copy of both, which a decoded token would read and write
        again for every layer, where its products read them once."""
        if memory is not None or not torch.is_grad_enabled():
            return self.wq(x_BTD), self.wkv(x_BTD if memory is None else memory)
        bias = None if self.wq.bias is None else torch.cat((self.wq.bias, self.wkv.bias))
        qkv = F.linear(x_BTD, torch.cat((self.wq.weight, self.wkv.weight)), bias)
        return qkv.split((self.wq.out_features, self.wkv.out_features), dim=-1)

    def forward(
        self,
        x_BTD: torch.Tensor,
        ctx: AttnContext,
        memory: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """``cache``: this layer's KV cache; the new keys and values join the cached ones."""
        src_BSD = x_BTD if memory is None else memory
        B, T, _ = x_BTD.shape
        S = src_BSD.shape[1]
        q_BTE, kv_BSE = self.project(x_BTD, memory)
        q = q_BTE.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        kv = kv_BSE.view(B, S, 2, self.n_kv_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, Hkv, S, hd)
        q, k = ctx.rotate(q, k)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, S_cached + S, hd)
        if self.keep_weights:
            rep = self.n_heads // self.n_kv_heads
            self.weights = attention_weights(q, k.repeat_interleave(rep, 1), ctx.dense())
            y = self.weights @ v.repeat_interleave(rep, 1)
            return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        dropout_p = self.dropout_p if self.training else 0.0
        y = ctx.attend(q, k, v, dropout_p, gqa=self.n_kv_heads != self.n_heads)  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
