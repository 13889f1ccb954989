"""Corpus loading, tokenizers, packing cache, split and the resumable sampler."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
import zlib
from pathlib import Path
from unittest.mock import Mock

import datasets
import pytest
import torch
from tokenizers import decoders

from lmlab.config import DataConfig, Family, Source, TokenizerKind
from lmlab.config.locks import hold_folder
from lmlab.data import abandoned, packing
from lmlab.data.datamodule import LMDataModule
from lmlab.data.examples import file_version
from lmlab.data.packing import first_tokens, pack, prepare
from lmlab.data.sampler import ResumableSampler
from lmlab.data.sources import fingerprint, load_documents, stdlib_files
from lmlab.data.splits import split_documents
from lmlab.data.tokenizer import (
    EOS,
    MASK,
    SPECIAL_TOKENS,
    TRAIN_WORD_BYTES,
    Specials,
    encode,
    prompt_ids,
    train_bpe,
    train_char,
    training_words,
)
from lmlab.errors import ConfigError, disk_full, write_error_words
from lmlab.train.compose import compose_train

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 50


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def text_cfg(path: Path, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(source=Source.text, path=str(path), cache_dir=str(tmp_path / "c"), **kw)


def test_stdlib_corpus_is_found_without_download() -> None:
    files = stdlib_files()
    assert len(files) > 300
    assert any(f.name == "functools.py" for f in files)
    assert not any("site-packages" in f.parts or "test" in f.parts for f in files)


def test_tiny_shakespeare_ships_with_the_repository() -> None:
    """nanoGPT's char-level corpus needs no download and no file outside the repository."""
    (doc,) = load_documents(DataConfig(source=Source.shakespeare))
    assert doc[0] == "tinyshakespeare.txt" and len(doc[1]) == 1_115_394
    assert doc[1].startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


def test_a_bpe_that_runs_out_of_merges_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A corpus too small for ``data.vocab_size``: the tokenizer stops short, and a sweep over
    the size would train one tokenizer many times, so the run says so."""
    with caplog.at_level(logging.WARNING, logger="lmlab.data.tokenizer"):
        small = train_bpe(["ab ab ba"], vocab_size=2000)
        varied = " ".join(f"n{i * 7919 % 10007}" for i in range(3000))  # merges to spare
        assert train_bpe([varied], vocab_size=400).get_vocab_size() == 400
    assert small.get_vocab_size() < 2000
    assert caplog.messages == [
        f"BPE stopped at {small.get_vocab_size()} of data.vocab_size=2000 tokens: the corpus has "
        "no more merges to learn, so a larger data.vocab_size trains the same tokenizer"
    ]


def test_bpe_round_trips_any_text_and_carries_special_tokens() -> None:
    tok = train_bpe([TEXT], vocab_size=400)
    for s in (TEXT[:200], "ünïcödé ✓ 日本"):
        assert tok.decode(tok.encode(s).ids) == s
    assert all(tok.token_to_id(t) is not None for t in SPECIAL_TOKENS)


def test_bpe_trains_on_a_long_word_in_pieces_and_encodes_it_whole() -> None:
    """BPE's trainer rescans every word holding the pair it merges, so a one-line DNA sequence
    (one "word" of 2 MB) did not train in 5 minutes. It counts pairs in pieces of at most
    ``TRAIN_WORD_BYTES``: here a 20,000-letter word, whose every merge doubles a token, learns no
    token longer than a piece (uncut, one of 512 bytes). The tokenizer then
    encodes whole words, and the word round-trips; an ordinary word is never cut."""
    word = "ACGT" * 5000
    tok = train_bpe([word + " " + TEXT], vocab_size=400)
    # a byte-level token spells each byte as one character
    assert max(len(t) for t in tok.get_vocab() if t not in SPECIAL_TOKENS) == TRAIN_WORD_BYTES
    assert tok.decode(tok.encode(word).ids) == word
    assert tok.pre_tokenizer.pre_tokenize_str(word) == [(word, (0, len(word)))]


# Words past TRAIN_WORD_BYTES whose byte limit falls inside a character: 3-byte CJK (the 86th
# ends at byte 258), 4-byte emoji after a 1-byte mark and 2-byte letters after a 1-byte one.
LONG_WORDS = ["一丁七" * 100, "!" + "\U0001f600" * 100, "x" + "\u00e9" * 300]


@pytest.mark.parametrize("word", LONG_WORDS, ids=["cjk", "emoji", "latin"])
def test_bpe_training_cuts_a_long_word_between_characters(word: str) -> None:
    """BPE's trainer counts pairs in pieces of a long word (``training_words``); each piece
    ends where a character does, so no piece starts with a character's tail (a cut at byte
    256 split the 86th character of a CJK run, and its last two bytes became a token of the
    vocabulary). Each piece is at most TRAIN_WORD_BYTES bytes (one byte-level symbol per
    byte), at most 3 short of it, and the pieces are the word; the trained tokenizer
    round-trips it."""
    pieces = [piece for piece, _ in training_words().pre_tokenize_str(word)]
    texts = [decoders.ByteLevel().decode([piece]) for piece in pieces]
    assert "".join(texts) == word and not any("\ufffd" in t for t in texts), texts
    assert all(TRAIN_WORD_BYTES - 3 <= len(p) <= TRAIN_WORD_BYTES for p in pieces[:-1])
    tok = train_bpe([word, TEXT], vocab_size=400)
    assert tok.decode(tok.encode(word).ids) == word


def test_char_tokenizer_round_trips_and_maps_unseen_chars_to_unk() -> None:
    tok = train_char([TEXT])
    assert tok.decode(tok.encode(TEXT[:100]).ids) == TEXT[:100]
    assert tok.get_vocab_size() == len(SPECIAL_TOKENS) + len(set(TEXT))
    assert tok.encode("Z").ids == [tok.token_to_id("<unk>")]


def test_packing_counts_the_text_a_tokenizer_has_no_token_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A character vocabulary reads a character it never saw as ``<unk>``: ``pack`` records
    how often and for what, a data module built on those rows warns, and byte-level BPE,
    which has a token for every byte, records none."""
    tok = train_char(["abc "])
    rows, n_tokens, _, unknown = pack(["abcé 日", "éé"], tok, row_len=2)
    assert n_tokens == 10  # 6 + 2 characters and each document's EOS
    assert unknown == {"tokens": 4, "kinds": 2, "pieces": {"é": 3, "日": 1}}
    assert pack(["abcé 日"], train_bpe([TEXT], 400), row_len=2)[3]["tokens"] == 0
    # the first batch of 1000 documents has none: the later one's are counted all the same
    assert pack(["abc"] * 1000 + ["é"], tok, row_len=2)[3]["pieces"] == {"é": 1}
    corpus = write(tmp_path / "a.txt", (TEXT[:3000] + "é" * 40).encode())  # é in val only
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char, val_fraction=0.1)
    caplog.clear()  # BPE's own warning: it ran out of merges
    with caplog.at_level(logging.WARNING, logger="lmlab.data.tokenizer"):
        LMDataModule(cfg, Family.gpt, 8, 0).setup()
    assert len(caplog.messages) == 1 and re.fullmatch(
        r"40 of the \d+ tokens of the val split of data.source=text \([\d.]+%\) are the "
        r"tokenizer's unknown token, standing for text it has no token for \('é' x\d+\).*",
        caplog.messages[0],
    )


