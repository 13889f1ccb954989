"""Corpus sources: each yields (name, text) documents in a deterministic order, plus a cheap
fingerprint (names, sizes, inodes, times) so a changed corpus rebuilds the cache."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lmlab.config import DataConfig, Source
from lmlab.config.local_paths import PATH_STARTS, source_name, source_names
from lmlab.data.csv_texts import csv_header, csv_texts
from lmlab.data.decode import READING, SLICING, cut, read_files
from lmlab.data.folders import folder_files, text_files, text_root
from lmlab.data.hub import load_dataset
from lmlab.data.text_column import check_text_column
from lmlab.errors import ConfigError, first_line

if TYPE_CHECKING:
    import datasets

Documents = list[tuple[str, str]]
log = logging.getLogger(__name__)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def stdlib_files() -> list[Path]:
    """The standard library's own .py sources: ~10 MB of real code on every Python install,
    found through ``sysconfig``. Left out: tests, site-packages, and ``encodings/`` (generated
    codec tables, not code). The walk prunes those folders instead of filtering afterwards
    (site-packages alone can hold 10^4 files)."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    skip.add("encodings")
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return sorted(files)


# Karpathy's char-rnn Tiny Shakespeare (1,115,394 characters, public domain), as nanoGPT uses it.
SHAKESPEARE = Path(__file__).resolve().parent / "corpora" / "tinyshakespeare.txt"


def corpus_files(cfg: DataConfig) -> tuple[list[Path], Path]:
    """The files of a file-based source and the folder their document names are relative to."""
    if cfg.source == Source.stdlib:
        return stdlib_files(), stdlib_root()
    if cfg.source == Source.shakespeare:
        return [SHAKESPEARE], SHAKESPEARE.parent
    return text_files(cfg), text_root(cfg)


def local_dataset(cfg: DataConfig) -> Path | None:
    """``data.name`` as a local path (``~`` expanded) where one exists, else None (a hub
    name): ``datasets.load_dataset`` reads a local path before it asks the hub. A name that
    only a path can be (``PATH_STARTS``) and that does not exist is refused: it was asked of
    the hub, and refused after the corpus step began with the hub's offline hint."""
    path = Path(cfg.name).expanduser()
    if path.exists():
        return path
    if cfg.name.startswith(PATH_STARTS):
        raise ConfigError(
            f"data.name={cfg.name!r} does not exist (a local path: no hub name begins with "
            f"{', '.join(PATH_STARTS)}); allowed: a data file, a folder of them or one "
            "save_to_disk wrote, or a hub name (name or owner/name)"
        )
    return None


# The files ``save_to_disk`` writes beside its shards (a DatasetDict's, a Dataset's): a folder
# holding one is read with ``load_from_disk``, as ``load_dataset`` refuses a saved Dataset.
SAVED = ("dataset_dict.json", "state.json")


def saved_split(ds: datasets.Dataset | datasets.DatasetDict, cfg: DataConfig) -> datasets.Dataset:
    """The split ``data.split`` of what ``load_from_disk`` read: a DatasetDict's split of
    that name; a Dataset, which is one split, whole (with ``data.split`` left at its default,
    so that no split asked for is ignored)."""
    import datasets

    if not isinstance(ds, datasets.DatasetDict):
        if cfg.split != "train":
            raise ConfigError(
                f"data.split={cfg.split!r}: {cfg.name!r} is one Dataset save_to_disk wrote, "
                "with no splits (it is read whole); leave data.split out, or save a DatasetDict"
            )
        return ds
    if cfg.split not in ds:
        raise ConfigError(
            f"data.split={cfg.split!r} is not a split of {cfg.name!r} (splits: {', '.join(ds)})"
        )
    return ds[cfg.split]


