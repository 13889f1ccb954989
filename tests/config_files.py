"""The config files Hydra reads, parsed once per test process (``read_once``).

Every ``lmlab train`` composes the ``conf/`` tree twice (Hydra's ``get_mode``, then the run)
and a sweep once more per job; each composition reads and parses about 17 YAML files with
PyYAML's pure-Python loader, a quarter of its time (measured: 0.19 s a composition, 0.15 s
with the files parsed once). The suite composes a few thousand times. A file is parsed again
when its size, modification time or inode changes (a test that writes a config file);
each composition gets its own copy, which Hydra edits (it takes ``defaults`` out)."""

from __future__ import annotations

import copy
import os
from typing import IO, Any

from omegaconf import OmegaConf

_PARSED: dict[tuple[str, int, int, int], Any] = {}
_LOAD = OmegaConf.load


def _load(file_: str | os.PathLike | IO[Any]) -> Any:
    if isinstance(file_, str | os.PathLike):
        name, stat = os.fspath(file_), os.stat(file_)
    elif isinstance(getattr(file_, "name", None), str):  # an open file, as Hydra reads
        name, stat = file_.name, os.fstat(file_.fileno())
    else:  # a stream: as OmegaConf reads it
        return _LOAD(file_)
    key = (os.path.realpath(name), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _PARSED:
        _PARSED[key] = _LOAD(file_)
    return copy.deepcopy(_PARSED[key])


def read_once() -> None:
    """``OmegaConf.load`` of a file (Hydra's file config source reads an open one, lmlab's
    checks a path) keeps what it parsed for the rest of the process."""
    OmegaConf.load = _load  # type: ignore[method-assign]
