"""The attention context of one forward: causality, sliding window, key padding and the
positional scheme's bias, plus the scheme's rotation and which queries are real tokens (for
the Mixture-of-Experts feed-forward). Built once per forward and shared by every layer, in one
of two forms:

- ``AttnContext``: one SDPA call. With no bias, window or padding the mask is left out and
  ``is_causal`` lets SDPA pick its fastest (flash) kernel. Otherwise everything is merged into
  one dense ``attn_mask``, which rules the flash kernels out on GPU.
- ``FlexContext``: FlexAttention (``torch.nn.attention.flex_attention``). The mask becomes a
  block mask (key blocks a query block never sees are skipped) and the bias a ``score_mod``
  computed inside the fused kernel, so ALiBi, T5's relative bias and windows run at close to
  flash speed. A block mask without key padding is built once per shape and shared by every
  forward of that shape (``shared_block_mask``).

Both forms come from the same elementwise functions (``allowed`` here, the scheme's
``score_bias``), evaluated on index grids for the dense mask and inside the kernel for
FlexAttention, so they cannot disagree about what is masked or how much is added.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from lmlab.config import AttentionKernel
from lmlab.model.positional import PositionalScheme, Rotate, no_rotation

# (batch, query position, key position, key index) -> whether the query attends to the key
Allowed = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Where a context that needs a mask or a bias runs FlexAttention (else SDPA's dense mask).
# CUDA only for auto: on CPU FlexAttention runs an unfused reference (and a compiled one has
# no backward).
FLEX_ON: dict[AttentionKernel, Callable[[torch.device], bool]] = {
    AttentionKernel.auto: lambda device: device.type == "cuda",
    AttentionKernel.sdpa: lambda device: False,
    AttentionKernel.flex: lambda device: True,
}


# SDPA's kernels where shapes change from one call to the next: every one but cuDNN's.
VARYING_SHAPE_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


@contextlib.contextmanager
def varying_shapes() -> Iterator[None]:
    """SDPA without its cuDNN kernel, for inference whose shapes change call by call: a KV
    cache's decoding (one key longer each token) and evaluation's batches of new widths.
    cuDNN, which PyTorch prefers on Hopper GPUs, builds an execution plan for each new shape
    (tens to hundreds of milliseconds; PyTorch keeps them for shapes seen before, which
    training's fixed shape reuses every step), so decoding built one per token: gpt_small
    generated 15 tokens/s on an H200 (BENCHMARKS.md). Flash, memory-efficient and math
    kernels need no plan. Process-wide flags, restored on exit."""
    with sdpa_kernel(VARYING_SHAPE_BACKENDS):
        yield


@dataclass
class AttnContext:
    """What every layer's attention (and a MoE feed-forward, ``real``) needs for one forward:
    computed once, shared."""

    mask: torch.Tensor | None = None  # bool (True = attend) or additive float, (B|1, H|1, T, S)
    is_causal: bool = False
    rotate: Rotate = field(default=no_rotation)
    # (B, T) bool, True = the query is a real token, False = padding; None: no padding. For
    # the blocks' Mixture-of-Experts feed-forward (router statistics over real tokens only)
    real: torch.Tensor | None = None

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, gqa: bool
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + mask) v, (B, H, T, hd); ``gqa``: k, v have fewer heads.
        An additive mask (fp32, as built) takes the queries' dtype, as autocast gives it in
        training: CUDA's fused kernels take a bias only in the queries' dtype (bf16 weights,
        as in generation)."""
        mask = self.mask
        if mask is not None and mask.dtype not in (torch.bool, q.dtype):
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, mask, dropout_p, self.is_causal, enable_gqa=gqa
        )

    def dense(self) -> AttnContext:
        """The same attention as an SDPA mask (for explicit attention weights)."""
        return self


@dataclass
class FlexContext(AttnContext):
    """FlexAttention over a full forward, where positions are the indices 0..T-1 and 0..S-1.
    ``mask`` and ``is_causal`` stay unset: ``dense()`` builds the SDPA form when asked."""

    block_mask: BlockMask | None = None  # None: every key is attended to
    score_mod: Callable[..., torch.Tensor] | None = None
    as_dense: Callable[[], AttnContext] = field(default=AttnContext)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, gqa: bool
    ) -> torch.Tensor:
        # models with attention dropout never build one (ModelConfig.masked_attention).
        # Inside a compiled model flex_attention is fused with it; in eager mode on CUDA it
        # needs its own compile (eager runs the unfused reference, as it does on CPU).
        eager_cuda = q.is_cuda and not torch.compiler.is_compiling()
        kernel = compiled_flex_attention() if eager_cuda else flex_attention
        return kernel(
            q,
            k,
            v,
            score_mod=self.score_mod,
            block_mask=self.block_mask,
            enable_gqa=gqa,
            kernel_options=flex_kernel_options(q),
        )

    def dense(self) -> AttnContext:
        return self.as_dense()


