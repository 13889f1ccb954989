"""Sampling from a decoder: temperature, top-k and top-p (nucleus) filtering, with a KV cache.

With the cache, the prompt is run once (prefill) and every later step feeds one token, which
attends to the cached keys and values; without it, every step recomputes the whole context.
Both give the same logits (greedy decoding gives the same tokens; the test checks it). Past
``max_seq_len`` tokens there are no positions left, so both crop the context to its last
``max_seq_len`` tokens and recompute it every step (nanoGPT's behaviour), cache or not. An
encoder-decoder's decoder keeps its start token in front of what it crops to: T5 was trained
with every target starting from it.
"""

from __future__ import annotations

import logging
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from lmlab.config import check_infer_task, check_sampling
from lmlab.errors import ConfigError
from lmlab.model.context import varying_shapes
from lmlab.model.kv_cache import KVCache

log = logging.getLogger(__name__)

# (ids (B, T), cache or None) -> logits (B, T, V)
Forward = Callable[[torch.Tensor, KVCache | None], torch.Tensor]


class NonFiniteLogits(ConfigError):
    """A step's next-token logits hold inf or nan: sampling would fail (``torch.multinomial``
    refuses them) and the argmax would be garbage. Callers that know the checkpoint and the
    dtype add them to the message."""

    def __init__(self, where: str) -> None:
        super().__init__(f"the model's logits are not finite at {where}")


class Decoding(NamedTuple):
    """The arguments ``decode_loop`` reads, as ``check_decoding`` passed them: Python numbers."""

    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int


def integral(value: object, name: str, least: int, note: str = "") -> int:
    """``value`` as an int >= ``least`` where it is an integer of any kind a user computes
    (Python's, numpy's, a one-element integer tensor: what ``operator.index`` takes, as
    ``range`` and torch's sizes take it); else one line naming ``name``, the value and what
    is allowed (``note`` after it). A bool is refused (``True`` is no count), and so is a
    float, ``10.0`` too, as ``range`` refuses it."""
    is_bool = isinstance(value, bool) or (
        isinstance(value, torch.Tensor) and value.dtype == torch.bool
    )
    try:
        number = None if is_bool else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < least:
        raise ConfigError(f"{name}={value!r} must be an int >= {least}{note}")
    return number


