"""The run and sweep folders' locks: their names, and whether a live process holds one.

A run holds an exclusive ``fcntl.flock`` on ``<run dir>/.lmlab.lock`` for its lifetime, and
the process that launched a sweep one on ``<sweep dir>/.lmlab-sweep.lock``
(``lmlab.train.dirlock`` takes and releases them). The kernel drops a lock when its process
dies, so a lock file that no process holds is what a ``kill -9`` left behind. A run holds
its folder itself too (``flock`` on the folder, where the file system has it): a lock file
deleted by hand, taken for a stale one, lets no second run into a live run's folder. Every
command that reads run folders asks here (``live_holder``): training, to refuse a live
folder, and the analysis tools, to tell a job that still runs from one that was killed.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

LOCK_FILE = ".lmlab.lock"
SWEEP_LOCK_FILE = ".lmlab-sweep.lock"  # in a sweep folder, held by the process that launched it
LOCK_FILES = (LOCK_FILE, SWEEP_LOCK_FILE)


def pid_in(fd: int) -> str:
    """The pid a lock's holder wrote in the file open as ``fd`` (``unknown`` if none yet)."""
    return os.read(fd, 32).decode(errors="replace").strip() or "unknown"


def live_holder(lock: Path) -> str | None:
    """The pid written in the lock file ``lock`` where a live process holds it, else None (no
    such file, or nobody holds it). A run's lock file deleted by hand: ``unknown`` while the
    run holds its folder (``held_folder``). Takes nothing: the probe's shared lock lasts an
    instant, which a run taking the lock meanwhile waits out (``dirlock.PROBE_WAIT_S``)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # no such lock (or no such folder)
        fd = None
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return pid_in(fd)
        finally:
            os.close(fd)  # releases the shared lock too
    return "unknown" if lock.name == LOCK_FILE and held_folder(lock.parent) else None


def open_folder(folder: Path) -> int | None:
    """``folder`` open for a ``flock`` of the folder itself; None where it cannot be."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def _flock_folder(folder: Path, mode: int) -> tuple[int | None, bool]:
    """``folder`` open and ``flock``ed in ``mode`` without waiting: (its descriptor, or None,
    and whether another process holds a lock that kept this one out). None and False where the
    file system does not lock folders."""
    fd = open_folder(folder)
    if fd is None:
        return None, False
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as err:  # this file system refuses to lock a folder, or a holder lives
        os.close(fd)
        return None, isinstance(err, BlockingIOError)
    return fd, False


def hold_folder(folder: Path) -> int | None:
    """The descriptor of ``folder`` holding its exclusive ``flock`` (close it to let go); None
    where another process holds it or the file system does not lock folders."""
    return _flock_folder(folder, fcntl.LOCK_EX)[0]


def held_folder(folder: Path) -> bool:
    """Whether a live run holds ``folder`` itself (the ``flock`` beside its lock file's)."""
    fd, held = _flock_folder(folder, fcntl.LOCK_SH)
    if fd is not None:
        os.close(fd)  # releases the probe's shared lock
    return held


def lock_current(path: Path, take: Callable[[int], None], mode: int = 0o644) -> int:
    """The descriptor of the lock file ``path``, opened (made where missing) and locked by
    ``take(fd)``, which flocks it or raises (the descriptor is then closed). Its holders
    remove the file before they release it, so a process that waited on a file since
    removed locks the path's new file instead: two holders never hold different files of one
    path."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
        try:
            take(fd)
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # removed by the holder this one waited for
            current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            return fd
        os.close(fd)
