"""Parameter counts by kind and the FLOPs per token that MFU and budgets use."""

from __future__ import annotations

from torch import nn

from lmlab.model.attention import Attention
from lmlab.model.feedforward import MLP, GatedMLP
from lmlab.model.positional import PositionalScheme

KINDS = {
    nn.Embedding: "embeddings",
    PositionalScheme: "embeddings",
    Attention: "attention",
    MLP: "feed_forward",
    GatedMLP: "feed_forward",
    nn.LayerNorm: "norms",
    nn.RMSNorm: "norms",
}


def _kind(module: nn.Module) -> str | None:
    return next((k for t, k in KINDS.items() if isinstance(module, t)), None)


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by kind (each tensor counted once, so a tied head counts as
    embeddings), with ``total`` and ``non_embedding`` (Kaplan et al. 2020: N without token and
    position embeddings)."""
    counts = {"embeddings": 0, "attention": 0, "feed_forward": 0, "norms": 0, "head": 0}
    seen: set[int] = set()
    for name, module in model.named_modules():
        kind = _kind(module) or ("head" if name.endswith("head") else None)
        if kind is None:
            continue
        for p in module.parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                counts[kind] += p.numel()
    counts["other"] = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    counts["total"] = sum(v for k, v in counts.items())
    counts["non_embedding"] = counts["total"] - counts["embeddings"]
    return counts


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, 6 * (matmul params) + 12 * L * T * d for attention scores
    (Kaplan et al. 2020; PaLM appendix B). Matmul params are the non-embedding ones plus the
    output head, which is a matmul even when its weight is tied to the embedding."""
    cfg = model.cfg
    counts = param_breakdown(model)
    head = cfg.vocab_size * cfg.d_model
    matmul_params = counts["non_embedding"] - counts["head"] + head
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * seq_len * cfg.d_model
