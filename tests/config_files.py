"""Hydra's composition of ``conf/`` in the tests, at about a fifth of its cost, with the
same result (``read_once``): the config files parsed once per test process, the ConfigStore
not copied at every composition, and the two stages of a composition that depend on the
config groups chosen alone done once per choice.

Every ``lmlab train`` composes the ``conf/`` tree twice (Hydra's ``get_mode``, then the run)
and a sweep once more per job; the suite composes about 1,700 times in its workers, each
composition 0.15 s with the files parsed once (0.19 s without): a quarter of the suite's CPU
time (py-spy, stop 76). A composition is (1) the defaults list, which config of each group
goes where, from the primary config and the overrides that choose groups, (2) those configs
merged, (3) the value overrides applied and Hydra's runtime node filled in. (1) and (2) read
nothing but the config files (which no test changes: the session fails if one writes in the
checkout) and the group choices, while the value overrides (a test's
``paths.output_dir=<tmp>``) make almost every composition's inputs unique; so (1) is kept
by the group-choosing overrides and (2) by the defaults list, each handed out as a copy
(unpickled: an OmegaConf deep copy took 2.5 times as long) with the value overrides of the
call, and (3) runs every time: 0.03 s a composition. Checked equal, hydra node included, to
Hydra's own for every config of every group and random combinations of presets, experiments
and value overrides, in both run modes, fresh and kept (stop 77; ``test_config_files.py``
keeps one case of each kind). Kept only where the search path is ``conf/``'s, Hydra's and
the ConfigStore's (a test's own config folder is composed every time); a composition that
fails keeps nothing, so each attempt raises from Hydra itself.

Files: only ``conf/``'s and Hydra's own are kept (a run's records, thousands of them, are
read as they are); one is parsed again whenever its text differs from the text parsed; each
load gets its own copy, which Hydra edits (it takes ``defaults`` out)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import IO, Any

import hydra
from hydra._internal import config_loader_impl
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.defaults_list import DefaultsList
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from lmlab.config import CONF_DIR

_PARSED: dict[tuple[str, str], bytes] = {}
_LOAD = OmegaConf.load


# lmlab's conf/ and Hydra's own (its hydra/ group: logging, output, help)
_KEPT = tuple(os.path.realpath(d) + os.sep for d in (CONF_DIR, Path(hydra.__file__).parent))


def kept(value: Any) -> bytes:
    """What is kept, pickled: each use unpickles its own copy (an OmegaConf config's deep copy
    took 2.5 times as long)."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


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
        _PARSED[key] = kept(_LOAD(file_))
    return pickle.loads(_PARSED[key])


_SOURCES = {"pkg://hydra.conf", "structured://", f"file://{CONF_DIR}"}
_DEFAULTS: dict[tuple[Any, ...], bytes] = {}
_MERGED: dict[tuple[Any, ...], bytes] = {}
_DEFAULTS_LIST = config_loader_impl.create_defaults_list
_MERGE = ConfigLoaderImpl._compose_config_from_defaults_list


def _conf_sources(repo: Any) -> tuple[str, ...] | None:
    """The repository's sources, where they are only ``conf/``'s, Hydra's and the
    ConfigStore's: a test's own config folder is composed every time (None)."""
    sources = tuple(source.full_path() for source in repo.get_sources())
    return sources if set(sources) <= _SOURCES else None


def _values(repo: Any, overrides: list[Override]) -> list[Override]:
    """The overrides that set values, not config groups, as Hydra's ``Overrides`` sorts them
    (a sweep's are left out, as there)."""
    return [
        o
        for o in overrides
        if not o.is_sweep_override()
        and (isinstance(o.value(), dict) or not repo.group_exists(o.key_or_group))
    ]


def _defaults_list(
    repo: Any, config_name: str | None, overrides_list: list[Override], **kwargs: Any
) -> DefaultsList:
    """Hydra's ``create_defaults_list``, kept by the overrides that choose config groups
    (value overrides pass through it untouched, as ``config_overrides``)."""
    if (sources := _conf_sources(repo)) is None:
        return _DEFAULTS_LIST(repo, config_name, overrides_list, **kwargs)
    values = _values(repo, overrides_list)
    groups = [o for o in overrides_list if not o.is_sweep_override() and o not in values]
    key = (sources, config_name, *sorted(kwargs.items()), *(o.input_line for o in groups))
    if key not in _DEFAULTS:
        _DEFAULTS[key] = kept(_DEFAULTS_LIST(repo, config_name, groups, **kwargs))
    defaults = pickle.loads(_DEFAULTS[key])
    defaults.config_overrides = defaults.overrides.config_overrides = values
    return defaults


def _merged(self: ConfigLoaderImpl, defaults: list[Any], repo: Any) -> DictConfig:
    """Hydra's ``_compose_config_from_defaults_list``, kept by the defaults list."""
    if (sources := _conf_sources(repo)) is None:
        return _MERGE(self, defaults, repo)
    fields = ("config_path", "parent", "package", "is_self", "primary")
    key = (sources, *(tuple(getattr(d, f) for f in fields) for d in defaults))
    if key not in _MERGED:
        merged = _MERGE(self, defaults, repo)
        # the merge reads ``${now:...}`` (hydra.run.dir) and OmegaConf keeps what it read in
        # the root: each composition reads its own time, as Hydra's own does at its merge
        merged._metadata.resolver_cache.clear()
        _MERGED[key] = kept(merged)
    return pickle.loads(_MERGED[key])


def read_once() -> None:
    """``OmegaConf.load`` of a file (Hydra's file config source reads an open one, lmlab's
    checks a path) keeps what it parsed for the rest of the process. And Hydra's ConfigStore
    is not deep-copied at every composition: each one copies its config repository (so that
    setting up its search path leaves the original as it was), and with it the process's one
    ConfigStore, every schema in it (Hydra's, its plugins', lmlab's), about a tenth of a
    composition; the copy is only read, and each node it hands out is a copy already
    (``ConfigStore.load``). And a composition's defaults list and merged configs are kept by
    what determines them (above)."""
    OmegaConf.load = _load  # type: ignore[method-assign]
    ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]
    ConfigLoaderImpl._compose_config_from_defaults_list = _merged  # type: ignore[method-assign]
    config_loader_impl.create_defaults_list = _defaults_list  # type: ignore[assignment]
