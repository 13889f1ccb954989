"""The run directory is never damaged: one live run at a time, and nothing written into a
directory that holds an earlier run until the new run has passed every check and starts
training. Four modules, one concern each:

- ``lmlab.train.runfiles``: what a run directory holds (``holds_run``; its checkpoints:
  ``lmlab.files.checkpoints_in``).
- ``lmlab.train.dirlock``: the locks of run and sweep folders, and the refusals of a folder
  another live process uses; fresh default folders.
- ``lmlab.train.held``: Hydra's ``.hydra/`` and job-log writes, held until training starts.
- here, ``RunDir``: ``train()``'s handle. ``open()`` marks the start of training: the held
  ``.hydra/`` files are written and the log flushed, files left by a killed checkpoint save
  are removed. A run that fails before ``open()`` in a directory holding an earlier run
  leaves it exactly as it was (``may_record`` is False: no ``results.json`` either).

Only global rank 0 guards (``launch_rank_is_zero``): the other ranks of a DDP/FSDP job run in
the same directory, started by Lightning or torchrun. Every rank tells a directory removed
while the run trained by rank 0's lock file, so none writes a record into a folder made anew.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.config.asked import as_typed
from lmlab.config.locks import LOCK_FILE
from lmlab.files import (
    CHECKPOINTS,
    RESULTS,
    SWEEP_RECORD,
    keep_numbered,
    kept_as,
    read_record,
    write_text,
)
from lmlab.train.dirlock import lock_run_dir, unlock_run_dir
from lmlab.train.held import held_for, write_held
from lmlab.train.runfiles import holds_run, launch_rank_is_zero

log = logging.getLogger(__name__)


def chose_dir(config: DictConfig, key: str) -> bool:
    """Whether the user chose the run's (``key="hydra.run.dir"``) or the sweep's
    (``"hydra.sweep.dir"``) folder: on the command line, or by resuming. Otherwise it is the
    default, named by the second the command started (``outputs/<date>/<time>``, a sweep
    file's ``multirun/<name>/<date>/<time>``)."""
    given = [o.lstrip("+~").partition("=")[0] for o in as_typed(config.hydra.overrides.hydra)]
    return key in given or config.get("resume") not in (False, None)


def resume_into_a_new_folder(config: DictConfig, kind: str) -> str | None:
    """Why ``resume=true``/``auto`` cannot find the run (``kind="run"``) or sweep
    (``"sweep"``) it continues, or None: ``hydra.<kind>.dir`` is named by the time the
    command started (``${now:...}``: the default ``outputs/<date>/<time>``), a new folder each
    launch, so a resume there trained from step 0 (``auto``: a requeued SLURM job started its
    run again, in another folder) or was refused once the data was prepared (``true``)."""
    resume = config.get("resume")
    if resume not in (True, "auto"):
        return None
    typed = OmegaConf.to_container(config.hydra[kind], resolve=False).get("dir")
    if "${now:" not in str(typed):
        return None
    value = "true" if resume is True else resume
    job = os.environ.get("SLURM_JOB_ID")
    slurm = (
        f" (under SLURM: hydra.{kind}.dir=outputs/slurm/${{SLURM_JOB_ID}}, {job} here, which "
        "a requeued job names again, as scripts/slurm/train.sbatch does)"
        if job
        else ""
    )
    return (
        f"resume={value} continues the {kind} in hydra.{kind}.dir, which is {typed}: named by "
        f"the time this command started, a new folder that holds no {kind} to continue; name "
        f"the {kind}'s folder: hydra.{kind}.dir=<its folder>{slurm}"
    )


def keep_multirun_yaml(sweep_dir: Path) -> Path | None:
    """A resumed sweep (``on_multirun_start``): Hydra's launcher is about to rewrite the
    folder's ``multirun.yaml`` with this invocation. The one there is copied first to
    ``multirun.<n>.yaml`` (1 for the first invocation, then 2, ...), so every invocation that
    wrote into the folder stays described. Returns the copy, or None if there was none."""
    current = sweep_dir / SWEEP_RECORD
    n = keep_numbered([current])
    return None if n is None else kept_as(current, n)


def record_sweep(config: DictConfig, sweep_dir: Path) -> Path:
    """The sweep's ``multirun.yaml`` (its config as composed, with the command line in
    ``hydra.overrides``), as Hydra's basic sweeper saves it before its first job, for a
    sweeper that saves none (Optuna's; ``on_multirun_start``). A trial's own overrides hold the
    values it drew beside the fixed ones, alike: the search's parameters given on the command
    line (``'optim.lr=interval(1e-4,1e-2)'``) are known from here alone, and name each trial
    (``lmlab.train.loggers.swept_keys``: it was ``job<N>``). The record marks the folder a
    sweep's too, as a grid's does (``lmlab.train.dirlock``)."""
    return write_text(sweep_dir / SWEEP_RECORD, OmegaConf.to_yaml(config))


def remove_orphans(ckpt_dir: Path) -> None:
    """Remove what a checkpoint save killed midway leaves: ``.<name>.<random>.tmp`` files
    (``AtomicCheckpointIO``), ``.<name>.tmp``/``.<name>.old`` folders (sharded saves). Called
    under the run directory's lock, so no live save owns them."""
    for path in [*ckpt_dir.glob(".*.tmp"), *ckpt_dir.glob(".*.old")]:
        log.info("removing %s, left by a checkpoint save that was killed", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class RunDir:
    """``train()``'s run directory: locked (on rank 0), and written to only once ``open()``
    says training starts, if it holds an earlier run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.guard = launch_rank_is_zero()
        if self.guard:
            lock_run_dir(path)
        self.earlier = held_for(path) or holds_run(path)
        self.opened = False
        self.locked = False  # whether rank 0's lock file was there when this rank opened
        self.record: tuple[int, int] | None = None  # results.json as this rank opened the run

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    def open(self, task_cfg: DictConfig) -> None:
        """Training starts: write what was held, clean up after killed saves."""
        self.opened = True
        self.locked = self.lock_file.is_file()  # the other ranks start under rank 0's lock
        self.record = stamp(self.path / RESULTS)
        if self.guard:
            write_held(task_cfg, self.path)
            remove_orphans(self.path / CHECKPOINTS)

    @property
    def may_record(self) -> bool:
        """Whether a failure may be written to ``results.json``: not into an earlier run's
        directory before this run started training."""
        return self.opened or not self.earlier

    def removed(self) -> bool:
        """Whether the directory was removed (or replaced) while this run trained in it: the
        lock file rank 0's ``train()`` took there, there when this rank opened it, is gone.
        Every rank asks, as the checkpoint callback does before a save: rank 0 keeps its lock
        until the other ranks it started have exited."""
        return self.opened and self.locked and not self.lock_file.is_file()

    def told_since(self) -> dict[str, Any] | None:
        """The failure another rank of this run recorded in ``results.json`` since this rank
        opened it, or None. A rank that fails alone records its error, then exits; the other
        ranks' next collective finds it gone, which says only that a peer stopped: they keep
        its record rather than write that guess over it."""
        path = self.path / RESULTS
        if not self.opened or stamp(path) in (None, self.record):
            return None
        told = read_record(path)
        return told if told.get("status") == "failed" and told.get("error") else None

    def close(self) -> None:
        if self.guard:
            unlock_run_dir(self.path)


def stamp(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` is now (inode, modification time), None where there is none: a
    record is written whole to a new file renamed into place, so each write changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
