"""``lmlab train [overrides]`` = ``python src/train.py [overrides]``; ``-m`` for a sweep.

Hydra composes ``conf/`` and ``lmlab.train.run.train`` does the work. The config is checked
before torch and Lightning are imported, so bad input is reported at once (one line, exit code
2): Hydra's own errors before the run starts too (an unknown preset or key, a value outside an
enum, override syntax, a run directory that cannot be created), which Hydra would print over
several lines with exit code 1. A preempted run (SIGTERM/SIGUSR1) exits with 143 after saving
its checkpoint. A multirun checks every job's config before the first one starts
(``lmlab.cli.sweep_check``): one bad job refuses the sweep, naming each bad job, before
anything is written; so do jobs that would share a folder, and a sweep over the ``sweeps``
group (``+sweeps=a,b``). A job that fails later is logged and the sweep goes on (its
results.json says ``failed``; Optuna sees no value, a failed trial); the sweep's last line
says how many jobs completed and which failed (``log_sweep_summary``). A sweeper setting that
launches nothing, or a swept value list that is empty, refuses the sweep the same way; a
command-line value that replaces a sweep file's grid is said once
(``RunDirCallback.on_multirun_start``). An interrupted run (Ctrl-C) exits with 130;
interrupted before it trained (its checks, its data), it says so on one line and leaves
nothing that the next command would take for a run
(``lmlab.cli.interrupt.interrupted_before_training``); so does a run preempted before it
trained (SIGTERM/SIGUSR1 while its data was prepared), with exit code 143. A run the
non-finite guard stops says why on one line and exits with 1 (results.json says ``failed``).

``RunDirCallback`` (``hydra.callbacks`` in ``conf/train.yaml``) guards the run directory of a
single run before Hydra writes into it: see ``lmlab.cli.rundir_callback``. The state of the
Hydra call in progress is ``lmlab.cli.launch.LAUNCH``; Hydra's errors become one line in
``lmlab.cli.hydra_errors``; a sweep's checks are ``lmlab.cli.sweep_check``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lmlab.cli.heap import before_exit, long_lived
from lmlab.cli.hydra_errors import hydra_error
from lmlab.cli.interrupt import (
    JobFolder,
    clear_launch,
    disk_full_before_training,
    interrupted_before_training,
    stop_signal,
)
from lmlab.cli.launch import LAUNCH, in_multirun
from lmlab.cli.main import fail
from lmlab.config import CONF_DIR, register_configs, resolve_configs
from lmlab.data.tokenizer import check_vocab
from lmlab.errors import ConfigError, StorageError, UnwritableRecordError, disk_full
from lmlab.train.budget import check_max_steps
from lmlab.train.dirlock import unlock_sweep_dirs
from lmlab.train.runfiles import absolute, launch_rank_is_zero, listed

register_configs()

FULL_ERROR = "HYDRA_FULL_ERROR"

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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    LAUNCH.task_started = True
    if not LAUNCH.forced:
        return run(cfg)
    # The run and the processes it starts (DDP ranks) see the user's HYDRA_FULL_ERROR.
    with environ(FULL_ERROR, LAUNCH.user_full_error):
        return run(cfg)


def run(cfg: DictConfig) -> float | None:
    """One job: ``run_job``, and Ctrl-C's exit (130) or a stop signal's (143) with, before
    training, what it left."""
    LAUNCH.jobs += 1
    LAUNCH.dry_runs += bool(cfg.get("dry_run"))
    job = JobFolder.of(absolute(cfg.paths.output_dir))
    try:
        return run_job(cfg, job)
    except (KeyboardInterrupt, SystemExit) as stop:
        ctrl_c = isinstance(stop, KeyboardInterrupt)
        if not (ctrl_c or stop_signal(stop)):
            raise  # an exit of its own (a refusal's code 2)
        if launch_rank_is_zero() and not job.started():
            said = "interrupted" if ctrl_c else f"preempted ({stop})"
            print(interrupted_before_training(job, said), file=sys.stderr)
        # Ctrl-C: results.json says interrupted; SIGTERM/SIGUSR1: preempted, checkpoint saved;
        # the log says how to resume
        sys.exit(130 if ctrl_c else 143)


def run_job(cfg: DictConfig, job: JobFolder) -> float | None:
    if in_multirun():
        LAUNCH.sweep_dir = str(absolute(HydraConfig.get().sweep.dir))
    else:
        try:  # before torch and Lightning load; train() checks again
            check_vocab(resolve_configs(cfg)[1])
            check_max_steps(cfg)
        except ConfigError as err:
            refuse_before_training(err)
    with long_lived():  # heavy imports only once the config composed
        from lmlab.train.distributed import RankLostError
        from lmlab.train.guard import NonFiniteError
        from lmlab.train.run import train
        from lmlab.train.targets import check_callbacks

    if not in_multirun():  # the callbacks' classes import Lightning: checked once it is loaded,
        try:  # before train() opens the run directory (a sweep's were checked before its start)
            check_callbacks(cfg)
        except ConfigError as err:
            refuse_before_training(err)
    try:
        return train(cfg)
    except Exception as err:
        if in_multirun():
            # One failed job must not sink the sweep: results.json already says "failed". No
            # value: Optuna records the trial as failed and searches on (a NaN it would tell
            # as a failed trial's value, which optuna refuses, ending the search)
            logging.getLogger("lmlab").error("job failed: %s: %s", type(err).__name__, err)
            LAUNCH.failed += 1
            folder = str(absolute(HydraConfig.get().runtime.output_dir))
            if isinstance(err, ConfigError) and not job.started():  # nothing trained
                LAUNCH.refused.append(f"{folder}: {err}")
            else:
                LAUNCH.failed_dirs.append(folder)
            return None
        if isinstance(err, ConfigError):
            if not job.started():  # refused by train()'s checks: as by the ones above
                job.restore_record()
                refuse_before_training(err)
            fail(err)
        if isinstance(err, NonFiniteError | RankLostError | StorageError | UnwritableRecordError):
            fail(err, code=1)  # said in results.json, or in train.log where that is unwritable
        raise


def refuse_before_training(err: ConfigError) -> NoReturn:
    """A single run refused (a ``ConfigError``) before training started, by the checks here or
    by ``train()``'s (machine, data, budget, resume), whose record of the refusal the caller
    has put back as it was: the folder this call made (Hydra's ``.hydra/``, ``train.log``)
    removed again, as a refusal while Hydra composes leaves none, so that ``compare`` and the
    next command find no run there; then the one line. A folder that held something kept it:
    Hydra's writes were held there."""
    if LAUNCH.made:
        clear_launch()
    fail(err)


def no_trial_completed(err: BaseException) -> bool:
    """Optuna's sweeper asking for the best trial of a search none of whose trials gave a
    value (each failed, or was a dry run)."""
    return isinstance(err, ValueError) and "No trials are completed yet" in str(err)


def log_sweep_summary() -> None:
    """The last line of a sweep whose jobs ran here (not every one failed): how many
    completed, and the folders of those that failed (``failures``), as a warning. A dry run's
    jobs are planned, not completed. The exit status stays 0: one failed job does not sink a
    sweep (``compare`` ranks it last); a sweep whose every job failed exits 1 (``main``)."""
    log = logging.getLogger("lmlab")
    if LAUNCH.dry_runs == LAUNCH.jobs:
        log.info("dry run: %d jobs planned in %s", LAUNCH.jobs, LAUNCH.sweep_dir)
        return
    completed = f"sweep: {LAUNCH.jobs - LAUNCH.failed} of {LAUNCH.jobs} jobs completed"
    if not LAUNCH.failed:
        log.info("%s in %s", completed, LAUNCH.sweep_dir)
        return
    log.warning("%s, %s", completed, failures())


def failures() -> str:
    """The sweep's jobs that failed while training (``N failed (<folders>): each failed job's
    results.json says why``) and apart from them those that ``train()``'s checks refused
    before training (``N refused before training, nothing trained (<folder>: <why>)``): a
    job of a resumed sweep refused there (an Optuna trial that drew other values than its
    folder's run) leaves that run's record as it was, which says nothing of the refusal."""
    said = []
    if LAUNCH.failed_dirs:
        said.append(
            f"{len(LAUNCH.failed_dirs)} failed ({listed(LAUNCH.failed_dirs)}): each failed "
            "job's results.json says why"
        )
    if LAUNCH.refused:
        shown = "; ".join(LAUNCH.refused[:3]) + ("; ..." if len(LAUNCH.refused) > 3 else "")
        said.append(f"{len(LAUNCH.refused)} refused before training, nothing trained ({shown})")
    return "; ".join(said) or "each one's results.json says why"


def main(argv: list[str]) -> int:
    """Hydra reads the command line itself: ``argv`` becomes ``sys.argv[1:]``. With
    HYDRA_FULL_ERROR=1 Hydra raises its errors instead of printing them, so it is set while
    Hydra runs and its errors become one line here (unless the user set it: a traceback)."""
    sys.argv = [sys.argv[0], *argv]
    LAUNCH.forced, LAUNCH.user_full_error = True, os.environ.get(FULL_ERROR)
    LAUNCH.task_started, LAUNCH.jobs, LAUNCH.dry_runs, LAUNCH.failed = False, 0, 0, 0
    LAUNCH.failed_dirs, LAUNCH.refused, LAUNCH.sweep_dir = [], [], None
    LAUNCH.folder, LAUNCH.made, LAUNCH.existed, LAUNCH.above = None, None, False, None
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
        if isinstance(err, BrokenPipeError):  # `lmlab train --help | head`: ``command``'s
            raise
        if no_trial_completed(err) and LAUNCH.user_full_error != "1":
            if LAUNCH.dry_runs == LAUNCH.jobs:  # planned every trial, as asked
                logging.getLogger("lmlab").info("dry run: %d trials planned", LAUNCH.jobs)
                return 0
            fail(RuntimeError(f"no trial of the search completed: {failures()}"), 1)
        if (full := disk_full(err)) is not None and LAUNCH.user_full_error != "1":
            fail(StorageError(disk_full_before_training(full)), 1)  # train() records its own
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
            clear_launch()
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