def test_packed_rows_are_the_whole_stream_cut_once() -> None:
    """Rows were cut per batch of 1000 documents, each batch's tail dropped: a file of short
    lines (a document a line, as ``data=hf`` reads a .txt) lost 18% of its tokens at a row of
    1025, and a split of more than one row's tokens could be refused as fewer than one row.
    Now only the stream's last, partial row is dropped, and the rows laid end to end are the
    stream."""
    tok = train_char(["ab"])
    document = [tok.token_to_id("a"), tok.token_to_id("b"), tok.token_to_id(EOS)]
    rows, n_tokens, _, _ = pack(["ab"] * 1500, tok, row_len=16)
    assert n_tokens == 3 * 1500
    assert len(rows) == n_tokens // 16
    stream = torch.tensor(rows["input_ids"]).reshape(-1).tolist()
    assert stream == (document * 1500)[: len(stream)]
    # 2 x 1000 documents of 3 tokens: 6000 tokens, 1 row of 4096; cut per batch, none
    assert len(pack(["ab"] * 2000, tok, row_len=4096)[0]) == 1


def test_a_tokenizer_without_eos_separates_documents_with_sep() -> None:
    """BERT's WordPiece has no EOS: packing refused it ("packing documents needs a eos token"),
    so a converted BERT could not continue masked-LM pre-training. Its documents now end with
    [SEP], as BERT's pre-training segments do; one with neither token is still refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "is", "big"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(words[:5])
    rows = pack(["paris is big", "paris"], tok, row_len=6)[0]
    assert rows["input_ids"][0] == [5, 6, 7, 3, 5, 3]
    bare = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    bare.add_special_tokens(["[UNK]"])
    with pytest.raises(ConfigError, match="packing documents needs a eos token"):
        pack(["a"], bare, row_len=2)


def test_a_prompt_starts_as_a_packed_document_does() -> None:
    """Generation and the end-of-run sample read a prompt as ``pack`` wrote a document's
    start: after BOS where the tokenizer adds one (a converted Llama's), else as the text;
    an empty prompt without BOS is the EOS a document follows. A tokenizer that has ``<s>``
    but does not put it before a text (its ``tok(text)`` starts without) has no BOS."""
    from tokenizers import processors

    tok = train_char([TEXT])
    assert prompt_ids(tok, "def") == encode(tok, "def")
    assert prompt_ids(tok, "") == [tok.token_to_id(EOS)]
    tok.add_special_tokens(["<s>"])
    bos = tok.token_to_id("<s>")
    assert prompt_ids(tok, "def") == encode(tok, "def")  # <s> is there, not added
    assert pack(["def"], tok, row_len=2)[0]["input_ids"][0] == encode(tok, "def")[:2]
    template = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.post_processor = template
    assert prompt_ids(tok, "def") == [bos, *encode(tok, "def")]
    assert prompt_ids(tok, "") == [bos]
    packed = pack(["def"], tok, row_len=2)[0]["input_ids"][0]
    assert packed == prompt_ids(tok, "def")[:2]


def test_a_bos_under_a_name_of_its_own_starts_documents_and_prompts() -> None:
    """The token a tokenizer puts before a text is its BOS whatever its name (DeepSeek's
    ``<｜begin▁of▁sentence｜>``), as Llama's ``<s>`` is: packed documents and prompts start
    with it (lmlab knew a BOS by name only, and left this one out). Rows packed with it are
    keyed apart from the rows an earlier lmlab packed without it (``first_tokens``); a
    tokenizer without BOS keeps its rows' key."""
    from tokenizers import processors

    tok = train_char([TEXT])
    name = "<｜begin▁of▁sentence｜>"
    tok.add_special_tokens([name])
    assert Specials.of(tok).bos is None and first_tokens(tok.to_str()) == []
    bos = tok.token_to_id(name)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{name} $A", special_tokens=[(name, bos)]
    )
    assert Specials.of(tok).bos == name
    assert prompt_ids(tok, "def") == [bos, *encode(tok, "def")]
    assert pack(["def"], tok, row_len=2)[0]["input_ids"][0] == [bos, *encode(tok, "d")]
    assert first_tokens(tok.to_str()) == [f"documents start with {name}"]


