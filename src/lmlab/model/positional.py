"""Positional schemes: one object owned by the model, with no-op hooks each scheme overrides.

- ``embed(x, pos)``: absolute schemes add a vector per position (learned, sinusoidal).
- ``rotation(q_pos, k_pos)``: RoPE returns a function that rotates q and k.
- ``attn_bias(q_pos, k_pos)``: ALiBi returns an additive (heads, T, S) bias.
Positions are explicit tensors so a KV cache can pass offset query positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from lmlab.config import ModelConfig, Positional

Rotate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def no_rotation(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k


class PositionalScheme(nn.Module):
    """No position information at all (NoPE): causal masking alone orders the tokens."""

    def embed(self, x_BTD: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
        return x_BTD

    def rotation(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Rotate:
        return no_rotation

    def attn_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None


class LearnedPositional(PositionalScheme):
    """A trained table of max_seq_len vectors (GPT-2, BERT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(cfg.max_seq_len, cfg.d_model)

    def embed(self, x_BTD: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
        return x_BTD + self.table(pos_T)


def sinusoid_table(n_pos: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE(p, 2i) = sin(p / base^(2i/d)), PE(p, 2i+1) = cos(...) (Vaswani et al. 2017, 3.5)."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    table = torch.zeros(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : dim // 2]
    return table.float()


class SinusoidalPositional(PositionalScheme):
    """Fixed sinusoids; a non-persistent buffer, so nothing goes in the checkpoint."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("table", sinusoid_table(cfg.max_seq_len, cfg.d_model), False)

    def embed(self, x_BTD: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
        return x_BTD + self.table[pos_T].to(x_BTD.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    cos_q: torch.Tensor,
    sin_q: torch.Tensor,
    cos_k: torch.Tensor,
    sin_k: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    q_rot = q * cos_q.to(q.dtype) + rotate_half(q) * sin_q.to(q.dtype)
    k_rot = k * cos_k.to(k.dtype) + rotate_half(k) * sin_k.to(k.dtype)
    return q_rot, k_rot


class RotaryPositional(PositionalScheme):
    """RoPE (Su et al. 2021): rotate each (x_i, x_{i+d/2}) pair of q and k by pos * theta_i,
    theta_i = base^(-2i/d), so q_m . k_n depends on m - n only. Half-split pairing as in
    GPT-NeoX and Llama's HF port."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hd = cfg.head_dim
        inv_freq = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        angles = torch.arange(cfg.max_seq_len, dtype=torch.float64)[:, None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)  # (max_seq_len, hd)
        self.register_buffer("cos", angles.cos().float(), False)
        self.register_buffer("sin", angles.sin().float(), False)

    def rotation(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Rotate:
        return partial(
            apply_rope,
            cos_q=self.cos[q_pos],
            sin_q=self.sin[q_pos],
            cos_k=self.cos[k_pos],
            sin_k=self.sin[k_pos],
        )


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric slopes 2^(-8/n), 2^(-16/n), ... (Press et al. 2022); for a head count that is
    not a power of two, the paper's code interleaves the slopes of the next power of two."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = alibi_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.cat((torch.tensor(power_of_2(closest)), extra))


class ALiBiPositional(PositionalScheme):
    """Bias score(i, j) by -slope_h * |i - j|: no embeddings, extrapolates to longer inputs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), False)

    def attn_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        distance_TS = (q_pos[:, None] - k_pos[None, :]).abs().float()
        return -self.slopes[:, None, None] * distance_TS  # (H, T, S)


POSITIONALS: dict[Positional, Callable[[ModelConfig], PositionalScheme]] = {
    Positional.learned: LearnedPositional,
    Positional.sinusoidal: SinusoidalPositional,
    Positional.rope: RotaryPositional,
    Positional.alibi: ALiBiPositional,
    Positional.none: lambda cfg: PositionalScheme(),
}


def make_positional(cfg: ModelConfig) -> PositionalScheme:
    return POSITIONALS[cfg.positional](cfg)
