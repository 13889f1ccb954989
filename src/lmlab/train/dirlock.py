"""One live run per directory, one live sweep per folder: ``fcntl.flock`` locks held for a
run's or sweep's lifetime, and the refusals of a folder another live process uses.

- ``lock_run_dir``: an exclusive ``fcntl.flock`` on ``<run dir>/.lmlab.lock``, and one on the
  run directory itself (``_hold_folder``), held for the run's lifetime. A second run into a
  live directory is refused (``ConfigError``), also where its lock file was deleted by hand.
  The kernel drops the locks when their process dies, so a ``kill -9`` leaves no live lock
  behind; a forked child (a DataLoader worker) holds none of them (``_forget_in_child``).
  ``lock_sweep_dir``: the same for a multirun's folder (``<sweep dir>/.lmlab-sweep.lock``),
  held by the process that launched the sweep: a second sweep into a live one's folder,
  resumed or not, is refused before it writes anything.
- ``fresh_run_dir`` / ``fresh_sweep_dir``: where the user did not choose the folder
  (``lmlab.train.rundir.chose_dir``), a run or sweep whose default one is taken, by another
  started in the same second, takes ``<dir>_2`` (``_3``, ...) instead of being refused or
  sharing it."""

from __future__ import annotations

import atexit
import fcntl
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lmlab.config.locks import (
    LOCK_FILE,
    LOCK_FILES,
    SWEEP_LOCK_FILE,
    live_holder,
    lock_current,
    open_folder,
    pid_in,
)
from lmlab.errors import ConfigError, naming
from lmlab.files import RUN_CONFIG, SWEEP_RECORD
from lmlab.train.runfiles import absolute, earlier_sweep_runs, holds_run, listed, run_files_in

_LOCKS: dict[Path, int] = {}  # lock file -> the file descriptor holding it
_FOLDERS: dict[Path, int] = {}  # a run's lock file -> the descriptor holding its folder


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


def _hold_folder(lock: Path) -> int | None:
    """Hold the ``flock`` on a run's folder itself (the lock file ``lock``'s): a lock file
    that was deleted by hand while its run lived, taken for a stale one, let a second run in,
    whose clean-up of temporary files broke the first one's checkpoint save. Refused
    (``ConfigError``) where another process holds it, named by the pid of a live lock file
    there; None where the file system refuses to lock a folder: the lock file alone guards
    there. (Linux's NFS client locks a folder on its own machine only.)"""
    fd = open_folder(lock.parent)
    if fd is None:
        return None
    try:
        if _flock_exclusive(fd):
            return fd
    except OSError:
        os.close(fd)
        return None
    os.close(fd)
    holder = live_holder(lock)
    if holder is None or holder == "unknown":  # no live lock file names the folder's holder
        holder = (
            f"unknown: a process holds the folder itself, and no live {lock.name} names it: "
            "deleted by hand, or a run there is starting"
        )
    raise _in_use(lock, holder) from None


def _take_lock(folder: Path, name: str) -> None:
    """Hold the ``flock`` on ``folder/name`` for this process (held already: nothing happens),
    and for a run's lock, on the folder itself; or refuse (``ConfigError``): another live
    process holds it, named by the pid it wrote."""
    path = absolute(folder) / name
    if path in _LOCKS:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    held = _hold_folder(path) if name == LOCK_FILE else None
    try:
        fd = _lock_file(path)
    except BaseException:
        if held is not None:
            os.close(held)
        raise
    if not _LOCKS:
        atexit.register(unlock_all)
    _LOCKS[path] = fd
    if held is not None:
        _FOLDERS[path] = held


def _lock_file(path: Path) -> int:
    """The descriptor holding the ``flock`` on the lock file ``path``, the pid written; or
    refuse (``ConfigError``): another live process holds it."""

    def take(fd: int) -> None:
        if not _flock_exclusive(fd):
            raise _in_use(path, pid_in(fd)) from None

    fd = lock_current(path, take)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as err:  # a full disk: os.write's error names no file
        os.close(fd)
        path.unlink(missing_ok=True)
        raise naming(err, path) from err
    return fd


def _release(path: Path) -> None:
    """Remove the lock file ``path`` and release it (a no-op if this process holds none)."""
    fd = _LOCKS.pop(path, None)
    if fd is not None:
        path.unlink(missing_ok=True)
        os.close(fd)
    held = _FOLDERS.pop(path, None)
    if held is not None:
        os.close(held)


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


MORE_JOBS = "a sweep takes more jobs with -m <overrides> resume=auto hydra.sweep.dir=<its folder>"


