"""What a corpus is read from: a local folder named as a Hugging Face dataset, a cache folder
inside the corpus, files that are not UTF-8 text, and a missing corpus in a dry run."""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import re
import time
import zipfile
from pathlib import Path

import datasets
import pytest
from test_data import write

from lmlab.config import DataConfig, Source, TokenizerKind
from lmlab.data.packing import prepare, prepared_vocab_size
from lmlab.data.sources import fingerprint, load_documents
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.preflight import check_run

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 20


def hf_cfg(name: str, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(source=Source.hf, name=name, cache_dir=str(tmp_path / "c"), **kw)


def save(folder: Path, texts: list[str]) -> None:
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder))


def test_a_folder_save_to_disk_wrote_is_read_and_keyed_by_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: None
) -> None:
    """``data=hf data.name=<a save_to_disk folder>``: ``datasets.load_dataset`` refuses such a
    folder (it asks for ``load_from_disk``), and the cache was keyed by the name only, so rows
    of the folder's old contents were reused after it changed."""
    datasets.disable_progress_bars()
    monkeypatch.setenv("HOME", str(tmp_path))
    saved = tmp_path / "saved"
    save(saved, ["first old\n" * 20, "second old\n" * 20])
    cfg = hf_cfg("~/saved", tmp_path, tokenizer=TokenizerKind.char)
    assert load_documents(cfg) == [
        ("row 0", "first old\n" * 20),
        ("row 1", "second old\n" * 20),
    ]
    old_print, old_rows = fingerprint(cfg), prepare(cfg, row_len=9)
    save(saved, ["first new\n" * 20, "second new\n" * 20])
    assert fingerprint(cfg) != old_print
    new_rows = prepare(cfg, row_len=9)
    assert new_rows != old_rows
    assert load_documents(cfg)[0] == ("row 0", "first new\n" * 20)


def test_a_saved_dataset_dict_gives_the_split_asked_for(tmp_path: Path, hf_offline: None) -> None:
    datasets.disable_progress_bars()
    splits = {"train": ["to train on\n"], "validation": ["to validate on\n"]}
    folder = tmp_path / "dict"
    datasets.DatasetDict(
        {split: datasets.Dataset.from_dict({"text": texts}) for split, texts in splits.items()}
    ).save_to_disk(str(folder))
    validation = load_documents(hf_cfg(str(folder), tmp_path, split="validation"))
    assert validation == [("row 0", "to validate on\n")]
    message = rf"^data.split='test' is not a split of '{folder}' \(splits: train, validation\)"
    with pytest.raises(ConfigError, match=message):
        load_documents(hf_cfg(str(folder), tmp_path, split="test"))
    with pytest.raises(ConfigError, match=r"^data.subset='en': '.*' is a folder save_to_disk"):
        load_documents(hf_cfg(str(folder), tmp_path, subset="en"))
    save(tmp_path / "one", ["a single Dataset\n"])
    with pytest.raises(ConfigError, match=r"^data.split='validation': '.*one' is one Dataset"):
        load_documents(hf_cfg(str(tmp_path / "one"), tmp_path, split="validation"))


def test_a_local_folder_of_data_files_is_keyed_by_its_files(tmp_path: Path) -> None:
    """Any local folder ``datasets.load_dataset`` reads (JSON lines here): its files' identity
    is in the key, as a text corpus's is; hidden files are left out, as ``datasets`` does."""
    folder = tmp_path / "jsonl"
    rows = write(folder / "train.jsonl", b'{"text": "one"}\n')
    cfg = hf_cfg(str(folder), tmp_path)
    before = fingerprint(cfg)
    write(folder / ".hidden", b"not data")
    assert fingerprint(cfg) == before
    rows.write_bytes(b'{"text": "two"}\n')
    assert fingerprint(cfg) != before


