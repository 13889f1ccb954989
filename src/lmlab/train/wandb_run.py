"""The W&B run of a run directory (online or offline as ``wandb_mode`` decides): its id, name
and project recorded in the run directory so a resume continues the same W&B run, started
with an offline fallback, and finished with the run's status and exit code."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from lmlab.config import redact
from lmlab.errors import ConfigError, first_line, spelled
from lmlab.files import RESULTS, read_record, write_text
from lmlab.train.wandb_mode import SYNC_HINT

log = logging.getLogger(__name__)


def in_wandb_sweep() -> bool:
    """Whether a W&B sweep agent (``wandb agent``) started this run: W&B then takes the run's
    id and project from the agent, whatever ``wandb.init`` is given."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


# What W&B takes as a run id (it refuses ``:;,#?/'`` and an empty one).
WANDB_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def recorded_wandb_id(out_dir: Path) -> str | None:
    """The W&B id the run directory records: ``wandb_id``, or where that file was lost,
    ``results.json``'s ``wandb_id`` (the same run: a new id would split its history); None
    for a new run. A record W&B would refuse is a ConfigError, before any work."""
    path = out_dir / "wandb_id"
    if path.exists():
        run_id = path.read_text(errors="replace").strip()
        if not WANDB_ID.fullmatch(run_id):
            raise ConfigError(
                f"{path} holds {run_id[:40]!r}, not a W&B run id (letters, digits, _ . -): "
                "restore it (results.json's wandb_id is the run's), or delete it to start "
                "another W&B run"
            )
        return run_id
    earlier = read_record(out_dir / RESULTS).get("wandb_id")
    if isinstance(earlier, str) and WANDB_ID.fullmatch(earlier):
        log.warning("%s was missing: the run's W&B id %s from results.json", path, earlier)
        return earlier
    return None


def wandb_run_id(out_dir: Path) -> str:
    """The run directory's W&B id, created once and kept in ``wandb_id``: a resumed run
    reopens the same W&B run, so the dashboard shows one continuous curve. Under a W&B sweep
    agent it is the agent's (``WANDB_RUN_ID``), the id W&B gives the run. Global rank 0
    keeps it: the W&B run is rank 0's (the other ranks' loggers are stand-ins), and ranks a
    launcher starts together (torchrun, srun) would each write an id of their own, the last
    one kept."""
    path = out_dir / "wandb_id"
    run_id = recorded_wandb_id(out_dir)
    if run_id is None:
        agent = os.environ.get("WANDB_RUN_ID") if in_wandb_sweep() else None
        run_id = agent or secrets.token_hex(4)  # short, lowercase alphanumeric
    if not path.exists() and rank_zero_only.rank == 0:
        write_text(path, run_id)  # never a half-written id
    return run_id


def recorded_wandb_name(out_dir: Path) -> str | None:
    """The name the run directory's W&B run was given (``wandb_name``, written at its
    start), or where a run recorded a W&B id before names were recorded, results.json's
    ``run_name``; None for a new W&B run. A resume keeps it: the overrides name a run, and
    an extension's new ``trainer.max_steps`` would rename it."""
    path = out_dir / "wandb_name"
    if path.is_file() and (name := path.read_text(errors="replace").strip()):
        return name
    if not (out_dir / "wandb_id").is_file():
        return None
    earlier = read_record(out_dir / RESULTS).get("run_name")
    return earlier if isinstance(earlier, str) and earlier else None


def record_wandb_name(out_dir: Path, name: str) -> None:
    """Keep ``name`` as the run directory's W&B run name (``wandb_name``), written whole, by
    global rank 0 (as ``wandb_run_id``)."""
    path = out_dir / "wandb_name"
    if rank_zero_only.rank != 0:
        return
    if path.is_file() and path.read_text(errors="replace").strip() == name:
        return
    write_text(path, name)


def wandb_place(out_dir: Path, project: str | None, entity: str | None) -> dict[str, Any]:
    """The ``project`` and ``entity`` that reopen the run directory's W&B run: where it was
    created (``wandb_project``, written at its first start), whatever the config says now, so a
    resume or a later ``lmlab evaluate --wandb`` continues that run rather than starting one of
    the same id elsewhere. A W&B sweep agent's run lives in the agent's project, which the run's
    config does not name. Without a record: the config's; a record without an entity (an
    offline run's) keeps the config's entity."""
    path = out_dir / "wandb_project"
    if path.is_file():
        recorded = path.read_text(encoding="utf-8").strip()
        if recorded:
            entity_, _, project_ = recorded.rpartition("/")
            # offline, W&B knew no entity: the config's (None: the account's default)
            return {"project": project_, "entity": entity_ or entity}
    return {"project": project, "entity": entity}


