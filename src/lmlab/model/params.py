"""Parameter counts by kind and the FLOPs per token that MFU and budgets use.

A Mixture-of-Experts model has two counts: ``total`` (every expert) and ``active`` (what one
token runs through: the router and ``top_k`` of the E experts). FLOPs per token, and so MFU,
follow the active weights; for a dense model active and total are equal."""

from __future__ import annotations

from torch import nn

from lmlab.model.attention import Attention
from lmlab.model.feedforward import MLP, GatedMLP
from lmlab.model.layers import Block
from lmlab.model.moe import MoEFeedForward
from lmlab.model.positional import PositionalScheme

KINDS = {
    nn.Embedding: "embeddings",
    PositionalScheme: "embeddings",
    Attention: "attention",
    MLP: "feed_forward",
    GatedMLP: "feed_forward",
    MoEFeedForward: "feed_forward",  # its router and experts
    nn.LayerNorm: "norms",
    nn.RMSNorm: "norms",
}


def _kind(module: nn.Module) -> str | None:
    return next((k for t, k in KINDS.items() if isinstance(module, t)), None)


def _count(
    model: nn.Module, seen: set[int], prefix: str = "", head: bool = False
) -> dict[str, int]:
    """Parameters of ``model`` by kind, skipping (and then adding to) ``seen``."""
    counts = {"embeddings": 0, "attention": 0, "feed_forward": 0, "norms": 0, "head": 0}
    for name, module in model.named_modules(prefix=prefix):
        kind = _kind(module) or ("head" if head or name.endswith("head") else None)
        if kind is None:
            continue
        for p in module.parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                counts[kind] += p.numel()
    return counts


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by kind (each tensor counted once, so a tied head counts as
    embeddings), with ``total``, ``non_embedding`` (Kaplan et al. 2020: N without token and
    position embeddings) and ``active`` (``total`` less the experts a token skips)."""
    seen: set[int] = set()
    counts = _count(model, seen)
    counts["other"] = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    counts["total"] = sum(v for k, v in counts.items())
    counts["non_embedding"] = counts["total"] - counts["embeddings"]
    skipped = sum(m.inactive_params for m in model.modules() if isinstance(m, MoEFeedForward))
    counts["active"] = counts["total"] - skipped
    return counts


def param_rows(model: nn.Module) -> list[tuple[str, dict[str, int]]]:
    """The breakdown per top-level part, one row per layer of each stack (``blocks.0``,
    ``encoder.3``, ...), in model order; tied tensors count once, where they first appear."""
    seen: set[int] = set()
    rows = []
    for name, child in model.named_children():
        parts = (
            [(f"{name}.{i}", c) for i, c in enumerate(child)]
            if isinstance(child, nn.ModuleList)
            else [(name, child)]
        )
        for part_name, part in parts:
            counts = _count(part, seen, part_name, head=name == "head")
            if sum(counts.values()):
                rows.append((part_name, counts))
    return rows


def _matmul_weights(module: nn.Module) -> int:
    """Weights one token multiplies: every ``nn.Linear``'s, and of a MoE its router's and
    ``top_k`` experts' (the stacked expert weights are not ``nn.Linear``)."""
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
    experts = [m for m in module.modules() if isinstance(m, MoEFeedForward)]
    return linear + sum(m.active_expert_weights for m in experts)


def flops_per_token(model: nn.Module, seq_len: int, decoder_len: int | None = None) -> float:
    """Training FLOPs per input token, 6 * (matmul weights) + 12 * A * T * d for the attention
    scores of A attention layers, d = n_heads x the head dimension (d_model unless ``d_head`` is
    set) (Kaplan et al. 2020; PaLM appendix B). Matmul weights are every ``nn.Linear``'s, the
    output head's included even when tied to the embedding, and a MoE's ``top_k`` experts
    (active, not total: a capacity-limited training step computes ``capacity_factor`` times
    that in its expert buffers, E / k times at most, padding included); norms, biases and
    embedding lookups are left out, as torch's FlopCounterMode leaves them out (tested equal
    to its count). Causal and sliding-window attention count every one of the T x T scores,
    as PaLM's formula does and as SDPA with a dense mask computes them; the flash kernels and
    FlexAttention's block mask skip the masked blocks (about half under a causal mask, more
    under a short window), so MFU there credits work that was not done.

    An encoder-decoder counts each part on the tokens it runs on: the encoder and the
    cross-attention's key/value projections on the ``seq_len`` encoder tokens; the decoder's
    other matmuls and the head on ``decoder_len`` decoder tokens (required; for span
    corruption ``lmlab.data.collators.decoder_tokens`` gives it); scores of T x T (encoder), S x S
    (decoder) and S x T (cross) per layer. The total is divided by the encoder tokens, the
    tokens that tokens/s counts."""
    cfg = model.cfg
    if hasattr(model, "decoder"):
        if decoder_len is None:
            raise ValueError("an encoder-decoder's FLOPs need decoder_len (its target tokens)")
        S = decoder_len
        T, d = seq_len, cfg.n_heads * cfg.head_dim
        cross_kv = sum(_matmul_weights(b.cross.wkv) for b in model.decoder)
        on_encoder = sum(_matmul_weights(b) for b in model.encoder) + cross_kv
        on_decoder = sum(_matmul_weights(b) for b in model.decoder) - cross_kv
        on_decoder += _matmul_weights(model.get_submodule("head"))
        scores = len(model.encoder) * T * T + len(model.decoder) * (S * S + S * T)
        return (6.0 * (on_encoder * T + on_decoder * S) + 12.0 * d * scores) / T
    n_attention = sum(isinstance(m, Attention) for m in model.modules())
    return 6.0 * _matmul_weights(model) + 12.0 * n_attention * seq_len * cfg.n_heads * cfg.head_dim


def recompute_flops_per_token(
    model: nn.Module, seq_len: int, decoder_len: int | None = None
) -> float:
    """The FLOPs per input token that activation checkpointing adds to a training step: the
    backward runs every block's forward again, a third of the blocks' share of
    ``flops_per_token`` (2 of its 6 FLOPs per weight and token, 4 of the 12 per score). The
    embeddings and the output layer, outside the blocks, are not recomputed; the output layer
    runs on the decoder's tokens where there is a decoder. An upper bound by at most each
    block's last matmul: torch's non-reentrant checkpoint stops recomputing once the tensors
    the backward saved are back, so a pre-norm block's feed-forward output projection, whose
    output only the residual add reads, is not run again (tested against torch's count of a
    checkpointed step less an uncheckpointed one)."""
    blocks = sum(_matmul_weights(m) for m in model.modules() if isinstance(m, Block))
    outside = _matmul_weights(model) - blocks
    outside_tokens = decoder_len if hasattr(model, "decoder") else seq_len
    total = flops_per_token(model, seq_len, decoder_len)
    return (total - 6.0 * outside * outside_tokens / seq_len) / 3