def test_a_local_data_file_rewritten_with_its_times_kept_is_read_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``datasets`` caches its Arrow copy of a local data file by the file's path and
    modification time: rewritten with its size and times kept (``touch -r``, ``cp -p`` of
    another version), lmlab's key changed and the rows were built again, from the old text."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_progress_bars()
    rows = write(tmp_path / "jsonl" / "train.jsonl", b'{"text": "the old text"}\n')
    cfg = hf_cfg(str(tmp_path / "jsonl"), tmp_path)
    assert [text for _, text in load_documents(cfg)] == ["the old text"]
    kept = rows.stat()
    rows.write_bytes(b'{"text": "the new text"}\n')
    os.utime(rows, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    while rows.stat().st_ctime_ns == kept.st_ctime_ns:  # a filesystem of coarse times
        time.sleep(0.01)
        os.utime(rows, ns=(kept.st_atime_ns, kept.st_mtime_ns))  # sets the change time
    assert rows.stat().st_size == kept.st_size and rows.stat().st_mtime_ns == kept.st_mtime_ns
    assert [text for _, text in load_documents(cfg)] == ["the new text"]


@pytest.mark.parametrize("name", ["c.jsonl", "c.csv", "c.tsv", "c.parquet", "c.jsonl.gz"])
def test_a_single_local_data_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: None, name: str
) -> None:
    """``data=hf data.name=<one .jsonl/.csv/.parquet file>``: ``load_dataset`` given the file
    as its name found "no data file"; it is read by the builder its suffix names."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_progress_bars()
    texts = ["first text", "second, with a comma"]
    examples = datasets.Dataset.from_dict({"text": texts, "n": [1, 2]})
    path = tmp_path / name
    if name.endswith(".parquet"):
        examples.to_parquet(str(path))
    elif name.endswith(".gz"):
        examples.to_json(str(path), compression="gzip")
    elif name.endswith(".jsonl"):
        examples.to_json(str(path))
    else:
        examples.to_csv(str(path), index=False, sep="\t" if name.endswith(".tsv") else ",")
    cfg = hf_cfg(str(path), tmp_path)
    assert load_documents(cfg) == [("row 0", texts[0]), ("row 1", texts[1])]
    with pytest.raises(ConfigError, match=r"^data.subset='en': '.*' is one data file"):
        load_documents(hf_cfg(str(path), tmp_path, subset="en"))


def test_a_local_file_of_another_kind_is_refused_naming_the_kinds(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.md", b"# a text file\n")
    with pytest.raises(
        ConfigError, match=r"^data.name='.*notes.md' is a file .*\.jsonl, .*data=text"
    ):
        load_documents(hf_cfg(str(path), tmp_path))


def test_a_text_column_of_nulls_numbers_or_lists(
    tmp_path: Path, hf_offline: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A null text (a JSON null, an empty CSV field) is a row without a document, said in a
    warning; a column of numbers or lists is refused naming its type and the text columns.
    Each was an AttributeError traceback (``None.encode``)."""
    datasets.disable_progress_bars()
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"text": ["one", None, "three"], "n": [1, 2, 3], "tags": [["a"], ["b"], []]}
    ).save_to_disk(str(folder))
    with caplog.at_level("WARNING", logger="lmlab.data.sources"):
        docs = load_documents(hf_cfg(str(folder), tmp_path))
    assert docs == [("row 0", "one"), ("row 2", "three")]
    assert "1 of the rows of" in caplog.text and "hold no text (null): left out" in caplog.text
    for column, kind in (("n", "int64"), ("tags", "List")):
        message = rf"^data.text_column='{column}' of '.*' holds .*{kind}.*, not text; .* \(text\)$"
        with pytest.raises(ConfigError, match=message):
            load_documents(hf_cfg(str(folder), tmp_path, text_column=column))


@pytest.mark.parametrize("name", ["notes.csv", "notes.tsv.gz"])
def test_a_csv_data_files_text_column_is_read_as_written(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: None
) -> None:
    """pandas guesses a CSV column's type: "NA", "None" and "null" were missing texts, left
    out with a warning that they held none, and a column of numbers was refused as int64.
    The text column is read as written; only an empty field is missing, and the other columns
    keep pandas' guesses (the id column's "NA" is no error)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_progress_bars()
    sep = "\t" if ".tsv" in name else ","
    rows = ["text", "NA", "None", "null", "007", "", "hello"]
    table = "".join(f"{text}{sep}{n if n != 2 else 'NA'}\n" for n, text in enumerate(rows))
    table = table.replace(f"text{sep}0", f"text{sep}id")
    data = gzip.compress(table.encode()) if name.endswith(".gz") else table.encode()
    path = write(tmp_path / name, data)
    docs = load_documents(hf_cfg(str(path), tmp_path))
    assert [text for _, text in docs] == ["NA", "None", "null", "007", "hello"]
    assert [name for name, _ in docs][-1] == "row 5"  # the empty field: row 5, no text
    digits = write(tmp_path / "digits.csv", b"text\n42\n7.50\n")
    assert [text for _, text in load_documents(hf_cfg(str(digits), tmp_path))] == ["42", "7.50"]


def test_a_json_lines_file_in_another_encoding_is_refused_naming_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: None
) -> None:
    """Arrow's JSON reader keeps a string's bytes as they are, so a JSON Lines file saved in
    cp1252 loads, and its first use as text was a bare UnicodeDecodeError, naming neither the
    file nor the row. Every row that is not UTF-8 is named (from 1), with its first bad byte;
    a null row is no such row."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_progress_bars()
    lines = [b'{"text": "fine"}', b'{"text": "caf\xe9"}', b'{"text": null}', b'{"text": "\xff!"}']
    path = write(tmp_path / "notes.jsonl", b"\n".join(lines) + b"\n")
    message = (
        rf"^data.text_column='text' of '{re.escape(str(path))}' is not UTF-8 text in 2 of its "
        r"rows: rows 2 \(byte 3\), 4 \(byte 0\); allowed: UTF-8 text"
    )
    with pytest.raises(ConfigError, match=message):
        load_documents(hf_cfg(str(path), tmp_path))