def word_tokenizer(vocab: list[str], template: str | None, specials: list[str]) -> object:
    """A tokenizer of ``vocab``'s characters, without an unknown token (a character it lacks is
    left out), whose post-processor frames a text by ``template`` (``<s> $A``); ``specials``:
    the tokens it marks special."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE({v: i for i, v in enumerate(vocab)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    if template:
        framing = [(t, vocab.index(t)) for t in template.split() if t != "$A"]
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=framing)
    return tok


DNA = ["<s>", "</s>", "G", "A", "T", "C"]


@pytest.mark.parametrize(
    "template,specials,bos,eos",
    [
        ("<s> $A", ["<s>", "</s>"], "<s>", "</s>"),  # a vocabulary without "a" (DNA's)
        ("<s> $A", [], "<s>", "</s>"),  # no token marked special: the vocabulary is read
        ("</s> $A", ["<s>", "</s>"], "</s>", "</s>"),  # its EOS first too (OPT's)
        ("<s> $A </s>", ["<s>", "</s>"], "<s>", "</s>"),
        ("$A </s>", ["<s>", "</s>"], None, "</s>"),  # T5's
        (None, ["<s>", "</s>"], None, "</s>"),  # declares <s>, puts none before a text
    ],
)
def test_bos_is_the_token_a_tokenizer_puts_before_a_text(
    template: str | None, specials: list[str], bos: str | None, eos: str
) -> None:
    """Whatever the tokenizer reads and whatever else the token is: a vocabulary that cannot
    encode "a" or marks no token special lost its BOS, and an EOS put before a text was no
    BOS (lmlab's prompts and documents then started otherwise than ``tok(text)``). A
    document is packed as ``tok(text)`` and its end are."""
    tok = word_tokenizer(DNA, template, specials)
    assert (Specials.of(tok).bos, Specials.of(tok).eos) == (bos, eos)
    text = "G A T"
    expected = tok.encode(text).ids
    if template and template.endswith("</s>"):
        expected = expected[:-1]  # a prompt is a text's start: no end after it
    assert prompt_ids(tok, text) == expected
    assert pack([text], tok, row_len=4)[0]["input_ids"][0] == [*expected, DNA.index(eos)][:4]


def test_bert_and_deepseek_tokenizers_take_their_roles_by_name() -> None:
    """BERT's [CLS], which its tokenizer puts before a text, is no BOS; DeepSeek's
    ``<｜end▁of▁sentence｜>`` is its EOS (a converted DeepSeek could not be trained on text:
    "packing documents needs a eos token")."""
    bert = word_tokenizer(["[CLS]", "[SEP]", "a"], "[CLS] $A [SEP]", ["[CLS]", "[SEP]"])
    assert (Specials.of(bert).bos, Specials.of(bert).cls) == (None, "[CLS]")
    names = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "a"]
    deepseek = word_tokenizer(names, f"{names[0]} $A", names[:2])
    assert (Specials.of(deepseek).bos, Specials.of(deepseek).eos) == tuple(names[:2])
    assert pack(["a a"], deepseek, row_len=4)[0]["input_ids"][0] == [0, 2, 2, 1]


def test_vocab_too_small_for_bytes_and_special_tokens() -> None:
    with pytest.raises(ConfigError, match=r"data.vocab_size=100 is too small.*at least 362"):
        train_bpe([TEXT], vocab_size=100)


def test_a_corpus_folder_follows_links_to_folders_once_each(tmp_path: Path) -> None:
    """A corpus assembled from links: a link to a folder is read like the folder (it was left
    out, unsaid), and a link back up the tree is no loop."""
    write(tmp_path / "more" / "b.txt", b"bee\n")
    corpus = tmp_path / "corpus"
    write(corpus / "a.txt", b"ay\n")
    (corpus / "more").symlink_to(tmp_path / "more")
    (corpus / "more_again").symlink_to(tmp_path / "more")  # the same folder by another name
    (corpus / "up").symlink_to(corpus)
    docs = load_documents(text_cfg(corpus, tmp_path))
    assert sorted(docs) == [("a.txt", "ay\n"), ("more/b.txt", "bee\n")]


def test_a_file_linked_twice_in_a_corpus_folder_is_one_document(tmp_path: Path) -> None:
    """A file beside a symbolic or a hard link to it is one document, under its first name:
    read twice, the split held out one copy for validation and trained on the other (a folder
    of 25 files and a link to each held out 3 documents, every one of them trained on)."""
    corpus = tmp_path / "corpus"
    for i in range(25):
        write(corpus / f"d{i:02}.txt", f"document {i}\n".encode() * 20)
        (corpus / f"s{i:02}.txt").symlink_to(corpus / f"d{i:02}.txt")
        os.link(corpus / f"d{i:02}.txt", corpus / f"h{i:02}.txt")
    docs = load_documents(text_cfg(corpus, tmp_path))
    assert [name for name, _ in docs] == [f"d{i:02}.txt" for i in range(25)]
    train, val = split_documents(docs, 0.05)
    assert val and not set(val) & set(train)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing.txt", r"data.path='.*missing.txt' does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", r"is an empty folder"),
        (lambda d: write(d / "h" / ".git" / "x", b"x").parent.parent, r"holds no text files: hid"),
        (lambda d: os.mkfifo(d / "fifo") or d / "fifo", r"is neither a file nor a folder \(a pi"),
        (lambda d: write(d / "e.txt", b""), r"holds no text: empty corpus"),
        (
            lambda d: write(d / "b.bin", b"\xff\xfe\x00abc"),
            r"'.*b.bin' is not UTF-8 text \(invalid byte at offset 0\)",
        ),
        (  # every file that is not text, named at once: four, then a count
            lambda d: [write(d / "pngs" / f"{n}.png", b"a\xff") for n in "uvwxyz"][0].parent,
            r"6 files are not UTF-8 text: '.*u.png' \(offset 1\), .*, '.*x.png' \(offset 1\) "
            r"and 2 more; allowed: UTF-8 text files$",
        ),
    ],
)
def test_bad_data_paths_get_clear_errors(tmp_path: Path, setup, message: str) -> None:
    path = setup(tmp_path)
    with pytest.raises(ConfigError, match=message):
        prepare(text_cfg(path, tmp_path), row_len=9)


def test_a_cache_that_is_the_corpus_folder_is_refused(tmp_path: Path) -> None:
    """The cache's entries (tokenizers, rows) in the corpus folder itself would be read as
    corpus by the next run: refused before anything is written (one inside it is left out:
    tests/data/test_data_inputs.py)."""
    write(tmp_path / "c" / "a.txt", TEXT.encode())
    with pytest.raises(ConfigError, match=r"data.cache_dir='.*/c' is the corpus folder data.pa"):
        prepare(text_cfg(tmp_path / "c", tmp_path), row_len=9)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["a.txt"]


def test_a_byte_order_mark_is_not_read_as_text(tmp_path: Path) -> None:
    """A UTF-8 file an editor saved with a byte-order mark: the mark is not a character of
    the corpus (it became a token), in the file's first line only."""
    corpus = write(tmp_path / "bom.txt", "\ufeffdef f():\n    return '\ufeff'\n".encode())
    assert load_documents(text_cfg(corpus, tmp_path)) == [
        ("bom.txt", "def f():\n    return '\ufeff'\n")
    ]


def test_windows_line_ends_read_as_the_same_text(tmp_path: Path) -> None:
    """A corpus saved with CRLF (Windows, Project Gutenberg) or a lone CR reads as its copy with
    LF, as Python's text mode reads it: the CRs were tokens, and bytes that deflated its bits
    per byte."""
    unix = "def f():\n    return 1\n\nx = f()\n"
    write(tmp_path / "crlf" / "a.py", unix.replace("\n", "\r\n").encode())
    write(tmp_path / "cr" / "a.py", unix.replace("\n", "\r").encode())
    for folder in ("crlf", "cr"):
        assert load_documents(text_cfg(tmp_path / folder, tmp_path)) == [("a.py", unix)]


def test_a_folder_of_text_leaves_out_hidden_folders_and_byte_code(tmp_path: Path) -> None:
    """A project checkout as ``data.path``: its ``.git`` (binary index and objects), hidden
    folders and ``__pycache__`` are not read (they are not UTF-8 text)."""
    project = tmp_path / "project"
    write(project / "src" / "a.py", b"def a():\n    return 1\n")
    write(project / "README.md", b"# a project\n")
    for binary in (".git/index", ".venv/lib/x.so", "src/__pycache__/a.cpython-311.pyc"):
        write(project / binary, b"\xff\xfe\x00binary")
    write(project / ".hidden" / "notes.txt", b"not for training")
    docs = load_documents(text_cfg(project, tmp_path))
    assert sorted(name for name, _ in docs) == ["README.md", "src/a.py"]


def test_max_bytes_cuts_the_document_that_crosses_it(tmp_path: Path) -> None:
    """``data.max_bytes`` (``+debug=smoke``'s 1 MB slice) is at most that many bytes: the
    document that crosses it is cut at its last line end under the limit, or, without one, at
    the limit, moved back to a character's start, and is the last. A 5 MB single file was
    read whole. Documents that end under the limit are kept whole, as before."""
    lines = "".join(f"line {i:04d}\n" for i in range(500)).encode()  # 10 bytes a line
    one = write(tmp_path / "one" / "big.txt", lines)
    assert load_documents(text_cfg(one, tmp_path, max_bytes=1234)) == [
        ("big.txt", lines[:1230].decode())
    ]
    no_newline = write(tmp_path / "wide" / "w.txt", "é".encode() * 1000)  # 2 bytes a char
    assert load_documents(text_cfg(no_newline, tmp_path, max_bytes=999)) == [("w.txt", "é" * 499)]
    folder = tmp_path / "many"
    write(folder / "a.txt", lines[:600])
    write(folder / "b.txt", lines[:2000])
    write(folder / "c.txt", lines[:50])
    cut = load_documents(text_cfg(folder, tmp_path, max_bytes=1000))
    assert cut == [("a.txt", lines[:600].decode()), ("b.txt", lines[:400].decode())]
    write(folder / "b.txt", lines[:400])  # ends at the limit: whole, and c.txt is not read
    assert load_documents(text_cfg(folder, tmp_path, max_bytes=1000)) == cut
    one_more = load_documents(text_cfg(folder, tmp_path, max_bytes=1001))
    assert one_more == [*cut, ("c.txt", "l")]  # 1 byte left and no line end in it: 1 byte
    prints = {fingerprint(text_cfg(one, tmp_path, max_bytes=m)) for m in (1000, 2000, None)}
    assert len(prints) == 3  # each slice is its own cache entry


def test_max_bytes_cuts_a_hub_document_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    text = "".join(f"row {i:05d}\n" for i in range(500))  # 10 bytes a line
    hub = datasets.Dataset.from_dict({"text": [text, "never read\n"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kw: hub)
    cfg = DataConfig(source=Source.hf, name="someone/corpus", max_bytes=1234)
    assert load_documents(cfg) == [("someone/corpus:0", text[:1230])]


def test_a_refused_corpus_leaves_no_half_built_rows_in_the_cache(tmp_path: Path) -> None:
    corpus = write(tmp_path / "tiny.txt", b"x = 1\n" * 40)
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char)
    with pytest.raises(ConfigError, match=r"the val split .* row of 64: .* data.seq_len \(now "):
        prepare(cfg, row_len=64)  # the train split is packed and saved first
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".tmp")] == []


