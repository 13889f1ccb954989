"""The run directory is never damaged: one live run at a time, and nothing written into a
directory that holds an earlier run until the new run has passed every check and starts
training.

- ``lock_run_dir``: an exclusive ``fcntl.flock`` on ``<run dir>/.lmlab.lock``, held for the
  run's lifetime. A second run into a live directory is refused (``ConfigError``). The
  kernel drops the lock when its process dies, so a ``kill -9`` leaves no live lock behind.
  ``lock_sweep_dir``: the same for a multirun's folder (``<sweep dir>/.lmlab-sweep.lock``),
  held by the process that launched the sweep: a second sweep into a live one's folder,
  resumed or not, is refused before it writes anything.
  ``fresh_run_dir`` / ``fresh_sweep_dir``: where the user did not choose the folder
  (``chose_dir``), a run or sweep whose default one is taken, by another started in the same
  second, takes ``<dir>_2`` (``_3``, ...) instead of being refused or sharing it.
- ``hold_hydra_writes``: Hydra saves ``.hydra/`` and opens the job log (``train.log``) before
  the task function runs. ``lmlab.cli.rundir_callback.RunDirCallback`` (``hydra.callbacks``)
  calls this from ``on_run_start``, before any of that, for a directory that is not empty:
  Hydra then saves nothing, and the log's records wait in memory (``HeldFileHandler``).
- ``hold_sweep_hydra_writes`` / ``job_started``: the same for the jobs of a sweep into a
  folder that exists (``resume=auto`` into a folder holding runs, or one where a live run
  starts in a job's folder), whose ``.hydra/`` Hydra's launcher would rewrite before each
  job's checks: a job that another grid's config is refused for keeps what described it,
  and a live run's directory gets nothing.
- ``RunDir``: ``train()``'s handle. ``open()`` marks the start of training: the held
  ``.hydra/`` files are written and the log flushed, files left by a killed checkpoint save
  are removed. A run that fails before ``open()`` in a directory holding an earlier run
  leaves it exactly as it was (``may_record`` is False: no ``results.json`` either).

Only global rank 0 guards (``launch_rank_is_zero``): the other ranks of a DDP/FSDP job run in
the same directory, started by Lightning or torchrun.
"""

from __future__ import annotations

import atexit
import copy
import fcntl
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab.config.asked import as_typed
from lmlab.config.locks import LOCK_FILE, LOCK_FILES, SWEEP_LOCK_FILE, live_holder, pid_in
from lmlab.errors import ConfigError

log = logging.getLogger(__name__)

# What a run writes: their presence means the directory holds an earlier run. ``eval/``:
# ``lmlab evaluate``'s records of its checkpoints, which ``compare`` reads as the run's (a new
# run there would be ranked by another model's evaluation); an empty folder is none.
RUN_CONFIG = "run_config.yaml"  # what a resumed run must share with the run (train.resume)
EVAL_RECORDS = "eval/"
RUN_FILES = ("results.json", "plan.json", RUN_CONFIG, "checkpoints", EVAL_RECORDS)
# Launchers' rank variables: Lightning's DDP children, torchrun, other nodes, srun tasks.
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def absolute(path: str | os.PathLike) -> Path:
    """``path`` as Hydra names a run's or sweep's folder (``os.path.abspath``): ``..`` taken
    by name, so ``runs/x/../y`` is ``runs/y`` whether or not ``runs/x`` exists. Every lock and
    check keys folders so, as the process's own lock is found again under any spelling."""
    return Path(os.path.abspath(path))


