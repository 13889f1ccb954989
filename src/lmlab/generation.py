"""Sampling from a causal model: temperature, top-k and top-p (nucleus) filtering."""

from __future__ import annotations

import torch
from torch import nn


def filter_logits(
    logits_BV: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to -inf every logit outside the top k and outside the smallest set whose
    probability reaches top_p (Holtzman et al. 2020); the most likely token always stays."""
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth = torch.topk(logits_BV, top_k, dim=-1).values[..., -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits_BV, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits_BV = logits_BV.masked_fill(drop, float("-inf"))
    return logits_BV


@torch.no_grad()
def generate(
    model: nn.Module,
    ids_BT: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append ``max_new_tokens`` sampled tokens (greedy when temperature is 0); the context
    is cropped to the model's ``max_seq_len``."""
    max_len = model.cfg.max_seq_len
    for _ in range(max_new_tokens):
        logits_BV = model(ids_BT[:, -max_len:])[:, -1, :].float()
        if temperature == 0:
            next_B1 = logits_BV.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits_BV / temperature, top_k, top_p).softmax(-1)
            next_B1 = torch.multinomial(probs, 1, generator=generator)
        ids_BT = torch.cat((ids_BT, next_B1), dim=1)
    return ids_BT