def test_a_stop_while_the_tokenizer_is_cached_leaves_no_half_built_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM, which raises there) after the tokenizer's entry was made and before
    it was published left an empty ``.tmp-*`` folder in the cache for good."""
    corpus = write(tmp_path / "tiny.txt", b"x = 1\n" * 400)
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char)

    read = packing.read_tokenizer

    def stopped(path: Path):  # the new entry's copy is read before it is published
        if path.parent.name.startswith(".tmp-"):
            raise KeyboardInterrupt
        return read(path)

    monkeypatch.setattr(packing, "read_tokenizer", stopped)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, row_len=9)
    assert list((tmp_path / "c").iterdir()) == []


def test_a_build_a_kill_left_in_the_cache_is_removed_by_the_next_one(tmp_path: Path) -> None:
    """A ``kill -9`` (or the out-of-memory killer) while the rows were built left the build's
    folder, as large as the rows tokenized so far, in the cache for good. The next build
    removes it, and a discard cut short; it leaves a build still held, one made this minute
    (its builder may not have locked it yet), and another machine's (a shared cache)."""
    corpus = write(tmp_path / "tiny.txt", b"x = 1\n" * 400)
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char)
    cache = tmp_path / "c"
    here = abandoned.building_prefix()
    names = [f"{here}killed", f"{here}held", f"{here}young", ".tmp-elsewhere-killed"]
    names.append(f"{abandoned.STALE}blocks-0-123")
    for name in names:
        write(cache / name / "train" / "data-00000-of-00001.arrow", b"rows" * 1000)
    old = time.time() - abandoned.YOUNG_S - 1
    for name in names:
        if name != f"{here}young":
            os.utime(cache / name, (old, old))
    held = hold_folder(cache / f"{here}held")  # a live build's, in another process
    assert held is not None
    try:
        prepare(cfg, row_len=9)
    finally:
        os.close(held)
    left = sorted(p.name for p in cache.iterdir() if not p.name.startswith(("tok-", "blocks-")))
    assert left == sorted([f"{here}held", f"{here}young", ".tmp-elsewhere-killed"])


def test_split_is_deterministic_and_disjoint() -> None:
    docs = [(f"doc{i}.py", f"text {i}") for i in range(200)]
    train, val = split_documents(docs, 0.1)
    assert split_documents(list(reversed(docs)), 0.1)[1] == list(reversed(val))
    assert 5 < len(val) < 40 and len(train) + len(val) == 200
    one_book = [("book", "x" * 1000)]
    assert [len(t) for t in split_documents(one_book, 0.1)[1]] == [100]


