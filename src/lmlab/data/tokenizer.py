"""Tokenizers trained with Hugging Face ``tokenizers``: byte-level BPE, or characters."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Encoding, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmlab.config import DataConfig, Family, TokenizerKind
from lmlab.errors import ConfigError

log = logging.getLogger(__name__)

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

# The names each role has in the tokenizers lmlab reads: its own first, then Hugging Face's
# (GPT-2, Llama 2 and 3, Mistral, Gemma, DeepSeek, BERT, T5). A role is looked up among a
# tokenizer's special (added) tokens only, so an ordinary BPE token that happens to read "<s>"
# is never taken.
# BOS has no names: it is the token the tokenizer puts before a text (``Specials.of``).
# DeepSeek's EOS is its own: ``<｜end▁of▁sentence｜>`` (fullwidth bars, U+2581 spaces).
ROLE_NAMES = {
    "eos": (EOS, "</s>", "<|end_of_text|>", "<eos>", "<｜end▁of▁sentence｜>"),
    "pad": (PAD, "[PAD]"),
    "mask": (MASK, "[MASK]"),
    "cls": (CLS, "[CLS]"),
    "sep": (SEP, "[SEP]"),
    "unk": (UNK, "[UNK]"),
}
SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")
# How many of a vocabulary's tokens ``added_first`` tries, after "a", as a text to encode.
PROBES = 64


@dataclass(frozen=True)
class Specials:
    """The token that plays each role for lmlab's objectives and tools: EOS ends documents and
    generation, PAD pads and starts T5's decoder, CLS/SEP frame and MASK masks BERT's input,
    the sentinels mark T5's spans. lmlab's tokenizers use ``SPECIAL_TOKENS``; a converted
    Hugging Face tokenizer brings its own names ([CLS], </s>, ...). None: the tokenizer has no
    token for the role (``id`` then says which use needs one)."""

    eos: str | None = EOS
    pad: str | None = PAD
    mask: str | None = MASK
    cls: str | None = CLS
    sep: str | None = SEP
    unk: str | None = UNK
    bos: str | None = None
    sentinels: tuple[str, ...] = tuple(SENTINELS)

    @classmethod
    def of(cls, tok: Tokenizer) -> Specials:
        """The roles of ``tok``'s special tokens, by name (``ROLE_NAMES``). A tokenizer without
        added special tokens (a character vocabulary saved before lmlab marked its specials) is
        searched in its whole vocabulary. BOS is the token the tokenizer's post-processor puts
        before a text, whatever its name (DeepSeek's ``<｜begin▁of▁sentence｜>``) or other role
        (a ``</s>`` that is EOS too), but BERT's [CLS]; none where it puts none (a tokenizer
        that declares ``<s>`` and does not add it): lmlab frames a decoder's text as
        ``tok(text)`` does."""
        added = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        added = added or set(tok.get_vocab())
        roles = {
            role: next((n for n in names if n in added), None) for role, names in ROLE_NAMES.items()
        }
        numbered = sorted((int(m.group(1)), t) for t in added if (m := SENTINEL_RE.fullmatch(t)))
        sentinels = tuple(t for i, (k, t) in enumerate(numbered) if k == i)  # 0, 1, 2, ... only
        first = added_first(tok)  # BERT's [CLS] comes first too: a BOS only a decoder reads
        roles["bos"] = first if first not in (roles["cls"], roles["sep"]) else None
        return cls(**roles, sentinels=sentinels)

    def id(self, tok: Tokenizer, role: str, use: str) -> int:
        """The id of ``role``'s token; a ConfigError naming ``use`` when there is none."""
        name = getattr(self, role)
        token_id = tok.token_to_id(name) if name is not None else None
        if token_id is None:
            raise ConfigError(
                f"{use} needs a {role} token, and this tokenizer has none (its special tokens: "
                f"{', '.join(n for n in asdict(self).values() if isinstance(n, str)) or 'none'})"
            )
        return token_id

    @property
    def document_end(self) -> str:
        """The role of the token that ends a training document, and so generation: EOS; [SEP]
        for a tokenizer without EOS (BERT's WordPiece), as its pre-training segments end."""
        return "sep" if self.eos is None and self.sep is not None else "eos"

    def frame_roles(self, family: Family) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The roles of the tokens around one text as ``family`` reads it, before and after:
        BERT's ``[CLS] text [SEP]`` (pre-training, fine-tuning, fill-mask), T5's encoder
        input ``text EOS`` (fine-tuning), a decoder's text after the tokenizer's BOS where it
        adds one (Llama's ``<s>``: training's documents, prompts). The one place that says
        it: the collators, ``fill_mask``, the probe and the tokenizer ``to_hf`` saves
        (``lmlab.infer.hf.tokenizer_io.framed``) frame by it."""
        if family == Family.bert:
            return ("cls",), ("sep",)
        if family == Family.t5:
            return (), ("eos",)
        return (("bos",) if self.bos else ()), ()

    def frame(self, tok: Tokenizer, family: Family, use: str) -> tuple[list[int], list[int]]:
        """The ids before and after one text as ``family`` reads it (``frame_roles``); a
        ConfigError naming ``use`` where the tokenizer lacks one of them."""
        before, after = self.frame_roles(family)
        return [self.id(tok, r, use) for r in before], [self.id(tok, r, use) for r in after]

    def all_ids(self, tok: Tokenizer) -> list[int]:
        """Every special token's id (roles and sentinels), to keep out of masking."""
        names = [n for n in asdict(self).values() if isinstance(n, str)] + list(self.sentinels)
        return [i for n in names if (i := tok.token_to_id(n)) is not None]


