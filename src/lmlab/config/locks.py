"""The run and sweep folders' locks: their names, and whether a live process holds one.

A run holds an exclusive ``fcntl.flock`` on ``<run dir>/.lmlab.lock`` for its lifetime, and
the process that launched a sweep one on ``<sweep dir>/.lmlab-sweep.lock``
(``lmlab.train.dirlock`` takes and releases them). The kernel drops a lock when its process
dies, so a lock file that no process holds is what a ``kill -9`` left behind. Every command
that reads run folders asks here (``live_holder``): training, to refuse a live folder, and
the analysis tools, to tell a job that still runs from one that was killed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lmlab.lock"
SWEEP_LOCK_FILE = ".lmlab-sweep.lock"  # in a sweep folder, held by the process that launched it
LOCK_FILES = (LOCK_FILE, SWEEP_LOCK_FILE)


def pid_in(fd: int) -> str:
    """The pid a lock's holder wrote in the file open as ``fd`` (``unknown`` if none yet)."""
    return os.read(fd, 32).decode(errors="replace").strip() or "unknown"


def live_holder(lock: Path) -> str | None:
    """The pid written in the lock file ``lock`` where a live process holds it, else None (no
    such file, or nobody holds it). Takes nothing: the probe's shared lock lasts an instant,
    which a run taking the lock meanwhile waits out (``dirlock.PROBE_WAIT_S``)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # no such lock (or no such folder): nothing live there
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return pid_in(fd)
    else:
        return None
    finally:
        os.close(fd)  # releases the shared lock too
