"""What ``lmlab.cli.train`` knows about the Hydra call in progress (``LAUNCH``), shared by its
entry (``main``, ``run``), the run-directory callback (``lmlab.cli.rundir_callback``) and what
a Ctrl-C before training removes again (``lmlab.cli.interrupt``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


@dataclass
class Launch:
    """What ``main`` knows about the Hydra call in progress."""

    forced: bool = False  # main() set HYDRA_FULL_ERROR=1 (not so when a launcher plugin
    # such as submitit calls hydra_main in its own process)
    user_full_error: str | None = None  # HYDRA_FULL_ERROR as the user set it
    task_started: bool = False  # Hydra reached hydra_main: its own errors are behind us
    jobs: int = 0  # jobs this call ran, how many were dry runs (no loss), how many failed
    dry_runs: int = 0
    failed: int = 0
    failed_dirs: list[str] = field(default_factory=list)  # the failed jobs' folders
    # the jobs (of ``failed``) that train()'s checks refused before training: ``<folder>:
    # <why>``; a folder that held a run keeps its record, so the reason is said here
    refused: list[str] = field(default_factory=list)
    sweep_dir: str | None = None  # a multirun's folder, once a job of it ran here
    # the folder this call writes into (a run's, or a sweep's), once Hydra chose it; made:
    # None while nothing is written there, True where it held nothing before (this call's
    # alone: removed again if Ctrl-C comes before training), False where it held something
    folder: Path | None = None
    made: bool | None = None
    existed: bool = False  # made, in a folder that existed (emptied again, not removed)
    # the outermost of the folder's parents this call made on the way to it (the default
    # outputs/<date>/<time> makes outputs/<date>/ for a day's first run): removed with it
    above: Path | None = None


LAUNCH = Launch()


def in_multirun() -> bool:
    """Whether the job in progress is one of a multirun's (``-m``)."""
    return HydraConfig.get().mode == RunMode.MULTIRUN
