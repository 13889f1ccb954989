"""The non-finite guard: what a NaN/inf loss or gradient norm does to a run.

``mode=stop`` ends the run with a message naming the step and the last good checkpoint;
``mode=skip`` drops the update, at most ``max_skips`` times in a run; ``off`` does nothing.
Under fp16 with a GradScaler an overflow step is the scaler's (it skips the update and halves
the loss scale); the guard stops the run once the scale is below ``min_loss_scale``, when
nearly every recent step has overflowed.

The check costs no extra pass over the gradients: ``LMTask.configure_gradient_clipping``
computes the global norm once (clipping and the logged ``train/grad_norm`` use it too) and
hands it to :meth:`NonFiniteGuard.check`. Under FSDP the norm is the global one, so every rank
takes the same decision.

``stop`` decides on the device: each step folds "is the norm finite?" into a device tensor
holding the first bad step, and the host reads it only on logging steps, before every
checkpoint is written (``on_save_checkpoint``, so no checkpoint ever holds the weights of a
non-finite update), before every validation and every step's evals (``stop_if_nonfinite``:
they read the device anyway, and scored non-finite weights as if they were a model) and
when training ends. A step that logs nothing therefore waits for no
device result. ``skip`` must decide before the optimizer step, so it reads the norm every
step: on a GPU that is one host-device synchronisation per step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lmlab.config import GuardMode

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss or gradient norm."""


class NonFiniteGuard(L.Callback):
    def __init__(
        self,
        mode: GuardMode = GuardMode.stop,  # a config gives its value: "skip"
        max_skips: int = 10,
        dirpath: str = "",
        min_loss_scale: float = 1.0,
    ) -> None:
        self.mode = GuardMode(mode)  # checked with the config: stop, skip, off
        self.max_skips, self.dirpath = max_skips, Path(dirpath)
        self.min_loss_scale = min_loss_scale
        self.skipped = 0
        self.first_bad: torch.Tensor | None = None  # on the device: -1, or the first bad step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "nonfinite_guard"):
            raise TypeError(f"NonFiniteGuard needs an LMTask, got {type(pl_module).__name__}")
        checks = {GuardMode.stop: self.flag, GuardMode.skip: self.skip, GuardMode.off: None}
        pl_module.nonfinite_guard = checks[self.mode]  # called with every step's gradient norm

    def flag(
        self, trainer: L.Trainer, optimizer: torch.optim.Optimizer, norm: torch.Tensor
    ) -> None:
        """``stop``: the first non-finite step noted on the device, read later."""
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=norm.device)
        bad = ~torch.isfinite(norm) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, trainer.global_step, self.first_bad)

    def skip(
        self, trainer: L.Trainer, optimizer: torch.optim.Optimizer, norm: torch.Tensor
    ) -> None:
        """``skip``: a non-finite step's update dropped (``optimizer.zero_grad``) while skips
        remain. It reads the device every step: skip must decide before the update."""
        if bool(torch.isfinite(norm)):
            return
        if self.skipped < self.max_skips:
            self.skipped += 1
            log.warning(
                "non-finite gradient norm at step %d: update skipped (%d/%d)",
                trainer.global_step,
                self.skipped,
                self.max_skips,
            )
            optimizer.zero_grad(set_to_none=True)
            return
        self.stop(trainer.global_step)

    def raise_if_bad(self) -> None:
        """Read the device flag (a synchronisation) and stop if any step was non-finite."""
        if self.first_bad is not None and (step := int(self.first_bad)) >= 0:
            self.stop(step)

    def raise_if_scale_collapsed(self, trainer: L.Trainer) -> None:
        """fp16: stop once the GradScaler's loss scale is below ``min_loss_scale`` (a read
        of the device, as ``raise_if_bad``)."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.mode == GuardMode.off or scaler is None or not scaler.is_enabled():
            return
        if (scale := scaler.get_scale()) < self.min_loss_scale:
            raise NonFiniteError(
                f"the fp16 loss scale fell to {scale:g} by step {trainer.global_step}, below "
                f"guard.min_loss_scale={self.min_loss_scale:g}: the gradients overflowed at "
                "nearly every recent step and the GradScaler skipped those updates (a "
                f"divergence it cannot recover from); {self.last_checkpoint()}"
            )

    def last_checkpoint(self) -> str:
        last = self.dirpath / "last.ckpt"
        return f"last good checkpoint: {last if last.exists() else 'none saved yet'}"

    def stop(self, step: int) -> None:
        raise NonFiniteError(
            f"non-finite loss or gradient norm at step {step} (guard.mode={self.mode.value}, "
            f"{self.skipped} updates skipped); {self.last_checkpoint()}"
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if pl_module.reads_now:  # a logging step's update: it reads device values anyway
            self.raise_if_bad()
            self.raise_if_scale_collapsed(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.raise_if_bad()  # before the file is written: never save non-finite weights

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.raise_if_bad()  # before its loss of non-finite weights is logged as a model's

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.raise_if_bad()
        self.raise_if_scale_collapsed(trainer)


def stop_if_nonfinite(trainer: L.Trainer) -> None:
    """Read the run's guard flag now (where the host reads the device anyway: the evals
    during training) and stop if an update was non-finite."""
    for callback in trainer.callbacks:
        if isinstance(callback, NonFiniteGuard):
            callback.raise_if_bad()
