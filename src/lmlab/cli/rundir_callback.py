"""``RunDirCallback`` (``hydra.callbacks`` in ``conf/train.yaml``) guards the run directory of
a single run, and a multirun's sweep folder, before Hydra writes into it: see
``lmlab.train.rundir``. A multirun's jobs are checked here too, before the first starts
(``lmlab.cli.sweep_check``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab.analysis.sweep_grid import BASIC_SWEEPER
from lmlab.cli.hydra_errors import refuse
from lmlab.cli.interrupt import made_above, note_folder
from lmlab.cli.launch import LAUNCH
from lmlab.cli.sweep import optuna_logs_as_lmlab, sweep_file_without_multirun, swept_sweep_files
from lmlab.cli.sweep_check import check_sweep
from lmlab.cli.sweep_overrides import (
    grid_values_overridden,
    repeated_on_command_line,
    replaced_by_command_line,
)
from lmlab.config.asked import override
from lmlab.config.locks import LOCK_FILES
from lmlab.errors import ConfigError
from lmlab.train.dirlock import (
    fresh_run_dir,
    fresh_sweep_dir,
    lock_run_dir,
    lock_sweep_dir,
    refuse_live_sweep_dir,
    refuse_run_in_sweep_dir,
    refuse_sweep_in_run_dir,
    unlock_sweep_dirs,
)
from lmlab.train.held import (
    hold_hydra_writes,
    hold_sweep_hydra_writes,
    job_started,
    rank_zero_saves,
)
from lmlab.train.rundir import (
    chose_dir,
    keep_multirun_yaml,
    record_sweep,
    resume_into_a_new_folder,
)
from lmlab.train.runfiles import (
    absolute,
    earlier_sweep_runs,
    launch_rank_is_zero,
    launched_processes,
    listed,
    refuse_files_in_the_way,
)


def job_chdir(config: DictConfig) -> str | None:
    """Why ``hydra.job.chdir=true`` is refused (None where it is false): lmlab reads the paths
    a command names from the folder the command runs in and writes the run's files into its
    folder by their full paths; run from that folder, ``data.name=./x.jsonl`` was looked for
    there and reported missing after Hydra had made the folder."""
    if not OmegaConf.select(config, "hydra.job.chdir", default=False):
        return None
    return (
        "hydra.job.chdir=true: lmlab reads the paths a command names (data.path=./x.jsonl, "
        "task.train=, init_from=, ckpt_path=) from the folder the command runs in, and writes "
        "every file of a run into its folder (hydra.run.dir, a sweep's job folders) by its "
        "full path; run from that folder, a relative path would name another file; allowed: "
        "hydra.job.chdir=false (the default); ${hydra:runtime.output_dir} names the folder"
    )


class RunDirCallback(Callback):
    """Hydra calls ``on_run_start`` with the composed config before ``run_job`` creates the
    run directory, saves ``.hydra/`` and opens ``train.log``. Here a single run takes the
    directory's lock (a live run there: refused, nothing written) and, if the directory is
    not empty, holds Hydra's writes until training starts. Hydra turns a callback's exception
    into a warning, so a refusal exits here. A multirun into a sweep folder that holds an
    earlier sweep's runs, or whose jobs do not all pass their checks (``check_sweep``), is
    refused in ``on_multirun_start``, before Hydra writes anything, unless ``resume``
    continues the earlier runs: then the earlier ``multirun.yaml`` is kept as
    ``multirun.<n>.yaml``. In a folder that exists, each job's ``.hydra/`` is held until that
    job's checks pass (``on_job_start``; never into a live run's directory), and each job is
    guarded again in ``train()``. A multirun into the folder of a sweep or run still live in
    another process is refused first, resumed or not: the sweep holds its folder's lock
    until ``on_multirun_end``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        optuna_logs_as_lmlab(config)
        if (why := job_chdir(config)) is not None:
            refuse(why)
        if (why := resume_into_a_new_folder(config, "sweep")) is not None:
            refuse(why)
        if (swept := swept_sweep_files(config)) is not None:
            refuse(
                f"{swept}: the sweeps group takes one value (each job would be a default "
                "run: a sweep file's grid applies to the whole multirun, not inside a job); "
                "run each sweep on its own: -m +sweeps=<name>"
            )
        if (overridden := grid_values_overridden(config)) is not None:
            refuse(overridden)
        log = logging.getLogger("lmlab")
        # Hydra's way, which narrows a sweep: said, as a single run takes it
        for replaced in replaced_by_command_line(config) + repeated_on_command_line(config):
            log.warning(replaced)
        sweep_dir = absolute(OmegaConf.select(config, "hydra.sweep.dir"))
        named_resolved(config, "sweep", sweep_dir)
        LAUNCH.folder = sweep_dir  # Ctrl-C in the checks: nothing is written yet
        chosen = chose_dir(config, "hydra.sweep.dir")
        existing = chosen and sweep_dir.is_dir()
        if chosen:  # a live sweep or run's folder, or one inside a live sweep's: refused first
            guard_sweep_dir(sweep_dir, take=False)
        runs = earlier_sweep_runs(sweep_dir) if chosen else []  # a default one: a fresh folder
        resumed = bool(runs) and config.get("resume") in (True, "auto")
        if runs and not resumed:
            refuse(
                f"hydra.sweep.dir={sweep_dir} already holds the runs of an earlier "
                f"sweep ({listed(runs)}): choose another directory (the default is a new one), or "
                "add resume=auto to continue them"
            )
        check_sweep(config, resumed)
        existed, above = chosen and sweep_dir.exists(), made_above(sweep_dir)
        if not chosen:  # multirun/<date>/<time>: taken by a sweep started in the same second?
            sweep_dir = take_fresh_sweep_dir(config, sweep_dir)
        note_folder(sweep_dir, existed, above)
        guard_sweep_dir(sweep_dir)  # held until the sweep ends (a new folder: created here)
        if existing and any(p.name not in LOCK_FILES for p in sweep_dir.iterdir()):
            # the same sweep continued job by job, or a job's folder that a live run takes
            hold_sweep_hydra_writes(config)
        if resumed:
            keep_multirun_yaml(sweep_dir)  # the earlier invocations stay described
        if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER and launch_rank_is_zero():
            record_sweep(config, sweep_dir)  # Hydra's basic sweeper saves its own

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_sweep_dirs()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job_started(config)  # a resumed sweep's job: see on_multirun_start

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if (why := job_chdir(config)) is not None:
            refuse(why)
        if (why := resume_into_a_new_folder(config, "run")) is not None:
            refuse(why)
        variable, processes = launched_processes()
        if processes > 1 and not chose_dir(config, "hydra.run.dir"):
            # every rank would name outputs/<date>/<time> by the second it started: ranks
            # that straddle a second would write (a sharded checkpoint too) into two folders
            launcher = "srun" if variable == "SLURM_NTASKS" else "torchrun"
            refuse(
                f"this is one of {processes} processes that a launcher ({launcher}: "
                f"{variable}={processes}) started for one run, and each would name the default "
                "folder, outputs/<date>/<time>, by the second it started: give them one with "
                "hydra.run.dir=<folder>"
            )
        if not launch_rank_is_zero():  # a DDP/FSDP rank of a run that rank 0 guards
            rank_zero_saves(config)  # (a sweep job's ranks too)
            return
        if (why := sweep_file_without_multirun(config)) is not None:
            refuse(why)
        HydraConfig.instance().set_config(config)  # what run_job does first: ${hydra:...} resolve
        run_dir = absolute(OmegaConf.select(config, "hydra.run.dir"))
        existed, above = False, made_above(run_dir)
        try:
            if chose_dir(config, "hydra.run.dir"):
                named_resolved(config, "run", run_dir)
                refuse_run_in_sweep_dir(run_dir)
                refuse_files_in_the_way(run_dir, config.get("logger") or {})
                existed = run_dir.exists()
                lock_run_dir(run_dir)
            else:  # outputs/<date>/<time>: taken by a run started in the same second?
                run_dir = take_fresh_run_dir(config, run_dir)
        except (ConfigError, OSError) as err:  # live elsewhere, or not a writable directory
            # not fail(): while Hydra runs, main() sets HYDRA_FULL_ERROR=1 and fail() would
            # raise, which Hydra turns into a warning and goes on to write into the directory
            refuse(err)
        note_folder(run_dir, existed, above)
        hold_hydra_writes(config, run_dir)