def test_a_document_larger_than_the_validation_share_is_not_held_out_whole() -> None:
    """One large book among small files, first in the order of the names' hash: it was held
    out whole, 81% of the text for validation at val_fraction=0.05. Validation holds the
    fraction asked for and less than twice it; where only documents larger than the share
    could give it, each document is split inside instead."""
    names = sorted((f"f{i:02d}.txt" for i in range(25)), key=lambda n: zlib.crc32(n.encode()))
    docs = [
        (name, ("y" if i == 0 else "x") * (30000 if i == 0 else 300))
        for i, name in enumerate(names)
    ]
    train, val = split_documents(docs, 0.05)
    share = sum(map(len, val)) / sum(len(t) for _, t in docs)
    assert 0.05 <= share < 0.1 and "y" * 30000 in train
    assert sum(map(len, train)) + sum(map(len, val)) == sum(len(t) for _, t in docs)
    equal = [(name, "z" * 100) for name in names[:20]]  # each 5% of the text: over 4%
    train, val = split_documents(equal, 0.04)
    assert [len(t) for t in val] == [4] * 20 and [len(t) for t in train] == [96] * 20


def test_file_names_that_are_not_utf8_are_read(tmp_path: Path) -> None:
    """A corpus folder unpacked from an old archive holds ``café.txt`` named in Latin-1:
    Python holds the name's byte 0xE9 as a lone surrogate, and encoding the name for the
    split's hash and the text's digest was a UnicodeEncodeError traceback."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(25):  # 20 or more: split by the names' hash
        name = os.path.join(os.fsencode(folder), f"caf{i:02d}\xe9.txt".encode("latin-1"))
        with open(name, "wb") as f:
            f.write(f"text of file {i}\n".encode() * 20)
    cfg = text_cfg(folder, tmp_path, tokenizer=TokenizerKind.char)
    docs = load_documents(cfg)
    assert len(docs) == 25 and os.fsencode(docs[0][0]) == b"caf00\xe9.txt"
    train, val = split_documents(docs, 0.1)
    assert 0 < len(val) < 25 and len(train) + len(val) == 25
    assert (prepare(cfg, row_len=9) / "meta.json").is_file()


def test_cache_entries_follow_the_umask_and_an_empty_cache_dir_is_refused(tmp_path: Path) -> None:
    """Entries were built in mkdtemp's 0700 folders, so a cache shared by a group failed for
    its other users with a PermissionError traceback; they follow the umask now. An empty
    ``data.cache_dir`` (``LMLAB_CACHE=``) put the cache into the working directory."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    old = os.umask(0o022)
    try:
        prepare(text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char), row_len=17)
    finally:
        os.umask(old)
    entries = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert entries and all(p.stat().st_mode & 0o777 == 0o755 for p in entries), entries
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="data.cache_dir is empty"):
            DataConfig(cache_dir=empty)


def test_packed_cache_is_reused_and_rebuilt_on_change(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char)
    first = prepare(cfg, row_len=17)
    assert prepare(cfg, row_len=17) == first
    assert prepare(cfg, row_len=33) != first  # row length is part of the key
    corpus.write_text(TEXT + "more text\n")
    second = prepare(cfg, row_len=17)
    assert second != first  # a changed corpus rebuilds
    # rewritten with its size and both times kept (touch -r): rebuilt too, not stale rows
    kept = corpus.stat()
    corpus.write_text(TEXT.replace("Point", "Spot!") + "more text\n")
    os.utime(corpus, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    while corpus.stat().st_ctime_ns == kept.st_ctime_ns:  # a filesystem of coarse times
        time.sleep(0.01)
        os.utime(corpus, ns=(kept.st_atime_ns, kept.st_mtime_ns))  # sets the change time
    assert corpus.stat().st_size == kept.st_size and corpus.stat().st_mtime_ns == kept.st_mtime_ns
    assert prepare(cfg, row_len=17) not in (first, second)


@pytest.mark.parametrize("source", [Source.text, Source.hf])
def test_every_spelling_of_a_local_corpus_is_one_cache_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: Source
) -> None:
    """``x.jsonl``, ``./x.jsonl``, its absolute path and a path through another folder name
    one file: one tokenizer and one set of rows (each spelling trained its own), and one
    ``datasets`` copy of an example file. The same words in another folder are another file."""
    lines = "".join(json.dumps({"text": f"line {i}: {TEXT[:60]}"}) + "\n" for i in range(40))
    corpus = write(tmp_path / "d" / "x.jsonl", lines.encode())
    write(tmp_path / "e" / "x.jsonl", lines.encode())  # a copy: another file
    field = "path" if source == Source.text else "name"
    cache = tmp_path / "c"

    def cfg(path: str) -> DataConfig:
        return DataConfig(source=source, cache_dir=str(cache), tokenizer=TokenizerKind.char,
                          **{field: path})  # fmt: skip

    monkeypatch.chdir(tmp_path / "d")
    spellings = ["x.jsonl", "./x.jsonl", str(corpus), "../e/../d/x.jsonl"]
    assert len({fingerprint(cfg(path)) for path in spellings}) == 1
    assert len({file_version(Path(path)) for path in spellings}) == 1
    rows = {prepare(cfg(path), row_len=17) for path in spellings}
    assert len(rows) == 1
    assert len([entry for entry in cache.iterdir() if entry.name.startswith("tok-")]) == 1
    monkeypatch.chdir(tmp_path / "e")
    assert fingerprint(cfg("./x.jsonl")) != fingerprint(cfg(str(corpus)))


