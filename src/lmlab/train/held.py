"""Hydra's writes held until a run starts training, so that a refused or failed start leaves
a directory holding an earlier run exactly as it was.

- ``hold_hydra_writes``: Hydra saves ``.hydra/`` and opens the job log (``train.log``) before
  the task function runs. ``lmlab.cli.rundir_callback.RunDirCallback`` (``hydra.callbacks``)
  calls this from ``on_run_start``, before any of that, for a directory that is not empty:
  Hydra then saves nothing, and the log's records wait in memory (``HeldFileHandler``).
- ``hold_sweep_hydra_writes`` / ``job_started``: the same for the jobs of a sweep into a
  folder that exists (``resume=auto`` into a folder holding runs, or one where a live run
  starts in a job's folder), whose ``.hydra/`` Hydra's launcher would rewrite before each
  job's checks: a job that another grid's config is refused for keeps what described it,
  and a live run's directory gets nothing.
- ``rank_zero_saves``: a rank other than global 0 (torchrun's, srun's) saves no ``.hydra/``:
  rank 0's describes the run, and logs to ``rank<N>.log``, not rank 0's ``train.log``, as
  Lightning's own children are told (``job_command``).
- ``write_held``: what was held, written once training starts (``RunDir.open``). The
  ``.hydra/`` files of the launch before (a resume's, or a start refused for the machine) are
  kept first as ``config.<n>.yaml``, ``hydra.<n>.yaml``, ``overrides.<n>.yaml`` (1 for the
  first launch), as a resumed sweep keeps its ``multirun.yaml``: every launch stays described,
  and ``train.log`` says which fields changed since the one before."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab.config import flatten
from lmlab.config.asked import as_typed
from lmlab.config.locks import LOCK_FILE, LOCK_FILES
from lmlab.errors import ConfigError
from lmlab.files import (
    LAUNCH_RECORDS,
    PLAN,
    RESULTS,
    SWEEP_RECORD,
    keep_numbered,
    kept_as,
    write_text,
)
from lmlab.train.dirlock import refuse_if_live
from lmlab.train.runfiles import absolute, holds_run, launch_rank_is_zero, launcher_processes

log = logging.getLogger(__name__)


class HeldFileHandler(logging.FileHandler):
    """Hydra's job log file for a directory that holds an earlier run: records wait in memory
    until the run starts training (``write_waiting``) and are dropped if it never does. They
    reach the console meanwhile, through Hydra's console handler."""

    def __init__(
        self,
        filename: str,
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
    ) -> None:
        super().__init__(filename, mode, encoding, delay=True, errors=errors)
        self.waiting: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.waiting is None:
            super().emit(record)
        else:
            self.waiting.append(record)

    def write_waiting(self) -> None:
        self.acquire()
        try:
            waiting, self.waiting = self.waiting or [], None
            for record in waiting:
                super().emit(record)
        finally:
            self.release()


@dataclass
class _Held:
    run_dir: Path
    output_subdir: str | None  # where Hydra would have saved its files (".hydra")
    handler_classes: dict[str, str]  # job-logging handlers swapped for HeldFileHandler


_HELD: _Held | None = None
HELD_HANDLER = f"{__name__}.{HeldFileHandler.__name__}"  # as hydra.job_logging names it

# A resumed sweep's jobs compose without .hydra/, with held job logs, and find in their
# environment (hydra.job.env_set) where Hydra would have saved .hydra/.
HELD_SUBDIR = "LMLAB_HELD_OUTPUT_SUBDIR"


def sweep_hold_overrides(subdir: str, handler_names: list[str]) -> list[str]:
    """The overrides ``hold_sweep_hydra_writes`` adds to every job of a resumed sweep."""
    return [
        "hydra.output_subdir=null",
        f"+hydra.job.env_set.{HELD_SUBDIR}={subdir}",
        *(f"hydra.job_logging.handlers.{name}.class={HELD_HANDLER}" for name in handler_names),
    ]