# The ``datasets`` builder (and its options) that reads one local data file, by its suffix:
# ``load_dataset`` finds a folder's files by itself, but takes a single file only as the
# ``data_files`` of a builder named for it (given the file as its name it finds "no data file").
DATA_FILES: dict[str, tuple[str, dict[str, str]]] = {
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".ndjson": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".parquet": ("parquet", {}),
    ".arrow": ("arrow", {}),
    ".txt": ("text", {}),
}
# How a CSV or TSV data file's text column is read (``csv_texts``), in the data cache's key:
# rows built when pandas read "NA", "None" or "null" in it as a missing text are not reused.
CSV_READING = "the text column as written"
# Compressions ``datasets`` reads a data file through (``train.jsonl.gz``).
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def data_file_kind(path: Path) -> str:
    """The suffix that names the kind of the data file ``path`` (``.csv`` of ``a.csv.gz``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def data_file_builder(cfg: DataConfig, path: Path) -> tuple[str, dict[str, str]]:
    """``DATA_FILES``' builder for the data file ``path`` (``data.name``); a ConfigError for a
    file of another kind, or with ``data.subset`` (a hub dataset's configuration)."""
    kind = data_file_kind(path)
    if kind not in DATA_FILES:
        raise ConfigError(
            f"data.name={cfg.name!r} is a file datasets does not read as data by its name; "
            f"allowed: a data file ({', '.join(DATA_FILES)}, also compressed: "
            f"{', '.join(COMPRESSED)}), a folder of them or one save_to_disk wrote (a text "
            "file of another name: data=text data.path=...)"
        )
    if cfg.subset is not None:
        raise ConfigError(
            f"data.subset={cfg.subset!r}: {cfg.name!r} is one data file, which has no subsets "
            "(a hub dataset's configurations); leave data.subset out"
        )
    return DATA_FILES[kind]


def files_cache(cfg: DataConfig) -> str:
    """Where ``datasets`` keeps its Arrow copy of a local dataset's data files: a folder of
    the data cache named by their identities (``fingerprint``). In ``datasets``' own cache a
    local file is known by its path and modification time only, so a file rewritten with
    both kept (``touch -r``, ``cp -p`` or ``rsync -a`` of another version) gave its old rows,
    while lmlab's key said that it changed and the rows were built again."""
    return str(Path(cfg.cache_dir).expanduser() / f"files-{fingerprint(cfg)}")


def _hf_dataset(cfg: DataConfig) -> datasets.Dataset:
    """``data.name``'s dataset: a folder ``save_to_disk`` wrote through ``load_from_disk``
    (``load_dataset`` refuses a saved Dataset), any other name through ``load_dataset``."""
    import datasets

    local = local_dataset(cfg)
    saved = local is not None and any((local / name).is_file() for name in SAVED)
    if saved and cfg.subset is not None:
        raise ConfigError(
            f"data.subset={cfg.subset!r}: {cfg.name!r} is a folder save_to_disk wrote, which "
            "has no subsets (a hub dataset's configurations); leave data.subset out"
        )
    if local is not None and local.is_file():
        builder, options = data_file_builder(cfg, local)
        if builder == "csv":  # the text column as written: "NA", "None" or "007" are texts
            options = {**options, **csv_texts(csv_header(local, options), [cfg.text_column])}
        return load_dataset(
            "data.name", cfg.name, None, cfg.split, builder, **options, data_files=str(local),
            cache_dir=files_cache(cfg),
        )  # fmt: skip
    if not saved:
        if local is None:
            return load_dataset("data.name", cfg.name, cfg.subset, cfg.split)
        return load_dataset(
            "data.name", cfg.name, cfg.subset, cfg.split, str(local), cache_dir=files_cache(cfg)
        )
    try:
        ds = datasets.load_from_disk(str(local))
    except Exception as err:  # a folder datasets cannot read as what it saved
        raise ConfigError(
            f"data.name={cfg.name!r} (subset={cfg.subset!r}, split={cfg.split!r}) could not be "
            f"loaded with datasets.load_from_disk: {type(err).__name__}: {first_line(err)}"
        ) from None
    return saved_split(ds, cfg)


# How a local dataset's rows are named (``row_names``), in the data cache's key and in the
# record a resume compares: by their row in the split, so that the split (a hash of the names)
# does not depend on how data.name is typed. Named "{data.name}:{i}", ./data/x.jsonl and its
# absolute path held out disjoint rows (10 of 200 each), and so did a copy on another machine.
ROW_NAMES = "a local dataset's rows named by their row in the split"


def row_names(cfg: DataConfig) -> str | None:
    """``ROW_NAMES`` for a local ``data=hf`` dataset; None for the others (a hub dataset's
    rows are named ``{data.name}:{i}``, the same everywhere; files by their relative path)."""
    return ROW_NAMES if cfg.source == Source.hf and local_dataset(cfg) is not None else None


def _hf_documents(cfg: DataConfig) -> Documents:
    ds = _hf_dataset(cfg)
    prefix = "row " if row_names(cfg) else f"{cfg.name}:"
    if cfg.text_column not in ds.column_names:
        raise ConfigError(
            f"data.text_column={cfg.text_column!r} is not a column of {cfg.name!r} "
            f"(columns: {ds.column_names})"
        )
    check_text_column(ds, cfg)
    docs, total, missing = [], 0, 0
    for i, text in enumerate(ds[cfg.text_column]):
        if text is None:  # a row without text (JSON null, an empty CSV field): no document
            missing += 1
            continue
        raw = text.encode()
        kept = raw if cfg.max_bytes is None else cut(raw, cfg.max_bytes - total)
        docs.append((f"{prefix}{i}", kept.decode()))
        total += len(kept)
        if cfg.max_bytes is not None and (total >= cfg.max_bytes or len(kept) < len(raw)):
            break
    if missing:
        log.warning(
            "data.text_column=%r: %d of the rows of %r read hold no text (null): left out",
            cfg.text_column,
            missing,
            cfg.name,
        )
    return docs


def _file_documents(cfg: DataConfig) -> Documents:
    return read_files(*corpus_files(cfg), cfg.max_bytes)


SOURCES: dict[Source, Callable[[DataConfig], Documents]] = {
    Source.stdlib: _file_documents,
    Source.text: _file_documents,
    Source.shakespeare: _file_documents,
    Source.hf: _hf_documents,
}


def load_documents(cfg: DataConfig) -> Documents:
    """All documents of the configured source; an empty corpus is an error."""
    docs = [(name, text) for name, text in SOURCES[cfg.source](cfg) if text]
    if not docs:
        where = cfg.path or cfg.name or cfg.source.value
        raise ConfigError(f"data source {cfg.source.value} ({where!r}) holds no text: empty corpus")
    return docs


def stat_identity(path: Path) -> tuple:
    """A file as git's index knows it, without reading it (``fingerprint``), named as the file
    itself (``source_name``): ``./x.jsonl`` and its absolute path are one cache entry."""
    return stat_identities([path])[0]


def stat_identities(paths: list[Path]) -> list[tuple]:
    """``stat_identity`` of each of ``paths`` (their folders' links resolved once)."""
    stats = [path.stat() for path in paths]
    return [
        (name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        for name, st in zip(source_names(paths), stats, strict=True)
    ]


def fingerprint(cfg: DataConfig) -> str:
    """Identifies the corpus without reading it, as git's index does: each file's name, size,
    inode, and its modification and change times. The change time (``st_ctime``) moves with
    every write and no tool can set it back, so a file rewritten with its size and
    modification time kept (``touch -r``, ``rsync -a`` of another version) is a change too.
    A Hugging Face dataset is its name, subset, split and column; one that is a local path
    (a ``save_to_disk`` folder, a folder of data files) is named as that path (``source_name``:
    however it is typed) and adds its files' identities, which
    ``datasets`` reads as ``folder_files`` lists them (hidden files and folders left out)."""
    if cfg.source == Source.hf:
        local = local_dataset(cfg)
        name = cfg.name if local is None else source_name(local)  # a hub name as it is
        ident: list = [name, cfg.subset, cfg.split, cfg.text_column]
        if local is not None:
            files = [local] if local.is_file() else folder_files(local, cfg)
            ident.append(stat_identities(files))
            if local.is_file() and DATA_FILES.get(data_file_kind(local), ("",))[0] == "csv":
                ident.append(CSV_READING)
            ident.append(ROW_NAMES)
    else:
        ident = stat_identities(corpus_files(cfg)[0])
        ident.append(READING)
    limit = None if cfg.max_bytes is None else [cfg.max_bytes, SLICING]
    blob = json.dumps([cfg.source.value, limit, ident], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
