"""T5: encoder-decoder, span-corruption prediction (Raffel et al. 2020). Wiring of the shared
blocks.

What T5 adds to the block library: a second stack whose ``DecoderBlock`` cross-attends to the
encoder's output, and one positional scheme per stack (bidirectional in the encoder, causal in
the decoder; for ``positional=relative`` that is one bias table per stack, shared by its layers).
One token embedding serves the encoder, the decoder and (tied) the output head, which then
rescales by d_model**-0.5 as Mesh TensorFlow and HF do. Every feed-forward also drops its
hidden activations with ``model.dropout`` (T5's ``dense_relu_dense``; transformers'
``T5DenseActDense``), where GPT's and BERT's drop only the sublayer outputs. Under
``+experiment=t5`` (T5 v1.0: no biases, RMSNorm, ReLU, relative bias, tied) the parameter
counts equal HF's ``T5ForConditionalGeneration``: 60,506,624 for t5_small with vocab 32128.

Attention scores are scaled by 1/sqrt(head_dim) as in every other family (T5 folds that scale
into its initialisation instead); the parameter count is the same either way.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import IGNORE, ModelConfig
from lmlab.model.context import build_context, encoder_context
from lmlab.model.embedding import TokenEmbedding
from lmlab.model.kv_cache import KVCache
from lmlab.model.layers import Block, DecoderBlock, init_weights
from lmlab.model.loss import output, resolve_chunking
from lmlab.model.norms import final_norm
from lmlab.model.positional import PositionalScheme, make_positional

# Cross-attention compares decoder with encoder positions: no rotation and no bias applies.
NO_POSITIONS = PositionalScheme()


def scored_prefix(labels_BS: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: the decoder positions up to each row's last label (``labels != IGNORE``).
    The causal decoder's later positions reach no scored output: they are the padding that
    the collators add behind the targets (``AttnContext.real``; T5 has no decoder attention
    mask, causality alone keeps real positions from attending to them)."""
    return (labels_BS != IGNORE).flip(1).cummax(1).values.flip(1)


class T5(nn.Module):
    """memory = enc_norm(encoder(embed(ids))); logits = head(dec_norm(decoder(embed(dec_ids),
    memory))), with a bidirectional encoder and a causal decoder; with labels, their loss
    (``lmlab.model.loss``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.vocab_size is not None, "set model.vocab_size (train() takes the tokenizer's)"
        self.cfg = cfg
        self.kernel = cfg.masked_attention  # SDPA or FlexAttention where a mask is needed
        self.embed = TokenEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.enc_positional = make_positional(cfg, bidirectional=True)
        drop = cfg.dropout  # T5's feed-forward drops its hidden activations too
        self.encoder = nn.ModuleList(Block(cfg, i, drop) for i in range(cfg.n_layers))
        self.enc_norm = final_norm(cfg)
        self.dec_positional = make_positional(cfg, bidirectional=False)
        self.decoder = nn.ModuleList(DecoderBlock(cfg, i, drop) for i in range(cfg.decoder_layers))
        self.dec_norm = final_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.loss_chunking = resolve_chunking(cfg, cfg.vocab_size, cfg.d_model)
        init_weights(self, cfg)
        self.head_scale = cfg.d_model**-0.5 if cfg.tie_embeddings else 1.0
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) memory; padding (attention_mask 0) is never attended to."""
        pos_T = torch.arange(input_ids.shape[1], device=input_ids.device)
        ctx = encoder_context(
            self.enc_positional, pos_T, self.cfg.attention_window, attention_mask, self.kernel
        )
        h_BTD = self.drop(self.enc_positional.embed(self.embed(input_ids), pos_T))
        for block in self.encoder:
            h_BTD = block(h_BTD, ctx)
        return self.drop(self.enc_norm(h_BTD))

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) encoder ids, (B, S) decoder ids -> (B, S, vocab) logits. Decoder position s
        sees decoder positions <= s and every real encoder position. With (B, S) ``labels``:
        their mean cross-entropy instead of the logits."""
        memory_BTD = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory_BTD, attention_mask, labels=labels)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory_BTD: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder stack over an encoded input; with a ``cache`` (of the decoder's
        self-attention) the ids continue the cached ones, for step-by-step generation. With
        ``labels``, the positions after each row's last label are its padding
        (``scored_prefix``)."""
        S, window = decoder_input_ids.shape[1], self.cfg.attention_window
        pos_T = torch.arange(memory_BTD.shape[1], device=memory_BTD.device)
        if cache is None:
            pos_S = torch.arange(S, device=memory_BTD.device)
            ctx = build_context(
                self.dec_positional,
                pos_S,
                pos_S,
                causal=True,
                window=window,
                kernel=self.kernel,
                real=None if labels is None else scored_prefix(labels),
            )
        else:
            pos_S, ctx = cache.context(self.dec_positional, S, window)
        cross_ctx = build_context(
            NO_POSITIONS,
            pos_S,
            pos_T,
            causal=False,
            key_padding_mask=attention_mask,
            kernel=self.kernel,
        )
        y_BSD = self.drop(self.dec_positional.embed(self.embed(decoder_input_ids), pos_S))
        for i, block in enumerate(self.decoder):
            y_BSD = block(y_BSD, ctx, memory_BTD, cross_ctx, cache.layer(i) if cache else None)
        if cache is not None:
            cache.advance()
        y_BSD = self.drop(self.dec_norm(y_BSD)) * self.head_scale
        return output(self.head, y_BSD, labels, self.loss_chunking)

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty KV cache for the decoder's self-attention over ``batch`` sequences of up
        to ``length`` tokens (default ``max_seq_len``)."""
        return KVCache.for_model(self.cfg, batch, len(self.decoder), self.head.weight, length)