def test_a_cache_this_datasets_cannot_read_is_built_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows written by another ``datasets`` can fail to load deep inside ``datasets.features``
    (seen: 2.19 reading 5.2's cache, a TypeError through Hydra's traceback). Simulated with a
    feature type this version does not know: the rows are built again from the corpus, the
    same rows, with a warning naming the folder and the version that wrote them."""
    import datasets

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char, batch_size=3)
    dm = LMDataModule(cfg, Family.gpt, seq_len=16, seed=0)
    dm.setup()
    assert dm.meta["datasets"] == datasets.__version__
    info = dm.blocks_dir / "train" / "dataset_info.json"
    record = json.loads(info.read_text())
    record["features"]["input_ids"]["_type"] = "FeatureFromTheFuture"
    info.write_text(json.dumps(record))
    again = LMDataModule(cfg, Family.gpt, seq_len=16, seed=0)
    with caplog.at_level(logging.WARNING):
        again.setup()
    assert again.blocks_dir == dm.blocks_dir
    assert torch.equal(again.train_rows.rows, dm.train_rows.rows)
    assert torch.equal(again.val_rows.rows, dm.val_rows.rows)
    assert json.loads(info.read_text())["features"]["input_ids"]["_type"] != "FeatureFromTheFuture"
    message = (
        f"the packed rows cached in {dm.blocks_dir / 'train'} cannot be read by datasets "
        f"{datasets.__version__} ("  # the error's type depends on the version
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(message), warned
    assert warned[0].endswith(
        f"they were written by datasets {datasets.__version__}: building them again from the corpus"
    )
    assert [p.name for p in Path(cfg.cache_dir).iterdir() if p.name.startswith(".")] == []


def test_discarding_a_cache_entry_twice_is_harmless(tmp_path: Path) -> None:
    """Two processes (DDP ranks) that both find the rows unreadable both discard them."""
    from lmlab.data.packing import discard

    entry = tmp_path / "blocks-x"
    (entry / "train").mkdir(parents=True)
    discard(entry)
    discard(entry)
    assert list(tmp_path.iterdir()) == []


def char_module(corpus: Path, cache: Path, seq_len: int = 16) -> LMDataModule:
    cfg = DataConfig(
        source=Source.text, path=str(corpus), cache_dir=str(cache), tokenizer=TokenizerKind.char
    )
    return LMDataModule(cfg, Family.gpt, seq_len=seq_len, seed=0)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_moved_or_copied_cache_is_used_where_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each entry holds its own tokenizer: after ``mv cacheA cacheB`` (or a copy, the first
    one removed) the rows are read from the new place as they are, not rebuilt. Entries
    named their tokenizer by an absolute path, which then failed with a traceback."""
    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    first = char_module(corpus, tmp_path / "a")
    first.setup()
    (tmp_path / "a").rename(tmp_path / "b")
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    shutil.rmtree(tmp_path / "b")
    moved = char_module(corpus, tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        moved.setup()
    assert warnings_of(caplog) == [] and moved.blocks_dir.name == first.blocks_dir.name
    assert torch.equal(moved.train_rows.rows, first.train_rows.rows)
    assert moved.tokenizer.to_str() == first.tokenizer.to_str()


def test_an_entry_written_before_it_held_its_tokenizer_reads_the_one_beside_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries written by earlier lmlab name the cache's ``tok-*`` entry by an absolute path.
    In a moved cache that folder is found by its name; gone too, the rows are built again,
    with a warning, not a traceback."""
    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    first = char_module(corpus, tmp_path / "a")
    first.setup()
    entry = first.blocks_dir
    meta = json.loads((entry / "meta.json").read_text())
    (tok_dir,) = (tmp_path / "a").glob("tok-*")
    meta["tokenizer"] = str(tok_dir / "tokenizer.json")  # as earlier lmlab wrote it
    (entry / "meta.json").write_text(json.dumps(meta))
    (entry / "tokenizer.json").unlink(missing_ok=True)  # earlier lmlab wrote none
    (tmp_path / "a").rename(tmp_path / "b")
    with caplog.at_level(logging.WARNING):
        moved = char_module(corpus, tmp_path / "b")
        moved.setup()
        assert warnings_of(caplog) == []
        assert not (tmp_path / "b" / entry.name / "tokenizer.json").exists()  # not rebuilt
        assert torch.equal(moved.train_rows.rows, first.train_rows.rows)
        shutil.rmtree(tmp_path / "b" / tok_dir.name)
        rebuilt = char_module(corpus, tmp_path / "b")
        rebuilt.setup()
    (warned,) = warnings_of(caplog)
    assert warned.startswith(f"the packed rows cached in {tmp_path / 'b' / entry.name} cannot")
    assert warned.endswith(": building them again from the corpus")
    assert torch.equal(rebuilt.train_rows.rows, first.train_rows.rows)
    assert (tmp_path / "b" / entry.name / "tokenizer.json").exists()


@pytest.mark.parametrize(
    ("damaged", "why"),
    [
        ("meta.json", "meta.json is damaged or gone (JSONDecodeError: "),
        ("tokenizer.json", "tokenizer.json cannot be read (Exception: "),
    ],
)
def test_a_damaged_entry_is_built_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damaged: str, why: str
) -> None:
    """A ``meta.json`` or ``tokenizer.json`` cut short (a full disk, a killed copy) was a
    traceback on every run; it is now what unreadable rows are: a warning naming the entry,
    which is discarded and built again, the same rows."""
    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    first = char_module(corpus, tmp_path / "c")
    first.setup()
    (first.blocks_dir / damaged).write_text("{garbage")
    again = char_module(corpus, tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        again.setup()
    (warned,) = warnings_of(caplog)
    assert warned.startswith(f"the packed rows cached in {first.blocks_dir} cannot be used: ")
    assert why in warned and warned.endswith(": building them again from the corpus")
    assert torch.equal(again.train_rows.rows, first.train_rows.rows)
    json.loads((again.blocks_dir / damaged).read_text())  # whole again
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")] == []


def test_a_damaged_tokenizer_entry_is_trained_again_under_other_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``tok-*/tokenizer.json`` cut short was a traceback for every row length not yet
    packed. It is trained again with a warning; rows packed before keep their own copy of
    it, so a run reading them (here: a later one) is not broken by the discard."""
    from tokenizers import Tokenizer

    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    first = char_module(corpus, tmp_path / "c")
    first.setup()
    (tok_dir,) = (tmp_path / "c").glob("tok-*")
    tok_file = tok_dir / "tokenizer.json"
    tok_file.write_text(tok_file.read_text()[:100])
    longer = char_module(corpus, tmp_path / "c", seq_len=32)
    with caplog.at_level(logging.WARNING):
        longer.setup()
        later = char_module(corpus, tmp_path / "c")
        later.setup()
    (warned,) = warnings_of(caplog)
    assert warned.startswith(f"the tokenizer cached in {tok_file} cannot be read (")
    assert warned.endswith(": building it again")
    assert Tokenizer.from_file(str(tok_file)).to_str() == longer.tokenizer.to_str()
    assert longer.tokenizer.to_str() == first.tokenizer.to_str()
    assert torch.equal(later.train_rows.rows, first.train_rows.rows)


def test_a_cache_dir_that_is_a_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was a FileExistsError traceback once the model was built."""
    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    a_file = write(tmp_path / "cache", b"not a folder")
    message = f"data.cache_dir='{a_file}' is not a writable folder (a file, not a folder); allowed"
    with pytest.raises(ConfigError, match=re.escape(message)):
        char_module(corpus, a_file).setup()
    monkeypatch.setenv("LMLAB_CACHE", str(a_file))  # as conf/train.yaml resolves it
    with pytest.raises(ConfigError, match=re.escape(f"'{a_file}' (from LMLAB_CACHE) is not a")):
        char_module(corpus, a_file).setup()
    beneath = f"data.cache_dir='{a_file / 'sub'}' is not a writable folder (Not a directory)"
    with pytest.raises(ConfigError, match=re.escape(beneath)):
        char_module(corpus, a_file / "sub").setup()


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Writes under ``folder`` fail as on a read-only file system (a chmod does not stop
    root): making a folder and renaming one, the writes the cache makes outside its
    temporary folders."""

    def refused(real):
        def call(path, *args, **kw):
            if Path(path).is_relative_to(folder):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kw)

        return call

    for name in ("mkdir", "replace", "rename"):
        monkeypatch.setattr(os, name, refused(getattr(os, name)))


