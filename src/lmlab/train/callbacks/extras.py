"""What every extra forward pass of a callback shares (the kernel report, the sample, the
attention maps, the evals): it never fails the run (``optional``), runs eagerly (``eager``),
asks whether a stop was asked (``stop_check``), on the ranks that hold the weights
(``forward_here``), also at a resumed run's end (``finishing``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import lightning as L
import torch

from lmlab.train.preemption import Preemption

log = logging.getLogger(__name__)


@contextlib.contextmanager
def optional(what: str) -> Iterator[None]:
    """An extra a run can do without (a sample, attention maps, the kernel report) never fails
    it: an error is logged and the run goes on to its final checkpoint and results.json."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 (any failure of an extra: log it, keep the run)
        log.warning("%s failed, the run goes on: %s: %s", what, type(err).__name__, err)


def eager() -> contextlib.AbstractContextManager:
    """Extra forwards run the modules eagerly: compiled blocks would recompile for every new
    shape and KV-cache index (a generated sample), where eager costs nothing to start."""
    return torch.compiler.set_stance("force_eager")


def stop_check(trainer: L.Trainer, pl_module: L.LightningModule) -> Callable[[], bool]:
    """What extra forwards ask between two batches: whether the run was asked to stop
    (``Preemption.stop_asked``), so that a Ctrl-C or a cluster's SIGTERM does not wait for
    minutes of evals. Never where every rank runs them (sharded weights): a rank that ended
    its forwards early would leave the others waiting in theirs."""
    stops = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, Preemption)]
    if not stops or getattr(pl_module, "_device_mesh", None) is not None:
        return lambda: False
    return stops[0].stop_asked


def finishing(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """Whether this validation ends a resumed run that had no step left to train (stopped
    after its last checkpoint): Lightning then starts and ends no training, so the extras of
    a run's start and end (the last step's evals, the sample) run around this validation."""
    return getattr(pl_module, "finishing", False) and not trainer.sanity_checking


def forward_here(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """Whether this rank runs a callback's extra forward passes: rank 0 alone, or every rank
    when the weights are sharded (under FSDP a forward is a collective all ranks join)."""
    return trainer.is_global_zero or getattr(pl_module, "_device_mesh", None) is not None