def hold_hydra_writes(config: DictConfig, run_dir: Path) -> None:
    """Before Hydra's ``run_job``, if ``run_dir`` holds anything (but its lock): Hydra saves no
    ``.hydra/`` files and its job log's file handlers hold their records, until
    ``RunDir.open``."""
    global _HELD
    if not any(p.name not in LOCK_FILES for p in run_dir.iterdir()):
        return
    swapped = {}
    with read_write(config.hydra), open_dict(config.hydra):
        subdir = config.hydra.output_subdir
        config.hydra.output_subdir = None
        handlers = OmegaConf.select(config, "hydra.job_logging.handlers") or {}
        for name, handler in handlers.items():
            if handler.get("class") == "logging.FileHandler":
                swapped[name] = handler["class"]
                handler["class"] = HELD_HANDLER
    _HELD = _Held(absolute(run_dir), subdir, swapped)


def rank_zero_saves(config: DictConfig) -> None:
    """Before Hydra's ``run_job`` on a rank other than global 0: Hydra saves no ``.hydra/``
    there. Every rank that torchrun or srun starts runs the whole command, and each saved it
    into the run's one folder: over a resumed run's record of the launch before, before rank
    0 (whose writes wait, ``hold_hydra_writes``) kept it as ``config.<n>.yaml``, which then
    held this launch's config and ``train.log`` said it changed nothing; into a new folder
    before rank 0 looked, which rank 0 then kept as an earlier launch's. Its job log is
    ``rank<N>.log`` (N: the launcher's global rank): each rank's Hydra opened the run's
    ``train.log`` and appended its lines to rank 0's."""
    rank = os.environ.get("RANK")  # torchrun's; Lightning gives its own children none
    if rank is None and (launcher_processes() or ("",))[0] == "SLURM_NTASKS":
        rank = os.environ.get("SLURM_PROCID")  # srun's (a SLURM job's own process has 0)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.output_subdir = None
        if rank is not None:
            config.hydra.job.name = f"rank{rank}"


def hold_sweep_hydra_writes(config: DictConfig) -> None:
    """A sweep into a folder that holds anything (``on_multirun_start``): a resumed sweep's
    runs, or a live run starting in a job's folder. Every job composes without ``.hydra/``
    (the launcher composes each job from ``hydra.overrides.hydra``) and carries where it
    would have gone, for ``job_started``."""
    subdir = config.hydra.output_subdir
    if subdir is None:
        return
    handlers = OmegaConf.select(config, "hydra.job_logging.handlers") or {}
    files = [name for name, h in handlers.items() if h.get("class") == "logging.FileHandler"]
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.extend(sweep_hold_overrides(subdir, files))


def job_started(config: DictConfig) -> None:
    """A job of a sweep that ``hold_sweep_hydra_writes`` holds (``on_job_start``, once Hydra
    has set up the job): its ``.hydra/`` is written now into a folder that holds no run, and
    by ``RunDir.open`` into one that does, once this job's checks passed and it trains; into
    a live run's directory, never (``train()`` refuses the job there, and its log lines stay
    held)."""
    global _HELD
    subdir = os.environ.get(HELD_SUBDIR)
    if subdir is None or not launch_rank_is_zero():
        return
    run_dir = absolute(config.hydra.runtime.output_dir)
    handlers = OmegaConf.select(config, "hydra.job_logging.handlers") or {}
    held_logs = [name for name, h in handlers.items() if h.get("class") == HELD_HANDLER]
    files = dict.fromkeys(held_logs, "logging.FileHandler")
    _HELD = _Held(run_dir, subdir, files)
    tidy_multirun_yaml(absolute(config.hydra.sweep.dir), _HELD)
    try:
        refuse_if_live(run_dir, LOCK_FILE, "hydra.run.dir")
    except ConfigError:
        return  # a live run's directory: nothing is written there; train() refuses the job
    if not holds_run(run_dir):
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        write_held(task_cfg, run_dir)


def _save_yaml(data: Any, path: Path) -> None:
    write_text(path, OmegaConf.to_yaml(data))  # as OmegaConf.save, written whole


def as_configured(config: DictConfig, held: _Held) -> None:
    """``config``'s Hydra node (a job's, or the sweep's ``multirun.yaml``) as the user
    configured it: without what held a sweep's writes (``hold_sweep_hydra_writes``)."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.output_subdir = held.output_subdir
        for name, cls in held.handler_classes.items():
            config.hydra.job_logging.handlers[name]["class"] = cls
        config.hydra.overrides.hydra = without_held(config.hydra.overrides.hydra, held)
        config.hydra.job.env_set.pop(HELD_SUBDIR, None)


def without_held(overrides: Any, held: _Held) -> list[str]:
    """Hydra overrides (as typed) without those that held a sweep's writes."""
    added = sweep_hold_overrides(str(held.output_subdir), list(held.handler_classes))
    return [o for o in as_typed(overrides) if o not in added]


