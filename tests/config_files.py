"""The config files Hydra reads, parsed once per test process (``read_once``), and the
ConfigStore not copied at every composition.

Every ``lmlab train`` composes the ``conf/`` tree twice (Hydra's ``get_mode``, then the run)
and a sweep once more per job; each composition reads and parses about 17 YAML files with
PyYAML's pure-Python loader, a quarter of its time (measured: 0.19 s a composition, 0.15 s
with the files parsed once). The suite composes a few thousand times. Only ``conf/``'s and
Hydra's own files are kept (a run's records, thousands of them, are read as they are); one
is parsed again whenever its text differs from the text parsed; each load gets its own copy,
which Hydra edits (it takes ``defaults`` out)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import IO, Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lmlab.config import CONF_DIR

_PARSED: dict[tuple[str, str], Any] = {}
_LOAD = OmegaConf.load


# lmlab's conf/ and Hydra's own (its hydra/ group: logging, output, help)
_KEPT = tuple(os.path.realpath(d) + os.sep for d in (CONF_DIR, Path(hydra.__file__).parent))


def _load(file_: str | os.PathLike | IO[Any]) -> Any:
    name = os.fspath(file_) if isinstance(file_, str | os.PathLike) else getattr(file_, "name", 0)
    if not isinstance(name, str) or not os.path.realpath(name).startswith(_KEPT):
        return _LOAD(file_)  # not conf/'s, or a stream: as OmegaConf reads it
    if isinstance(file_, str | os.PathLike):
        with open(name, encoding="utf-8") as f:
            text = f.read()
    else:  # an open file, as Hydra's file config source reads
        start = file_.tell()
        text = file_.read()
        file_.seek(start)
    key = (os.path.realpath(name), text)
    if key not in _PARSED:  # parsed from the file itself: its errors name it
        _PARSED[key] = _LOAD(file_)
    return copy.deepcopy(_PARSED[key])


def read_once() -> None:
    """``OmegaConf.load`` of a file (Hydra's file config source reads an open one, lmlab's
    checks a path) keeps what it parsed for the rest of the process. And Hydra's ConfigStore
    is not deep-copied at every composition: each one copies its config repository (so that
    setting up its search path leaves the original as it was), and with it the process's one
    ConfigStore, every schema in it (Hydra's, its plugins', lmlab's), about a tenth of a
    composition; the copy is only read, and each node it hands out is a copy already
    (``ConfigStore.load``)."""
    OmegaConf.load = _load  # type: ignore[method-assign]
    ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]
