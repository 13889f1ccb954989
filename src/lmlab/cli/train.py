"""``lmlab train [overrides]`` = ``python src/train.py [overrides]``; ``-m`` for a sweep.

Hydra composes ``conf/`` and ``lmlab.train.run.train`` does the work. The config is checked
before torch and Lightning are imported, so bad input is reported at once (one line, exit
code 2): Hydra's own errors before the run starts too (an unknown preset or key, a value
outside an enum, override syntax, a run directory that cannot be created), which Hydra
would print over several lines with exit code 1. A preempted run (SIGTERM/SIGUSR1) exits
with 143 after saving its checkpoint. A multirun checks every job's config before the first
one starts (``check_sweep``): one bad job refuses the sweep, naming each bad job, before
anything is written; so do jobs that would share a folder, and a sweep over the ``sweeps``
group (``+sweeps=a,b``). A job that fails later is logged and the sweep goes on (its
results.json says ``failed``; Optuna sees no value, a failed trial); the sweep's last line
says how many jobs completed and which failed (``log_sweep_summary``). A sweeper setting
that launches nothing, or a swept value list that is empty, refuses the sweep the same way; a
command-line value that replaces a sweep file's grid is said once (``on_multirun_start``). An
interrupted run (Ctrl-C) exits with 130; interrupted before it trained (its checks, its data),
it says so on one line and leaves nothing that the next command would take for a run
(``interrupted_before_training``). A run the non-finite guard stops says why on one line and
exits with 1 (results.json says ``failed``).

``RunDirCallback`` (``hydra.callbacks`` in ``conf/train.yaml``) guards the run directory of a
single run before Hydra writes into it: see ``lmlab.train.rundir``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from lmlab.cli.heap import before_exit, long_lived
from lmlab.cli.interrupt import JobFolder, clear
from lmlab.cli.main import fail
from lmlab.cli.sweep import (
    job_config,
    replaced_by_command_line,
    runs_here,
    search_corners,
    shared_folder,
    sweep_jobs,
    sweep_without_values,
    sweeper_setting,
    swept_keys,
    swept_sweep_files,
)
from lmlab.config import CONF_DIR, omegaconf_error, register_configs, resolve_configs
from lmlab.config.locks import LOCK_FILES
from lmlab.errors import ConfigError, first_line
from lmlab.train.budget import check_max_steps
from lmlab.train.rundir import (
    absolute,
    chose_dir,
    earlier_sweep_runs,
    fresh_run_dir,
    fresh_sweep_dir,
    hold_hydra_writes,
    hold_sweep_hydra_writes,
    holds_run,
    in_the_way,
    job_started,
    keep_multirun_yaml,
    launch_rank_is_zero,
    launched_processes,
    listed,
    lock_run_dir,
    lock_sweep_dir,
    refuse_live_sweep_dir,
    refuse_run_in_sweep_dir,
    refuse_sweep_in_run_dir,
    unlock_sweep_dirs,
)

register_configs()

FULL_ERROR = "HYDRA_FULL_ERROR"


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
    sweep_dir: str | None = None  # a multirun's folder, once a job of it ran here
    # the folder this call writes into (a run's, or a sweep's), once Hydra chose it; made:
    # None while nothing is written there, True where it held nothing before (this call's
    # alone: removed again if Ctrl-C comes before training), False where it held something
    folder: Path | None = None
    made: bool | None = None
    existed: bool = False  # made, in a folder that existed (emptied again, not removed)


LAUNCH = Launch()

# Optuna's sweeper logs a trial that returned no value as a failed experiment, with an error
# line each: a dry run's trials return none by design (``dry_run`` plans, it has no loss).
OPTUNA_LOGGER = "hydra_plugins.hydra_optuna_sweeper._impl"


class DryRunTrials(logging.Filter):
    """Drops the sweeper's "Failed experiment ... Got 'None'" lines while every job of this
    call was a dry run: ``main`` says "dry run: N trials planned" instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        planned = LAUNCH.jobs > 0 and LAUNCH.dry_runs == LAUNCH.jobs
        return not (planned and "Got 'None'" in record.getMessage())


