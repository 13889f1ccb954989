"""The metrics after the last step (``final_metrics``): the fit's, and a validation of the
final weights where the fit ended without one or ``final_val_batches`` scores other rows,
logged at the last step (``logged_at``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from omegaconf import DictConfig

from lmlab.train.loggers import log_step
from lmlab.train.task import LMTask
from lmlab.train.task_state import TRAIN_LOSSES


@contextmanager
def logged_at(trainer: L.Trainer, step: int) -> Iterator[None]:
    """A validation after ``fit`` logs its metrics at ``step``: Lightning would log them at
    its count of batches that stepped, which by then includes the last batch (N, not the
    N - 1 where the validation during training, and the evals, put the weights after N
    steps), and which a run resumed from its final checkpoint restores as N - 1. Its epoch is
    the last step's: ``fit`` counted the epoch it ended as done, so Lightning logged the
    validation in the next one (epoch 1 after the training rows' 0). The counts are
    Lightning's own (private) attributes, put back afterwards."""
    loop = trainer.fit_loop.epoch_loop
    counted = loop._batches_that_stepped
    epochs = trainer.fit_loop.epoch_progress.current
    ended = epochs.completed
    loop._batches_that_stepped = step
    epochs.completed = max(0, ended - 1) if ended == epochs.processed else ended
    try:
        yield
    finally:
        loop._batches_that_stepped = counted
        epochs.completed = ended


def final_val_limit(final: int | float | None, during: int | float) -> int | float | None:
    """The ``limit_val_batches`` of the validation after the last step, when it differs from
    the one during training (``final_val_batches``); None: the same rows. Compared by type
    too, as Lightning reads them: 1 is one batch, 1.0 the whole split."""
    if final is None or (type(final), final) == (type(during), during):
        return None
    return final


def final_metrics(
    cfg: DictConfig, trainer: L.Trainer, task: LMTask, dm: Any, finishing: bool
) -> dict[str, float]:
    """The metrics after the last step: the fit's, and a validation of the final weights
    where the fit ended without one or ``final_val_batches`` scores other rows."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rescore = final_val_limit(cfg.get("final_val_batches"), trainer.limit_val_batches)
    if rescore is not None:
        trainer.limit_val_batches = rescore  # the Trainer's own setting, for this last pass
    task.finishing = finishing  # its evals and sample run around this last validation
    if rescore is not None or task.last_val_step != trainer.global_step:
        task.rescoring = rescore is not None
        try:
            with logged_at(trainer, log_step(trainer.global_step)):
                trainer.validate(task, datamodule=dm, verbose=False)  # it drops train/* metrics
        finally:
            task.rescoring = False
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
    if "train/loss" not in metrics:  # nothing trained here: the checkpoint's last losses
        kept = zip(TRAIN_LOSSES, task.last_losses().values(), strict=True)
        metrics |= {name: value for name, value in kept if value is not None}
    return metrics
