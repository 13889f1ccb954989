"""A corpus's training and validation splits: the validation split of its own where the
config names one (``data.val_split`` of a Hugging Face dataset, ``data.val_path`` of a text
corpus), as Hugging Face's ``run_clm`` and litgpt read one; else documents held out of the
training text (``data.val_fraction``), as nanoGPT does."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import zlib
from collections.abc import Callable, Iterator

from lmlab.config import DataConfig, Source
from lmlab.data.folders import text_files
from lmlab.data.sources import SAVED, Documents, fingerprint, load_documents, local_dataset
from lmlab.errors import ConfigError

MIN_DOCS_FOR_DOC_SPLIT = 20
# How ``held_out`` splits, in the key of a tokenizer and so of its rows: rows split before a
# document holding more than val_fraction of the text was passed over are not reused.
SPLITTING = "a document over val_fraction of the text is not held out whole"


def validation_source(cfg: DataConfig) -> DataConfig | None:
    """The config that reads the corpus's own validation split: the same source, its
    ``split`` (hf) or ``path`` (text) the validation one's, and the rest (``max_bytes``,
    the column, the cache) as the training split reads them. None: validation is held out
    of the training split."""
    if cfg.val_split is not None:
        return dataclasses.replace(cfg, split=cfg.val_split, val_split=None)
    if cfg.val_path is not None:
        return dataclasses.replace(cfg, path=cfg.val_path, val_path=None)
    return None


def validation_field(cfg: DataConfig) -> str:
    """The field that sets the validation split, with its value, for messages."""
    if cfg.val_split is not None:
        return f"data.val_split={cfg.val_split!r}"
    if cfg.val_path is not None:
        return f"data.val_path={cfg.val_path!r}"
    return f"data.val_fraction={cfg.val_fraction}"


def split_identity(cfg: DataConfig) -> list:
    """What fixes both splits, without reading them (the data cache's key): the corpus's
    ``fingerprint`` and how validation is held out of it, or the validation split's own."""
    val = validation_source(cfg)
    if val is None:
        return [fingerprint(cfg), cfg.val_fraction, SPLITTING]
    with validation_errors():
        return [fingerprint(cfg), "validation split", fingerprint(val)]


def local_splits(cfg: DataConfig) -> list[str] | None:
    """The split names of a local ``data.name`` as ``datasets`` reads it, found without
    reading its rows: a DatasetDict's (``dataset_dict.json``), a folder of data files'
    (``datasets``' file-name patterns: ``train.jsonl``, ``validation.jsonl``, ``dev.csv``),
    ``train`` of one data file or one saved Dataset. None: a hub name (the hub's splits)."""
    from datasets.data_files import get_data_patterns
    from datasets.exceptions import DataFilesNotFoundError

    local = local_dataset(cfg)
    if local is None:
        return None
    if local.is_file() or (local / SAVED[1]).is_file():
        return ["train"]
    try:
        if (local / SAVED[0]).is_file():
            return list(json.loads((local / SAVED[0]).read_text(encoding="utf-8"))["splits"])
        return [str(split) for split in get_data_patterns(str(local))]
    except (OSError, ValueError, KeyError, TypeError, DataFilesNotFoundError):
        return None  # loading it says what is wrong with it


def split_names(split: str) -> list[str]:
    """The splits a ``datasets`` split expression reads: ``train`` and ``validation`` of
    ``train[:90%]+validation``."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def check_splits(cfg: DataConfig) -> None:
    """``data.split`` and ``data.val_split`` name splits the local dataset holds (a hub
    dataset's are checked as it loads): refused naming the field, its value and the splits
    there are, before any corpus is read."""
    if cfg.source != Source.hf:
        return
    splits = local_splits(cfg)
    if splits is None:
        return
    for field, split in (("split", cfg.split), ("val_split", cfg.val_split)):
        missing = [name for name in split_names(split or "") if split and name not in splits]
        if missing:
            raise ConfigError(
                f"data.{field}={split!r}: {missing[0]!r} is not a split of {cfg.name!r} "
                f"(splits: {', '.join(splits)})"
                + (
                    "; leave data.val_split out to hold data.val_fraction of the training "
                    "split out for validation"
                    if field == "val_split"
                    else ""
                )
            )


@contextlib.contextmanager
def validation_errors() -> Iterator[None]:
    """Around reading the validation split (``validation_source``, whose ``split`` or
    ``path`` is the validation one's): its errors name the field the user set."""
    try:
        yield
    except ConfigError as err:
        words = str(err).replace("data.split=", "data.val_split=", 1)
        raise ConfigError(words.replace("data.path=", "data.val_path=", 1)) from None


# The sources whose files are listed before a run: a text corpus's, a local dataset's path.
LISTED: dict[Source, Callable[[DataConfig], object]] = {
    Source.text: text_files,
    Source.hf: local_dataset,
}


def list_splits(cfg: DataConfig) -> None:
    """Both splits' files listed, not read: a ``data.path`` or ``data.val_path`` that is
    missing or holds no text files, a ``data.name`` path that is missing, a split the local
    dataset lacks (``check_splits``), a validation folder holding training files: refused."""
    val = validation_source(cfg)
    trained = LISTED[cfg.source](cfg)
    if val is not None:
        with validation_errors():
            validated = LISTED[cfg.source](val)
        if cfg.source == Source.text:
            both = {os.path.realpath(p) for p in trained} & {os.path.realpath(p) for p in validated}
            if both:
                raise ConfigError(
                    f"data.val_path={cfg.val_path!r} holds {len(both)} file(s) of data.path="
                    f"{cfg.path!r} ({sorted(both)[0]}): the run would validate on text it "
                    "trains on; allowed: a validation file or folder apart from the training one"
                )
    check_splits(cfg)


def read_splits(cfg: DataConfig) -> tuple[Documents, Documents | None]:
    """The training split's documents and the validation split's own (None: validation is
    held out of the training split's, ``split_documents``)."""
    if cfg.source in LISTED:
        list_splits(cfg)
    val = validation_source(cfg)
    if val is None:
        return load_documents(cfg), None
    docs = load_documents(cfg)
    with validation_errors():
        return docs, load_documents(val)


def split_texts(
    docs: Documents, val_docs: Documents | None, val_fraction: float
) -> tuple[list[str], list[str]]:
    """The training and validation texts: the two splits' as they are, or, without a
    validation split, ``val_fraction`` held out of ``docs`` (``split_documents``)."""
    if val_docs is None:
        return split_documents(docs, val_fraction)
    return [text for _, text in docs], [text for _, text in val_docs]


def name_bytes(name: str) -> bytes:
    """A document's name (or text) as UTF-8, and a file name that is not UTF-8 (``café.txt``
    in Latin-1, from an old archive; Python holds its bytes as lone surrogates) as its bytes
    on disk: ``str.encode`` refused it in a traceback. Every other string gives the bytes it
    gave before, so no split or digest changes."""
    return name.encode("utf-8", "surrogateescape")


def held_out(docs: Documents, val_fraction: float) -> set[int]:
    """Indices of the documents validation holds out whole: taken in the order of a stable
    hash of their names until they hold ``val_fraction`` of the text, passing over any that
    alone holds more (one large book among small files, first in that order, was held out
    whole: 81% of the text for validation at ``val_fraction=0.05``), so that validation holds
    ``val_fraction`` of the text and less than twice that. Empty, so that each document is
    split inside instead, for fewer than ``MIN_DOCS_FOR_DOC_SPLIT`` documents, or where the
    smaller ones do not hold ``val_fraction``. ``scripts/make_eval_tasks.py`` draws the
    shipped eval tasks from these documents."""
    if len(docs) < MIN_DOCS_FOR_DOC_SPLIT:
        return set()
    target = val_fraction * sum(len(t) for _, t in docs)
    val_ids: set[int] = set()
    held = 0
    for i in sorted(range(len(docs)), key=lambda i: zlib.crc32(name_bytes(docs[i][0]))):
        if held >= target:
            return val_ids
        if len(docs[i][1]) <= target:
            val_ids.add(i)
            held += len(docs[i][1])
    return val_ids if held >= target else set()


def trained_documents(docs: Documents, val_fraction: float) -> set[int]:
    """Indices of the documents the training split reads (``split_documents``): those not
    held out whole, or every one where none is (each is cut)."""
    val_ids = held_out(docs, val_fraction)
    if val_ids and len(val_ids) < len(docs):
        return set(range(len(docs))) - val_ids
    return set(range(len(docs)))


def split_documents(docs: Documents, val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split. Many documents: whole documents, taken in the order of a stable
    hash of their names until they hold ``val_fraction`` of the text, in characters
    (``held_out``). Few documents (a single book): the last ``val_fraction`` of each, as
    nanoGPT does."""
    trained = trained_documents(docs, val_fraction)
    if len(trained) < len(docs):
        train = [t for i, (_, t) in enumerate(docs) if i in trained]
        return train, [t for i, (_, t) in enumerate(docs) if i not in trained]
    cuts = [int(len(t) * (1 - val_fraction)) for _, t in docs]
    pairs = list(zip(docs, cuts, strict=True))
    return [t[:c] for (_, t), c in pairs], [t[c:] for (_, t), c in pairs]
