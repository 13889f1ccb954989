"""The attention context of one forward: causality, sliding window, key padding and the
positional scheme's bias merged into one SDPA ``attn_mask``, plus the scheme's rotation.

Built once per forward and shared by every layer. With no bias, window or padding the mask is
left out and ``is_causal`` lets SDPA pick its fastest (flash) kernel; an additive bias (ALiBi,
T5's relative buckets) or a window needs a mask, which rules the flash kernel out on GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmlab.model.positional import PositionalScheme, Rotate, no_rotation


@dataclass
class AttnContext:
    """What every layer's attention needs for one forward: computed once, shared."""

    mask: torch.Tensor | None = None  # bool (True = attend) or additive float, (B|1, H|1, T, S)
    is_causal: bool = False
    rotate: Rotate = field(default=no_rotation)


def build_context(
    positional: PositionalScheme,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    causal: bool,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    new_k_pos: torch.Tensor | None = None,
) -> AttnContext:
    """Merge causality, window, padding (B, S; True = real token) and positional bias.
    ``new_k_pos``: the positions of the keys this forward projects, when they are fewer than
    ``k_pos`` (a KV cache holds the rest, rotated already); RoPE rotates those only."""
    rotate = positional.rotation(q_pos, k_pos if new_k_pos is None else new_k_pos)
    bias_HTS = positional.attn_bias(q_pos, k_pos)
    plain = window is None and bias_HTS is None and key_padding_mask is None
    if plain and (not causal or q_pos.shape[0] == k_pos.shape[0]):
        return AttnContext(None, causal, rotate)
    offset_TS = q_pos[:, None] - k_pos[None, :]
    allowed_TS = torch.ones_like(offset_TS, dtype=torch.bool)
    if causal:
        allowed_TS &= offset_TS >= 0
    if window is not None:
        allowed_TS &= offset_TS.abs() < window
    allowed = allowed_TS[None, None]  # (1, 1, T, S)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :].bool()  # (B, 1, T, S)
    if bias_HTS is None:
        return AttnContext(allowed, False, rotate)
    mask = bias_HTS[None].masked_fill(~allowed, float("-inf"))  # (B|1, H, T, S)
    return AttnContext(mask, False, rotate)


def encoder_context(
    positional: PositionalScheme,
    pos_T: torch.Tensor,
    window: int | None,
    key_padding_mask: torch.Tensor | None,
) -> AttnContext:
    """Self-attention of an encoder (BERT, T5's encoder): bidirectional, over ``pos_T``."""
    return build_context(
        positional, pos_T, pos_T, causal=False, window=window, key_padding_mask=key_padding_mask
    )