def launch_rank_is_zero() -> bool:
    """True unless a launcher started this process as another rank than global 0."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def launched_processes() -> int:
    """How many processes a launcher that sets ``WORLD_SIZE`` (torchrun; Lightning for its
    DDP children) started for this run: 1 without one. (srun's tasks are left out: a batch
    script's own process sees the allocation's task count too.)"""
    count = os.environ.get("WORLD_SIZE", "1")
    return int(count) if count.isdigit() else 1


_LOCKS: dict[Path, int] = {}  # lock file -> the file descriptor holding it


# What each lock guards: the key that names its folder, whose process holds it, the advice.
_GUARDS = {
    LOCK_FILE: ("hydra.run.dir", "run", "wait for it to end"),
    SWEEP_LOCK_FILE: (
        "hydra.sweep.dir",
        "sweep",
        "wait for it to end (then resume=auto continues its runs)",
    ),
}


def _in_use(path: Path, holder: str, key: str | None = None) -> ConfigError:
    """The refusal for the lock file ``path`` that another live process holds (``holder``:
    the pid it wrote), named by ``key`` (default: the key of the lock's own folder)."""
    own_key, kind, advice = _GUARDS[path.name]
    return ConfigError(
        f"{key or own_key}={path.parent} is in use by a live {kind} (pid {holder}): {advice}, "
        "or choose another directory"
    )


def refuse_if_live(folder: Path, name: str, key: str) -> None:
    """Refuse (``ConfigError``, naming ``key``) where another live process holds the lock
    ``folder/name``; take nothing. A run into a live sweep's folder, and a sweep into a live
    run's, are refused so."""
    path = absolute(folder) / name
    if path in _LOCKS:
        return
    holder = live_holder(path)
    if holder is not None:
        raise _in_use(path, holder, key)


PROBE_WAIT_S = 0.05  # how long a probe (refuse_if_live) could hold a lock it takes, at most


def _flock_exclusive(fd: int) -> bool:
    """The exclusive ``flock`` on ``fd``, or False where a live holder keeps it. Another
    command's ``refuse_if_live`` holds a shared lock for an instant (microseconds): one that
    the lock meets is waited out rather than taken for a live run's."""
    deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


def _take_lock(folder: Path, name: str) -> None:
    """Hold the ``flock`` on ``folder/name`` for this process (held already: nothing happens),
    or refuse (``ConfigError``): another live process holds it, named by the pid it wrote."""
    path = absolute(folder) / name
    if path in _LOCKS:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock_exclusive(fd):
            err = _in_use(path, pid_in(fd))
            os.close(fd)
            raise err from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the process that held it removed the file meanwhile: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    if not _LOCKS:
        atexit.register(unlock_all)
    _LOCKS[path] = fd


def _release(path: Path) -> None:
    """Remove the lock file ``path`` and release it (a no-op if this process holds none)."""
    fd = _LOCKS.pop(path, None)
    if fd is not None:
        path.unlink(missing_ok=True)
        os.close(fd)


def lock_run_dir(run_dir: Path) -> None:
    """Take ``run_dir``'s lock for this process (again: nothing happens), or refuse: another
    live process holds it, or the folder is a live sweep's."""
    refuse_if_live(run_dir, SWEEP_LOCK_FILE, "hydra.run.dir")
    _take_lock(run_dir, LOCK_FILE)


def lock_sweep_dir(sweep_dir: Path) -> None:
    """Take the sweep folder's lock (``SWEEP_LOCK_FILE``) for this multirun, held until it
    ends, or refuse: a live sweep launched from another process writes into that folder. A
    second sweep into it, resumed or not, would rewrite its ``multirun.yaml`` and meet its
    jobs one at a time at their run locks. Apart from the run lock, so that a job whose folder
    is the sweep folder itself (``hydra.sweep.subdir=.``) keeps both. A live run's directory
    is refused too."""
    refuse_if_live(sweep_dir, LOCK_FILE, "hydra.sweep.dir")
    _take_lock(sweep_dir, SWEEP_LOCK_FILE)


def refuse_live_sweep_dir(sweep_dir: Path) -> None:
    """``lock_sweep_dir``'s refusals without taking the lock (nor writing its file): checks
    that may still refuse the sweep leave the folder as it was, its times included. A folder
    inside a live sweep's is refused too (``refuse_inside_live_sweep``)."""
    for name in (LOCK_FILE, SWEEP_LOCK_FILE):
        refuse_if_live(sweep_dir, name, "hydra.sweep.dir")
    refuse_inside_live_sweep(sweep_dir, "hydra.sweep.dir")


def refuse_inside_live_sweep(folder: Path, key: str) -> None:
    """Refuse (``ConfigError``, naming ``key``) a folder at any depth inside the folder of a
    sweep that another live process runs (its lock held): the sweep's jobs go to folders
    there that do not exist yet. A run in a job's folder made the job fail at its run lock,
    and the sweep's ``resume=auto`` then took the run for the job; a sweep there nested its
    jobs among the live one's, which ``compare`` ranks with them."""
    for parent in absolute(folder).parents:
        lock = parent / SWEEP_LOCK_FILE
        holder = None if lock in _LOCKS else live_holder(lock)
        if holder is not None:
            raise ConfigError(
                f"{key}={absolute(folder)} is inside {parent}, the folder of a live sweep (pid "
                f"{holder}), whose jobs write there: wait for it to end, or choose a directory "
                "outside it"
            )


def refuse_run_in_sweep_dir(run_dir: Path) -> None:
    """A single run's chosen directory that is a sweep's folder and holds no run of its own:
    ``compare`` ranks every run in a sweep's folder, so the run would count among the sweep's
    jobs. A live sweep's is refused as in use, and so is any folder inside it
    (``refuse_inside_live_sweep``). (A run there already, from before this check:
    ``lmlab.train.resume``'s checks resume it or refuse.)"""
    refuse_if_live(run_dir, SWEEP_LOCK_FILE, "hydra.run.dir")
    refuse_inside_live_sweep(run_dir, "hydra.run.dir")
    if not run_dir.is_dir() or holds_run(run_dir):
        return
    marks = ["multirun.yaml"] if (run_dir / "multirun.yaml").is_file() else []
    jobs = earlier_sweep_runs(run_dir, depth=1)  # a W&B agent's sweep folder has these alone
    if jobs:
        marks.append(f"the runs in {listed(jobs)}")
    if marks:
        raise ConfigError(
            f"hydra.run.dir={run_dir} is a sweep's folder ({' and '.join(marks)}): compare "
            "would rank a run here among the sweep's jobs; choose another directory (a sweep "
            "takes more jobs with -m <overrides> resume=auto hydra.sweep.dir=<its folder>)"
        )


def refuse_sweep_in_run_dir(sweep_dir: Path) -> None:
    """A sweep's chosen folder that holds a single run (and no ``multirun.yaml``: a sweep whose
    jobs ran in its own folder, ``hydra.sweep.subdir=.``, is a sweep's): the jobs would be
    nested in the run, and ``compare`` would rank the run among them."""
    if holds_run(sweep_dir) and not (sweep_dir / "multirun.yaml").is_file():
        written = ", ".join(n for n in RUN_FILES if (sweep_dir / n).exists())
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} holds a single run ({written}): the sweep's jobs "
            "would be nested in it and compare would rank that run among them; choose "
            "another directory"
        )


