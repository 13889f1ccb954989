"""Fill-mask for encoder checkpoints, span infilling for encoder-decoders (and a ``task=seq2seq``
T5's answer to its input: ``answer``), as HF's
``fill-mask`` and ``text2text-generation`` pipelines do.

Byte-level BPE folds a word's leading space into the word's token, so the one space before a
``<mask>`` or a sentinel is dropped from the input and the prediction brings its own (RoBERTa's
mask token strips left whitespace the same way); a character vocabulary keeps it, a token of its
own there. ``<mask>`` and ``[MASK]`` both stand for the
tokenizer's mask token (a converted BERT's is ``[MASK]``); in ``infill`` each becomes the next
sentinel ``<extra_id_k>`` in the text's order (after any explicit one, which must all come
before the first mask). Text the vocabulary has no token for is warned of as mapped so: the
marker's characters are never read.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

from lmlab.config import Family, check_infer_task
from lmlab.data.tokenizer import (
    SENTINEL_RE,
    encode,
    encode_ordinary,
    spaces_are_tokens,
    unknown_pieces,
    unknown_record,
    warn_unknown,
    warn_unknown_text,
)
from lmlab.errors import ConfigError
from lmlab.infer.generation import NonFiniteLogits, check_decoding, decode_loop, integral
from lmlab.infer.pretrained import Pretrained

log = logging.getLogger(__name__)

MASK_MARKERS = ("<mask>", "[MASK]")


@dataclass
class Candidate:
    token: str  # decoded, with its leading space; a special token by its name ("<pad>")
    token_id: int
    probability: float


def _unspaced(tok: Tokenizer, text: str, marker: str) -> str:
    """``text`` without the one space before each ``marker`` where a token brings its own
    space (byte-level BPE's ``Ġfox``: the prediction brings it). A character vocabulary keeps
    it: there a space is a token of its own, which training masks or leaves as it is."""
    if spaces_are_tokens(tok):
        return text
    return re.sub(r" ?(" + re.escape(marker) + ")", r"\1", text)


@torch.no_grad()
def fill_mask(pre: Pretrained, text: str, top_k: int = 5) -> tuple[list[list[Candidate]], str]:
    """The ``top_k`` most likely tokens for each ``<mask>`` of ``text``, and the text with
    every mask replaced by its most likely token (at most every token of the vocabulary). A
    checkpoint of another family than BERT, and a ``top_k`` below 1, are refused in one line."""
    check_infer_task(pre.family, "fill_mask", "fill_mask", str(pre.path))
    top_k = integral(top_k, "top_k", 1, " (the candidates per mask)")  # numpy's int too
    tok, specials = pre.tokenizer, pre.specials
    mask = specials.mask or "<mask>"
    for marker in MASK_MARKERS:
        text = text.replace(marker, mask)
    if mask not in text:
        raise ConfigError(f"text={text!r} has no <mask> (or [MASK]) to fill")
    warn_unknown_text(tok, text, "the text")  # as the model reads it: a marker is its mask
    mask_id = specials.id(tok, "mask", "fill-mask")
    before, after = specials.frame(tok, Family.bert, "fill-mask")
    ids = [*before, *encode(tok, _unspaced(tok, text, mask)), *after]
    if len(ids) > pre.cfg.max_seq_len:
        raise ConfigError(
            f"text is {len(ids)} tokens with [CLS] and [SEP], above the model's "
            f"max_seq_len={pre.cfg.max_seq_len}"
        )
    ids_1T = torch.tensor([ids], device=pre.device)
    logits_TV = pre.model(ids_1T)[0, :, : tok.get_vocab_size()].float()  # no padding rows
    masked_T = ids_1T[0] == mask_id
    if not bool(torch.isfinite(logits_TV[masked_T]).all()):  # else nan probabilities, ranked
        raise NonFiniteLogits("a <mask>")
    probs_TV = logits_TV.softmax(-1)
    filled, results = list(ids), []
    for t in masked_T.nonzero()[:, 0].tolist():
        p, idx = probs_TV[t].topk(min(top_k, probs_TV.shape[-1]))  # at most every token
        pairs = zip(p.tolist(), idx.tolist(), strict=True)
        # a special token by its name, as transformers' fill-mask shows it (skipped, it read '')
        results.append(
            [Candidate(tok.decode([i], skip_special_tokens=False), i, q) for q, i in pairs]
        )
        filled[t] = results[-1][0].token_id
    return results, tok.decode(filled[1:-1])


def _sentinels(text: str, sentinels: tuple[str, ...]) -> str:
    """``<mask>``/``[MASK]``, in the order they come, to successive sentinels after the highest
    one already there. A mask before an explicit ``<extra_id_N>`` is refused: numbered after
    it, the spans would not be in the text's order; numbered by position, the explicit ones
    would change meaning."""
    explicit = list(SENTINEL_RE.finditer(text))
    used = [int(m.group(1)) for m in explicit]
    if used and max(used) >= len(sentinels):
        raise ConfigError(
            f"text has <extra_id_{max(used)}>, but the tokenizer's sentinels are <extra_id_0> "
            f"to <extra_id_{len(sentinels) - 1}>"
        )
    masks = re.compile("|".join(map(re.escape, MASK_MARKERS)))
    first_mask = masks.search(text)
    if first_mask and explicit and first_mask.start() < explicit[-1].start():
        raise ConfigError(
            f"text: mixes {first_mask.group(0)} and <extra_id_N>, with a mask before "
            f"{explicit[-1].group(0)}, so its number is ambiguous; use one form"
        )
    k = max(used, default=-1) + 1
    n_masks = len(masks.findall(text))
    if k + n_masks > len(sentinels):
        raise ConfigError(
            f"text has {n_masks} masks, numbered from <extra_id_{k}>: past the tokenizer's "
            f"last sentinel <extra_id_{len(sentinels) - 1}>"
        )
    numbers = iter(range(k, k + n_masks))
    return masks.sub(lambda _: sentinels[next(numbers)], text)


@torch.no_grad()
def infill(
    pre: Pretrained,
    text: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> tuple[dict[str, str], str]:
    """Generate the span of every sentinel in ``text`` (T5's target: ``<extra_id_0> span0
    <extra_id_1> span1 ... </s>``); returns {sentinel: span} for the text's sentinels the
    model wrote a span for, in the text's order (spans for other sentinels are ignored), and
    the filled text. A checkpoint of another family than T5, and an argument outside what
    ``check_decoding`` allows, are refused in one line before the encoder runs."""
    check_infer_task(pre.family, "infill", "infill", str(pre.path))
    tok, specials = pre.tokenizer, pre.specials
    text = _sentinels(text, specials.sentinels)
    if not SENTINEL_RE.search(text):
        raise ConfigError(f"text={text!r} has no sentinel <extra_id_0> (or <mask>) to fill")
    warn_unknown_text(tok, text, "the text")  # as the model reads it: a marker is a sentinel
    text = _unspaced(tok, text, "<extra_id_")  # the spans fill this text: each brings its space
    target = decode_target(
        pre,
        encode(tok, text),
        "infilling",
        "its spans (EOS): the last span may be cut, later ones missing",
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        generator,
        use_cache,
    )
    written_spans = parse_spans(target, specials.eos)
    inputs = list(dict.fromkeys(m.group(0) for m in SENTINEL_RE.finditer(text)))
    # only the text's sentinels, in its order: T5 often goes on past the last one
    spans = {s: written_spans[s] for s in inputs if s in written_spans}
    if extra := [s for s in written_spans if s not in spans]:
        log.debug("ignored the model's spans for %s (not in the text)", ", ".join(extra))
    unfilled = [s for s in inputs if s not in spans]
    if unfilled:  # left empty in the filled text: say so, with what the model wrote instead
        written = target.split(specials.eos)[0] if specials.eos else target
        log.warning(
            "the model wrote no span for %s (left empty in the filled text); its output: %r",
            ", ".join(unfilled),
            written if len(written) <= 200 else written[:197] + "...",
        )
    filled = SENTINEL_RE.sub(lambda m: spans.get(m.group(0), ""), text)
    return spans, filled


def answer(pre: Pretrained, text: str, *args: Any, **decoding: Any) -> str:
    """A ``task=seq2seq`` T5's target for the input ``text``, read as its training read an
    input (``Seq2SeqCollator``): ordinary text (a ``<mask>`` or ``<extra_id_0>`` in it is its
    characters) ended by EOS, decoded until the model's EOS. ``args`` and ``decoding``:
    ``infill``'s arguments after the text, with its defaults (``temperature=0``: the greedy
    decode that validation's exact match scores)."""
    check_infer_task(pre.family, "infill", "a seq2seq answer", str(pre.path))
    tok = pre.tokenizer
    [enc] = encode_ordinary(tok, [text])
    found = unknown_record(Counter(unknown_pieces(tok, [text], [enc])[0]))
    warn_unknown(found, len(enc.ids), "the text", "The model never saw that text in training")
    asked = inspect.signature(infill).bind(pre, text, *args, **decoding)  # infill's names, defaults
    asked.apply_defaults()
    target = decode_target(
        pre,
        enc.ids,
        "a seq2seq answer",
        "its answer (EOS): the answer is cut",
        *list(asked.arguments.values())[2:],
    )
    return target.split(pre.specials.eos)[0] if pre.specials.eos else target


@torch.no_grad()
def decode_target(
    pre: Pretrained,
    ids: list[int],
    use: str,
    what: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    use_cache: bool,
) -> str:
    """T5's decoded target (its special tokens kept) for the input ``ids`` ended by EOS, from
    T5's decoder start token (PAD) until the model's EOS or ``max_new_tokens``; ``use`` and
    ``what`` name the decode in the messages. Arguments outside what ``check_decoding``
    allows, and an input past the model's ``max_seq_len``, are refused before the encoder
    runs."""
    temperature, top_k, top_p, max_new_tokens = check_decoding(
        temperature, top_k, top_p, max_new_tokens=max_new_tokens
    )
    tok, model, specials = pre.tokenizer, pre.model, pre.specials
    eos_id = specials.id(tok, "eos", use)
    ids = [*ids, eos_id]
    if len(ids) > pre.cfg.max_seq_len:
        raise ConfigError(
            f"text is {len(ids)} tokens, above the model's max_seq_len={pre.cfg.max_seq_len}"
        )
    memory_1TD = model.encode(torch.tensor([ids], device=pre.device))
    start_id = specials.id(tok, "pad", use)  # T5's decoder start token
    start_11 = torch.tensor([[start_id]], device=pre.device)
    out_1S = decode_loop(
        lambda dec_ids, cache: model.decode(dec_ids, memory_1TD, cache=cache),
        model.new_cache if use_cache else None,
        start_11,
        pre.cfg.max_seq_len,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        generator,
        eos_id=eos_id,
        n_vocab=tok.get_vocab_size(),
        keep_start=1,
    )
    written_ids = out_1S[0, 1:].tolist()
    if eos_id not in written_ids and len(written_ids) >= max_new_tokens:
        log.warning(
            "%s stopped at max_new_tokens=%d before the model ended %s; raise max_new_tokens",
            use,
            max_new_tokens,
            what,
        )
    return tok.decode(written_ids, skip_special_tokens=False)


def parse_spans(target: str, eos: str) -> dict[str, str]:
    """``<extra_id_0> a <extra_id_1> b</s>`` -> {"<extra_id_0>": " a ", "<extra_id_1>": " b"}."""
    target = target.split(eos)[0]
    parts = SENTINEL_RE.split(target)  # [before, k0, span0, k1, span1, ...]
    return {f"<extra_id_{k}>": span for k, span in zip(parts[1::2], parts[2::2], strict=True)}
