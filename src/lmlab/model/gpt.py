"""GPT: decoder-only, next-token prediction. Wiring of the shared block library."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.model.context import build_context
from lmlab.model.embedding import TokenEmbedding
from lmlab.model.kv_cache import KVCache
from lmlab.model.layers import Block, init_weights
from lmlab.model.loss import output, resolve_chunking
from lmlab.model.norms import final_norm
from lmlab.model.positional import make_positional


class GPT(nn.Module):
    """logits = head(norm_f(blocks(positional.embed(embed(ids))))), causal attention; with
    labels, their loss (``lmlab.model.loss``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.vocab_size is not None, "set model.vocab_size (train() takes the tokenizer's)"
        self.cfg = cfg
        self.kernel = cfg.masked_attention  # SDPA or FlexAttention where a mask is needed
        self.embed = TokenEmbedding(cfg)
        self.positional = make_positional(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = final_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.loss_chunking = resolve_chunking(cfg, cfg.vocab_size, cfg.d_model)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits; position t sees tokens <= t only. With a
        ``cache`` the ids continue the cached tokens (positions ``cache.length`` on). With
        (B, T) ``labels``: their mean cross-entropy instead of the logits."""
        T, window = input_ids.shape[1], self.cfg.attention_window
        if cache is None:
            pos_T = torch.arange(T, device=input_ids.device)
            ctx = build_context(
                self.positional, pos_T, pos_T, causal=True, window=window, kernel=self.kernel
            )
        else:
            pos_T, ctx = cache.context(self.positional, T, window)
        x_BTD = self.drop(self.positional.embed(self.embed(input_ids), pos_T))
        for i, block in enumerate(self.blocks):
            x_BTD = block(x_BTD, ctx, cache.layer(i) if cache else None)
        if cache is not None:
            cache.advance()
        return output(self.head, self.norm_f(x_BTD), labels, self.loss_chunking)

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``length`` tokens (default
        ``max_seq_len``), in the model's dtype and device."""
        return KVCache.for_model(self.cfg, batch, len(self.blocks), self.head.weight, length)