def real(value: object, name: str, allowed: str) -> float:
    """``value`` as a float where it is a real number of any kind (Python's, numpy's, a
    one-element tensor); else one line naming ``name`` and ``allowed`` (a string failed inside
    a comparison with a TypeError)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}={value!r} must be a number {allowed}")
    return float(value)


def check_decoding(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    key: str = "",
    ids_BT: torch.Tensor | None = None,
    max_new_tokens: int = 0,
) -> Decoding:
    """What ``decode_loop`` reads, each refused in one line naming it (after ``key``), its value
    and what is allowed, before any forward pass: a negative temperature would sample the
    least likely tokens, a top_p past [0, 1] would keep one token or all, silently; a bad
    top_k, prompt or length fails deep inside torch. ``top_k`` and ``max_new_tokens`` are
    integers of any kind (``integral``: numpy's, a one-element tensor; no bool, no float),
    ``temperature`` and ``top_p`` numbers of any kind (``real``); returned as Python numbers.
    ``top_k`` and ``top_p`` read as transformers reads them (``filter_logits``: 0 filters
    nothing, or keeps the top token)."""
    temperature = real(temperature, f"{key}temperature", ">= 0 (0: greedy)")
    check_sampling(key, temperature, None)
    if top_k is not None:
        top_k = integral(top_k, f"{key}top_k", 0, " (0 or null: no top-k)")
    if top_p is not None:
        top_p = real(top_p, f"{key}top_p", "in [0, 1] (null: no nucleus)")
        if not 0 <= top_p <= 1:
            raise ConfigError(f"{key}top_p={top_p} must be in [0, 1] (null: no nucleus)")
    max_new_tokens = integral(max_new_tokens, f"{key}max_new_tokens", 0)
    if ids_BT is not None and (
        ids_BT.dim() != 2 or ids_BT.shape[1] == 0 or ids_BT.is_floating_point()
    ):
        raise ConfigError(
            f"{key}ids_BT: a {ids_BT.dtype} tensor of shape {tuple(ids_BT.shape)}; allowed: "
            "integer token ids of shape (batch, tokens), at least one token (an empty prompt "
            "is Pretrained.prompt_ids(''): the BOS or EOS a document follows)"
        )
    return Decoding(temperature, top_k, top_p, max_new_tokens)


def filter_logits(
    logits_BV: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to -inf every logit outside the top k and outside the smallest set whose
    probability reaches top_p (Holtzman et al. 2020); the most likely token always stays.
    As transformers reads them (a harness task's ``gen_kwargs`` may hold them): ``top_k=0``
    filters nothing, ``top_p=0`` keeps the most likely token alone."""
    if top_k and top_k < logits_BV.shape[-1]:
        kth = torch.topk(logits_BV, top_k, dim=-1).values[..., -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits_BV, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token
        drop_sorted[..., 0] = False  # the most likely token, whatever top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits_BV = logits_BV.masked_fill(drop, float("-inf"))
    return logits_BV


def pick(
    logits_BV: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The next token (B, 1): the argmax when temperature is 0, else a filtered sample."""
    if temperature == 0:
        return logits_BV.argmax(-1, keepdim=True)
    # shifted by the max first (softmax is unchanged): a tiny temperature gives -inf, not nan
    logits_BV = logits_BV.float()
    scaled_BV = (logits_BV - logits_BV.amax(-1, keepdim=True)) / temperature
    probs = filter_logits(scaled_BV, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
@varying_shapes()  # one key more every token
def decode_loop(
    forward: Forward,
    new_cache: Callable[[int, int], KVCache] | None,
    ids_BT: torch.Tensor,
    max_len: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | Sequence[int] | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    forced_BF: torch.Tensor | None = None,
    stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check_finite: bool = True,
    n_vocab: int | None = None,
    keep_start: int = 0,
) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to ``ids_BT``; ``new_cache=None`` recomputes the
    context every step. ``n_vocab`` (the tokenizer's size): only ids below it are picked, where
    the model has more rows than the tokenizer has tokens (``model.vocab_size=50304`` for
    GPT-2's 50257, a converted T5's 32128 for 32100): an id past the tokenizer decodes to
    nothing, silently. A sequence that produced ``eos_id`` (one id, or a list: any of a
    converted instruct model's ends, ``Pretrained.end_ids``) is continued with it (a list's
    first); the loop stops early when all have. ``on_token`` receives each step's tokens (B, 1).

    Prompts of different lengths share one batch without padding: ``ids_BT`` holds the part
    every prompt has (their first T tokens) and ``forced_BF`` the rest of each, right-padded
    with -1. At step s a row takes ``forced_BF[:, s]`` where it is >= 0 instead of the picked
    token, so every row sees exactly its own prompt at the positions an unbatched run gives
    it. ``stop(ids_BT)`` -> (B,) bool marks rows finished (a stop sequence), as EOS does.
    Non-finite logits at a step raise ``NonFiniteLogits`` (a diverged model, an overflowing
    dtype), greedy or sampled, unless ``check_finite=False``. Past ``max_len`` the context is
    cropped to its last tokens behind its first ``keep_start`` (``cropped``). Arguments outside
    what ``check_decoding`` allows are refused before any forward pass."""
    temperature, top_k, top_p, max_new_tokens = check_decoding(
        temperature, top_k, top_p, ids_BT=ids_BT, max_new_tokens=max_new_tokens
    )
    context_BT = cropped(ids_BT, max_len, keep_start)
    # the cache holds what this decode reads (the context and the new tokens), not every
    # position the model has: a converted Llama 3.1's 131072 would be gigabytes
    length = min(max_len, context_BT.shape[1] + max_new_tokens)
    cache = new_cache(ids_BT.shape[0], length) if new_cache else None
    logits_BV = forward(context_BT, cache)[:, -1, :n_vocab]
    done_B = torch.zeros(ids_BT.shape[0], dtype=torch.bool, device=ids_BT.device)
    ends = [int(eos_id)] if isinstance(eos_id, numbers.Integral) else list(eos_id or ())
    ends_E = torch.tensor(ends, dtype=ids_BT.dtype, device=ids_BT.device)
    n_forced = 0 if forced_BF is None else forced_BF.shape[1]
    for step in range(max_new_tokens):
        # one host sync per token, as the `done_B.all()` check below (and on_token) make anyway
        if check_finite and not bool(torch.isfinite(logits_BV).all()):
            raise NonFiniteLogits(f"generated token {step + 1}")
        next_B1 = pick(logits_BV, temperature, top_k, top_p, generator)
        generated_B = torch.ones_like(done_B)
        if step < n_forced:
            force_B1 = forced_BF[:, step : step + 1]
            next_B1 = torch.where(force_B1 >= 0, force_B1, next_B1)
            generated_B = force_B1[:, 0] < 0
        if ends:
            next_B1 = next_B1.masked_fill(done_B[:, None], ends[0])
            done_B |= torch.isin(next_B1[:, 0], ends_E) & generated_B
        ids_BT = torch.cat((ids_BT, next_B1), dim=1)
        if stop is not None:
            done_B |= stop(ids_BT)
        if on_token is not None:
            on_token(next_B1)
        if step == max_new_tokens - 1 or bool(done_B.all()):
            break
        if cache is not None and cache.room(1):
            logits_BV = forward(next_B1, cache)[:, -1, :n_vocab]
        else:  # the context is full: crop and recompute, as without a cache
            cache = None
            logits_BV = forward(cropped(ids_BT, max_len, keep_start), None)[:, -1, :n_vocab]
    return ids_BT


def cropped(ids_BT: torch.Tensor, max_len: int, keep_start: int = 0) -> torch.Tensor:
    """The context a model of ``max_len`` positions reads from ``ids_BT``: all of it where it
    fits, else its first ``keep_start`` tokens (a decoder's start token) and its last
    ``max_len - keep_start``."""
    if ids_BT.shape[1] <= max_len:
        return ids_BT
    return torch.cat((ids_BT[:, :keep_start], ids_BT[:, keep_start - max_len :]), dim=1)


def warn_if_cut(n_tokens: int, max_len: int) -> None:
    """Warn where a prompt of ``n_tokens`` is longer than the model's context of ``max_len``:
    ``decode_loop`` reads only its last ``max_len`` tokens."""
    if n_tokens > max_len:
        log.warning(
            "the prompt has %d tokens, more than the model's context of %d: only its last %d "
            "are used",
            n_tokens,
            max_len,
            max_len,
        )


def generate(
    model: nn.Module,
    ids_BT: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    eos_id: int | Sequence[int] | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    n_vocab: int | None = None,
    stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Continue ``ids_BT`` (B, T) with a GPT model; returns (B, T + new). A prompt longer than
    ``max_seq_len`` keeps its last ``max_seq_len`` tokens (with a warning). ``n_vocab``: the
    tokenizer's size, past which no id is picked; ``eos_id``: the id, or ids, a row ends at,
    and ``stop``: the rows that are finished (``decode_loop``). Arguments outside what
    ``check_decoding`` allows are refused first, and so are ids outside the model's
    vocabulary (another tokenizer's) and a model that is no GPT."""
    check_infer_task(
        model.cfg.family, "generate", "generate", f"the model given ({type(model).__name__})"
    )
    check_decoding(temperature, top_k, top_p, ids_BT=ids_BT, max_new_tokens=max_new_tokens)
    vocab = model.cfg.vocab_size
    if not bool(((ids_BT >= 0) & (ids_BT < vocab)).all()):
        raise ConfigError(
            f"ids_BT: ids from {int(ids_BT.min())} to {int(ids_BT.max())}, outside the model's "
            f"vocabulary of {vocab} (0 to {vocab - 1}): another tokenizer's ids?"
        )
    max_len = model.cfg.max_seq_len
    warn_if_cut(ids_BT.shape[1], max_len)
    return decode_loop(
        lambda ids, cache: model(ids, cache=cache),
        model.new_cache if use_cache else None,
        ids_BT,
        max_len,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        generator,
        eos_id,
        on_token,
        stop=stop,
        n_vocab=n_vocab,
    )


@torch.no_grad()
def greedy_seq2seq(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    start_B1: torch.Tensor,
    max_new_tokens: int,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Greedy targets of an encoder-decoder (T5) for a batch of inputs, with the decoder's KV
    cache: (B, max_new_tokens) tokens after the decoder start tokens ``start_B1``. A row that
    produced ``eos_id`` continues with ``eos_id``; a batch that ends early is padded so.
    Non-finite logits are not checked: this scores validation's exact match, and what a
    non-finite model does to the run is the non-finite guard's decision (its ``mode``)."""
    memory_BTD = model.encode(input_ids, attention_mask)
    out_BS = decode_loop(
        lambda dec_ids, cache: model.decode(dec_ids, memory_BTD, attention_mask, cache=cache),
        model.new_cache,
        start_B1,
        model.cfg.max_seq_len,
        max_new_tokens,
        temperature=0.0,
        eos_id=eos_id,
        check_finite=False,
        keep_start=1,
    )[:, 1:]
    short = max_new_tokens - out_BS.shape[1]
    return torch.nn.functional.pad(out_BS, (0, short), value=eos_id if eos_id is not None else 0)
