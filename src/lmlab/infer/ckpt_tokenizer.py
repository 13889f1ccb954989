"""The tokenizer of a checkpoint: the one it carries (the one it was trained with), or one
given beside it (``tokenizer=``) for a checkpoint that carries none, checked against the
model's vocabulary before it reads a text as ids."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from lmlab.errors import ConfigError, first_line
from lmlab.infer.hf.tokenizer_io import same_tokenizer


def read_tokenizer(path: Path, vocab_size: int, trained: int | None = None) -> Tokenizer:
    """``tokenizer=``: a ``tokenizers`` JSON file that can be the model's (``check_vocab``)."""
    if not path.is_file():
        raise ConfigError(f"tokenizer={path}: no such file (a tokenizer.json)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for any file it cannot parse
        raise ConfigError(
            f"tokenizer={path}: not a tokenizers JSON file ({first_line(err, 120)})"
        ) from None
    check_vocab(tok, vocab_size, trained, f"tokenizer={path}")
    return tok


def check_not_replaced(tok: Tokenizer, carried: Tokenizer | None, path: Path, where: str) -> None:
    """``tokenizer=`` is for a checkpoint that carries none: the one it carries is the one it
    was trained with, and another of the same size (which ``check_vocab`` passes) would read
    every text as other ids, scoring and generating silently wrong. Refused unless it is that
    tokenizer, or its ``to_hf`` export (``lmlab.infer.hf.tokenizer_io.same_tokenizer``)."""
    if carried is not None and not same_tokenizer(tok, carried):
        raise ConfigError(
            f"tokenizer={path}: {where} carries its own tokenizer, the one it was trained "
            "with; tokenizer= is for checkpoints that carry none (leave it out)"
        )


def check_vocab(tok: Tokenizer, vocab_size: int, trained: int | None, where: str) -> None:
    """``tok`` can be the model's: no more tokens than its embedding has rows (an id past
    them is an IndexError, or another model's token) and, where the checkpoint carries the
    tokenizer it was trained with (``trained``: its size), exactly as many. The rows may
    outnumber the tokens (``model.vocab_size`` set above the tokenizer's, a converted T5's
    32128 rows for 32100 tokens), so fewer tokens than rows alone proves nothing; a smaller
    tokenizer than the trained one would read text as other ids (wrong numbers, silently)."""
    size = tok.get_vocab_size()
    if size > vocab_size:
        raise ConfigError(
            f"{where} has {size} tokens, more than the model's vocabulary of {vocab_size}: it "
            "is another model's tokenizer"
        )
    if trained is not None and size != trained:
        raise ConfigError(
            f"{where} has {size} tokens, the model was trained with a tokenizer of {trained} "
            "(the one its checkpoint carries): it is another model's tokenizer; leave "
            "tokenizer= out to use the checkpoint's"
        )


def carried_tokenizer(ckpt: dict) -> Tokenizer | None:
    """The tokenizer a checkpoint carries (the one it was trained with); None where it
    carries none, or one that does not parse (``tokenizer=`` stands in for it)."""
    try:
        return Tokenizer.from_str(ckpt["tokenizer"])
    except Exception:  # missing (KeyError), or anything tokenizers cannot parse
        return None


def trained_vocab(ckpt: dict) -> int | None:
    """The size of the tokenizer a checkpoint carries; None as ``carried_tokenizer``."""
    carried = carried_tokenizer(ckpt)
    return None if carried is None else carried.get_vocab_size()


def stored_tokenizer(value: object, where: str) -> Tokenizer:
    """The tokenizer a checkpoint carries (its JSON string); ``where`` names the checkpoint."""
    try:
        return Tokenizer.from_str(value)  # type: ignore[arg-type]
    except Exception as err:  # a bare Exception (or TypeError) for anything it cannot parse
        raise ConfigError(
            f"{where}: its tokenizer is unreadable ({first_line(err, 120)}): the file is damaged; "
            "tokenizer=<a tokenizer.json> uses the weights with another"
        ) from None
