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
    embeddings), with ``total`` and ``non_embedding`` (Kaplan et al. 2020: N without token and
    position embeddings)."""
    seen: set[int] = set()
    counts = _count(model, seen)
    counts["other"] = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    counts["total"] = sum(v for k, v in counts.items())
    counts["non_embedding"] = counts["total"] - counts["embeddings"]
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


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per input token, 6 * (matmul params) + 12 * A * T * d for the attention
    scores of A attention layers (Kaplan et al. 2020; PaLM appendix B). Matmul params are the
    non-embedding ones, with the output head's weight matrices counted as matmuls even when
    tied to the embedding. For T5 every decoder parameter and cross-attention layer is counted
    per encoder token too: an upper bound, since span-corruption targets are shorter."""
    cfg = model.cfg
    counts = param_breakdown(model)
    head = model.get_submodule("head")
    head_matmuls = sum(m.weight.numel() for m in head.modules() if isinstance(m, nn.Linear))
    matmul_params = counts["non_embedding"] - counts["head"] + head_matmuls
    n_attention = sum(isinstance(m, Attention) for m in model.modules())
    return 6.0 * matmul_params + 12.0 * n_attention * seq_len * cfg.d_model
