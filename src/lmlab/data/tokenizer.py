"""Tokenizers trained with Hugging Face ``tokenizers``: byte-level BPE, or characters."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmlab.config import TokenizerKind
from lmlab.errors import ConfigError

EOS = "<|endoftext|>"
PAD = "<pad>"
MASK = "<mask>"
CLS = "<cls>"
SEP = "<sep>"
UNK = "<unk>"
# T5's span-corruption sentinels <extra_id_0> .. <extra_id_99> (T5 uses 100).
N_SENTINELS = 100
SENTINELS = [f"<extra_id_{i}>" for i in range(N_SENTINELS)]
# Every tokenizer carries the specials all three objectives need (EOS doubles as T5's </s>), so
# one tokenizer per corpus serves GPT, BERT and T5 alike. They take ids 0 .. 105.
SPECIAL_TOKENS = [EOS, PAD, MASK, CLS, SEP, UNK, *SENTINELS]
N_BYTES = 256


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE as in GPT-2: any UTF-8 input is representable, nothing is unknown."""
    minimum = N_BYTES + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ConfigError(
            f"data.vocab_size={vocab_size} is too small: byte-level BPE needs at least {minimum} "
            f"({N_BYTES} bytes + {len(SPECIAL_TOKENS)} special tokens, {N_SENTINELS} of them T5's "
            "sentinels)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def train_char(texts: Iterable[str]) -> Tokenizer:
    """One token per character of the training text (nanoGPT's shakespeare_char)."""
    chars = sorted(set().union(*(set(t) for t in texts)))
    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def train_tokenizer(texts: list[str], kind: TokenizerKind, vocab_size: int) -> Tokenizer:
    if kind == TokenizerKind.char:
        return train_char(texts)
    return train_bpe(texts, vocab_size)
