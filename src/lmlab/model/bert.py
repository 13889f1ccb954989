"""BERT: encoder-only, masked-LM prediction (Devlin et al. 2019). Wiring of the shared blocks.

The parts BERT adds to the block library: segment (token-type) embeddings, a LayerNorm on the
embeddings when the placement leaves the residual stream normalised (post-LN, as in BERT), and
the MLM head's transform. Under ``+experiment=bert`` the parameter count equals Hugging Face's
``BertForMaskedLM`` (no pooler): 109,514,298 for bert_base with vocab 30522.

Fine-tuning swaps the head: ``ClassificationHead`` (pooler, dropout, linear, as Hugging Face's
``BertForSequenceClassification``) takes the MLM head's place under the same name, ``head``,
so the encoder's checkpoint keys are the same in both models and only ``head.*`` differs.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.model.context import encoder_context
from lmlab.model.embedding import TokenEmbedding
from lmlab.model.feedforward import ACTIVATIONS
from lmlab.model.layers import Block, init_weights
from lmlab.model.loss import output, resolve_chunking
from lmlab.model.norms import PLACEMENTS, final_norm, make_norm
from lmlab.model.positional import make_positional


class NoSegments(nn.Module):
    """``type_vocab_size=0``: no segment embeddings, nothing added."""

    def forward(self, token_type_ids: torch.Tensor) -> float:
        return 0.0


class MLMHead(nn.Module):
    """BERT's ``cls.predictions``: logits = out(norm(act(dense(x)))), where ``out`` has its own
    bias and, when tied, the token embedding as its weight."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]()
        self.norm = make_norm(cfg)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias)
        self.loss_chunking = resolve_chunking(cfg, cfg.vocab_size, cfg.d_model)

    def forward(self, x_BTD: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h_BTD = self.norm(self.act(self.dense(x_BTD)))
        return output(self.out, h_BTD, labels, self.loss_chunking)

    def tie(self, embed: nn.Embedding) -> None:
        """The output layer shares the token embedding's weight (``tie_embeddings``)."""
        self.out.weight = embed.weight


class ClassificationHead(nn.Module):
    """One label per sequence, from its first position ([CLS]): logits =
    out(dropout(tanh(pooler(x[:, 0])))), Hugging Face's pooler and classifier. The logits are
    (B, 1, labels), a sequence of one prediction, so the task's one cross-entropy over (B, T)
    labels serves classification as well."""

    def __init__(self, cfg: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.d_model, num_labels, bias=cfg.bias)
        self.loss_chunking = resolve_chunking(cfg, num_labels, cfg.d_model)

    def forward(self, x_BTD: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        pooled_B1D = torch.tanh(self.pooler(x_BTD[:, :1]))
        return output(self.out, self.drop(pooled_B1D), labels, self.loss_chunking)  # (B, 1, L)

    def tie(self, embed: nn.Embedding) -> None:
        """Nothing to tie: the head predicts labels, not tokens."""


class BERT(nn.Module):
    """logits = head(norm_f(blocks(emb_norm(embed(ids) + segment(types) [+ positions])))),
    with bidirectional attention: every position sees every (non-padding) position. ``head``
    is the MLM head unless another is given (``ClassificationHead``)."""

    def __init__(self, cfg: ModelConfig, head: nn.Module | None = None) -> None:
        super().__init__()
        assert cfg.vocab_size is not None, "set model.vocab_size (train() takes the tokenizer's)"
        self.cfg = cfg
        self.kernel = cfg.masked_attention  # SDPA or FlexAttention where a mask is needed
        self.embed = TokenEmbedding(cfg)
        self.segment = (
            nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else NoSegments()
        )
        self.positional = make_positional(cfg, bidirectional=True)
        # Post-LN keeps the residual stream normalised, so the embeddings enter normalised too
        # (BERT's embedding LayerNorm); pre-LN and sandwich normalise at the end instead.
        needs_final_norm = PLACEMENTS[cfg.norm_placement].needs_final_norm
        self.emb_norm = nn.Identity() if needs_final_norm else make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = final_norm(cfg)
        self.head = head if head is not None else MLMHead(cfg)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.head.tie(self.embed)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits (the MLM head). ``attention_mask`` (B, T):
        1 = real token, 0 = padding (never attended to); ``token_type_ids`` (B, T) default to
        segment 0. With ``labels`` (the head's: (B, T) tokens, (B, 1) classes): their mean
        cross-entropy instead of the logits."""
        return self.head(self.encode(input_ids, attention_mask, token_type_ids), labels)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) hidden states, the encoder's output before the head."""
        T = input_ids.shape[1]
        pos_T = torch.arange(T, device=input_ids.device)
        ctx = encoder_context(
            self.positional, pos_T, self.cfg.attention_window, attention_mask, self.kernel
        )
        types_BT = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x_BTD = self.embed(input_ids) + self.segment(types_BT)
        x_BTD = self.drop(self.emb_norm(self.positional.embed(x_BTD, pos_T)))
        for block in self.blocks:
            x_BTD = block(x_BTD, ctx)
        return self.norm_f(x_BTD)
