"""The step estimate's attention scores (``lmlab.train.attention_scores``) and T5's two
stacks (``lmlab.train.activations``): terms asserted from the arithmetic, not from memory."""

from __future__ import annotations

import dataclasses

import pytest

from lmlab.config import Family, ModelConfig, Positional
from lmlab.data.collators import decoder_tokens
from lmlab.train.activations import activation_bytes
from lmlab.train.attention_scores import (
    BACKWARD_SCORES,
    KEPT_SCORES,
    probe_len,
    score_bytes,
    unfused_calls,
)

B, T, H, LAYERS = 2, 80, 4, 3  # T over PROBE_LEN: the twin runs 48 + 80 % 16 tokens


def gpt(**kw: object) -> ModelConfig:
    return ModelConfig(d_model=32, n_heads=H, n_layers=LAYERS, vocab_size=64, max_seq_len=128, **kw)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("positional", [p for p in Positional])
def test_scores_counted_exactly_where_the_cpu_runs_the_math_kernel(
    positional: Positional, dropout: float
) -> None:
    """On a CPU SDPA takes its math kernel with attention dropout or with a bias that needs a
    gradient (T5's relative table); ALiBi's fixed bias and causality take the fused one."""
    cfg = gpt(positional=positional, dropout=dropout)
    unfused = dropout > 0 or positional == Positional.relative
    scores = H * T * T
    kept = LAYERS * KEPT_SCORES[dropout > 0] * scores if unfused else 0
    expected = int(B * 4 * (kept + BACKWARD_SCORES * scores)) if unfused else 0
    assert score_bytes(cfg, B, T, "32-true") == expected
    base = activation_bytes(dataclasses.replace(cfg, dropout=0.0, positional="rope"), B, T)
    assert activation_bytes(cfg, B, T) - base == expected


def test_scores_are_fp32_under_bf16_and_one_block_with_checkpointing() -> None:
    """The math kernel upcasts 16-bit inputs; a checkpointed block keeps its scores only
    while its backward recomputes it."""
    cfg = gpt(dropout=0.1)
    scores = H * T * T
    assert score_bytes(cfg, B, T, "bf16-mixed") == score_bytes(cfg, B, T, "32-true")
    ckpt = dataclasses.replace(cfg, activation_checkpointing=True)
    assert score_bytes(ckpt, B, T, "32-true") == int(
        B * 4 * (KEPT_SCORES[True] + BACKWARD_SCORES) * scores
    )


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_t5_encoder_decoder_and_cross_attention_counted_apart(dropout: float) -> None:
    """T5's encoder attends over T x T, its decoder over S x S with S span corruption's
    targets, and its cross-attention over S x T; relative bias on the self-attentions only."""
    cfg = ModelConfig(
        family=Family.t5, positional="relative", d_model=32, n_heads=H, n_layers=2,
        n_decoder_layers=3, vocab_size=64, max_seq_len=128, dropout=dropout,
    )  # fmt: skip
    S = decoder_tokens(Family.t5, T)
    assert S is not None and S < T and probe_len(T) != T
    calls = sorted((c.block, c.q_len, c.k_len) for c in unfused_calls(cfg, T, "32-true", "cpu"))
    encoder = [(i, T, T) for i in range(2)]
    decoder = [(2 + i, S, S) for i in range(3)]
    cross = [(2 + i, S, T) for i in range(3)] if dropout else []
    assert calls == sorted(encoder + decoder + cross)


def test_t5_decoder_blocks_and_targets_count() -> None:
    """Each decoder layer adds its blocks' tensors over the targets and the keys and values
    it projects from the encoder's output; the loss covers the targets, not the inputs."""
    cfg = ModelConfig(
        family=Family.t5, positional="rope", d_model=32, n_heads=H, n_layers=2,
        vocab_size=64, max_seq_len=128,
    )  # fmt: skip
    one, two = (
        activation_bytes(dataclasses.replace(cfg, n_decoder_layers=n), B, T) for n in (1, 2)
    )
    assert two > one
    wider = activation_bytes(dataclasses.replace(cfg, vocab_size=64 + 10), B, T)
    S = decoder_tokens(Family.t5, T)
    assert wider - activation_bytes(cfg, B, T) == B * 4 * 3 * 10 * S