def unlock_sweep_dirs() -> None:
    """Release the sweep locks this process holds (its multirun ended, or was refused)."""
    for path in [p for p in _LOCKS if p.name == SWEEP_LOCK_FILE]:
        _release(path)


def in_the_way(folder: Path) -> Path | None:
    """The file that keeps ``folder`` from being created (``folder`` itself, or the nearest
    existing parent, where it is not a folder), or None."""
    for path in (absolute(folder), *absolute(folder).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def numbered(path: Path) -> Iterator[Path]:
    """``path``, then ``<path>_2``, ``<path>_3``, ...: the names a default folder that is
    taken falls back to."""
    yield path
    for n in itertools.count(2):
        yield path.with_name(f"{path.name}_{n}")


def fresh_run_dir(run_dir: Path) -> Path:
    """``run_dir``, or where it is taken (a live run holds it, or it holds anything but a
    lock), the first free one of ``<run_dir>_2``, ``<run_dir>_3``, ...; locked for this run.
    For the default directory, named by the second the run started
    (``outputs/<date>/<time>``): runs started in the same second (one per GPU, from a loop)
    get one each, and an earlier run's directory is left as it was."""
    for candidate in numbered(run_dir):
        try:
            lock_run_dir(candidate)
        except ConfigError:  # a live run's
            continue
        if not any(p.name not in LOCK_FILES for p in candidate.iterdir()):
            return candidate
        unlock_run_dir(candidate)  # an earlier run's
    raise AssertionError("unreachable")


def fresh_sweep_dir(sweep_dir: Path) -> Path:
    """``sweep_dir``, or where it exists already, the first of ``<sweep_dir>_2``, ``_3``, ...
    that does not; created here (``mkdir`` creates a folder for one process only): sweeps
    started in the same second get one folder each."""
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    for candidate in numbered(sweep_dir):
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def chose_dir(config: DictConfig, key: str) -> bool:
    """Whether the user chose the run's (``key="hydra.run.dir"``) or the sweep's
    (``"hydra.sweep.dir"``) folder: on the command line, or by resuming. Otherwise it is the
    default, named by the second the command started (``outputs/<date>/<time>``, a sweep
    file's ``multirun/<name>/<date>/<time>``)."""
    given = [o.lstrip("+~").partition("=")[0] for o in as_typed(config.hydra.overrides.hydra)]
    return key in given or config.get("resume") not in (False, None)


def unlock_run_dir(run_dir: Path) -> None:
    """Remove the run's lock file and release it (a no-op if this process holds none)."""
    _release(absolute(run_dir) / LOCK_FILE)


def unlock_all() -> None:
    for path in list(_LOCKS):
        _release(path)


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


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds what a run writes (``RUN_FILES``). Two records, alone or
    together, are not a run, and the next command may use the directory: a ``results.json``
    that says ``failed`` (a start refused or failed before training: the plan and config are
    written when training starts), and a dry run's ``plan.json`` (``dry_run: true``), which a
    new dry run rewrites and a run replaces. An empty ``eval/`` is nothing either."""
    present = {name for name in RUN_FILES if (path / name).exists()}
    if EVAL_RECORDS in present and not _holds_anything(path / EVAL_RECORDS):
        present.discard(EVAL_RECORDS)
    if "results.json" in present and read_record(path / "results.json").get("status") == "failed":
        present.discard("results.json")  # with a plan and a config, that of a run that trained
    if "plan.json" in present and read_record(path / "plan.json").get("dry_run") is True:
        present.discard("plan.json")
    return bool(present)


def _holds_anything(folder: Path) -> bool:
    """Whether ``folder`` is a file, or a folder that is not empty (unreadable: taken as
    holding something)."""
    try:
        return not folder.is_dir() or any(folder.iterdir())
    except OSError:
        return True


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object a run wrote in ``path`` (``results.json``, ``plan.json``); empty where
    there is none or it cannot be read as one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def checkpoints_in(out_dir: Path) -> list[Path]:
    """Every checkpoint of a run directory, readable or not: ``checkpoints/*.ckpt`` (files,
    links, sharded folders) and the ``hpc_ckpt_<n>.ckpt`` Lightning saves on a SLURM
    time-limit signal before requeueing."""
    ckpt_dir = out_dir / "checkpoints"
    found = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    return found + sorted(out_dir.glob("hpc_ckpt_*.ckpt"))


def listed(names: list[str], most: int = 5) -> str:
    """``a, b, c``: the first ``most`` names, then how many more."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


SWEEP_DEPTH = 3  # how deep a sweep's jobs may sit: hydra.sweep.subdir=a/${hydra.job.num} is 2


def earlier_sweep_runs(sweep_dir: Path, depth: int = SWEEP_DEPTH) -> list[str]:
    """The folders at or under ``sweep_dir``, ``depth`` levels down at most, that hold a run
    (``RUN_FILES``), by their paths relative to it: ``0``, ``a/0`` (a nested
    ``hydra.sweep.subdir``), ``.`` (jobs that ran in the sweep folder itself,
    ``hydra.sweep.subdir=.``). A run's folder and hidden folders are not searched further.
    Hydra's launcher writes ``multirun.yaml`` in the sweep folder, and each job's ``.hydra/``,
    before any job's checks run: a new sweep into such a folder would overwrite what
    describes them."""
    found: list[str] = []

    def search(folder: Path, level: int) -> None:
        if holds_run(folder):
            found.append(folder.relative_to(sweep_dir).as_posix())
        elif level < depth:
            for child in folder.iterdir():
                if child.is_dir() and not child.name.startswith("."):
                    search(child, level + 1)

    if sweep_dir.is_dir():
        search(sweep_dir, 0)
    return sorted(found)


def keep_multirun_yaml(sweep_dir: Path) -> Path | None:
    """A resumed sweep (``on_multirun_start``): Hydra's launcher is about to rewrite the
    folder's ``multirun.yaml`` with this invocation. The one there is copied first to
    ``multirun.<n>.yaml`` (1 for the first invocation, then 2, ...), so every invocation that
    wrote into the folder stays described. Returns the copy, or None if there was none."""
    current = sweep_dir / "multirun.yaml"
    if not current.is_file():
        return None
    n = 1
    while (sweep_dir / f"multirun.{n}.yaml").exists():
        n += 1
    kept = sweep_dir / f"multirun.{n}.yaml"
    shutil.copy2(current, kept)
    return kept


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


def _save_yaml(data: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    OmegaConf.save(data, tmp)
    tmp.replace(path)


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
    record = sweep_dir / "multirun.yaml"
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
    ``overrides.yaml``; then the job log's waiting records. What is held for another
    directory (a refused run's, earlier in this process) is dropped."""
    global _HELD
    held, _HELD = _HELD, None
    if held is None or held.run_dir != absolute(run_dir):
        return
    if held.output_subdir is not None:
        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        as_configured(hydra_cfg, held)
        out = held.run_dir / held.output_subdir
        out.mkdir(parents=True, exist_ok=True)
        _save_yaml(task_cfg, out / "config.yaml")
        _save_yaml(hydra_cfg, out / "hydra.yaml")
        _save_yaml(hydra_cfg.hydra.overrides.task, out / "overrides.yaml")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, HeldFileHandler):
            handler.write_waiting()


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
        held = _HELD is not None and _HELD.run_dir == absolute(path)
        self.earlier = held or holds_run(path)
        self.opened = False

    def open(self, task_cfg: DictConfig) -> None:
        """Training starts: write what was held, clean up after killed saves."""
        self.opened = True
        if self.guard:
            write_held(task_cfg, self.path)
            remove_orphans(self.path / "checkpoints")

    @property
    def may_record(self) -> bool:
        """Whether a failure may be written to ``results.json``: not into an earlier run's
        directory before this run started training."""
        return self.opened or not self.earlier

    def close(self) -> None:
        if self.guard:
            unlock_run_dir(self.path)
