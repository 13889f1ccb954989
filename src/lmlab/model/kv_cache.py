"""A key/value cache for incremental decoding: each new token attends to the keys and values of
the tokens before it instead of recomputing them.

Keys are cached after RoPE, at their own positions, so a cached key never changes. Every scheme
then works the same way: a forward with a cache builds its attention context from the query
positions (``length .. length + T - 1``) and the positions of the keys it attends to, so
absolute embeddings, ALiBi's and T5's biases, causality and a sliding window all follow from
positions, as without a cache. The cache holds ``n_kv_heads`` heads (GQA/MQA share them).

Memory is preallocated once: ``(n_layers, B, n_kv_heads, size, head_dim)`` for keys and values,
where ``size`` is the tokens the decode holds (its prompt and new tokens, at most
``max_seq_len``: a converted Llama 3.1's 131072 positions would be 17 GB in bf16 for one
prompt), or the attention window for a sliding-window model, whose cache is then a ring buffer
that keeps only the last ``window`` keys (slot = position % window).
"""

from __future__ import annotations

import dataclasses

import torch

from lmlab.config import ModelConfig
from lmlab.model.context import AttnContext, build_context
from lmlab.model.positional import PositionalScheme


class KVCache:
    """Keys and values of the tokens seen so far, for every layer of one stack."""

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        window: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.max_len = max_len
        self.ring = window is not None and window < max_len
        self.size = window if self.ring else max_len
        shape = (n_layers, batch, n_kv_heads, self.size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # position held by each slot; -1 = empty (only a ring reads it: a flat cache holds
        # positions 0 .. length - 1 in order)
        self.slot_pos = torch.full((self.size,), -1, dtype=torch.long, device=device)
        self.length = 0  # tokens seen
        self._new_pos: torch.Tensor | None = None

    @classmethod
    def for_model(
        cls,
        cfg: ModelConfig,
        batch: int,
        n_layers: int,
        like: torch.Tensor,
        length: int | None = None,
    ) -> KVCache:
        """A cache for ``n_layers`` layers of a model with ``cfg``, in ``like``'s dtype and
        device (pass a parameter: a bf16 model gets a bf16 cache), of ``length`` positions
        (at most, and by default, ``max_seq_len``)."""
        return cls(
            n_layers,
            batch,
            cfg.kv_heads,
            cfg.head_dim,
            cfg.max_seq_len if length is None else min(length, cfg.max_seq_len),
            cfg.attention_window,
            like.dtype,
            like.device,
        )

    def room(self, n_tokens: int) -> bool:
        """Whether ``n_tokens`` more tokens fit within the cache's ``max_len`` positions."""
        return self.length + n_tokens <= self.max_len

    def context(
        self, positional: PositionalScheme, n_tokens: int, window: int | None
    ) -> tuple[torch.Tensor, AttnContext]:
        """Positions of the next ``n_tokens`` tokens and the causal attention context they need
        (a cache only serves a decoder): the
        mask and bias over every key they attend to (cached ones, then their own), and RoPE at
        their own positions (cached keys are rotated already). Call once per forward, then
        ``update`` in every layer, then ``advance``."""
        if not self.room(n_tokens):
            raise ValueError(
                f"KV cache full: {self.length} + {n_tokens} tokens > max_seq_len {self.max_len}"
            )
        device = self.slot_pos.device
        pos_T = torch.arange(self.length, self.length + n_tokens, device=device)
        self._new_pos = pos_T
        if self.ring:
            k_pos_S = torch.cat((self.slot_pos, pos_T))
            valid_1S = (k_pos_S >= 0)[None]
        else:
            k_pos_S, valid_1S = torch.arange(self.length + n_tokens, device=device), None
        ctx = build_context(
            positional,
            pos_T,
            k_pos_S,
            causal=True,
            window=window,
            key_padding_mask=valid_1S,
            new_k_pos=pos_T,
        )
        return pos_T, ctx

    def update(
        self, layer: int, k_BHTd: torch.Tensor, v_BHTd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``layer``'s new (rotated) keys and values; return every key and value
        the new queries attend to, in the order of ``context``'s key positions."""
        T = k_BHTd.shape[2]
        if k_BHTd.dtype != self.k.dtype:  # computed in another precision than the weights are
            # stored in (FSDP's bf16 compute over fp32 shards): cache what attention receives
            self.k, self.v = self.k.to(k_BHTd.dtype), self.v.to(v_BHTd.dtype)
        if not self.ring:
            end = self.length + T
            self.k[layer, :, :, self.length : end] = k_BHTd
            self.v[layer, :, :, self.length : end] = v_BHTd
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        # A ring: attend over the old slots and the new keys, then keep the newest ``size``.
        k_S = torch.cat((self.k[layer], k_BHTd), dim=2)
        v_S = torch.cat((self.v[layer], v_BHTd), dim=2)
        keep = min(T, self.size)
        slots = self._new_pos[-keep:] % self.size
        self.k[layer][:, :, slots] = k_BHTd[:, :, -keep:]
        self.v[layer][:, :, slots] = v_BHTd[:, :, -keep:]
        return k_S, v_S

    def advance(self) -> None:
        """Every layer has stored its keys: the new tokens are now part of the context."""
        pos_T = self._new_pos
        if self.ring:
            keep = min(len(pos_T), self.size)
            self.slot_pos[pos_T[-keep:] % self.size] = pos_T[-keep:]
        self.length += len(pos_T)
        self._new_pos = None

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self, i)


@dataclasses.dataclass
class LayerCache:
    """One layer's view of a ``KVCache``: what ``Attention`` receives."""

    cache: KVCache
    index: int

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(self.index, k, v)