def test_a_data_file_datasets_cannot_parse_is_named_with_the_parsers_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: None
) -> None:
    """``datasets`` wraps a parse error in "An error occurred while generating the dataset":
    the one line said only that; it names the parser's error and row now."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_progress_bars()
    write(tmp_path / "jsonl" / "train.jsonl", b'{"text": "fine"}\n{"text": "cut \\ud83d"}\n')
    message = r"^data.name=.* generating the dataset \(ArrowInvalid: JSON parse error: .*\)$"
    with pytest.raises(ConfigError, match=message):
        load_documents(hf_cfg(str(tmp_path / "jsonl"), tmp_path))


def test_a_hub_name_keeps_its_key() -> None:
    """A name that is no local path is keyed by name, subset, split and column, as before:
    rows cached by an earlier lmlab are used."""
    plain = DataConfig(source=Source.hf, name="roneneldan/TinyStories")
    assert fingerprint(plain) == "8fddfe48c063a67f"
    asked = DataConfig(
        source=Source.hf,
        name="roneneldan/TinyStories",
        subset="a",
        split="validation",
        text_column="story",
        max_bytes=1000,
    )
    assert fingerprint(asked) == "794df52e38f97136"


@pytest.mark.parametrize(
    "where",
    ["inside", "linked_in", "through_a_link"],
)
def test_a_cache_folder_inside_the_corpus_is_not_read_as_corpus(tmp_path: Path, where: str) -> None:
    """``data.cache_dir=/corpus/cache``: the second run read the first one's rows (Arrow files,
    a tokenizer's JSON) as documents. The cache is found by its real path: a link in the corpus
    to it, or a cache named through a link to the corpus, is left out too."""
    corpus = tmp_path / "corpus"
    write(corpus / "a.py", TEXT.encode())
    cache = {
        "inside": corpus / "cache",
        "linked_in": tmp_path / "elsewhere",
        "through_a_link": tmp_path / "alias" / "cache",
    }[where]
    (tmp_path / "elsewhere").mkdir()
    (corpus / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "alias").symlink_to(corpus)
    cfg = DataConfig(
        source=Source.text, path=str(corpus), cache_dir=str(cache), tokenizer=TokenizerKind.char
    )
    key = fingerprint(cfg)
    rows = prepare(cfg, row_len=9)
    assert any(cache.iterdir())
    assert fingerprint(cfg) == key
    assert prepare(cfg, row_len=9) == rows
    assert load_documents(cfg) == [("a.py", TEXT)]


def zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("a.txt", date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


LINES = "for a in range(10):\n    print(a)\n" * 4
# a file that is not UTF-8, and what the refusal says it is (and how to make it text)
NOT_UTF8 = {
    "utf16": (LINES.encode("utf-16"), "UTF-16 text: convert it to UTF-8, e.g. iconv -f UTF-16 "),
    "utf16be": (codecs.BOM_UTF16_BE + LINES.encode("utf-16-be"), "UTF-16 text: convert"),
    "utf32": (LINES.encode("utf-32"), "UTF-32 text: convert it to UTF-8, e.g. iconv -f UTF-32 "),
    "utf32be": (codecs.BOM_UTF32_BE + LINES.encode("utf-32-be"), "UTF-32 text: convert"),
    "gzip": (gzip.compress(LINES.encode()), "gzip-compressed: decompress it first"),
    "zip": (zipped(LINES.encode()), "a zip archive: unpack it first"),
    "xz": (lzma.compress(LINES.encode()), "xz-compressed: decompress it first"),
    "bz2": (bz2.compress(LINES.encode()), "bzip2-compressed: decompress it first"),
    "zstd": (b"\x28\xb5\x2f\xfd\x04\x58\xff\x00", "zstd-compressed: decompress it first"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF: extract its text first"),
    # valid UTF-8, every one of them: each was trained on as text, NULs and all
    "utf16le_unmarked": (LINES.encode("utf-16-le"), "UTF-16LE text without a byte-order mark?"),
    "utf16be_unmarked": (LINES.encode("utf-16-be"), "e.g. iconv -f UTF-16BE -t UTF-8"),
    "zeros": (bytes(4096), "a NUL byte, which no text holds: binary data"),
}


@pytest.mark.parametrize("kind", NOT_UTF8)
def test_a_file_that_is_not_utf8_is_told_by_its_first_bytes(tmp_path: Path, kind: str) -> None:
    """Each was named only with "invalid byte at offset N": a UTF-16 export or a gzipped
    corpus is common, and its first bytes say what it is."""
    data, what = NOT_UTF8[kind]
    path = write(tmp_path / "corpus" / f"data.{kind}", data)
    cfg = DataConfig(source=Source.text, path=str(path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError) as refused:
        load_documents(cfg)
    message = str(refused.value)
    assert message.startswith(f"data.path: {str(path)!r} is not UTF-8 text (invalid byte at ")
    assert what in message and message.endswith("; allowed: UTF-8 text files")


def test_files_that_are_not_utf8_are_still_named_in_one_refusal(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write(corpus / "a.txt.gz", gzip.compress(b"one\n"))
    write(corpus / "b.bin", b"a\xff")
    write(corpus / "c.txt", LINES.encode("utf-16"))
    write(corpus / "d.txt", b"text\n")
    with pytest.raises(ConfigError) as refused:
        load_documents(DataConfig(source=Source.text, path=str(corpus)))
    assert str(refused.value) == (
        f"data.path: 3 files are not UTF-8 text: {str(corpus / 'a.txt.gz')!r} (offset 1: "
        f"gzip-compressed: decompress it first, e.g. gunzip), {str(corpus / 'b.bin')!r} "
        f"(offset 1), {str(corpus / 'c.txt')!r} (offset 0: UTF-16 text: convert it to UTF-8, "
        "e.g. iconv -f UTF-16 -t UTF-8); allowed: UTF-8 text files"
    )


@pytest.mark.parametrize("path", ["missing.txt", "empty"])
def test_a_dry_run_says_a_corpus_is_not_there(
    tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dry run plans for any machine and reads no corpus, so a ``data.path`` that is not
    here (or an empty folder) may be on the machine planned for: the plan is made, with a
    warning that a run here would be refused. A sweep checked for other machines
    (``machine=False``) leaves it to them, unsaid."""
    (tmp_path / "empty").mkdir()
    overrides = ["data=text", f"data.path={tmp_path / path}", "+debug=smoke", "dry_run=true"]
    cfg = compose_train(overrides, tmp_path / "run", tmp_path / "cache")
    check_run(cfg)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    pattern = r"^data.path='.*' (does not exist|is an empty folder).*: a run here would be refused"
    assert [m for m in said if re.search(pattern, m)], said
    caplog.clear()
    check_run(cfg, machine=False)
    assert not [r for r in caplog.records if "a run here would be refused" in r.getMessage()]