def record_wandb_place(out_dir: Path, experiment: Any) -> None:
    """Write where a live W&B run is (``entity/project``, or the project alone offline, where
    W&B knows no entity) into the run directory's ``wandb_project``, once."""
    path = out_dir / "wandb_project"
    project = getattr(experiment, "project", None)
    if path.exists() or not isinstance(project, str) or not project:
        return  # recorded already, or a stand-in experiment (a rank other than 0)
    entity = getattr(experiment, "entity", None)
    write_text(path, f"{entity}/{project}" if isinstance(entity, str) and entity else project)


# The WandbLogger calls a training run makes through Lightning and lmlab (its hyperparameters,
# each logging step's metrics, the parameter table, checkpoints with log_model, the end)
GUARDED_CALLS = (
    "log_hyperparams", "log_graph", "log_metrics", "log_table", "log_text", "log_image",
    "after_save_checkpoint", "save", "finalize",
)  # fmt: skip


def guard_wandb(logger: Logger) -> Logger:
    """``logger`` (a ``WandbLogger``) whose calls during training never fail the run: the
    first that raises (W&B's service process gone mid-run: ``ConnectionResetError``; its
    folder full) is one warning, and W&B logs nothing more in this run, whose history goes on
    in ``csv/metrics.csv``; training and its checkpoints go on. It failed the run with a
    traceback mid-training (a resume continued it, its W&B history cut there)."""
    lost: list[str] = []
    then = "W&B logs nothing more in this run, whose history goes on in csv/metrics.csv"

    def guarded(name: str) -> None:
        method = getattr(logger, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            if lost:
                return None
            with wandb_may_fail(name, then=then):
                return method(*args, **kwargs)
            lost.append(name)  # reached only where the call raised (its one warning said)
            return None

        setattr(logger, name, call)

    for name in GUARDED_CALLS:
        if callable(getattr(logger, name, None)):
            guarded(name)
    return logger


def start_wandb(lcfg: DictConfig, args: dict[str, Any]) -> Logger:
    """``lcfg``'s ``WandbLogger`` with ``args``, its W&B run started (rank 0). Offline, W&B is
    told so in ``wandb.init`` (``mode``; ``offline_logger``). An online run that W&B fails to
    start (a server that does not answer in time, refuses the key, ...) goes on offline, with
    one warning and the ``wandb sync`` that uploads it later, rather than ending the run in a
    traceback. W&B failing later in training is one warning (``guard_wandb``)."""
    if args["offline"]:
        return guard_wandb(offline_logger(lcfg, args))
    logger = instantiate(lcfg, **args)
    try:
        logger.experiment  # noqa: B018 (wandb.init, on rank 0)
        return guard_wandb(logger)
    except Exception as err:  # W&B's CommError, AuthenticationError, UsageError, ...
        going_offline(err, lcfg.get("save_dir"))
    logger = offline_logger(lcfg, args | {"offline": True})
    logger.experiment  # noqa: B018 (offline: raises only as a run without a key would)
    return guard_wandb(logger)


def offline_logger(lcfg: DictConfig, args: dict[str, Any]) -> Logger:
    """``lcfg``'s ``WandbLogger`` offline, told so in ``wandb.init``'s ``mode`` alone.
    Lightning's offline also sets ``WANDB_MODE=dryrun`` in this process's environment as the
    W&B run starts, which outlived the run, and W&B's session read it (once a process): a
    sweep's next job or a notebook's next run that asked for online logged offline, without
    the warning an offline fallback says. Lightning reads its offline flag for that and for
    its ``log_model`` refusal, made as the logger is built: past that, it is turned off."""
    if lcfg.get("log_model"):  # Lightning refuses it offline (``check_wandb``: known offline)
        log.warning(
            "W&B: offline, no checkpoint is uploaded (logger.wandb.log_model=%s): they stay "
            "in %s/checkpoints",
            spelled(lcfg.log_model),
            lcfg.get("save_dir") or "<run dir>",
        )
        args = args | {"log_model": False}
    logger = instantiate(lcfg, **args, mode="offline")
    if isinstance(logger, WandbLogger):
        logger._offline = False  # W&B is told by ``mode``; the environment is the user's
    return logger


def going_offline(err: Exception, save_dir: str | Path | None) -> None:
    """An online start W&B refused (``err``): its service reset, since it holds the failed
    run's id, and one warning, with the ``wandb sync`` that uploads the offline run later."""
    import wandb

    wandb.teardown()
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    log.warning(
        "W&B: the online run did not start (%s%s): logging offline; upload later with: %s",
        type(err).__name__,
        f": {lines[0]}" if lines else "",
        SYNC_HINT.format(save_dir or "<run dir>"),
    )


def init_wandb(offline: bool, save_dir: str | Path, **kwargs: Any) -> Any:
    """``wandb.init(**kwargs)`` online or offline, for a command that logs into a run's W&B
    run outside training (``lmlab evaluate``): an online start W&B refuses goes on offline,
    as a training run's does (``start_wandb``)."""
    import wandb

    if not offline:
        try:
            return wandb.init(**kwargs, mode="online")
        except Exception as err:  # noqa: BLE001 (W&B's CommError, AuthenticationError, ...)
            going_offline(err, save_dir)
    return wandb.init(**kwargs, mode="offline")


# The W&B exit code of a run by its results.json status: a stop exits as the process does
# (``lmlab.cli.train``: 143 preempted, 130 Ctrl-C); any other end than ``completed`` is 1.
# W&B marks a run that exits non-zero as failed.
WANDB_EXIT_CODES = {"completed": 0, "preempted": 143, "interrupted": 130}


# What results.json knows of a run that did not complete too: its size, set before it trained,
# and (a stop with a checkpoint) what it trained; the summary holds them as a completed run's
# does, so a W&B table filtered or grouped by size keeps the run.
KNOWN_AT_ANY_END = ("params", "active_params", "non_embedding_params", "tokens", "flops")


@contextlib.contextmanager
def wandb_may_fail(
    what: str, teardown: bool = False, then: str = "the run's record is results.json"
) -> Iterator[None]:
    """W&B's part once a run has ended (its summary, finishing its W&B run): a failure there
    (W&B's service process gone: ``ConnectionResetError``) is one warning, never the run's.
    It failed a completed run with a traceback and exit code 1, its results.json saying
    completed; the run's record is results.json, and its history ``csv/metrics.csv``.
    ``teardown``: W&B's broken service and run are dropped, so a sweep's next job starts its
    own (Lightning's logger reused the run still in ``wandb.run``, and the job failed) and the
    process exits without W&B's traceback. ``then``: what the warning says happens next
    (``guard_wandb``'s: W&B logs nothing more in the run)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 (whatever W&B raises)
        log.warning("W&B: %s failed (%s: %s); %s", what, type(err).__name__, first_line(err), then)
        if teardown:
            import wandb

            with contextlib.suppress(Exception):
                wandb.teardown()
            wandb.run = None


def finish_wandb(results: dict[str, Any]) -> None:
    """Close this process's W&B run, if one is open (each job of a sweep is its own run, and
    offline files are flushed), the way the run ended: the summary's ``status`` is
    results.json's (completed, failed, preempted, interrupted) and ``error`` the first line of
    its error (null once completed: a resumed run's earlier failure is over), and the exit
    code is 0 for a completed run only (``WANDB_EXIT_CODES``). A run that did not complete
    also gets the sizes results.json holds (``KNOWN_AT_ANY_END``). W&B failing here is a
    warning (``wandb_may_fail``)."""
    wandb = sys.modules.get("wandb")  # never imported here for a run that logs no W&B
    run = getattr(wandb, "run", None)
    if run is None:
        return
    status = results.get("status")
    error = results.get("error")
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    known = {k: results[k] for k in KNOWN_AT_ANY_END if results.get(k) is not None}
    with wandb_may_fail("finishing the run", teardown=True):
        summary = {**known, "status": status, "error": lines[0] if lines else None}
        run.summary.update(redact(summary))
        run.finish(exit_code=WANDB_EXIT_CODES.get(str(status), 1))
