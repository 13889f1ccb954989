"""Positional schemes: one object owned by the model, with no-op hooks each scheme overrides.

- ``embed(x, pos)``: absolute schemes add a vector per position (learned, sinusoidal).
- ``rotation(q_pos, k_pos)``: RoPE returns a function that rotates q and k.
- ``score_bias(h, q_pos, k_pos)``: ALiBi and T5's relative scheme (``has_bias``) add a bias to
  head h's score of a query against a key, elementwise over broadcastable tensors, so that one
  definition fills SDPA's dense (heads, T, S) mask and runs inside FlexAttention's kernel.
Positions are explicit tensors so a KV cache can pass offset query positions. Each stack owns one
scheme (GPT and BERT one, T5 one per stack) and tells it whether the stack is ``bidirectional``
(an encoder) or causal (a decoder); only the relative scheme's buckets depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from lmlab.config import ModelConfig, Positional, RopeScaling

Rotate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def no_rotation(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k


class PositionalScheme(nn.Module):
    """No position information at all (NoPE): causal masking alone orders the tokens."""

    has_bias = False  # whether score_bias applies

    def __init__(self, cfg: ModelConfig | None = None, bidirectional: bool = False) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.n_heads = cfg.n_heads if cfg is not None else 1

    def embed(self, x_BTD: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
        return x_BTD

    def rotation(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Rotate:
        return no_rotation

    def score_bias(self, h: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """The bias added to head ``h``'s score of a query at ``q_pos`` against a key at
        ``k_pos`` (integer tensors that broadcast together); only when ``has_bias``."""
        raise NotImplementedError(f"{type(self).__name__} adds no attention bias")


class LearnedPositional(PositionalScheme):
    """A trained table of max_seq_len vectors (GPT-2, BERT)."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool = False) -> None:
        super().__init__(cfg, bidirectional)
        self.table = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.table.added_to_tokens = True  # init=t5: the token embedding's scale

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

    def __init__(self, cfg: ModelConfig, bidirectional: bool = False) -> None:
        super().__init__(cfg, bidirectional)
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


def llama3_frequencies(inv_freq: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Llama 3.1's RoPE scaling (Meta's ``apply_scaling``; transformers' ``rope_type=llama3``):
    frequencies whose wavelength exceeds L / low_freq_factor are divided by ``rope_factor``,
    those under L / high_freq_factor kept, and those between interpolated linearly in L /
    wavelength, where L is the pre-training context ``rope_original_max_seq_len``."""
    L, low = cfg.rope_original_max_seq_len, cfg.rope_low_freq_factor
    high = cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (L / wavelen - low) / (high - low)
    between = (1 - smooth) * inv_freq / cfg.rope_factor + smooth * inv_freq
    kept = torch.where(wavelen < L / high, inv_freq, between)
    return torch.where(wavelen > L / low, inv_freq / cfg.rope_factor, kept)


# RoPE's inverse frequencies, scaled for longer contexts (model.rope_scaling).
ROPE_SCALINGS: dict[RopeScaling, Callable[[torch.Tensor, ModelConfig], torch.Tensor]] = {
    RopeScaling.none: lambda inv_freq, cfg: inv_freq,
    RopeScaling.linear: lambda inv_freq, cfg: inv_freq / cfg.rope_factor,
    RopeScaling.llama3: llama3_frequencies,
}


class RotaryPositional(PositionalScheme):
    """RoPE (Su et al. 2021): rotate each (x_i, x_{i+d/2}) pair of q and k by pos * theta_i,
    theta_i = base^(-2i/d), so q_m . k_n depends on m - n only. Half-split pairing as in
    GPT-NeoX and Llama's HF port."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool = False) -> None:
        super().__init__(cfg, bidirectional)
        hd = cfg.head_dim
        inv_freq = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        inv_freq = ROPE_SCALINGS[cfg.rope_scaling](inv_freq, cfg)
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

    has_bias = True

    def __init__(self, cfg: ModelConfig, bidirectional: bool = False) -> None:
        super().__init__(cfg, bidirectional)
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), False)

    def score_bias(self, h: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return -self.slopes[h] * (q_pos - k_pos).abs()


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each offset ``key - query`` (Raffel et al. 2020, section 2.1; Mesh
    TensorFlow's ``_relative_position_bucket``). Half the buckets are exact offsets 0..n/2-1,
    the other half cover n/2..max_distance logarithmically, and farther offsets share the last
    bucket. Bidirectional: the buckets are split again between keys before and after the query.
    Causal: keys after the query all fall in bucket 0 (they are masked anyway)."""
    # no in-place update: the function also runs inside FlexAttention's score_mod (vmap)
    if bidirectional:
        num_buckets //= 2
        side = (relative_position > 0).long() * num_buckets  # keys after the query
        distance = relative_position.abs()
    else:
        side = torch.zeros_like(relative_position)
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(
        max_distance / max_exact
    )
    far = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return side + torch.where(distance < max_exact, distance, far)


class RelativePositional(PositionalScheme):
    """T5's relative position bias: a learned scalar per (bucket, head) added to the attention
    scores. One table per stack, shared by all its layers (T5 keeps it in the first layer)."""

    has_bias = True

    def __init__(self, cfg: ModelConfig, bidirectional: bool = False) -> None:
        super().__init__(cfg, bidirectional)
        self.num_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.table = nn.Embedding(cfg.relative_buckets, cfg.n_heads)
        self.table.attention_bias = True  # init=t5: N(0, 1/d_model), not an embedding's N(0, 1)

    def score_bias(self, h: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        bucket = relative_position_bucket(
            k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.table.weight[bucket, h]  # a learned scalar per (bucket, head)


POSITIONALS: dict[Positional, Callable[..., PositionalScheme]] = {
    Positional.learned: LearnedPositional,
    Positional.sinusoidal: SinusoidalPositional,
    Positional.rope: RotaryPositional,
    Positional.alibi: ALiBiPositional,
    Positional.relative: RelativePositional,
    Positional.none: PositionalScheme,
}


def make_positional(cfg: ModelConfig, bidirectional: bool = False) -> PositionalScheme:
    """The scheme for one stack: ``bidirectional`` for an encoder, causal for a decoder."""
    return POSITIONALS[cfg.positional](cfg, bidirectional)