def take_fresh_run_dir(config: DictConfig, default: Path) -> Path:
    """The default run directory, or the fresh one taken where it is not free, which Hydra's
    ``run_job`` then writes into (``hydra.run.dir``)."""
    run_dir = fresh_run_dir(default)
    if run_dir != default:
        print(f"{default} is taken (a run started in the same second); this run is in {run_dir}")
        name_dir(config, "run", run_dir)
    return run_dir


def guard_sweep_dir(sweep_dir: Path, take: bool = True) -> None:
    """Take the sweep folder's lock for this multirun (on the launcher's rank 0: torchrun
    starts every rank with the sweep's command), or exit: a live sweep or run holds it. An
    exit, not an exception, which Hydra would turn into a warning and go on. ``take=False``:
    only the refusal, before the checks (a refused sweep leaves no lock file's trace)."""
    if not launch_rank_is_zero():
        return
    try:
        if take:
            lock_sweep_dir(sweep_dir)
        else:
            refuse_live_sweep_dir(sweep_dir)
            refuse_sweep_in_run_dir(sweep_dir)
    except (ConfigError, OSError) as err:  # live elsewhere, or not a writable directory
        refuse(err)


def take_fresh_sweep_dir(config: DictConfig, default: Path) -> Path:
    """The sweep's default folder, or the fresh one taken where it exists, for the sweeper
    (``hydra.sweep.dir``) and for each job, which Hydra's launcher composes again from the
    command line's Hydra overrides."""
    sweep_dir = fresh_sweep_dir(default)
    if sweep_dir == default:
        return sweep_dir
    print(f"{default} is taken (a sweep started in the same second); this sweep is in {sweep_dir}")
    name_dir(config, "sweep", sweep_dir)
    return sweep_dir


def name_dir(config: DictConfig, kind: str, folder: Path) -> None:
    """``hydra.<kind>.dir`` (``kind``: run or sweep) set to ``folder``, where Hydra's
    ``run_job`` or launcher then writes; a sweep's jobs, which the launcher composes again
    from the command line's Hydra overrides, get it as one more of those, quoted where Hydra
    would misread it (``override``: a folder named ``日本``, or with a comma)."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra[kind].dir = str(folder)
        if kind == "sweep":
            config.hydra.overrides.hydra.append(override("hydra.sweep.dir", str(folder)))


def named_resolved(config: DictConfig, kind: str, folder: Path) -> None:
    """A folder typed with ``..`` (``runs/x/../y``) or a leading ``~`` is named to Hydra as the
    locks resolve it (``runs/y``; the home folder: ``runfiles.absolute``), so that Hydra does
    not create ``runs/x`` on the way there, nor a folder named ``~`` in the working
    directory (which lmlab's own advice to quote ``~/runs/a`` for Hydra led to)."""
    typed = str(OmegaConf.select(config, f"hydra.{kind}.dir"))
    if ".." in Path(typed).parts or typed.startswith("~"):
        name_dir(config, kind, folder)