def document_end_id(tok: Tokenizer) -> int | None:
    """The id of the token that ends a training document (``Specials.document_end``), where
    generation stops; None when ``tok`` has none."""
    specials = Specials.of(tok)
    name = getattr(specials, specials.document_end)
    return tok.token_to_id(name) if name is not None else None


def added_first(tok: Tokenizer) -> str | None:
    """The token ``tok``'s post-processor puts before a text, as a Llama tokenizer puts
    ``<s>`` (transformers' ``tok(text)``, with ``add_bos_token``); None where the text comes
    first (lmlab's tokenizers, GPT-2's, T5's). Read from a text the tokenizer encodes to one
    token at least: "a", else one of its own tokens (a DNA vocabulary has no "a")."""
    vocab = tok.get_vocab_size()
    for text in ("a", *(tok.id_to_token(i) for i in range(min(vocab, PROBES)))):
        encoded = tok.encode(text or "")
        if 0 in encoded.sequence_ids:  # a token of the text: what comes before it is added
            return tok.id_to_token(encoded.ids[0]) if encoded.sequence_ids[0] is None else None
    return None


def spaces_are_tokens(tok: Tokenizer) -> bool:
    """Whether a space between words is a token of its own (a character vocabulary), not part
    of the next word's token (byte-level BPE's ``Ġ``, SentencePiece's ``▁``) or dropped
    (WordPiece)."""
    space = tok.token_to_id(" ")
    return space is not None and space in encode(tok, "a b")


def encode(tok: Tokenizer, text: str) -> list[int]:
    """``text``'s ids without the specials a tokenizer's post-processor adds (a converted BERT
    tokenizer's [CLS] .. [SEP], Llama's <s>, T5's </s>): lmlab frames its inputs itself. For a
    user's prompt: a ``<mask>`` or ``<extra_id_0>`` typed in it is the control token. A
    corpus's or a data set's text is read with ``encode_ordinary``."""
    return tok.encode(text, add_special_tokens=False).ids


