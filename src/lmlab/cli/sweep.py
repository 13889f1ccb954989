"""The jobs of a multirun, known before the first one starts: what Hydra's basic sweeper
launches (the product of the swept values, job ``#i`` in Hydra's order) and each job's config
as its launcher composes it. ``RunDirCallback.on_multirun_start`` checks them all
(``lmlab.train.preflight.check_job``), so a bad value in a sweep's last job is refused before
the first job trains, not hours later. Jobs that would share a folder (``shared_folder``) and
a sweep over the sweep files themselves (``swept_sweep_files``) are refused there too.

Optuna's sweeper draws its trials as it goes, so its jobs are not known in advance. What is
known is its search space: ``search_corners`` gives the jobs at its corners (every choice, both
ends of every range), which are checked the same way, so a range that reaches a refused value
(a learning rate of 0, a width no head count divides) is refused before the first trial; each
trial is still checked as it starts, as a single run is. Other sweepers: each job as it starts.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab.config.asked import as_typed
from lmlab.train.rundir import listed

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# an integer range with at most this many values is checked at every value, not its two ends
ALL_INT_VALUES = 8
# the corners checked in every combination up to this many; past it, each parameter's values
# one at a time, the others at their first value
MAX_CORNERS = 32
# the launcher that runs each job in this process, on this machine
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# the config group of the sweep files (``+sweeps=<name>``)
SWEEPS_GROUP = "sweeps"


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, as Hydra's basic sweeper builds them from ``hydra.sweeper.params``
    and the command line; None under another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += as_typed(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [
        job
        for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
        for job in batch
    ]


def swept_sweep_files(config: DictConfig) -> str | None:
    """The command line's override that sweeps the ``sweeps`` group (``+sweeps=a,b``), or
    None. A sweep file sets the sweeper's grid (``hydra.sweeper.params``), which Hydra reads
    once, from the config composed without the swept values: each job would compose one
    sweep file and run it as a default run, its grid unread."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    for override in parser.parse_overrides(as_typed(config.hydra.overrides.task)):
        if override.key_or_group == SWEEPS_GROUP and override.is_sweep_override():
            return override.input_line
    return None


def subdir_as_typed(config: DictConfig) -> str:
    """``hydra.sweep.subdir`` as configured (``${hydra.job.num}``, not resolved: the job
    number is set only per job)."""
    return str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))


def search_corners(config: DictConfig) -> list[list[str]] | None:
    """Jobs at the corners of an Optuna sweep's search space (``hydra.sweeper.params`` and the
    command line, read by the sweeper's own parser): every value of a choice and of a short
    integer range, both ends of any other range, with the fixed values, as Optuna's trials
    write their overrides. All combinations, or past ``MAX_CORNERS`` each parameter's values
    one at a time. None under another sweeper, or with the sweeper's older ``search_space``
    form, which is left to the checks each trial makes as it starts."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER or sweeper.get("search_space"):
        return None
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += as_typed(config.hydra.overrides.task)
    try:
        space, fixed = create_params_from_overrides(arguments)
    except Exception:  # noqa: BLE001 - the sweeper parses them again and says what is wrong
        return None
    for name in fixed:  # a fixed value wins, as in the sweeper
        space.pop(name, None)
    values = {name: corner_values(dist) for name, dist in space.items()}
    if math.prod(len(v) for v in values.values()) <= MAX_CORNERS:
        points = [dict(zip(values, p, strict=True)) for p in itertools.product(*values.values())]
    else:
        first = {name: v[0] for name, v in values.items()}
        points = [first] + [first | {name: v} for name, vs in values.items() for v in vs[1:]]
    return [[f"{k}={v}" for k, v in (point | fixed).items()] for point in points]


def corner_values(distribution: Any) -> list[Any]:
    """The values of one Optuna distribution that ``search_corners`` checks."""
    if hasattr(distribution, "choices"):
        return list(distribution.choices)
    low, high = distribution.low, distribution.high
    step = getattr(distribution, "step", None) or getattr(distribution, "q", None)
    if isinstance(low, int) and isinstance(high, int):
        every = list(range(low, high + 1, step or 1))
        if len(every) <= ALL_INT_VALUES:
            return every
    return [low, high]


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


def shared_folder(
    config: DictConfig, jobs: list[list[str]], folders: dict[Path, list[int]], corners: bool
) -> str | None:
    """Why jobs of the sweep would share a folder (one line), or None: each job of a sweep
    needs its own. ``hydra.sweep.subdir=.`` (or any subdir the job number is not in) gave
    every job the sweep's folder: the second job was refused at the first's checkpoints, but
    only after Hydra's launcher had rewritten the first's ``.hydra/``, and the sweep exited 0.
    A grid's jobs (``folders``, by job number) are distinct points, compared as they are; an
    Optuna search's trials may draw the same values, so their folder must change with the
    trial number (corner 0 composed as trial 0 and as trial 1). One job alone may use ``.``."""
    subdir = f"hydra.sweep.subdir={subdir_as_typed(config)}"
    if not corners:
        for folder, nums in folders.items():
            if len(nums) > 1:
                named = listed([f"#{n}" for n in nums], most=3)
                return (
                    f"{subdir} gives jobs {named} the same folder {folder}: a sweep needs a "
                    f"folder per job; allowed: a subdir with ${{hydra.job.num}} in it (the "
                    "default), or with values that differ between all the jobs"
                )
        return None
    trials = config.hydra.sweeper.get("n_trials") or 0
    first = next((folder for folder, nums in folders.items() if 0 in nums), None)
    if trials < 2 or first is None:  # corner 0 did not compose: refused for that
        return None
    if Path(job_config(config, jobs[0], 1).hydra.runtime.output_dir) != first:
        return None
    return (
        f"{subdir} gives trials #0 and #1 the same folder {first}: a search of {trials} trials "
        "needs a folder per trial, and trials may draw the same values; allowed: a subdir with "
        "${hydra.job.num} in it (the default)"
    )