# FlexAttention's tiles where Inductor's default for the GPU does not fit its shared memory.
# On an H200 (torch 2.11), ALiBi at head_dim 64 in bf16 failed to compile ("out of resource:
# triton_tem_fused_flex_attention_4 Required: 245760 Hardware limit: 232448"): torch's Hopper
# default there is 128 x 128 tiles in 3 stages (backward 64/128/128/64, 3 stages, 8 warps).
# These are smaller than torch 2.11's A100 tiles at head_dim 64 and 128 (forward 128 x 64 in
# 3 stages; backward these), which fit an A100's 164 KiB, well inside Hopper's 227 KiB.
SMALL_TILES = {
    "fwd_BLOCK_M": 64,
    "fwd_BLOCK_N": 64,
    "fwd_num_stages": 3,
    "fwd_num_warps": 4,
    "bwd_BLOCK_M1": 64,
    "bwd_BLOCK_N1": 64,
    "bwd_BLOCK_M2": 64,
    "bwd_BLOCK_N2": 64,
    "bwd_num_stages": 2,
    "bwd_num_warps": 4,
}


@torch.compiler.assume_constant_result
def _hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index) == (9, 0)


def flex_kernel_options(q: torch.Tensor) -> dict[str, int] | None:
    """``SMALL_TILES`` for 16-bit queries of head_dim 64 to 128 on a Hopper GPU (H100, H200),
    where torch's default tiles are largest; None elsewhere: torch's own choice (at 256 its
    Hopper tiles are already smaller). Fewer than 128 queries run torch's decoding kernel
    instead (torch 2.11 and 2.13), whose query tile follows the query count: ``fwd_BLOCK_M``
    would override it, so they get None."""
    if not q.is_cuda or q.dtype == torch.float32 or not 64 <= q.shape[-1] <= 128:
        return None
    if q.shape[-2] < 128:
        return None
    return dict(SMALL_TILES) if _hopper(q.device.index or 0) else None


@functools.cache
def compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """FlexAttention compiled on its own, for eager models on CUDA. torch.compile's default
    shapes: static for the first, dynamic from the first new length on, so an evaluation's
    varying lengths compile once more instead of once per length."""
    return torch.compile(flex_attention)


def allowed_fn(causal: bool, window: int | None, padding: torch.Tensor | None) -> Allowed | None:
    """Causality, window and key padding (B|1, S; True = real token) as one elementwise
    function; None when nothing is masked."""
    tests: list[Allowed] = []
    if causal:
        tests.append(lambda b, q, k, kv: q >= k)
    if window is not None:
        tests.append(lambda b, q, k, kv: (q - k).abs() < window)
    if padding is not None:
        tests.append(lambda b, q, k, kv: padding[b, kv].bool())
    if not tests:
        return None
    return lambda b, q, k, kv: functools.reduce(torch.logical_and, (t(b, q, k, kv) for t in tests))


def dense_context(
    positional: PositionalScheme,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    allowed: Allowed | None,
    batch: int,
    rotate: Rotate,
    real: torch.Tensor | None = None,
) -> AttnContext:
    """The SDPA mask: ``allowed`` and the scheme's bias evaluated on (B|1, H|1, T, S) grids."""
    device = q_pos.device
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.arange(positional.n_heads, device=device)[None, :, None, None]
    q, k = q_pos[None, None, :, None], k_pos[None, None, None, :]
    kv = torch.arange(len(k_pos), device=device)[None, None, None, :]
    mask = allowed(b, q, k, kv) if allowed is not None else None  # bool, (B|1, 1, T, S)
    if positional.has_bias:
        bias = positional.score_bias(h, q, k)  # (1, H, T, S)
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    return AttnContext(mask, False, rotate, real)