def encode_ordinary(tok: Tokenizer, texts: list[str]) -> list[Encoding]:
    """``texts`` (a corpus's documents, a task's examples) as ordinary text, as tiktoken's
    ``encode_ordinary`` reads a corpus: a special token's string in them (the ``<sep>`` in the
    standard library's email/feedparser.py, a ``[MASK]`` or ``<extra_id_0>`` in a data set) is
    its characters, never the control token, so the only control tokens in the model's input
    are the ones lmlab puts there by id (EOS between documents, [CLS] .. [SEP], masks, T5's
    sentinels). Without the post-processor's specials, as ``encode``. ``tokenizers`` matches
    special tokens in the text before it splits it, unless ``encode_special_tokens`` is set:
    it is set for this call only (it is not saved in the tokenizer's JSON either), so ``tok``
    reads a prompt afterwards as before."""
    before = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        return tok.encode_batch(texts, add_special_tokens=False)
    finally:
        tok.encode_special_tokens = before


def prompt_ids(tok: Tokenizer, text: str) -> list[int]:
    """A decoder's input for the prompt ``text``, framed as ``pack`` frames a document: the
    tokenizer's BOS first where it adds one (Llama's ``<s>``, as its ``tok(text)``); an empty
    prompt without BOS is the EOS a document follows."""
    specials = Specials.of(tok)
    ids = encode(tok, text)
    before, _ = specials.frame(tok, Family.gpt, "a document's start")
    if before:
        return [*before, *ids]
    return ids or [specials.id(tok, "eos", "an empty prompt")]