def enclosing_run_or_sweep(folder: Path) -> tuple[Path, str] | None:
    """The folder of an lmlab run or sweep that ``folder`` lies inside, at any depth, with
    what it holds (``multirun.yaml``, or its run files), or None. ``compare`` and ``scaling``
    rank every run under the folder they are given, so a run there counts among the sweep's
    jobs, or beside the run it was put in. Only lmlab's own marks count: a sweep's
    ``multirun.yaml`` with its jobs' runs, a run's Hydra config (or, without ``.hydra/``, its
    ``run_config.yaml``) beside its run files; a project folder with a ``checkpoints/`` or
    another tool's ``results.json`` is neither."""
    for parent in absolute(folder).parents:
        try:
            if (parent / SWEEP_RECORD).is_file() and earlier_sweep_runs(parent):
                return parent, SWEEP_RECORD
            config = (parent / ".hydra" / "config.yaml").is_file()
            config = config or (parent / RUN_CONFIG).is_file()  # hydra.output_subdir=null
            if config and holds_run(parent, evals=False):  # loose checkpoints' eval/: no run
                return parent, run_files_in(parent)
        except OSError:  # a folder above that this user cannot read: none of ours
            continue
    return None


def _refuse_inside(folder: Path, key: str) -> None:
    """Refuse (``ConfigError``) a new run or sweep at ``folder`` (``key``) inside a finished
    run's or sweep's folder (``enclosing_run_or_sweep``; a live one's is refused as in use)."""
    enclosing = enclosing_run_or_sweep(folder)
    if enclosing is None:
        return
    parent, holds = enclosing
    sweep = holds == SWEEP_RECORD
    where = f"a sweep's folder ({holds})" if sweep else f"a run's folder ({holds})"
    ranked = "among the sweep's jobs" if sweep else "with that run"
    more = f" ({MORE_JOBS})" if sweep else ""
    raise ConfigError(
        f"{key}={folder} is inside {parent}, {where}: compare and scaling would rank what runs "
        f"here {ranked}; choose a directory outside it{more}"
    )


def refuse_run_in_sweep_dir(run_dir: Path) -> None:
    """A single run's chosen directory that is a sweep's folder and holds no run of its own:
    ``compare`` ranks every run in a sweep's folder, so the run would count among the sweep's
    jobs. A live sweep's is refused as in use, and so is any folder inside it
    (``refuse_inside_live_sweep``); a new run's folder inside a finished sweep's or run's, at
    any depth, too (``enclosing_run_or_sweep``). (A run there already, from before this
    check: ``lmlab.train.resume``'s checks resume it or refuse.)"""
    refuse_if_live(run_dir, SWEEP_LOCK_FILE, "hydra.run.dir")
    refuse_inside_live_sweep(run_dir, "hydra.run.dir")
    if run_dir.is_dir() and holds_run(run_dir):
        return
    _refuse_inside(run_dir, "hydra.run.dir")
    if not run_dir.is_dir():
        return
    marks = [SWEEP_RECORD] if (run_dir / SWEEP_RECORD).is_file() else []
    jobs = earlier_sweep_runs(run_dir, depth=1)  # a W&B agent's sweep folder has these alone
    if jobs:
        marks.append(f"the runs in {listed(jobs)}")
    if marks:
        raise ConfigError(
            f"hydra.run.dir={run_dir} is a sweep's folder ({' and '.join(marks)}): compare "
            f"would rank a run here among the sweep's jobs; choose another directory ({MORE_JOBS})"
        )


def refuse_sweep_in_run_dir(sweep_dir: Path) -> None:
    """A sweep's chosen folder that holds a single run (and no ``multirun.yaml``: a sweep whose
    jobs ran in its own folder, ``hydra.sweep.subdir=.``, is a sweep's): the jobs would be
    nested in the run, and ``compare`` would rank the run among them. A new sweep's folder
    inside a finished sweep's or run's is refused too (``enclosing_run_or_sweep``)."""
    if (sweep_dir / SWEEP_RECORD).is_file():
        return  # a sweep's own folder: continued (resume), or refused for its earlier runs
    if holds_run(sweep_dir):
        written = run_files_in(sweep_dir)
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} holds a single run ({written}): the sweep's jobs "
            "would be nested in it and compare would rank that run among them; choose "
            "another directory"
        )
    _refuse_inside(sweep_dir, "hydra.sweep.dir")


def unlock_sweep_dirs() -> None:
    """Release the sweep locks this process holds (its multirun ended, or was refused)."""
    for path in [p for p in _LOCKS if p.name == SWEEP_LOCK_FILE]:
        _release(path)


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


def unlock_run_dir(run_dir: Path) -> None:
    """Remove the run's lock file and release it (a no-op if this process holds none)."""
    _release(absolute(run_dir) / LOCK_FILE)


def unlock_all() -> None:
    for path in list(_LOCKS):
        _release(path)


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker): close the locks' descriptors it inherited, so
    that it holds none. A ``flock`` belongs to the open file, which a fork shares, so workers
    that outlived a ``kill -9`` of their run (up to 5 s, until they notice) kept its folder
    locked: a resume right then was refused, naming the dead run's pid. The parent's own
    descriptors still hold the locks; the child neither releases nor removes them."""
    for fd in (*_LOCKS.values(), *_FOLDERS.values()):
        os.close(fd)
    _LOCKS.clear()
    _FOLDERS.clear()


os.register_at_fork(after_in_child=_forget_in_child)
