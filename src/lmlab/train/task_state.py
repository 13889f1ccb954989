"""What ``LMTask``'s checkpoints keep of a run and restore (its Lightning checkpoint hooks,
as a base class of ``LMTask``): the model's config, the task, the tokenizer and ``run_state``
(the best validation loss, the last step's training losses, the kernels, the plan's record);
a resumed run's learning rate at its schedule's value for the checkpoint's step, and its
training-loop counters as this run counts them (``rebatch_progress``, ``extend_epoch``)."""

from __future__ import annotations

import math
from itertools import zip_longest
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from lmlab.config import TaskKind, model_config_dict
from lmlab.infer.declared import DECLARED

# The training losses a step logs, in the order of ``objective``'s parts, and the key of each
# in results.json and a checkpoint's ``run_state``: the LM loss, and a Mixture of Experts'
# router losses (unweighted; None for a dense model).
TRAIN_LOSSES = {f"train/{name}": f"train_{name}" for name in ("loss", "aux_loss", "z_loss")}


class RunState:
    """``LMTask``'s checkpoint hooks; the attributes they read (``model_cfg``, ``task``,
    ``best_val_loss``, ``logged_loss``, ``sdpa_kernels``, ``cross_entropy``,
    ``plan_record``, ``declared``) are ``LMTask``'s."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain types only, so checkpoints load with torch.load(weights_only=True)
        checkpoint["model_config"] = model_config_dict(self.model_cfg)
        if self.task.kind != TaskKind.lm:  # a pre-training checkpoint stays as it was
            checkpoint["task"] = self.task.record()
        # the tokenizer too (a JSON string), so a checkpoint is all that generation needs
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if getattr(datamodule, "tokenizer", None) is not None:
            checkpoint["tokenizer"] = datamodule.tokenizer.to_str()
        if self.declared.record():  # a converted model's, kept as its tokenizer is
            checkpoint[DECLARED] = self.declared.record()
        checkpoint["run_state"] = self.run_state()

    def run_state(self) -> dict[str, Any]:
        """What ``results.json`` reports about the steps up to this checkpoint, for a resumed
        run: the best validation loss so far, the train losses of the checkpoint's step
        (``last_losses``) and the training step's kernels. Read once per checkpoint, when the
        host waits for the device anyway."""
        step = self._trainer.global_step if self._trainer else None
        return {
            "best_val_loss": self.best_val_loss,
            **self.last_losses(step),
            "sdpa_kernels": self.sdpa_kernels,
            "cross_entropy": self.cross_entropy,
            **self.plan_record,
        }

    def last_losses(self, step: int | None = None) -> dict[str, float | None]:
        """``TRAIN_LOSSES`` by results.json key, of the last step that logged them (the last
        step does), read on the host: None where none did or that step is not ``step``, and
        for a dense model's router losses."""
        logged = self.logged_loss
        parts = logged[1] if logged is not None and step in (None, logged[0]) else []
        values = parts.tolist() if isinstance(parts, torch.Tensor) else list(parts)
        return dict(zip_longest(TRAIN_LOSSES.values(), values))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run's best validation loss covers the validations before the checkpoint
        too (and one known otherwise, set before: ``lmlab.train.run``); a resume with no step
        left to train reports the checkpoint's train loss and kernels (checkpoints from
        before ``run_state`` restore nothing)."""
        state = checkpoint.get("run_state") or {}
        self.best_val_loss = lowest(self.best_val_loss, state.get("best_val_loss"))
        self.sdpa_kernels = state.get("sdpa_kernels")
        self.cross_entropy = state.get("cross_entropy")
        if state.get("train_loss") is not None:  # the router losses too, where it kept them
            kept = [state.get(key) for key in TRAIN_LOSSES.values()]
            self.logged_loss = (checkpoint["global_step"], [v for v in kept if v is not None])
        if self._trainer is not None:  # the loops restore from this dict after this hook
            rebatch_progress(checkpoint, self._trainer.accumulate_grad_batches)
            extend_epoch(checkpoint, self._trainer.max_steps)

    def restore_lr(self) -> None:
        """A resumed run's learning rate is its schedule's at the checkpoint's step. The
        optimizer's restored state holds the rate the checkpoint's run set, which differs
        when ``trainer.max_steps`` has changed since (a completed run extended): without this
        the first step after the checkpoint ran at the old schedule's rate."""
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            if not isinstance(schedule, LambdaLR):
                continue
            step = schedule.last_epoch
            factors = [fn(step) for fn in schedule.lr_lambdas]
            lrs = [base * f for base, f in zip(schedule.base_lrs, factors, strict=True)]
            for group, lr in zip(schedule.optimizer.param_groups, lrs, strict=True):
                if isinstance(group["lr"], torch.Tensor):  # as LRScheduler.step sets it
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
            schedule._last_lr = lrs  # what get_last_lr() returns (train/lr)


def lowest(*losses: float | None) -> float | None:
    """The lowest finite loss of ``losses``, or None: a NaN validation (``guard.mode=off``
    trains on through a non-finite update) is no best. ``min`` with a NaN returned the NaN or
    the other value by their order."""
    finite = [v for v in losses if v is not None and math.isfinite(v)]
    return min(finite, default=None)


def extend_epoch(checkpoint: dict, max_steps: int) -> None:
    """A completed run extended (``trainer.max_steps`` raised): its last checkpoint marks
    the last batch of the run's one Lightning epoch, whose sampler held the old plan's
    samples, and Lightning took the epoch as ended: the extension logged epoch 1 where an
    uninterrupted run logs 0 (its data and losses were the same). With steps left to train,
    the epoch goes on. In place."""
    progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if progress and progress.get("is_last_batch") and checkpoint["global_step"] < max_steps:
        progress["is_last_batch"] = False


def rebatch_progress(checkpoint: dict, accumulation: int) -> None:
    """A checkpoint's training-loop counters in this run's micro-batches. Lightning counts the
    micro-batches a rank has run (``epoch_loop.batch_progress``) and ends the epoch, or closes
    an optimizer step, by that count; a checkpoint of ``k`` steps at gradient accumulation
    ``a`` holds k x a. Resumed at another accumulation (another device count at the same
    global batch) the count must be k x this run's: left as saved, a run resumed on more
    devices ended its epoch early and replayed batches, and one on fewer closed its first
    step after one micro-batch. Every counter moves by the same amount, so how Lightning
    reads their differences (a save at a batch's end) is kept. In place."""
    batch = (checkpoint.get("run_state") or {}).get("batch") or {}
    saved = batch.get("accumulation")
    progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not saved or saved == accumulation or not progress:
        return
    step = int(checkpoint["global_step"])
    shift = step * accumulation - progress["total"]["processed"]
    for counts in (progress["total"], progress["current"]):
        for name in ("ready", "started", "processed", "completed"):
            counts[name] += shift