def test_a_read_only_cache_serves_its_rows_and_refuses_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A shared, read-only cache that holds the rows is read as it is; one that lacks them
    (another row length here) or holds them damaged is refused as one line naming the
    setting, before the corpus is read (was: ``OSError: [Errno 30]`` traceback)."""
    import lmlab.data.packing

    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    cache = tmp_path / "c"
    first = char_module(corpus, cache)
    first.setup()
    read_only(monkeypatch, cache)
    served = char_module(corpus, cache)
    served.setup()
    assert torch.equal(served.train_rows.rows, first.train_rows.rows)
    monkeypatch.setattr(lmlab.data.packing, "read_splits", None)  # not called
    message = f"data.cache_dir='{cache}' is not a writable folder (Read-only file system); "
    with pytest.raises(ConfigError, match=re.escape(message)):
        char_module(corpus, cache, seq_len=32).setup()
    (first.blocks_dir / "meta.json").write_text("{garbage")
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match=re.escape(message)):
        char_module(corpus, cache).setup()
    assert len(warnings_of(caplog)) == 1  # which entry is damaged, then why it stays so


class FullDiskTokenizer:
    """A trained tokenizer whose save meets a full disk, as ``tokenizers`` reports one: a bare
    Exception, not an OSError."""

    def save(self, path: str) -> None:
        raise Exception("No space left on device (os error 28)")


@pytest.mark.parametrize("writing", ["tokenizer", "rows"])
def test_a_full_cache_is_named_in_the_runs_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writing: str
) -> None:
    """A data cache that filled up while an entry was built stopped the run with "no space
    left on device: free space" (Arrow's write names no file), or, while the tokenizer was
    saved, with ``tokenizers``' bare Exception as a traceback; the user could not tell the
    data cache from the run folder (often on another disk). Either is now the OSError the
    run's stop words, naming the entry in the cache, and leaves nothing half-built there."""
    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    cache = tmp_path / "c"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file named, as Arrow's
    if writing == "tokenizer":
        monkeypatch.setattr(packing, "train_tokenizer", lambda *args: FullDiskTokenizer())
    else:
        monkeypatch.setattr(datasets.Dataset, "save_to_disk", Mock(side_effect=full))
    with pytest.raises(OSError) as stopped:
        prepare(text_cfg(corpus, tmp_path), row_len=9)
    entry = Path(stopped.value.filename)
    assert entry.parent == cache
    assert entry.name.startswith({"tokenizer": "tok-", "rows": "blocks-"}[writing])
    assert disk_full(stopped.value) is stopped.value
    assert write_error_words(stopped.value) == f"no space left on device writing {entry}"
    published = ["tok-"] if writing == "rows" else []  # the tokenizer, whole; no rows, no tmp
    assert [p.name[:4] for p in cache.iterdir()] == published


def test_datamodule_batches_are_shifted_next_token_pairs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char, batch_size=3)
    dm = LMDataModule(cfg, Family.gpt, seq_len=16, seed=0)
    dm.setup()
    dm.num_train_samples = 9
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 16)
    assert (batch["input_ids"][:, 1:] == batch["labels"][:, :-1]).all()
    n_bytes = dm.meta["val"]["bytes"]  # one token per ASCII char, plus one EOS per document
    assert dm.val_bytes_per_token == pytest.approx(n_bytes / (n_bytes + 1))


@pytest.mark.parametrize("family", [Family.bert, Family.t5])
def test_validation_scores_the_same_targets_at_any_val_batch_size(
    tmp_path: Path, family: Family
) -> None:
    """BERT's masks and T5's spans over the validation rows do not depend on
    ``data.val_batch_size``, as GPT's validation tokens do not: seeded by each batch, another
    batch size validated other masks, and so gave another loss."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 8)
    batches = []
    for val_batch_size in (2, 5):
        cfg = text_cfg(
            corpus, tmp_path, tokenizer=TokenizerKind.char, val_batch_size=val_batch_size
        )
        dm = LMDataModule(cfg, family, seq_len=32, seed=1)
        dm.setup()
        batches.append([*dm.val_dataloader()])
    assert len(batches[0]) > len(batches[1]) > 1
    for key in batches[0][0]:
        assert torch.equal(*(torch.cat([b[key] for b in split]) for split in batches)), key


@pytest.mark.parametrize("family", [Family.bert, Family.t5])
def test_validation_corrupts_alike_at_every_seed(tmp_path: Path, family: Family) -> None:
    """BERT's masks and T5's spans over the validation rows do not depend on the run's seed,
    as GPT's validation tokens do not: runs of other seeds score one validation set. Training
    draws with the run's seed."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    cfg = text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char, batch_size=3)
    modules = [LMDataModule(cfg, family, seq_len=32, seed=seed) for seed in (1, 2)]
    for dm in modules:
        dm.setup()
    first, second = ([*dm.val_dataloader()] for dm in modules)
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a)
    rows = torch.stack([modules[0].train_rows[i] for i in range(8)])
    trained = [dm.collate(rows)["labels"] for dm in modules]
    assert not torch.equal(*trained)