# How ``tokenizers`` words the file system's refusal of a write, in the bare Exception it raises.
OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """``tok`` saved as the JSON file ``path``. A write the file system refuses is raised as
    the OSError it is, naming ``path``: ``tokenizers`` raises a bare Exception ("No space left
    on device (os error 28)"), which a full data cache showed as a traceback."""
    try:
        tok.save(str(path))
    except Exception as err:
        found = OS_ERROR.search(str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from err


def check_bpe_size(vocab_size: int) -> None:
    """A byte-level BPE holds every byte and lmlab's special tokens (checked before the
    corpus is read too)."""
    minimum = N_BYTES + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ConfigError(
            f"data.vocab_size={vocab_size} is too small: byte-level BPE needs at least {minimum} "
            f"({N_BYTES} bytes + {len(SPECIAL_TOKENS)} special tokens, {N_SENTINELS} of them T5's "
            "sentinels)"
        )


def check_vocab(data_cfg: DataConfig) -> None:
    """``data.vocab_size`` against the tokenizer it sizes (a byte-level BPE's bytes and
    specials; a char vocabulary is the corpus's): from the composed config, before torch
    loads, and again in a run's and a sweep's checks."""
    if data_cfg.tokenizer == TokenizerKind.bpe:
        check_bpe_size(data_cfg.vocab_size)


# The longest piece of a word, in bytes, that BPE's trainer counts pairs in (``train_bpe``).
TRAIN_WORD_BYTES = 256


def continuation_bytes() -> str:
    """The bytes 0x80-0xBF, a UTF-8 character's bytes after its first, as byte-level BPE
    spells them, from tokenizers' own map: the third byte of each of U+4E00-U+4E3F
    (E4 B8 80 to E4 B8 BF)."""
    spell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str
    return spell("".join(map(chr, range(0x4E00, 0x4E40))))[0][0][2::3]


def training_words() -> pre_tokenizers.PreTokenizer:
    """What BPE's trainer counts pairs in: each word (GPT-2's pre-tokens: a run of letters,
    of digits, ...) cut into pieces of at most ``TRAIN_WORD_BYTES`` bytes, each ending where
    a character does: its merge step rescans every word holding a pair, so its time grows
    with the square of a word's length (a one-line 2 MB DNA sequence did not finish in 5
    minutes; cut, it trains in 5 s). A piece ends before the next character, not at the byte
    limit (up to 3 bytes earlier): a cut inside a character (the 86th of a run of CJK, 3
    bytes each) put a character's tail, its bytes after the first, in the vocabulary as
    tokens of their own, which no word the tokenizer encodes starts with."""
    inside = f"[{re.escape(continuation_bytes())}]"
    piece = Regex(rf"[\s\S]{{1,{TRAIN_WORD_BYTES}}}(?!{inside})")
    words = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence([words, pre_tokenizers.Split(piece, "isolated")])


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE as in GPT-2: any UTF-8 input is representable, nothing is unknown.
    The trainer counts pairs in words cut into pieces (``training_words``). No ordinary word
    is that long, so its merges are the same. The tokenizer it returns encodes whole words
    (time about linear)."""
    check_bpe_size(vocab_size)
    tok = Tokenizer(models.BPE())
    words = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = training_words()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.pre_tokenizer = words
    if tok.get_vocab_size() < vocab_size:  # a sweep over data.vocab_size would repeat a run
        log.warning(
            "BPE stopped at %d of data.vocab_size=%d tokens: the corpus has no more merges to "
            "learn, so a larger data.vocab_size trains the same tokenizer",
            tok.get_vocab_size(),
            vocab_size,
        )
    return tok


def train_char(texts: Iterable[str]) -> Tokenizer:
    """One token per character of the training text (nanoGPT's shakespeare_char)."""
    chars = sorted(set().union(*(set(t) for t in texts)))
    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)  # already in the vocabulary: marks them special
    return tok


def train_tokenizer(texts: list[str], kind: TokenizerKind, vocab_size: int) -> Tokenizer:
    if kind == TokenizerKind.char:
        return train_char(texts)
    return train_bpe(texts, vocab_size)


# How many of the pieces the unknown token stood for a warning shows.
UNKNOWN_SHOWN = 8


def unknown_pieces(
    tok: Tokenizer, texts: Sequence[str], encoded: Sequence[Encoding]
) -> list[list[str]]:
    """Per text, the pieces of it ``tok`` read as its unknown token (``<unk>``, ``[UNK]``):
    characters a character vocabulary never saw, words a WordPiece vocabulary cannot spell.
    Empty lists for byte-level BPE, which has a token for every input."""
    name = Specials.of(tok).unk
    unk = tok.token_to_id(name) if name else None
    return [
        [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == unk]
        if unk is not None and unk in enc.ids
        else []
        for text, enc in zip(texts, encoded, strict=True)
    ]


def unknown_record(found: Counter) -> dict:
    """``unknown_pieces`` as a JSON record: how many tokens, how many distinct pieces, and
    the ``UNKNOWN_SHOWN`` most common pieces with their counts."""
    pieces = dict(found.most_common(UNKNOWN_SHOWN))
    return {"tokens": sum(found.values()), "kinds": len(found), "pieces": pieces}


# What a training run's warning of unknown tokens advises.
BPE_ADVICE = "A byte-level BPE tokenizer (data.tokenizer=bpe) has a token for every input"


def warn_unknown(record: dict, n_tokens: int, where: str, advice: str = BPE_ADVICE) -> None:
    """A warning when the unknown token stands for some of ``where``'s text (``record``:
    ``unknown_record``): the model reads all of it as one token and cannot learn, or tell
    apart, what it stood for."""
    if not record.get("tokens"):
        return
    shown = ", ".join(f"{p!r} x{c}" for p, c in record["pieces"].items())
    log.warning(
        "%d of the %d tokens of %s (%.2f%%) are the tokenizer's unknown token, standing for "
        "text it has no token for (%s%s): the model reads all of it as one token. %s",
        record["tokens"],
        n_tokens,
        where,
        100 * record["tokens"] / max(n_tokens, 1),
        shown,
        ", ..." if record["kinds"] > len(record["pieces"]) else "",
        advice,
    )


def warn_unknown_text(tok: Tokenizer, text: str, where: str) -> None:
    """``warn_unknown`` for one text given to a trained model (a prompt): what its tokenizer
    has no token for, the model never saw in training either."""
    enc = tok.encode(text)
    record = unknown_record(Counter(unknown_pieces(tok, [text], [enc])[0]))
    warn_unknown(record, len(enc.ids), where, "The model never saw that text in training")
