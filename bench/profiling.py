"""``bench/run.py --profile DIR``: torch.profiler key-averages tables of steady training steps,
one text file per run, for lmlab (``ProfileSteps``, a callback) and for the plain loop
(``profiled``). The steps are profiled after the timed ones, so the profiler's own cost never
enters a reported speed. On a GPU a first table is sorted by self CUDA time: which kernels
the step spends the GPU on (matmuls, attention, optimizer, copies) and how long the host
waits (``cudaStreamSynchronize``), the format of the first H200 measurements. A second,
sorted by self CPU time, shows what the host spends a step on: the first H200 run found lmlab
host-bound at gpt_small (the GPU's time per step equal to the plain loop's, its wall time
longer), and its one table could not say where the host's time went."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

PROFILE_STEPS = 5
ROWS = 30


@contextlib.contextmanager
def profiled(path: Path, steps: int) -> Iterator[None]:
    """Profile the block (``steps`` training steps) and write its table to ``path``."""
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        yield
    averages = prof.key_averages()
    text = ""
    for sort in ["self_cuda_time_total"] * cuda + ["self_cpu_time_total"]:
        table = averages.table(sort_by=sort, row_limit=ROWS)
        text += f"{path.stem}: {steps} training steps, sorted by {sort}\n{table}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class ProfileSteps(L.Callback):
    """Profiles the training steps ``start`` to ``start + steps - 1`` (0-based) of a run."""

    def __init__(self, path: str, start: int, steps: int = PROFILE_STEPS) -> None:
        self.path, self.start, self.steps = Path(path), start, steps
        self.window: contextlib.AbstractContextManager | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and self.window is None:
            self.window = profiled(self.path, self.steps)
            self.window.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.start + self.steps:
            self.close()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.close()

    def close(self) -> None:
        if self.window is not None:
            window, self.window = self.window, None
            window.__exit__(None, None, None)