def tidy_multirun_yaml(sweep_dir: Path, held: _Held) -> None:
    """The sweep's ``multirun.yaml``, which Hydra's launcher wrote with the overrides that
    hold the jobs' writes in its ``hydra.overrides.hydra`` (the config it holds was composed
    before them), rewritten without them: as the user typed the sweep. Once, by its first
    job."""
    record = sweep_dir / SWEEP_RECORD
    try:
        saved = OmegaConf.load(record)
        overrides = as_typed(saved.hydra.overrides.hydra)
    except (OSError, ValueError, AttributeError):
        return
    typed = without_held(saved.hydra.overrides.hydra, held)
    if typed != overrides:
        saved.hydra.overrides.hydra = typed
        _save_yaml(saved, record)


def write_held(task_cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra would have written at the start of the run in ``run_dir``:
    ``.hydra/config.yaml``, ``hydra.yaml`` (as configured, not as held) and
    ``overrides.yaml``, the earlier launch's kept beside them (``keep_launch``); then the job
    log's waiting records. What is held for another directory (a refused run's, earlier in
    this process) is dropped."""
    global _HELD
    held, _HELD = _HELD, None
    if held is None or held.run_dir != absolute(run_dir):
        return
    out = None if held.output_subdir is None else held.run_dir / held.output_subdir
    kept = keep_launch(held.run_dir, out, task_cfg)
    try:
        if out is not None:
            hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
            as_configured(hydra_cfg, held)
            out.mkdir(parents=True, exist_ok=True)
            _save_yaml(task_cfg, out / "config.yaml")
            _save_yaml(hydra_cfg, out / "hydra.yaml")
            _save_yaml(hydra_cfg.hydra.overrides.task, out / "overrides.yaml")
    except BaseException:  # a full disk: this launch never started, its copies go with it
        for path in kept:
            path.unlink(missing_ok=True)
        raise
    for handler in logging.getLogger().handlers:
        if isinstance(handler, HeldFileHandler):
            handler.write_waiting()


def keep_launch(run_dir: Path, out: Path | None, task_cfg: DictConfig) -> list[Path]:
    """The records of the launch before this one (a resume's) that this launch rewrites, its
    ``.hydra/`` files in ``out`` (None: ``hydra.output_subdir=null``), its ``plan.json`` (the
    steps it planned) and ``results.json`` (what it ended with), kept as
    ``<name>.<n>.<suffix>`` under one ``n``; logged with the config's fields that this launch
    changes. Returns the copies made."""
    records = [out / name for name in LAUNCH_RECORDS] if out is not None else []
    records += [run_dir / PLAN, run_dir / RESULTS]
    n = keep_numbered(records)
    if n is None:
        return []
    try:
        before = flatten(OmegaConf.to_container(OmegaConf.load(records[0])))
    except (OSError, ValueError, AttributeError):  # no .hydra/, or not a config
        before = {}
    now = flatten(OmegaConf.to_container(task_cfg))
    absent = "<absent>"
    changes = [
        f"{key}: {before.get(key, absent)!r} -> {now.get(key, absent)!r}"
        for key in sorted(before.keys() | now.keys())
        if before.get(key, absent) != now.get(key, absent)
    ]
    kept = [path for path in records if kept_as(path, n).is_file()]
    log.info(
        "the earlier launch's %s kept as %s; this launch changes: %s",
        ", ".join(os.path.relpath(path, run_dir) for path in kept),
        ", ".join(os.path.relpath(kept_as(path, n), run_dir) for path in kept),
        ("; ".join(changes) or "nothing") if before else "(no earlier config to compare)",
    )
    return [kept_as(path, n) for path in kept]


def held_for(run_dir: Path) -> bool:
    """Whether this process holds Hydra's writes for ``run_dir`` (it held something)."""
    return _HELD is not None and _HELD.run_dir == absolute(run_dir)
