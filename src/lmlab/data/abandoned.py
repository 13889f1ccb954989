"""Cache entries whose build was killed: a ``kill -9`` or the kernel's out-of-memory killer
gives the builder no moment to remove its temporary folder (``.tmp-*``, as large as the rows
tokenized so far), and such folders stayed in the cache for good.

A builder holds an exclusive ``flock`` on its folder while it builds
(``lmlab.config.locks.hold_folder``); the kernel
drops it when the process dies. Before each build, ``remove_abandoned`` removes the folders of
this machine that no process holds, and what a ``discard`` killed midway left
(``.stale-*``). A folder another machine builds in (a cache shared over NFS, whose locks are
one machine's) is named by its host and left alone, as is one made in the last minute: its
builder takes the lock an instant after making it."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

from lmlab.config.locks import hold_folder

log = logging.getLogger(__name__)

STALE = ".stale-"  # an unusable entry renamed aside to be removed (``packing.discard``)
YOUNG_S = 60.0  # a folder this recent may be one whose builder has not locked it yet


def building_prefix() -> str:
    """The name a build's temporary folder starts with: this machine's."""
    return f".tmp-{socket.gethostname()}-"


def remove_abandoned(cache: Path) -> None:
    """Remove the build folders in ``cache`` whose builder died, and unfinished discards."""
    for entry in cache.glob(f"{STALE}*"):
        shutil.rmtree(entry, ignore_errors=True)
    for entry in cache.glob(f"{building_prefix()}*"):
        fd = hold_folder(entry)
        if fd is None:  # its builder lives (or no locks here)
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime >= YOUNG_S:
                log.info("removing %s: a data preparation that was killed left it", entry)
                shutil.rmtree(entry, ignore_errors=True)
        finally:
            os.close(fd)
