"""A corpus's and a data set's text is read as ordinary text: a special token's string in it
(the standard library's email/feedparser.py spells "<sep>") is its characters, never the
control token; the only control tokens in the model's input are the ones lmlab puts there."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from lmlab.config import DataConfig, Family, Source, TaskConfig, TaskKind, TaskSource, TokenizerKind
from lmlab.data import packing
from lmlab.data.finetune import FinetuneDataModule
from lmlab.data.packing import pack, prepare
from lmlab.data.tokenizer import (
    EOS,
    MASK,
    SEP,
    SPECIAL_TOKENS,
    Specials,
    encode,
    encode_ordinary,
    train_bpe,
    train_char,
)

# One document per special token lmlab's tokenizers carry, spelled inside code as a corpus
# spells it, and a converted BERT's names among them.
DOCS = [f"def f(x):\n    return x.split('{name}')\n" for name in SPECIAL_TOKENS]
DOCS.append("a = '[SEP]' + '[MASK]' + '</s>'\n")

TRAINERS: dict[str, Callable[[list[str]], Tokenizer]] = {
    "bpe": lambda texts: train_bpe(texts, 400),
    "char": train_char,
}


def special_ids(tok: Tokenizer) -> set[int]:
    return set(Specials.of(tok).all_ids(tok))


def documents(flat: list[int], end: int) -> list[list[int]]:
    """``flat`` cut after each ``end`` id, which is left out."""
    docs, start = [], 0
    for i, token in enumerate(flat):
        if token == end:
            docs.append(flat[start:i])
            start = i + 1
    return docs


def bert_wordpiece() -> Tokenizer:
    """A converted BERT's tokenizer as transformers builds it (lower case, punctuation split),
    with the pieces a corpus spells its special tokens with."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "is", "big"]
    words += ["[", "]", "sep", "mask", "cls", "<", ">", "/", "s"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(words[:5])
    return tok


@pytest.mark.parametrize("kind", TRAINERS)
def test_special_strings_in_a_corpus_are_packed_as_their_characters(kind: str) -> None:
    """Every special token's string in a document is packed as text: the rows' only control
    token is the EOS that ends each document, and each document decodes to its text. The
    character vocabulary has the characters, so no unknown token stands in for "<unk>"."""
    tok = TRAINERS[kind](DOCS)
    rows, n_tokens, _, unknown = pack(DOCS, tok, row_len=1)  # one token a row: none dropped
    flat = [row[0] for row in rows["input_ids"]]
    eos = tok.token_to_id(EOS)
    assert len(flat) == n_tokens
    assert [t for t in flat if t in special_ids(tok)] == [eos] * len(DOCS)
    assert flat[-1] == eos
    assert [tok.decode(ids) for ids in documents(flat, eos)] == DOCS
    assert unknown["tokens"] == 0


def test_a_converted_tokenizers_special_strings_are_text_too() -> None:
    """A converted BERT's WordPiece reads "[SEP]" in a corpus as "[", "sep", "]", as
    transformers' ``tokenizer(text, split_special_tokens=True)`` does; [SEP], which ends each
    document of a tokenizer without EOS, is the rows' only control token."""
    tok = bert_wordpiece()
    rows = pack(["paris [SEP] is [MASK]", "big <cls> </s>"], tok, row_len=1)[0]
    tokens = [tok.id_to_token(row[0]) for row in rows["input_ids"]]
    assert tokens == (
        ["paris", "[", "sep", "]", "is", "[", "mask", "]", "[SEP]"]
        + ["big", "<", "cls", ">", "<", "/", "s", ">", "[SEP]"]
    )


EXAMPLES = [
    ("use <mask> here", "keep <sep> and <cls>"),
    ("[SEP] [MASK] <pad>", "<|endoftext|> <extra_id_0>"),
    ("plain text", "<unk> too"),
]


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_an_examples_special_strings_are_text_not_control_tokens(
    tmp_path: Path, pair: bool
) -> None:
    """A classification text (and each text of a pair) that spells "<mask>", "<sep>" or
    "[SEP]" gets no control id in its body: a batch is [CLS] text [SEP] (or [CLS] a [SEP] b
    [SEP]) with the text's characters between, and the body decodes to the text."""
    rows = [{"text": a, "text_pair": b, "label": str(i % 2)} for i, (a, b) in enumerate(EXAMPLES)]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    task = TaskConfig(
        kind=TaskKind.classify,
        source=TaskSource.files,
        train=str(train_file),
        val=str(train_file),
        text_pair_column="text_pair" if pair else None,
    )
    data = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(tmp_path / "cache"))
    dm = FinetuneDataModule(data, task, Family.bert, 64, 0)
    dm.setup()
    tok, specials = dm.tokenizer, special_ids(dm.tokenizer)
    cls_, sep = tok.token_to_id("<cls>"), tok.token_to_id(SEP)
    batch = dm.collate(dm.train_rows[: len(EXAMPLES)])
    for ids, real, (a, b) in zip(
        batch["input_ids"], batch["attention_mask"], EXAMPLES, strict=True
    ):
        ids = ids[real].tolist()
        assert ids[0] == cls_ and ids[-1] == sep
        bodies = documents(ids[1:], sep)
        assert [t for body in bodies for t in body if t in specials] == []
        assert [tok.decode(body) for body in bodies] == ([a, b] if pair else [a])


