"""Tokens/s and MFU of the training steps (``Throughput``), and ``untimed``: what the
extras run between two batches left out of a step's time."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from lmlab.data.collators import decoder_tokens
from lmlab.model import flops_per_token
from lmlab.train.hardware import largest_linears, peak_flops, raised_peak


class Throughput(L.Callback):
    """Tokens/s and MFU over the time training batches take, each from the end of the one
    before (the next batch's loading and the loop's own hooks are a step's cost too), where
    no validation, checkpoint save or evals came between (those are left out: ``untimed``).
    The first ``skip`` batches of each process (allocation, compilation) are left out. Logs
    every ``log_every_n_steps`` and at the last step; on CUDA it synchronises only then, so
    a quiet step's time is the host's and the logging step's takes what the device had left:
    timing each batch from its own start left the time between batches out, during which a
    GPU goes on working, and overstated tokens/s by that gap over the step time. Checkpoints
    keep the totals, so a resumed run's figures cover every process that trained it: its MFU
    divides by the device-seconds of each (a run resumed on another device count too).
    FLOPs are counted at each batch's own shape: a fine-tuning batch is padded to its longest
    example (and T5's targets to theirs), not to ``data.seq_len`` and span corruption's
    target length, which pre-training batches have (``flops_per_token`` is theirs)."""

    def __init__(self, skip: int = 2, cache_dir: str = "~/.cache/lmlab") -> None:
        self.skip, self.cache_dir = skip, cache_dir
        self.tokens = self.seconds = 0.0
        self.device_seconds = 0.0  # seconds x devices: what MFU divides by (per device)
        self.window_tokens = self.window_seconds = 0.0
        self.batches = 0
        self.flops_per_token = self.peak = None
        self.flops = self.window_flops = 0.0
        self.shape_flops: Callable[[int, int | None], float] | None = None
        self.shapes: list[tuple[int, int, int]] = []
        self.world_size = 1
        self.t_end: float | None = None  # the last timed batch's end, if nothing ran since
        self.queued = False  # that batch's device work may still run (CUDA, not synchronised)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seq_len = trainer.datamodule.seq_len
        # FLOPs per input token at (input length, decoder length), once per shape
        self.shape_flops = functools.cache(functools.partial(flops_per_token, pl_module.model))
        self.flops_per_token = self.shape_flops(
            seq_len, decoder_tokens(pl_module.model_cfg.family, seq_len)
        )
        rows = trainer.datamodule.cfg.batch_size * seq_len
        self.shapes = largest_linears(pl_module.model, rows)
        self.peak = peak_flops(pl_module.device, trainer.precision, self.cache_dir, self.shapes)
        self.world_size = trainer.world_size  # tokens are counted over all ranks, MFU per device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t0 = time.perf_counter() if self.t_end is None else self.t_end

    def untimed(self) -> None:
        """What runs from here to the next batch (validation, a checkpoint's save, evals) is
        no training step's time. On CUDA the last batch's kernels may still be queued (a
        quiet step does not synchronise): they finish first and their time is that batch's,
        not the validation's, which would read their results anyway."""
        if self.queued and self.t_end is not None:
            torch.cuda.synchronize()
            dt = time.perf_counter() - self.t_end
            self.seconds += dt
            self.device_seconds += dt * self.world_size
            self.window_seconds += dt
        self.t_end, self.queued = None, False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.untimed()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.untimed()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        logs = pl_module.reads_now  # a logging step's last micro-batch: its update is made
        if pl_module.device.type == "cuda" and logs:
            torch.cuda.synchronize()
        self.t_end = t1 = time.perf_counter()
        if self.batches <= self.skip:
            return
        self.queued = pl_module.device.type == "cuda" and not logs
        n_tokens = batch["input_ids"].numel() * trainer.world_size
        dt = t1 - self.t0
        flops = n_tokens * self.batch_flops_per_token(batch)
        self.tokens += n_tokens
        self.flops += flops
        self.window_flops += flops
        self.seconds += dt
        self.device_seconds += dt * trainer.world_size
        self.window_tokens += n_tokens
        self.window_seconds += dt
        if logs and self.window_seconds > 0:  # the last step's row: LMTask writes it
            tps = self.window_tokens / self.window_seconds
            pl_module.log("perf/tokens_per_second", tps)
            achieved = self.window_flops / self.window_seconds / self.world_size  # per device
            if self.peak and pl_module.device.type == "cpu":
                self.raise_peak(achieved, trainer.precision)
            if self.peak:
                pl_module.log("perf/mfu", achieved / self.peak)
            self.window_tokens = self.window_seconds = self.window_flops = 0.0

    def batch_flops_per_token(self, batch: dict[str, torch.Tensor]) -> float:
        """Training FLOPs per input token at this batch's shape; ``flops_per_token`` where the
        training start has not run (a state restored alone)."""
        if self.shape_flops is None:
            return self.flops_per_token
        decoder = batch.get("decoder_input_ids")
        return self.shape_flops(
            batch["input_ids"].shape[1], None if decoder is None else decoder.shape[1]
        )

    def raise_peak(self, achieved: float, precision: str) -> None:
        """A CPU peak below what the run achieves (FLOP/s per device) is raised
        (``raised_peak``), so no MFU logged or recorded is above 1."""
        if achieved > self.peak:
            self.peak = raised_peak(self.peak, achieved, precision, self.cache_dir, self.shapes)

    def state_dict(self) -> dict[str, Any]:
        # the peak and FLOPs per token too: a resume with no step left to train measures none
        keep = (
            *("tokens", "seconds", "device_seconds", "flops", "flops_per_token", "peak"),
            "world_size",
        )
        return {name: getattr(self, name) for name in keep}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)  # a training start measures the peak afresh
        if "device_seconds" not in state_dict:  # a checkpoint from before it was kept
            self.device_seconds = self.seconds * self.world_size
        if "flops" not in state_dict:  # before it was kept: every batch at the run's shape
            self.flops = self.tokens * (self.flops_per_token or 0.0)

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    @property
    def mfu(self) -> float | None:
        if not (self.tokens and self.device_seconds and self.peak):
            return None
        return self.flops / self.device_seconds / self.peak


def untimed(trainer: L.Trainer) -> None:
    """The run's ``Throughput`` leaves what runs from here to the next batch out."""
    for callback in trainer.callbacks:
        if isinstance(callback, Throughput):
            callback.untimed()