def test_stride_windows_start_at_every_stride_token_of_the_stream(tmp_path: Path) -> None:
    """``data.stride=1`` (nanoGPT's crops at every offset): window i is tokens i .. i + row_len
    of the rows laid end to end; the default stride is the rows themselves; validation keeps
    the non-overlapping rows."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    modules = {
        stride: LMDataModule(
            text_cfg(corpus, tmp_path, tokenizer=TokenizerKind.char, stride=stride),
            Family.gpt,
            seq_len=16,
            seed=0,
        )
        for stride in (None, 1, 5)
    }
    for dm in modules.values():
        dm.setup()
    rows = modules[None].train_rows.rows
    stream, n_rows = rows.flatten(), rows.shape[0]
    assert len(modules[None].train_rows) == n_rows and rows.shape[1] == 17
    assert torch.equal(modules[None].train_rows.__getitems__([2, 0]), rows[[2, 0]])
    for stride in (1, 5):
        windows = modules[stride].train_rows
        assert len(windows) == (n_rows * 17 - 17) // stride + 1
        got = windows.__getitems__([0, 3, len(windows) - 1])
        starts = [0, 3 * stride, (len(windows) - 1) * stride]
        assert torch.equal(got, torch.stack([stream[s : s + 17] for s in starts]))
        assert torch.equal(modules[stride].val_rows.rows, modules[None].val_rows.rows)
    dm = modules[1]
    dm.num_train_samples = 6
    batch = next(iter(dm.train_dataloader()))
    assert (batch["input_ids"][:, 1:] == batch["labels"][:, :-1]).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.stride=0"], "data.stride=0 must be >= 1 (or null)"),
        (["data.stride=258"], "data.stride=258 is above the 257-token rows a gpt model trains"),
        # BERT's rows leave room for [CLS] and [SEP]: 256 would skip 2 tokens per window
        (["model=bert_tiny", "data.stride=256"], "above the 254-token rows a bert model"),
    ],
)
def test_bad_stride_is_refused_before_any_work(overrides: list[str], message: str) -> None:
    from lmlab.train.preflight import check_run

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_run(compose_train(["+debug=smoke", *overrides]))
    bert_rows = ["+debug=smoke", "model=bert_tiny", "data.stride=254"]
    assert check_run(compose_train(bert_rows)).seq_len == 256


def test_sampler_resumes_exactly_and_shards_ranks() -> None:
    full = list(ResumableSampler(10, 35, seed=3))
    assert sorted(full[:10]) == list(range(10))  # each epoch is a permutation
    assert full[:10] != full[10:20]  # reshuffled per epoch
    assert list(ResumableSampler(10, 35, seed=3, start=17)) == full[17:]
    ranks = [list(ResumableSampler(10, 36, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert ranks[0] == full[0::2][:18] and ranks[1] + [None] != ranks[0]
    assert sorted(ranks[0][:5] + ranks[1][:5]) == sorted(full[:10])
    resumed = ResumableSampler(10, 35, seed=3, start=17, rank=1, world_size=2)
    assert len(list(resumed)) == 9 and len(resumed) == 17  # len counts the whole run
    # numbered: each row with its global sample number, the same on any rank or resume
    numbered = ResumableSampler(10, 35, seed=3, start=17, rank=1, world_size=2, numbered=True)
    assert list(numbered) == [(full[g], g) for g in range(18, 35, 2)]


def test_special_token_roles_come_from_the_tokenizers_own_specials() -> None:
    """lmlab's names for its own tokenizers, Hugging Face's ([CLS], </s>, <s>) for converted
    ones; an ordinary token spelled like a special is never taken, and a missing role is an
    error that names the use."""
    from tokenizers import AddedToken, Tokenizer, models

    own = Specials.of(train_char(TEXT))
    assert (own.eos, own.mask, own.bos, len(own.sentinels)) == (EOS, MASK, None, 100)
    vocab = {t: i for i, t in enumerate(["<s>", "a", "b", "[UNK]"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "</s>"])
    tok.add_special_tokens([AddedToken(f"<extra_id_{i}>", special=True) for i in (0, 1, 3)])
    roles = Specials.of(tok)
    assert (roles.cls, roles.sep, roles.mask, roles.pad, roles.eos) == (
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[PAD]",
        "</s>",
    )
    assert roles.bos is None  # "<s>" is an ordinary vocabulary entry here
    assert roles.sentinels == ("<extra_id_0>", "<extra_id_1>")  # numbered from 0, no gap
    assert roles.id(tok, "mask", "fill-mask") == tok.token_to_id("[MASK]")
    with pytest.raises(ConfigError, match="infilling needs a bos token"):
        roles.id(tok, "bos", "infilling")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.path=my.txt"],
            r"data.path='my.txt' is read only by data=text; this run's data "
            r"is stdlib, which would ignore it: add data=text",
        ),  # fmt: skip
        (["data=shakespeare", "data.path=my.txt"], r"this run's data is shakespeare"),
        (
            ["data=text", "data.path=my.txt", "data.name=wikitext"],
            r"data.name='wikitext' is "
            r"read only by data=hf",
        ),  # fmt: skip
        (["data=text", "data.path=my.txt", "data.text_column=body"], r"data.text_column='body'"),
        (["data=hf", "data.name=x", "data.path=my.txt"], r"data.path='my.txt' is read only"),
    ],
)
def test_a_field_the_source_would_ignore_is_refused(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    """``data.path=`` without ``data=text`` used to train on the standard library, unsaid."""
    from lmlab.train.compose import compose_train
    from lmlab.train.preflight import check_run

    with pytest.raises(ConfigError, match=message):
        check_run(compose_train(["+debug=smoke", *overrides], tmp_path, tmp_path / "cache"))


@pytest.mark.parametrize(("family", "workers"), [(Family.gpt, 0), (Family.bert, 1)])
def test_a_gpu_run_collates_in_workers_where_collation_is_worth_one(
    tmp_path: Path, family: Family, workers: int
) -> None:
    """``data.num_workers=null`` on a GPU (a one-core share here): BERT's masking in a worker,
    GPT's slice of the rows in the main process; both into pinned memory."""
    from types import SimpleNamespace

    corpus = write(tmp_path / "corpus.txt", TEXT.encode())
    cfg = DataConfig(
        source=Source.text, path=str(corpus), cache_dir=str(tmp_path / "cache"), batch_size=2
    )
    dm = LMDataModule(cfg, family, seq_len=16, seed=0)
    dm.setup()
    gpu = SimpleNamespace(root_device=torch.device("cuda"))
    dm.trainer = SimpleNamespace(
        strategy=gpu, num_devices=os.cpu_count(), global_rank=0, world_size=1
    )
    dm.num_train_samples = 4
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.pin_memory) == (workers, True)
