"""Lightning's Trainer as a run builds it (``build_trainer``), with ``NoProfiler`` where the
config names no profiler: recording nothing as Lightning's default does, at less host time a
step."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.profilers import PassThroughProfiler
from omegaconf import DictConfig

_NOTHING = nullcontext()  # reusable and reentrant: one serves every hook, nested too


class NoProfiler(PassThroughProfiler):
    """Lightning wraps each hook it calls in ``profiler.profile(name)``: each hook of each
    callback and of the module, about 140 a quiet step of a run with lmlab's callbacks. The
    default profiler records nothing but builds a generator-based context manager for each
    (three Python frames and an object); this one hands back one shared ``nullcontext``."""

    def profile(self, action_name: str) -> AbstractContextManager:
        return _NOTHING


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """Lightning's Trainer from ``cfg.trainer`` and ``kwargs``, its arguments plain lists and
    dicts (``_convert_="all"``): Lightning 2.4 takes a ListConfig of plugins for one plugin,
    and refused lmlab's checkpoint plugin. Where ``trainer.profiler`` names none (Lightning's
    ``simple``, ``advanced`` or ``pytorch`` do), the profiler is ``NoProfiler``."""
    if cfg.trainer.get("profiler") is None:
        kwargs.setdefault("profiler", NoProfiler())
    return instantiate(cfg.trainer, _convert_="all", **kwargs)
