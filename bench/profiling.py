"""``bench/run.py --profile DIR``: torch.profiler key-averages tables of steady training steps,
one text file per run, for lmlab (``ProfileSteps``, a callback) and for the plain loop
(``profiled``). The steps are profiled after the timed ones, so the profiler's own cost never
enters a reported speed. On a GPU a first table is sorted by self CUDA time: which kernels
the step spends the GPU on (matmuls, attention, optimizer, copies) and how long the host
waits (``cudaStreamSynchronize``), the format of the first H200 measurements. A second,
sorted by self CPU time, shows what the host spends a step on: the first H200 run found lmlab
host-bound at gpt_small (the GPU's time per step equal to the plain loop's, its wall time
longer), and its one table could not say where the host's time went. Beside each table, a
JSON file holds the GPU's kernel time per step, which a case divides by its unprofiled step
time: the share of a step the GPU was busy (the first run's 24.1 ms of kernels in 29.7 ms
steps, by hand).

``SyncAudit`` (every GPU bench run, a few steps after the timed and profiled ones) runs
steps under ``torch.cuda.set_sync_debug_mode("warn")`` and records where each synchronising
CUDA call came from: a step that logs nothing should make none (``tests/train/test_gpu.py``
asserts it for tiny models), and one that does leaves the GPU idle while the host catches
up, which the first run's idle BERT and T5 steps would show."""

from __future__ import annotations

import contextlib
import json
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

PROFILE_STEPS = 5
AUDIT_STEPS = 5
ROWS = 30
# what torch.cuda.set_sync_debug_mode("warn") says at each synchronising call
SYNC_WARNING = "synchronizing CUDA operation"


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
    # the events on the GPU itself (kernels, copies, fills), as the table's "Self CUDA time
    # total" sums them: their launching ops' device time is the same time again
    device_us = sum(e.self_device_time_total for e in averages if e.device_type == DeviceType.CUDA)
    kernels = {"steps": steps, "device_ms_per_step": device_us / 1e3 / steps}
    path.with_suffix(".json").write_text(json.dumps(kernels))


def device_ms_per_step(table: Path | None) -> float | None:
    """The GPU's kernel time per step that ``profiled`` measured for ``table`` (None without
    a GPU or a table)."""
    kernels = table.with_suffix(".json") if table else None
    if kernels is None or not kernels.exists():
        return None
    return json.loads(kernels.read_text())["device_ms_per_step"] or None


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


def call_site(stack: traceback.StackSummary, frames: int = 4) -> str:
    """The innermost ``frames`` frames of ``stack`` (this module's and ``warnings``' left
    out), innermost first, each as ``path:line function`` with the path from the package on."""
    mine = ("/warnings.py", "bench/profiling.py")
    kept = [f for f in stack if not f.filename.endswith(mine)][-frames:]

    def short(filename: str) -> str:
        for marker in ("site-packages/", "dist-packages/", "src/"):
            if marker in filename:
                return filename.rsplit(marker, 1)[1]
        return Path(filename).name

    return " < ".join(f"{short(f.filename)}:{f.lineno} {f.name}" for f in reversed(kept))


@contextlib.contextmanager
def recorded_syncs() -> Iterator[list[str]]:
    """The call site (``call_site``) of every synchronising CUDA operation in the block, from
    ``torch.cuda.set_sync_debug_mode("warn")`` (on CUDA; elsewhere nothing synchronises). The
    warnings are recorded, not shown."""
    sites: list[str] = []
    cuda = torch.cuda.is_available()
    with warnings.catch_warnings():  # restores the filters and showwarning after
        warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None) -> None:
            if SYNC_WARNING in str(message):
                sites.append(call_site(traceback.extract_stack()))
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")


class SyncAudit(L.Callback):
    """The synchronising CUDA calls of training steps ``start`` to ``start + steps - 1``
    (``recorded_syncs``), per step with whether it logged, written to ``path``
    (``save_audit``)."""

    def __init__(self, path: str, start: int, steps: int = AUDIT_STEPS) -> None:
        self.path, self.start, self.steps = Path(path), start, steps
        self.window: contextlib.ExitStack | None = None
        self.sites: list[str] = []
        self.audited: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.window is None:
            if step != self.start or self.audited:
                return
            self.window = contextlib.ExitStack()
            self.sites = self.window.enter_context(recorded_syncs())
        if self.audited and self.audited[-1]["step"] == step:
            return  # another micro-batch of the same step
        if self.audited:  # what came since the previous step's start was that step's
            self.audited[-1]["sites"] += self.taken()
        if step >= self.start + self.steps:
            self.close()
        else:
            self.audited.append({"step": step, "logging": False, "sites": []})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.window is not None and self.audited:  # a logging step reads on its last one
            self.audited[-1]["logging"] |= bool(getattr(pl_module, "reads_now", True))

    def taken(self) -> list[str]:
        taken, self.sites[:] = list(self.sites), []
        return taken

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.window is not None and self.audited:
            self.audited[-1]["sites"] += self.taken()
        self.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.close()  # the debug mode and the warning filters back as they were

    def close(self) -> None:
        if self.window is not None:
            window, self.window = self.window, None
            window.close()
            save_audit(self.path, self.audited)


def save_audit(path: Path, steps: list[dict]) -> None:
    """An audit's file, ``quiet_syncs``' input: ``{"steps": [{"step": s, "logging": bool,
    "sites": [...]}, ...]}`` (``SyncAudit``'s of lmlab's steps, the plain loop's of its own)."""
    path.write_text(json.dumps({"steps": steps}))


def quiet_syncs(path: Path) -> tuple[float, list[str]] | None:
    """From a ``SyncAudit`` file: the synchronising calls per step that logged nothing, and
    their sites, most frequent first (None if no such step was audited)."""
    if not path.exists():
        return None
    quiet = [s for s in json.loads(path.read_text())["steps"] if not s["logging"]]
    if not quiet:
        return None
    sites = [site for s in quiet for site in s["sites"]]
    ranked = sorted(set(sites), key=lambda site: (-sites.count(site), site))
    return len(sites) / len(quiet), [f"{sites.count(site)}x {site}" for site in ranked]
