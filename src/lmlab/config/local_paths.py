"""Local paths, however they are spelt: ``./x.jsonl`` typed in ``/home/u/d`` and
``/home/u/d/x.jsonl`` are one file, and ``./x.jsonl`` typed in another folder is another.

What lmlab compares of a path is the file it names (``source_name``) from the working
directory it was read in: for a run's saved config, its launch's (``launch_cwd``: Hydra's
``hydra.runtime.cwd``); for the config of this command, this process's. A resume compares
its config's paths so (``lmlab.train.resume``), ``init_from`` its checkpoint
(``lmlab.train.init_from``), ``compare`` and ``scaling`` the runs' data
(``lmlab.analysis.comparable``), and the data cache keys a corpus by its files' names
(``lmlab.data.sources``). A hub name (``data.name=wikitext``) is no path: compared as typed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

# How a path begins, and a hub name ("name", "owner/name") never does.
PATH_STARTS = ("/", "~", "./", "../")
# The config fields (dotted) that name a local file or folder wherever they are set.
PATH_FIELDS = ("data.path", "data.val_path", "task.train", "task.val")
# The fields that name a dataset, a local path or a hub name, with the source (field, value)
# under which they are read: a local path where one exists, or where the name begins as only
# a path can (``PATH_STARTS``), as ``datasets.load_dataset`` reads a local path first.
NAME_FIELDS = {"data.name": ("data.source", "hf"), "task.name": ("task.source", "hf")}


def source_name(path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """The file ``path`` names from the folder ``cwd`` (None: this process's working
    directory), one name for every spelling: absolute (``~`` expanded, ``..`` taken by name),
    its folders' links followed, but not a link it ends in (a run's ``last.ckpt`` moves on as
    that run trains, and stays the same source). ``runs/a/last.ckpt`` from the folder above,
    ``../a/last.ckpt`` from ``runs/b`` and a linked folder's path to it are one name."""
    return source_names([path], cwd)[0]


def source_names(
    paths: Iterable[str | os.PathLike], cwd: str | os.PathLike | None = None
) -> list[str]:
    """``source_name`` of each of ``paths``, each folder's links resolved once: a corpus of
    thousands of files in a few folders (the stdlib corpus: 612 files, a realpath each took a
    fifth of a millisecond, 0.13 s at every run's start)."""
    base = os.getcwd() if cwd is None else os.fspath(cwd)
    folders: dict[str, str] = {}
    names = []
    for path in paths:
        named = os.path.abspath(os.path.join(base, os.path.expanduser(os.fspath(path))))
        parent, name = os.path.split(named)
        if parent not in folders:
            folders[parent] = os.path.realpath(parent)
        names.append(str(Path(folders[parent]) / name))
    return names


def local_name(field: str, value: Any, cwd: str | os.PathLike | None) -> str | None:
    """The file ``value`` of the dotted ``field`` names from ``cwd`` (``source_name``) where
    it is a local path: any value of ``PATH_FIELDS``, a ``NAME_FIELDS`` value that exists
    there or begins as only a path can. None for a hub name, no string, or a relative path
    read in a folder that is not known (``cwd`` None): it is compared as typed."""
    if not isinstance(value, str) or not value:
        return None
    if cwd is None and not os.path.isabs(os.path.expanduser(value)):
        return None
    name = source_name(value, cwd)
    if field in PATH_FIELDS or value.startswith(PATH_STARTS) or os.path.exists(name):
        return name
    return None


def named_files(flat: Mapping[str, Any], cwd: str | os.PathLike | None) -> dict[str, str]:
    """{dotted field: the file it names from ``cwd`` (None: not known)} for each path field of
    the flat config ``flat`` that names a local path (``local_name``): ``NAME_FIELDS`` under
    their source only (``task.name=code_or_play`` is a shipped set, whatever folder holds
    that name)."""
    names = {}
    for field in (*PATH_FIELDS, *NAME_FIELDS):
        source = NAME_FIELDS.get(field)
        if source is not None and str(flat.get(source[0])) != source[1]:
            continue
        name = local_name(field, flat.get(field), cwd)
        if name is not None:
            names[field] = name
    return names


def hydra_runtime(run_dir: Path) -> dict[str, Any]:
    """Hydra's ``runtime`` record of the run's newest launch (``.hydra/hydra.yaml``: ``cwd``,
    the training command's working directory; ``output_dir``, the run's folder when it ran);
    empty where it is missing or unreadable (``hydra.output_subdir=null``)."""
    try:
        hydra = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    runtime = hydra.get("hydra", {}).get("runtime") if isinstance(hydra, dict) else None
    return runtime if isinstance(runtime, dict) else {}


def launch_cwd(run_dir: Path) -> str | None:
    """The working directory the run's newest launch read its relative paths in (Hydra's
    ``hydra.runtime.cwd``, which ``run_config.yaml`` and ``.hydra/config.yaml`` of that launch
    were written with); None where the run has no record of it."""
    cwd = hydra_runtime(run_dir).get("cwd")
    return cwd if isinstance(cwd, str) and os.path.isabs(cwd) else None
