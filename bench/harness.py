"""Run lmlab exactly as ``python src/train.py <overrides>`` would, and time its steps.

``compose`` builds the config from the real ``conf/`` tree (as ``tests/conftest.py`` does);
``run_lmlab`` calls ``lmlab.train.run.train`` with one extra callback, ``StepTimes``, which
timestamps the start of every training batch. The time between two starts is everything one
step costs (data, forward, backward, clipping, optimizer, logging, callbacks, progress bar),
which is also what ``plain_loop.plain_fit`` measures for a loop without Lightning.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from bench.profiling import PROFILE_STEPS
from lmlab.data.collators import decoder_tokens
from lmlab.model import flops_per_token
from lmlab.train.compose import CONF
from lmlab.train.compose import compose_train as compose  # noqa: F401 (the cases' entry point)

ROOT = CONF.parent
WARMUP_STEPS = 2  # as the Throughput callback: allocation and first-touch steps left out


@dataclass
class StepLog:
    """What one training run did, step by step."""

    starts: list[float]  # perf_counter at the start of each step, its batch in hand
    cpu_starts: list[float]  # process_time there: CPU seconds, all threads of this process
    losses: list[float]
    tokens_per_step: int
    flops_per_token: float

    def step_seconds(self, warmup: int = WARMUP_STEPS, cpu: bool = False) -> list[float]:
        """Start-to-start times of the steady-state steps (the last step has no successor);
        ``cpu=True``: the process's CPU time instead of the wall time."""
        t = self.cpu_starts if cpu else self.starts
        gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
        return gaps[warmup:] or gaps

    def median_step(self, warmup: int = WARMUP_STEPS, cpu: bool = False) -> float:
        return statistics.median(self.step_seconds(warmup, cpu))

    def tokens_per_second(self, warmup: int = WARMUP_STEPS) -> float:
        return self.tokens_per_step / self.median_step(warmup)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> StepLog:
        return cls(**json.loads(path.read_text()))


class StepTimes(L.Callback):
    """Timestamps each training batch's start and keeps each step's loss; writes a
    ``StepLog`` to ``path`` when training ends. Its own cost is one ``perf_counter`` and one
    list append per hook. ``sync_at``: the steps whose start waits for the GPU first (a timing
    window's two ends, so that it counts the GPU's work of its steps exactly, as the plain
    loop's does, however far ahead of the GPU the host ran)."""

    def __init__(self, path: str, sync_at: list[int] | None = None) -> None:
        self.path = Path(path)
        self.sync_at = set(sync_at or [])
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []
        self.losses: list[Any] = []
        self.tokens_per_step = 0
        self.flops_per_token = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seq_len = trainer.datamodule.seq_len
        self.flops_per_token = flops_per_token(
            pl_module.model, seq_len, decoder_tokens(pl_module.model_cfg.family, seq_len)
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if len(self.starts) in self.sync_at and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())
        self.tokens_per_step = batch["input_ids"].numel()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach())  # a tensor: no .item() inside the timed loop

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        losses = [float(x) for x in self.losses]
        log = StepLog(
            self.starts, self.cpu_starts, losses, self.tokens_per_step, self.flops_per_token
        )
        log.save(self.path)


# Bench runs leave out what only costs time outside the steps (the end-of-run sample) and
# log nothing; validation is off so that step times are steady.
BENCH_OVERRIDES = ["logger=none", "~callbacks.sample", "trainer.limit_val_batches=0"]


def run_lmlab(
    cfg: DictConfig,
    log_file: Path | None = None,
    profile: Path | None = None,
    profile_start: int = 0,
    profile_steps: int = PROFILE_STEPS,
    sync_at: list[int] | None = None,
    audit_start: int | None = None,
) -> tuple[StepLog, dict[str, Any]]:
    """``lmlab.train.run.train(cfg)`` with ``StepTimes`` added (``sync_at``: the steps whose
    start waits for the GPU); returns its log and results.json. The run's console output
    (parameter table, progress bar) goes to ``log_file``. ``profile``: also write a
    torch.profiler table of ``profile_steps`` steps from ``profile_start`` on to that file.
    ``audit_start``: ``SyncAudit`` from that step on, to ``sync_audit.json`` in the run's
    folder."""
    from lmlab.train.run import train

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.callbacks.step_times = {
            "_target_": f"{__name__}.StepTimes",
            "path": str(out_dir / "step_times.json"),
            "sync_at": list(sync_at or []),
        }
        if audit_start is not None:
            cfg.callbacks.sync_audit = {
                "_target_": "bench.profiling.SyncAudit",
                "path": str(out_dir / "sync_audit.json"),
                "start": audit_start,
            }
        if profile is not None:
            cfg.callbacks.profile_steps = {
                "_target_": "bench.profiling.ProfileSteps",
                "path": str(profile),
                "start": profile_start,
                "steps": profile_steps,
            }
    with _redirected(log_file or out_dir / "console.log"):
        train(cfg)
    results = json.loads((out_dir / "results.json").read_text())
    return StepLog.load(out_dir / "step_times.json"), results


@contextlib.contextmanager
def _redirected(path: Path) -> Iterator[None]:
    with (
        open(path, "a") as f,
        contextlib.redirect_stdout(f),
        contextlib.redirect_stderr(f),
    ):
        yield
