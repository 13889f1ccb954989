"""The progress bar: values read from the device only on the steps it prints them."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar with ``train/loss`` and ``val/loss``, read from the device only
    on logging steps and after validation. (A value logged with ``prog_bar=True`` is converted
    to a float after every batch: one host-device synchronisation per training step.)"""

    SHOWN = ("train/loss", "val/loss")

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.shown: dict[str, float] = {}

    @property
    def total_train_batches(self) -> int | float:
        """The micro-batches of the run's one epoch (the whole plan's, resumed too). Lightning's
        bar takes the lesser of those and the optimizer steps left, which under gradient
        accumulation ran out half-way (``6/6``, then ``7/?``)."""
        return self.trainer.num_training_batches

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run resumed mid-epoch (every resume: the run is one Lightning epoch) gets no
        ``on_train_epoch_start``, where Lightning's bar takes its total: it showed ``70/?``
        under "Training" where a fresh run shows ``Epoch 0: 70/100``. Here it takes the total,
        the epoch and the batches the checkpoint trained."""
        super().on_train_start(trainer, pl_module)
        if trainer.fit_loop.restarted_mid_epoch:
            self.on_train_epoch_start(trainer, pl_module)
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            self.train_progress_bar.initial = self.train_progress_bar.n = done

    def read(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics
        self.shown.update({k: round(float(metrics[k]), 3) for k in self.SHOWN if k in metrics})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if getattr(pl_module, "reads_now", True):
            self.read(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read(trainer)
        super().on_validation_end(trainer, pl_module)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **self.shown}