def test_a_checkpoint_wordpiece_reads_an_examples_special_strings_as_text(
    tmp_path: Path,
) -> None:
    """With a converted BERT's tokenizer (data.tokenizer=checkpoint), an example's "[SEP]"
    and "[MASK]" are "[", "sep", "]" and "[", "mask", "]": the collator's [CLS] and [SEP]
    are the row's only control tokens."""
    train_file = tmp_path / "train.jsonl"
    rows = [{"text": "paris [SEP] is [MASK]", "label": "x"}, {"text": "big", "label": "y"}]
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskConfig(
        kind=TaskKind.classify, source=TaskSource.files, train=str(train_file), val=str(train_file)
    )
    data = DataConfig(tokenizer=TokenizerKind.checkpoint, cache_dir=str(tmp_path / "cache"))
    dm = FinetuneDataModule(data, task, Family.bert, 16, 0, bert_wordpiece().to_str())
    dm.setup()
    ids = dm.collate(dm.train_rows[:1])["input_ids"][0].tolist()
    assert [dm.tokenizer.id_to_token(i) for i in ids] == (
        ["[CLS]", "paris", "[", "sep", "]", "is", "[", "mask", "]", "[SEP]"]
    )


def test_a_seq2seq_targets_sentinel_strings_are_text(tmp_path: Path) -> None:
    """A seq2seq target that spells T5's sentinel "<extra_id_0>" (or EOS) is its characters:
    the target's only control token is the EOS the collator ends it with."""
    train_file = tmp_path / "train.jsonl"
    rows = [{"input": "fill <extra_id_0>", "target": "<extra_id_0> x <|endoftext|>"}] * 2
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskConfig(
        kind=TaskKind.seq2seq, source=TaskSource.files, train=str(train_file), val=str(train_file)
    )
    data = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(tmp_path / "cache"))
    dm = FinetuneDataModule(data, task, Family.t5, 64, 0)
    dm.setup()
    tok, specials = dm.tokenizer, special_ids(dm.tokenizer)
    (source, target), _ = dm.train_rows
    assert [t for t in source + target if t in specials] == []
    assert (tok.decode(source), tok.decode(target)) == (rows[0]["input"], rows[0]["target"])
    labels = dm.collate(dm.train_rows[:1])["labels"][0].tolist()
    assert [t for t in labels if t in specials] == [tok.token_to_id(EOS)]


def test_reading_text_as_ordinary_leaves_the_tokenizer_as_it_was() -> None:
    """``encode_ordinary`` sets ``encode_special_tokens`` for its call only, also when the
    call fails: the tokenizer (which a run shares with its prompts) still reads a prompt's
    "<mask>" as the control token, its JSON (what a resume compares) is unchanged, and a
    tokenizer that had the setting on keeps it."""
    tok = train_char(DOCS)
    before = tok.to_str()
    mask = tok.token_to_id(MASK)
    assert mask not in encode_ordinary(tok, ["a <mask> b"])[0].ids
    assert encode(tok, MASK) == [mask] and tok.to_str() == before
    with pytest.raises(TypeError):
        encode_ordinary(tok, [1])  # type: ignore[list-item]
    assert tok.encode_special_tokens is False and encode(tok, MASK) == [mask]
    tok.encode_special_tokens = True
    encode_ordinary(tok, ["a"])
    assert tok.encode_special_tokens is True


def test_the_cached_rows_and_tokenizer_of_a_corpus_that_spells_specials(tmp_path: Path) -> None:
    """``prepare`` on a corpus full of special-token strings: the rows hold EOS as their only
    control token; the tokenizer saved with them is the one in ``tok-*``, the same JSON as one
    trained afresh, with no ``encode_special_tokens`` saved in it, and reads a prompt's
    "<mask>" as the control token."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(DOCS) * 4)
    cfg = DataConfig(
        source=Source.text,
        path=str(corpus),
        cache_dir=str(tmp_path / "c"),
        tokenizer=TokenizerKind.char,
    )
    blocks = prepare(cfg, row_len=8)
    saved = (blocks / "tokenizer.json").read_text()
    (tok_file,) = (tmp_path / "c").glob("tok-*/tokenizer.json")
    assert saved == tok_file.read_text()
    assert "encode_special_tokens" not in saved
    tok = Tokenizer.from_str(saved)
    assert json.loads(saved) == json.loads(train_char(["".join(DOCS) * 4]).to_str())
    assert tok.encode_special_tokens is False and encode(tok, MASK) == [tok.token_to_id(MASK)]
    for split in ("train", "val"):
        flat = [t for row in datasets.load_from_disk(str(blocks / split))["input_ids"] for t in row]
        assert {t for t in flat if t in special_ids(tok)} <= {tok.token_to_id(EOS)}


def test_rows_packed_before_ordinary_text_are_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows cached by a version that read "<sep>" in a corpus as the control token (cache
    version 1) are not the rows a run now gets: the cache key moved with the encoding."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("x = '<sep>'\n" * 40)
    cfg = DataConfig(
        source=Source.text,
        path=str(corpus),
        cache_dir=str(tmp_path / "c"),
        tokenizer=TokenizerKind.char,
    )

    def with_specials(tok: Tokenizer, texts: list[str]) -> list:
        return tok.encode_batch(texts, add_special_tokens=False)

    with monkeypatch.context() as old:  # as version 1 built them
        old.setattr(packing, "CACHE_VERSION", 1)
        old.setattr(packing, "encode_ordinary", with_specials)
        stale = prepare(cfg, row_len=8)
    blocks = prepare(cfg, row_len=8)
    tok = Tokenizer.from_str((blocks / "tokenizer.json").read_text())
    sep = tok.token_to_id(SEP)
    assert sep in datasets.load_from_disk(str(stale / "train"))["input_ids"][0]  # the old rows
    for split in ("train", "val"):
        assert all(
            sep not in row for row in datasets.load_from_disk(str(blocks / split))["input_ids"]
        )