def test_a_dry_run_of_a_corpus_not_here_plans_with_the_target_vocabulary(tmp_path: Path) -> None:
    """The dry run warned "a run here would be refused; this dry run reads no data", and
    then was refused: looking for a cached tokenizer keyed the missing corpus."""
    missing = DataConfig(
        source=Source.text, path=str(tmp_path / "gone.txt"), cache_dir=str(tmp_path)
    )
    assert prepared_vocab_size(missing) is None


def test_a_local_dataset_path_that_does_not_exist_is_refused_as_a_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``data=hf data.name=/data/train.jsonl`` with no such file was asked of the hub, and
    refused after the corpus step began, with the hint that the hub cannot be reached; a
    dry run made no mention of it. No hub name begins as a path does."""
    missing = str(tmp_path / "train.jsonl")
    with pytest.raises(ConfigError, match=r"^data.name='.*train.jsonl' does not exist \(a local"):
        load_documents(hf_cfg(missing, tmp_path))
    overrides = ["data=hf", f"data.name={missing}", "+debug=smoke"]
    with pytest.raises(ConfigError, match=r"^data.name='.*' does not exist"):
        check_run(compose_train(overrides, tmp_path / "run", tmp_path / "cache"))
    check_run(compose_train([*overrides, "dry_run=true"], tmp_path / "run", tmp_path / "cache"))
    assert (
        "does not exist (a local path" in caplog.text
        and "a run here would be refused" in caplog.text
    )