DRY_RUN_TRIALS = DryRunTrials()


@contextmanager
def environ(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` (None: unset) inside the block, as it was after."""
    before = os.environ.get(name)
    _set_env(name, value)
    try:
        yield
    finally:
        _set_env(name, before)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


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
        if (swept := swept_sweep_files(config)) is not None:
            print(
                f"error: {swept}: the sweeps group takes one value (each job would be a default "
                "run: a sweep file's grid applies to the whole multirun, not inside a job); "
                "run each sweep on its own: -m +sweeps=<name>",
                file=sys.stderr,
            )
            sys.exit(2)
        log = logging.getLogger("lmlab")
        for replaced in replaced_by_command_line(config):  # Hydra's way: it narrows a sweep
            log.warning(replaced)
        sweep_dir = absolute(OmegaConf.select(config, "hydra.sweep.dir"))
        named_through_dotdot(config, "sweep", sweep_dir)
        LAUNCH.folder = sweep_dir  # Ctrl-C in the checks: nothing is written yet
        chosen = chose_dir(config, "hydra.sweep.dir")
        existing = chosen and sweep_dir.is_dir()
        if chosen:  # a live sweep or run's folder, or one inside a live sweep's: refused first
            guard_sweep_dir(sweep_dir, take=False)
        runs = earlier_sweep_runs(sweep_dir) if chosen else []  # a default one: a fresh folder
        resumed = bool(runs) and config.get("resume") in (True, "auto")
        if runs and not resumed:
            print(
                f"error: hydra.sweep.dir={sweep_dir} already holds the runs of an earlier "
                f"sweep ({listed(runs)}): choose another directory (the default is a new one), or "
                "add resume=auto to continue them",
                file=sys.stderr,
            )
            sys.exit(2)
        check_sweep(config, resumed)
        existed = chosen and sweep_dir.exists()
        if not chosen:  # multirun/<date>/<time>: taken by a sweep started in the same second?
            sweep_dir = take_fresh_sweep_dir(config, sweep_dir)
        note_folder(sweep_dir, existed)
        guard_sweep_dir(sweep_dir)  # held until the sweep ends (a new folder: created here)
        if existing and any(p.name not in LOCK_FILES for p in sweep_dir.iterdir()):
            # the same sweep continued job by job, or a job's folder that a live run takes
            hold_sweep_hydra_writes(config)
        if resumed:
            keep_multirun_yaml(sweep_dir)  # the earlier invocations stay described

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_sweep_dirs()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job_started(config)  # a resumed sweep's job: see on_multirun_start

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        processes = launched_processes()
        if processes > 1 and not chose_dir(config, "hydra.run.dir"):
            # every rank would name outputs/<date>/<time> by the second it started: ranks
            # that straddle a second would write (a sharded checkpoint too) into two folders
            print(
                f"error: this is one of {processes} processes that a launcher (torchrun) "
                "started for one run, and each would name the default folder, "
                "outputs/<date>/<time>, by the second it started: give them one with "
                "hydra.run.dir=<folder>",
                file=sys.stderr,
            )
            sys.exit(2)
        if not launch_rank_is_zero():
            return  # a DDP/FSDP rank of a run that rank 0 guards
        HydraConfig.instance().set_config(config)  # what run_job does first: ${hydra:...} resolve
        run_dir = absolute(OmegaConf.select(config, "hydra.run.dir"))
        existed = False
        try:
            if chose_dir(config, "hydra.run.dir"):
                named_through_dotdot(config, "run", run_dir)
                refuse_run_in_sweep_dir(run_dir)
                existed = run_dir.exists()
                lock_run_dir(run_dir)
            else:  # outputs/<date>/<time>: taken by a run started in the same second?
                run_dir = take_fresh_run_dir(config, run_dir)
        except (ConfigError, OSError) as err:  # live elsewhere, or not a writable directory
            # not fail(): while Hydra runs, main() sets HYDRA_FULL_ERROR=1 and fail() would
            # raise, which Hydra turns into a warning and goes on to write into the directory
            print(
                f"error: {err if isinstance(err, ConfigError) else unwritable(err)}",
                file=sys.stderr,
            )
            sys.exit(2)
        note_folder(run_dir, existed)
        hold_hydra_writes(config, run_dir)


def note_folder(folder: Path, existed: bool) -> None:
    """``folder`` is where this call writes, from now on (``LAUNCH``): whether it held
    anything but lock files decides, as it does for Hydra's writes (held where it did), what
    an interrupt before training removes again."""
    empty = not folder.is_dir() or all(p.name in LOCK_FILES for p in folder.iterdir())
    LAUNCH.folder, LAUNCH.made, LAUNCH.existed = folder, empty, existed and empty


MAX_REASONS = 10  # a refused sweep's lines, one reason each


def check_sweep(config: DictConfig, resumed: bool = False) -> None:
    """Every job of a sweep passes the checks a run makes before any work
    (``lmlab.train.preflight.check_job``), or the sweep exits here, before Hydra writes
    anything, naming each refused job and why. Jobs that would share a folder refuse the sweep
    first (``shared_folder``). ``resumed``: a sweep continued in its folder; each job passes
    its run directory's checks too (``lmlab.train.resume.check_continues``), so a job whose
    config changed, or whose checkpoint is past its steps, is refused before its neighbours
    train. Jobs a cluster launcher sends elsewhere are checked without this machine's GPU and memory
    (``lmlab.cli.sweep.runs_here``). An Optuna sweep: the corners of its search space
    (``lmlab.cli.sweep.search_corners``). Before any of it, a sweeper setting that would launch
    nothing (``n_trials=0``) and a swept value list that is empty (``range(2,2)``), in one
    line (``lmlab.cli.sweep.sweeper_setting``, ``sweep_without_values``)."""
    if (why := sweeper_setting(config) or sweep_without_values(config)) is not None:
        print(f"error: {why}", file=sys.stderr)
        sys.exit(2)
    jobs = sweep_jobs(config)
    corners = jobs is None
    if corners:
        jobs = search_corners(config)
    if not jobs:
        return  # another sweeper: each job is checked as it starts
    what, noun = ("search space's", "corner") if corners else ("sweep's", "job")
    noun += "s" if len(jobs) != 1 else ""
    with long_lived():
        from lmlab.train.preflight import check_job
        from lmlab.train.resume import check_continues
    started = time.perf_counter()
    keys, machine = swept_keys(jobs), runs_here(config)
    refused: dict[str, list[str]] = {}
    folders: dict[Path, list[int]] = {}  # each job's, by its number
    steps = tokens = flops = 0
    try:
        for num, overrides in enumerate(jobs):
            try:
                job = job_config(config, overrides, num)
                HydraConfig.instance().set_config(job)  # ${hydra:...} of this job
                out_dir = Path(job.hydra.runtime.output_dir)
                folders.setdefault(out_dir, []).append(num)
                if (blocker := in_the_way(out_dir)) is not None:  # Hydra's mkdir would raise
                    raise ConfigError(  # after the jobs before this one trained
                        f"its folder {out_dir} cannot be created: {blocker} is a file, not a folder"
                    )
                plan = check_job(job, machine)
                if resumed and not corners:
                    check_continues(job, plan, out_dir)
                budget = plan.budget
                steps, tokens, flops = (
                    steps + budget.steps,
                    tokens + budget.tokens,
                    flops + budget.flops,
                )
            except ConfigError as err:
                why = str(err)
            except (HydraException, OmegaConfBaseException) as err:  # it does not compose
                why = str(hydra_error(err, overrides))
            except (ValueError, TypeError) as err:  # a value of a type no check expected
                why = f"{type(err).__name__}: {err}"  # (Hydra would only warn, and launch)
            else:
                continue
            named = " ".join(o for o in overrides if o.partition("=")[0] in keys)
            if named and " " not in named:  # one swept value, which the reason may start with
                why = why.removeprefix(f"{named}: ")
            name = named if corners else f"#{num} {named}".strip()  # a corner is no job
            refused.setdefault(why, []).append(name)
        shared = shared_folder(config, jobs, folders, corners)
    finally:
        HydraConfig.instance().set_config(config)
    if shared is not None:
        print(f"error: {shared}", file=sys.stderr)
        sys.exit(2)
    checked = f"checked the {what} {len(jobs)} {noun} in {time.perf_counter() - started:.1f} s"
    if not refused and not corners:
        checked += f"; they train {steps:,} steps, {tokens:,} tokens, {flops:.3g} FLOPs (6ND)"
    logging.getLogger("lmlab").info(checked)
    if refused:
        count = sum(len(names) for names in refused.values())
        lines = [
            f"error: {count} of the {what} {len(jobs)} {noun} would be refused, so "
            + (
                "no trial was started (fix, narrow or leave out these values):"
                if corners
                else "none was started (fix or leave out these values):"
            )
        ]
        for why, names in list(refused.items())[:MAX_REASONS]:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"  {shown}: {why}")
        if len(refused) > MAX_REASONS:
            rest = sum(len(names) for names in list(refused.values())[MAX_REASONS:])
            lines.append(
                f"  and {rest} more job(s), for {len(refused) - MAX_REASONS} other reasons"
            )
        print("\n".join(lines), file=sys.stderr)
        sys.exit(2)


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
        print(
            f"error: {err if isinstance(err, ConfigError) else unwritable(err)}",
            file=sys.stderr,
        )
        sys.exit(2)


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
    from the command line's Hydra overrides, get it as one more of those."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra[kind].dir = str(folder)
        if kind == "sweep":
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={folder}")


def named_through_dotdot(config: DictConfig, kind: str, folder: Path) -> None:
    """A folder typed with ``..`` (``runs/x/../y``) is named as Hydra and the locks resolve it
    (``runs/y``), so that Hydra does not create ``runs/x`` on the way there."""
    if ".." in Path(str(OmegaConf.select(config, f"hydra.{kind}.dir"))).parts:
        name_dir(config, kind, folder)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    LAUNCH.task_started = True
    if not LAUNCH.forced:
        return run(cfg)
    # The run and the processes it starts (DDP ranks) see the user's HYDRA_FULL_ERROR.
    with environ(FULL_ERROR, LAUNCH.user_full_error):
        return run(cfg)


def run(cfg: DictConfig) -> float | None:
    """One job: ``run_job``, and Ctrl-C's exit (130) with, before training, what it left."""
    LAUNCH.jobs += 1
    LAUNCH.dry_runs += bool(cfg.get("dry_run"))
    job = JobFolder.of(absolute(cfg.paths.output_dir))
    try:
        return run_job(cfg)
    except KeyboardInterrupt:
        if launch_rank_is_zero() and not job.started():
            print(interrupted_before_training(job), file=sys.stderr)
        sys.exit(130)  # Ctrl-C: results.json says interrupted, the log how to resume


def run_job(cfg: DictConfig) -> float | None:
    if in_multirun():
        LAUNCH.sweep_dir = str(absolute(HydraConfig.get().sweep.dir))
    else:
        try:  # before torch and Lightning load; train() checks again
            resolve_configs(cfg)
            check_max_steps(cfg)
        except ConfigError as err:
            fail(err)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with long_lived():  # heavy imports only once the config composed
        from lmlab.train.guard import NonFiniteError
        from lmlab.train.run import train

    try:
        return train(cfg)
    except SIGTERMException:
        sys.exit(143)  # preempted: checkpoint saved, results.json says so
    except Exception as err:
        if in_multirun():
            # One failed job must not sink the sweep: results.json already says "failed". No
            # value: Optuna records the trial as failed and searches on (a NaN it would tell
            # as a failed trial's value, which optuna refuses, ending the search)
            logging.getLogger("lmlab").error("job failed: %s: %s", type(err).__name__, err)
            LAUNCH.failed += 1
            LAUNCH.failed_dirs.append(str(absolute(HydraConfig.get().runtime.output_dir)))
            return None
        if isinstance(err, ConfigError):
            fail(err)
        if isinstance(err, NonFiniteError):  # the guard's stop, already in results.json
            fail(err, code=1)
        raise


def in_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def interrupted_before_training(job: JobFolder) -> str:
    """Ctrl-C before ``job`` trained: its ``results.json`` put back as it was, and the folder
    this call made (a run's, or a sweep's whose first job this is; a later job's own folder)
    removed again; one line saying so. A folder that held something kept it: Hydra's writes
    were held there (a sweep's job folder that held no run has Hydra's ``.hydra/``)."""
    job.restore_record()
    num = HydraConfig.get().job.num if in_multirun() else 0
    first = f"interrupted before job #{num} trained" if num else "interrupted before training"
    folder = LAUNCH.folder
    if LAUNCH.made and folder is not None and (folder == job.path or folder in job.path.parents):
        if LAUNCH.jobs == 1:  # nothing else of this call's is there
            clear(folder, LAUNCH.existed)
            return f"{first}: nothing was written to {folder}"
        clear(job.path, existed=False)
        before = "the job before it is" if num == 1 else f"the {num} jobs before it are"
        return f"{first}: nothing was written to {job.path}; {before} in {folder}"
    if not in_multirun() or holds_run(job.path):
        return f"{first}: nothing was written to {job.path}"
    return f"{first}: nothing was trained in {job.path}, which holds no run"


def hydra_error(err: Exception, argv: Sequence[str]) -> ConfigError:
    """One line for what Hydra raised before the run started, naming the override and, where
    Hydra says it, what is allowed."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = [o for o in err.options or () if not o.startswith("base_")]  # not schemas
        if group and options:
            return ConfigError(f"{group}={name}: no such config; allowed: {', '.join(options)}")
    if isinstance(err, OverrideParseException):
        key, _, value = str(err.override).partition("=")
        if "LexerNoViableAltException" in str(err) and "'" not in value:
            # a character Hydra's grammar takes no unquoted value with (~ for a home folder)
            return ConfigError(
                f"{err.override}: Hydra cannot read this value unquoted; quote it for Hydra "
                f"inside the shell's quotes: \"{key}='{value}'\""
            )
        return ConfigError(f"{err.override}: {first_line(err)}")
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        given = [a for a in argv if a.lstrip("+~").partition("=")[0] == key]
        return omegaconf_error(cause, given[-1].lstrip("+~") if given else key)
    if isinstance(err, OSError) and err.filename:  # creating the run directory
        return unwritable(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ConfigError(" ".join(lines) or type(err).__name__)


def unwritable(err: OSError) -> ConfigError:
    """The run directory could not be created or written."""
    blocker = in_the_way(Path(err.filename)) if err.filename else None
    why = f"{blocker} is a file, not a folder" if blocker is not None else err.strerror
    return ConfigError(
        f"cannot write {err.filename}: {why} (hydra.run.dir, or hydra.sweep.dir with -m, must "
        "be a directory this user can create and write)"
    )


def no_trial_completed(err: BaseException) -> bool:
    """Optuna's sweeper asking for the best trial of a search none of whose trials gave a
    value (each failed, or was a dry run)."""
    return isinstance(err, ValueError) and "No trials are completed yet" in str(err)


def log_sweep_summary() -> None:
    """The last line of a sweep whose jobs ran here (not every one failed): how many
    completed, and the folders of those that failed (each one's ``results.json`` says why),
    as a warning. A dry run's jobs are planned, not completed. The exit status stays 0: one
    failed job does not sink a sweep (``compare`` ranks it last); a sweep whose every job
    failed exits 1 (``main``)."""
    log = logging.getLogger("lmlab")
    if LAUNCH.dry_runs == LAUNCH.jobs:
        log.info("dry run: %d jobs planned in %s", LAUNCH.jobs, LAUNCH.sweep_dir)
        return
    completed = f"sweep: {LAUNCH.jobs - LAUNCH.failed} of {LAUNCH.jobs} jobs completed"
    if not LAUNCH.failed:
        log.info("%s in %s", completed, LAUNCH.sweep_dir)
        return
    log.warning(
        "%s, %d failed (%s): each failed job's results.json says why",
        completed,
        LAUNCH.failed,
        listed(LAUNCH.failed_dirs),
    )


def main(argv: list[str]) -> int:
    """Hydra reads the command line itself: ``argv`` becomes ``sys.argv[1:]``. With
    HYDRA_FULL_ERROR=1 Hydra raises its errors instead of printing them, so it is set while
    Hydra runs and its errors become one line here (unless the user set it: a traceback)."""
    sys.argv = [sys.argv[0], *argv]
    LAUNCH.forced, LAUNCH.user_full_error = True, os.environ.get(FULL_ERROR)
    LAUNCH.task_started, LAUNCH.jobs, LAUNCH.dry_runs, LAUNCH.failed = False, 0, 0, 0
    LAUNCH.failed_dirs, LAUNCH.sweep_dir = [], None
    LAUNCH.folder, LAUNCH.made, LAUNCH.existed = None, None, False
    logging.getLogger(OPTUNA_LOGGER).addFilter(DRY_RUN_TRIALS)
    try:
        with environ(FULL_ERROR, "1"):
            hydra_main()
        if LAUNCH.failed and LAUNCH.failed == LAUNCH.jobs:  # a sweep here, every job failed
            which = f"all {LAUNCH.jobs} jobs" if LAUNCH.jobs > 1 else "the sweep's only job"
            fail(RuntimeError(f"{which} failed: the errors are logged above"), 1)
        if LAUNCH.sweep_dir is not None:
            log_sweep_summary()
    except Exception as err:
        if no_trial_completed(err) and LAUNCH.user_full_error != "1":
            if LAUNCH.dry_runs == LAUNCH.jobs:  # planned every trial, as asked
                logging.getLogger("lmlab").info("dry run: %d trials planned", LAUNCH.jobs)
                return 0
            fail(
                RuntimeError("no trial of the search completed: each one's results.json says why"),
                1,
            )
        if LAUNCH.task_started or LAUNCH.user_full_error == "1":
            raise
        fail(hydra_error(err, argv))
    except KeyboardInterrupt:
        # before a job started (a sweep's checks, Hydra's launcher): after one, ``run`` said
        # what it left; before Hydra chose a folder, or into one that held something,
        # ``command`` says "interrupted (Ctrl-C)"
        folder = LAUNCH.folder
        if LAUNCH.jobs or folder is None or LAUNCH.made is False:
            raise
        if LAUNCH.made:
            clear(folder, LAUNCH.existed)
        print(f"interrupted before training: nothing was written to {folder}", file=sys.stderr)
        sys.exit(130)
    finally:
        LAUNCH.forced = False
        logging.getLogger(OPTUNA_LOGGER).removeFilter(DRY_RUN_TRIALS)
        unlock_sweep_dirs()  # a sweep refused or failed before Hydra's on_multirun_end
    return 0


if __name__ == "__main__":  # the per-rank command of DDP/FSDP children (distributed.job_command)
    main(sys.argv[1:])
    before_exit()
