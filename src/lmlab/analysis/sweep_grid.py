"""The jobs of a sweep that have no folder: a basic sweeper's ``multirun.yaml`` holds its
grid, so a sweep stopped before some of its jobs (a signal, a crash of the sweep itself) is
known to lack them, and compare says so. Optuna draws its trials as it goes: no grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.analysis.run_files import read_yaml
from lmlab.analysis.runs import job_folders
from lmlab.config.locks import SWEEP_LOCK_FILE, live_holder
from lmlab.files import SWEEP_RECORD


@dataclass
class Unlaunched:
    """The jobs of a basic sweeper's grid (its ``multirun.yaml``) that have no folder."""

    sweep: Path
    """The sweep's folder (``hydra.sweep.dir``, where its multirun.yaml is)."""
    jobs: int
    """The jobs of its grid: the product of the swept values."""
    missing: list[str]
    """Job numbers without a folder where the folders are named by it (Hydra's default
    ``hydra.sweep.subdir``), else ``?`` for each job more than there are folders."""
    holder: str | None
    """The pid of the sweep's live process (its jobs still to come), None when it ended."""


def unlaunched_jobs(path: str | Path) -> list[Unlaunched]:
    """For each ``multirun.yaml`` under ``path`` whose sweeper is Hydra's basic one, the jobs
    of its grid that have no folder: a sweep stopped (a signal, a crash of the sweep itself)
    before it launched them. Optuna's trials are drawn as it goes, so its multirun.yaml holds
    no grid: such sweeps, and those whose grid cannot be read, are left out."""
    root = Path(path)
    if not root.is_dir():
        return []
    job_dirs, started, planned, _ = job_folders(root)
    folders = job_dirs | started | planned
    out = []
    for file in sorted(root.rglob(SWEEP_RECORD)):
        sweep = file.parent
        config = read_yaml(file)
        hydra = config.get("hydra") if isinstance(config, dict) else None
        jobs = _grid_size(hydra) if isinstance(hydra, dict) else None
        if jobs is None:
            continue
        if hydra.get("sweep", {}).get("subdir") == "${hydra.job.num}":
            missing = [str(i) for i in range(jobs) if not (sweep / str(i)).is_dir()]
        else:
            mine = sum(sweep in folder.parents for folder in folders)
            missing = ["?"] * max(jobs - mine, 0)
        if missing:
            out.append(Unlaunched(sweep, jobs, missing, live_holder(sweep / SWEEP_LOCK_FILE)))
    return out


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def grid_jobs(
    params: Mapping[str, Any], task: Iterable[Any], config_loader: Any = None
) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper builds them from its ``params`` and the
    command line's overrides (``task``), in its order; a ``glob`` needs the ``config_loader``
    (the config's groups). Hydra's errors are raised."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in task]
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _grid_size(hydra: dict[str, Any]) -> int | None:
    """How many jobs Hydra's basic sweeper launches for a multirun.yaml's ``hydra`` section
    (``grid_jobs``); None under another sweeper or where they cannot be read here (a
    ``glob``, which needs the config's groups)."""
    sweeper, overrides = hydra.get("sweeper"), hydra.get("overrides")
    if not isinstance(sweeper, dict) or sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = sweeper.get("params") or {}
    task = overrides.get("task") if isinstance(overrides, dict) else None
    if not isinstance(params, dict) or not isinstance(task, list | None):
        return None
    try:
        return len(grid_jobs(params, task or []))
    except Exception:  # noqa: BLE001 - hydra's own errors, unknown here: no grid known
        return None