def block_mask_of(
    allowed: Allowed, batch: int | None, q_len: int, k_len: int, device: torch.device
) -> BlockMask:
    """FlexAttention's block mask of ``allowed`` over positions 0..q_len-1 and 0..k_len-1;
    ``batch`` None: the same for every row."""
    return create_block_mask(
        lambda b, h, q, kv: allowed(b, q, kv, kv), batch, None, q_len, k_len, device=device
    )


@functools.lru_cache(maxsize=16)
def shared_block_mask(
    causal: bool, window: int | None, q_len: int, k_len: int, device: torch.device
) -> BlockMask:
    """The block mask of causality and a window, which depends on nothing but these: built
    once per shape (training's every step, an evaluation's few lengths) instead of every
    forward. A mask with key padding differs by batch and is built each time."""
    allowed = allowed_fn(causal, window, None)
    assert allowed is not None, "nothing to mask"
    return block_mask_of(allowed, None, q_len, k_len, device)


def flex_context(
    positional: PositionalScheme,
    q_len: int,
    k_len: int,
    allowed: Allowed | None,
    batch: int | None,
    rotate: Rotate,
    as_dense: Callable[[], AttnContext],
    device: torch.device,
    shared: tuple[bool, int | None] | None = None,
    real: torch.Tensor | None = None,
) -> FlexContext:
    """The same attention as ``dense_context`` for FlexAttention, positions being indices.
    ``shared``: (causal, window) when ``allowed`` is nothing else, so its block mask is the
    cached one. Under torch.compile the mask is traced with the model instead."""
    block_mask = score_mod = None
    if allowed is not None and shared is not None and not torch.compiler.is_compiling():
        block_mask = shared_block_mask(*shared, q_len, k_len, device)
    elif allowed is not None:
        block_mask = block_mask_of(allowed, batch, q_len, k_len, device)
    if positional.has_bias:
        score_mod = lambda score, b, h, q, kv: score + positional.score_bias(h, q, kv)  # noqa: E731
    return FlexContext(None, False, rotate, real, block_mask, score_mod, as_dense)


def build_context(
    positional: PositionalScheme,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    causal: bool,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    new_k_pos: torch.Tensor | None = None,
    kernel: AttentionKernel = AttentionKernel.sdpa,
    real: torch.Tensor | None = None,
) -> AttnContext:
    """Merge causality, window, padding (B, S; True = real token) and positional bias.
    ``new_k_pos``: the positions of the keys this forward projects, when they are fewer than
    ``k_pos`` (a KV cache holds the rest, rotated already); RoPE rotates those only, and the
    context is SDPA's. Otherwise positions are 0..T-1 and 0..S-1, and ``kernel`` decides
    (``FLEX_ON``) whether attention that needs a mask or a bias runs FlexAttention. ``real``
    (B, T) marks the queries that are real tokens (``AttnContext.real``)."""
    rotate = positional.rotation(q_pos, k_pos if new_k_pos is None else new_k_pos)
    plain = window is None and not positional.has_bias and key_padding_mask is None
    if plain and (not causal or q_pos.shape[0] == k_pos.shape[0]):
        return AttnContext(None, causal, rotate, real)
    allowed = allowed_fn(causal, window, key_padding_mask)
    batch = 1 if key_padding_mask is None else key_padding_mask.shape[0]
    as_dense = functools.partial(
        dense_context, positional, q_pos, k_pos, allowed, batch, rotate, real
    )
    if new_k_pos is not None or not FLEX_ON[kernel](q_pos.device):
        return as_dense()
    flex_batch = None if key_padding_mask is None else batch  # None: the same for every row
    shared = (causal, window) if key_padding_mask is None else None
    return flex_context(
        positional,
        len(q_pos),
        len(k_pos),
        allowed,
        flex_batch,
        rotate,
        as_dense,
        q_pos.device,
        shared,
        real,
    )


def encoder_context(
    positional: PositionalScheme,
    pos_T: torch.Tensor,
    window: int | None,
    key_padding_mask: torch.Tensor | None,
    kernel: AttentionKernel = AttentionKernel.sdpa,
) -> AttnContext:
    """Self-attention of an encoder (BERT, T5's encoder): bidirectional, over ``pos_T``. Its
    queries are its keys: the padding mask marks the real tokens (``AttnContext.real``)."""
    return build_context(
        positional,
        pos_T,
        pos_T,
        causal=False,
        window=window,
        key_padding_mask=key_padding_mask,
        kernel=kernel,
        real=None if key_padding_mask is None else key_padding_mask.bool(),
    )
