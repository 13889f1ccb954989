"""Corpus sources: each yields (name, text) documents in a deterministic order, plus a cheap
fingerprint (names, sizes, inodes, times) so a changed corpus rebuilds the cache."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path

from lmlab.config import DataConfig, Source
from lmlab.errors import ConfigError

Documents = list[tuple[str, str]]


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


def skipped(relative: Path) -> bool:
    """What a folder of text leaves out: hidden files and folders (``.git``, ``.venv``) and
    Python's byte-code caches, which are never the text a user means."""
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


def walk(root: Path) -> list[Path]:
    """Every entry under ``root``, following links to folders (a corpus assembled from links),
    each real folder once, so that a link back up the tree is no loop."""
    seen: set[str] = set()
    found: list[Path] = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()  # a folder linked twice is read under its first name, on every machine
        found += [Path(folder) / name for name in names]
    return found


def text_files(cfg: DataConfig) -> list[Path]:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise ConfigError(f"data.path={cfg.path!r} does not exist (allowed: a text file or folder)")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(
            f"data.path={cfg.path!r} is neither a file nor a folder (a pipe or a device?); "
            "allowed: a text file or folder"
        )
    files = sorted(p for p in walk(path) if p.is_file() and not skipped(p.relative_to(path)))
    if not files and not any(path.iterdir()):
        raise ConfigError(f"data.path={cfg.path!r} is an empty folder: no text files in it")
    if not files:
        raise ConfigError(
            f"data.path={cfg.path!r} holds no text files: hidden files and folders, "
            "__pycache__ and links to nothing are left out"
        )
    return files


def text_root(cfg: DataConfig) -> Path:
    path = Path(cfg.path).expanduser()
    return path if path.is_dir() else path.parent


# Karpathy's char-rnn Tiny Shakespeare (1,115,394 characters, public domain), as nanoGPT uses it.
SHAKESPEARE = Path(__file__).resolve().parent / "corpora" / "tinyshakespeare.txt"


def corpus_files(cfg: DataConfig) -> tuple[list[Path], Path]:
    """The files of a file-based source and the folder their document names are relative to."""
    if cfg.source == Source.stdlib:
        return stdlib_files(), stdlib_root()
    if cfg.source == Source.shakespeare:
        return [SHAKESPEARE], SHAKESPEARE.parent
    return text_files(cfg), text_root(cfg)


def universal_newlines(text: str) -> str:
    """``\\r\\n`` and a lone ``\\r`` as ``\\n``, as Python's text mode and ``datasets``' text
    loader read files: a corpus saved with Windows line ends (Project Gutenberg's books are)
    is the same text, the same tokens and the same bits per byte as its copy with Unix ones."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# How files become text (``_read_files``), in the data cache's key: rows built by an earlier
# reading (before universal newlines, a CR was kept as text) are not reused.
READING = "utf-8-sig, universal newlines"
# How ``data.max_bytes`` slices a corpus (``cut``), in the key of a slice: a slice read before
# the document crossing the limit was cut (it was kept whole) is not reused.
SLICING = "the document crossing max_bytes cut at its last line end"


def cut(raw: bytes, limit: int) -> bytes:
    """The part of a document that fits in the ``limit`` bytes left under ``data.max_bytes``:
    all of it if it fits; else up to its last newline in those bytes, or, with none there, up
    to the limit, moved back to the start of a UTF-8 character it would split."""
    if len(raw) <= limit:
        return raw
    end = raw.rfind(b"\n", 0, limit) + 1
    if end == 0:
        end = limit
        while end > 0 and raw[end] & 0xC0 == 0x80:  # a continuation byte: inside a character
            end -= 1
    return raw[:end]


def not_text(binary: list[tuple[str, int]]) -> ConfigError:
    """The files of a corpus that are not UTF-8 text, (path, offset of the first bad byte)
    each: all named at once (four, then a count), not one per try."""
    if len(binary) == 1:
        path, offset = binary[0]
        named = f"{path!r} is not UTF-8 text (invalid byte at offset {offset})"
    else:
        shown = ", ".join(f"{path!r} (offset {offset})" for path, offset in binary[:4])
        more = f" and {len(binary) - 4} more" if len(binary) > 4 else ""
        named = f"{len(binary)} files are not UTF-8 text: {shown}{more}"
    return ConfigError(f"data.path: {named}; allowed: UTF-8 text files")


def _read_files(files: list[Path], root: Path, max_bytes: int | None) -> Documents:
    """Documents named by their path relative to ``root``, so the train/val split (a hash of
    the name) is the same on every machine. With ``max_bytes``, the documents up to that many
    bytes: the one that crosses it is ``cut`` and is the last (a single 5 MB file gives its
    first lines up to ``max_bytes``), and no more of a file is read than is kept."""
    docs, total, binary = [], 0, []
    for path in files:
        left = None if max_bytes is None else max_bytes - total
        with path.open("rb") as f:
            raw = f.read() if left is None else f.read(left + 1)  # one byte more: does it fit?
        kept = raw if left is None else cut(raw, left)
        try:
            # utf-8-sig: a byte-order mark that an editor put first is no text to learn
            text = kept.decode("utf-8-sig")
        except UnicodeDecodeError as err:  # every such file is named at once, not one a try
            binary.append((str(path), err.start))
            continue
        docs.append((path.relative_to(root).as_posix(), universal_newlines(text)))
        total += len(kept)
        if max_bytes is not None and (total >= max_bytes or len(kept) < len(raw)):
            break
    if binary:
        raise not_text(binary)
    return docs


def _hf_documents(cfg: DataConfig) -> Documents:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.name, cfg.subset, split=cfg.split)
    except Exception as err:  # the hub raises many types: missing name, no network, bad split
        raise ConfigError(
            f"data.name={cfg.name!r} (subset={cfg.subset!r}, split={cfg.split!r}) could not be "
            f"loaded with datasets.load_dataset: {type(err).__name__}: {err}"
        ) from None
    if cfg.text_column not in ds.column_names:
        raise ConfigError(
            f"data.text_column={cfg.text_column!r} is not a column of {cfg.name!r} "
            f"(columns: {ds.column_names})"
        )
    docs, total = [], 0
    for i, text in enumerate(ds[cfg.text_column]):
        raw = text.encode()
        kept = raw if cfg.max_bytes is None else cut(raw, cfg.max_bytes - total)
        docs.append((f"{cfg.name}:{i}", kept.decode()))
        total += len(kept)
        if cfg.max_bytes is not None and (total >= cfg.max_bytes or len(kept) < len(raw)):
            break
    return docs


def _file_documents(cfg: DataConfig) -> Documents:
    return _read_files(*corpus_files(cfg), cfg.max_bytes)


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


def fingerprint(cfg: DataConfig) -> str:
    """Identifies the corpus without reading it, as git's index does: each file's name, size,
    inode, and its modification and change times. The change time (``st_ctime``) moves with
    every write and no tool can set it back, so a file rewritten with its size and
    modification time kept (``touch -r``, ``rsync -a`` of another version) is a change too."""
    if cfg.source == Source.hf:
        ident: object = [cfg.name, cfg.subset, cfg.split, cfg.text_column]
    else:
        ident = []
        for path in corpus_files(cfg)[0]:
            st = path.stat()
            ident.append((str(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
        ident.append(READING)
    limit = None if cfg.max_bytes is None else [cfg.max_bytes, SLICING]
    blob = json.dumps([cfg.source.value, limit, ident], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
