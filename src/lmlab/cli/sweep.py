"""The jobs of a multirun, known before the first one starts: what Hydra's basic sweeper
launches (the product of the swept values, job ``#i`` in Hydra's order) and each job's config
as its launcher composes it. ``RunDirCallback.on_multirun_start`` checks them all
(``lmlab.train.preflight.check_job``), so a bad value in a sweep's last job is refused before
the first job trains, not hours later.

Another sweeper (Optuna's, for one) draws its jobs as it goes: those are checked each as it
starts, as a single run is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# the launcher that runs each job in this process, on this machine
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, as Hydra's basic sweeper builds them from ``hydra.sweeper.params``
    and the command line; None under another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [
        job
        for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
        for job in batch
    ]


def runs_here(config: DictConfig) -> bool:
    """Whether the sweep's jobs train on this machine (Hydra's basic launcher), not on the
    machines a cluster launcher sends them to."""
    return config.hydra.launcher.get("_target_") == BASIC_LAUNCHER


def job_config(config: DictConfig, overrides: Sequence[str], num: int) -> DictConfig:
    """Job ``num``'s config as the basic launcher composes it, with the run directory it
    will have (``hydra.runtime.output_dir``, which ``paths.output_dir`` reads)."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
    with open_dict(job):
        job.hydra.job.id = job.hydra.job.num = num
    sweep_dir = str(OmegaConf.select(job, "hydra.sweep.dir"))
    subdir = str(OmegaConf.select(job, "hydra.sweep.subdir"))
    with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):  # as Hydra's run_job
        job.hydra.runtime.output_dir = os.path.abspath(os.path.join(sweep_dir, subdir))
    return job


def swept_keys(jobs: Sequence[Sequence[str]]) -> set[str]:
    """The override keys whose value differs between jobs (what names a job to its user)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}
