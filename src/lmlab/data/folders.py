"""A text corpus folder's files: which of the files under ``data.path`` (or a local Hugging
Face dataset's folder) are the corpus, in a deterministic order, and which folders are left
out of it and why (hidden ones, the data cache, lmlab's own run and sweep folders)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from lmlab.config import DataConfig
from lmlab.config.locks import LOCK_FILES
from lmlab.errors import ConfigError, say_once
from lmlab.files import PLAN, RUN_CONFIG, SWEEP_RECORD

log = logging.getLogger(__name__)


def skipped(relative: Path) -> bool:
    """What a folder of text leaves out: hidden files and folders (``.git``, ``.venv``) and
    Python's byte-code caches, which are never the text a user means."""
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


def walk(
    root: Path, why_left_out: Callable[[Path, str], str | None] = lambda folder, real: None
) -> tuple[list[Path], dict[Path, str]]:
    """Every entry under ``root``, following links to folders (a corpus assembled from links),
    each real folder once, so that a link back up the tree is no loop; and the folders below
    ``root`` not entered, each with why: ``why_left_out`` (a folder's path and its real path)
    says why a folder is left out, or None."""
    seen: set[str] = set()
    found: list[Path] = []
    left: dict[Path, str] = {}
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        why = None if Path(folder) == root else why_left_out(Path(folder), real)
        if why is not None:
            left[Path(folder)] = why
            dirs[:] = []
            continue
        dirs.sort()  # a folder linked twice is read under its first name, on every machine
        found += [Path(folder) / name for name in names]
    return found, left


# What lmlab and Hydra write into a run's or a sweep's folder, any of which marks one: Hydra's
# saved config, a run's or a sweep's lock (held while it runs, left by a kill), and a sweep's
# record. A finished run whose lock is gone still has its ``.hydra/``, or, with
# ``hydra.output_subdir=null``, lmlab's own records of a run that trained (``RUN_RECORDS``,
# both); ``results.json`` or ``checkpoints/`` alone mark none, as another tool's may be a
# corpus's.
RUN_MARKS = (".hydra", *LOCK_FILES, SWEEP_RECORD)


RUN_RECORDS = (PLAN, RUN_CONFIG)


def run_mark(folder: Path) -> str | None:
    """The first of ``RUN_MARKS`` that ``folder`` holds (``.hydra/``: a folder), else both
    ``RUN_RECORDS``, or None."""
    if (folder / ".hydra").is_dir():
        return ".hydra/"
    mark = next((name for name in RUN_MARKS[1:] if os.path.lexists(folder / name)), None)
    if mark is None and all((folder / name).is_file() for name in RUN_RECORDS):
        return " and ".join(RUN_RECORDS)
    return mark


CACHE = "the data cache (data.cache_dir)"
OWN = "this run writes there"


def folder_files(folder: Path, cfg: DataConfig, runs: bool = False) -> list[Path]:
    """The files of a corpus folder, in a deterministic order, each file once (``once_each``).
    Left out: what ``skipped`` leaves out, and the data cache where ``data.cache_dir`` lies
    inside the folder (its rows and tokenizers are no corpus: a second run read the first
    one's as documents), found by its real path, so that a link to it is left out too.
    ``runs`` (a ``data=text`` corpus): lmlab's run and sweep folders too, each marked by what
    lmlab or Hydra wrote there (``run_mark``), and the folders this run writes in
    (``data.run_folders``) before anything is; said in one line (``said_left_out``)."""
    cache = os.path.realpath(Path(cfg.cache_dir).expanduser())
    own = {os.path.realpath(Path(path).expanduser()) for path in cfg.run_folders}

    def why_left_out(path: Path, real: str) -> str | None:
        if real == cache:
            return CACHE
        if not runs:
            return None
        return OWN if real in own else run_mark(path)

    walked, left = walk(folder, why_left_out)
    if runs:
        said_left_out(cfg, folder, left)
    files = sorted(p for p in walked if p.is_file() and not skipped(p.relative_to(folder)))
    return once_each(files)


def once_each(files: list[Path]) -> list[Path]:
    """``files`` with each file on disk once (its device and inode: a symbolic or a hard
    link is the file it names), under its first name in ``files``' order, as ``walk`` enters
    each real folder once. A link to a file beside it (``latest.txt`` -> ``v3.txt``) was a
    second document of the same text, which the split could hold out for validation while
    training read the other: a folder of 25 files and a link to each held out 3 documents,
    each of them in the training split too."""
    seen: set[tuple[int, int]] = set()
    kept = []
    for path in files:
        st = path.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            kept.append(path)
    return kept


def said_left_out(cfg: DataConfig, folder: Path, left: dict[Path, str]) -> None:
    """One line, once per process, naming the run and sweep folders ``folder_files`` left out
    of the corpus ``folder`` (four, then a count) and what marked each."""
    runs = [
        (path.relative_to(folder), why)
        for path, why in left.items()
        if why != CACHE and not skipped(path.relative_to(folder))  # hidden: left out anyway
    ]
    if not runs:
        return
    shown = ", ".join(f"{path.as_posix()} ({why})" for path, why in runs[:4])
    more = f" and {len(runs) - 4} more" if len(runs) > 4 else ""
    line = (
        f"data.path={cfg.path!r}: left out of the corpus {len(runs)} folder"
        f"{'s' if len(runs) > 1 else ''} of lmlab runs and sweeps, whose logs, records and "
        f"checkpoints are no text to train on: {shown}{more}"
    )
    say_once(log, logging.INFO, line)


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
    real = os.path.realpath(path)
    if os.path.realpath(Path(cfg.cache_dir).expanduser()) == real:
        raise ConfigError(
            f"data.cache_dir={cfg.cache_dir!r} is the corpus folder data.path={cfg.path!r}: "
            "the cache's entries would be read as corpus by the next run; allowed: a cache "
            "folder outside data.path, or one inside it (left out of the corpus)"
        )
    for own in cfg.run_folders:
        if os.path.realpath(Path(own).expanduser()) == real:
            raise ConfigError(
                f"data.path={cfg.path!r} is the folder this run writes in ({own}): its logs, "
                "records and checkpoints would be read as corpus, and a resume would find "
                "another one; allowed: a corpus folder that is not hydra.run.dir or "
                "hydra.sweep.dir (one that holds them leaves them out)"
            )
    files = folder_files(path, cfg, runs=True)
    if not files and not any(path.iterdir()):
        raise ConfigError(f"data.path={cfg.path!r} is an empty folder: no text files in it")
    if not files:
        raise ConfigError(
            f"data.path={cfg.path!r} holds no text files: hidden files and folders, "
            "__pycache__, the data cache (data.cache_dir), lmlab's run and sweep folders and "
            "links to nothing are left out"
        )
    return files


def text_root(cfg: DataConfig) -> Path:
    path = Path(cfg.path).expanduser()
    return path if path.is_dir() else path.parent
