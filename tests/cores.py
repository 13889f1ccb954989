"""The cores this process may use: its CPU affinity, bounded by its cgroup's CPU quota. A
container given 2 CPUs on a large host sees every core of the host in its affinity; sized by
that, the suite's workers ran a thread per host core each on 2 CPUs' worth of time."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cores(root: Path = CGROUP) -> int | None:
    """The CPUs a cgroup's quota allows (rounded up), or None where it sets none: v2's
    ``cpu.max`` ("max 100000": none; "200000 100000": 2), else v1's ``cpu.cfs_quota_us``
    over ``cpu.cfs_period_us`` (a quota of -1: none)."""
    for quota_file, period_file in (
        (root / "cpu.max", None),
        (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
    ):
        try:
            words = quota_file.read_text().split()
            if period_file is not None:
                words.append(period_file.read_text().strip())
            quota, period = words[0], int(words[1])
        except (OSError, ValueError, IndexError):
            continue
        if quota == "max" or int(quota) <= 0 or period <= 0:
            return None
        return max(1, math.ceil(int(quota) / period))
    return None


def usable_cores(root: Path = CGROUP) -> int:
    """This process's CPU affinity (every core where the platform has none), at most its
    cgroup's quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, quota_cores(root) or math.inf)
