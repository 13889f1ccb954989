"""``train(cfg)``: the whole run, importable (tests, sweeps) behind the thin ``src/train.py``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lmlab.config import (
    PRETRAINING,
    RUNTIME_FIELDS,
    Compile,
    DataConfig,
    ModelConfig,
    TaskConfig,
    TaskKind,
    TaskSpec,
    compile_mode,
    flatten,
    model_config_dict,
)
from lmlab.errors import ConfigError
from lmlab.infer.checkpoint import newest_checkpoint, read_checkpoint
from lmlab.model import param_breakdown
from lmlab.train.callbacks import EvalTasks, Sample, Throughput
from lmlab.train.checkpointing import Preemption
from lmlab.train.distributed import JobScope, check_strategy_loads, install_job_command
from lmlab.train.estimate import plan_from_cfg, plan_table, planning_model_config
from lmlab.train.finetune import DATAMODULES, TASK_RESULTS, fine_tuning_results
from lmlab.train.hardware import set_matmul_precision
from lmlab.train.init_from import InitFrom, load_weights, model_record
from lmlab.train.loggers import (
    build_loggers,
    log_param_table,
    log_step,
    recorded_wandb_id,
    redact,
    run_name,
    wandb_run_id,
)
from lmlab.train.memory import check_state_fits, memory_needs
from lmlab.train.plan import (
    PLAN_FILE,
    RunPlan,
    check_resumable,
    make_plan,
    read_plan,
    write_json,
)
from lmlab.train.preflight import check_run, warn_unused
from lmlab.train.rundir import (
    RUN_CONFIG,
    RUN_FILES,
    RunDir,
    absolute,
    checkpoints_in,
    holds_run,
    launch_rank_is_zero,
)
from lmlab.train.task import LMTask, optimizer_from

log = logging.getLogger(__name__)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def route_lightning_logs() -> None:
    """Lightning's messages go through Hydra's handlers (console and train.log) once, not
    twice, and without its product tips."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        for handler in list(lightning_log.handlers):
            lightning_log.removeHandler(handler)
        lightning_log.propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropTips())


# What a resumed run must share with the run it continues.
RESUME_KEYS = ("model", "data", "optim", "scheduler", "seed", "init_from")


# A saved config without a field (one added since it was saved: the MoE block, RoPE scaling)
# had its default, which keeps what older models computed.
ADDED_MODEL_FIELDS = flatten(model_config_dict(ModelConfig()), "model")


# A null that stands for another field's value: set to that value, it is the same run.
NULL_MEANS = {"data.seq_len": "model.max_seq_len", "data.val_batch_size": "data.batch_size"}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Fields that differ between ``a`` (saved) and ``b`` (now), RUNTIME_FIELDS aside."""
    flat_a, flat_b = flatten(a, prefix), flatten(b, prefix)
    if any(k.startswith("model.") for k in flat_a):
        flat_a = {**ADDED_MODEL_FIELDS, **flat_a}
    for flat in (flat_a, flat_b):
        for key, source in NULL_MEANS.items():
            if key in flat and flat[key] is None:
                flat[key] = flat.get(source)
    for key in [k for k in {*flat_a, *flat_b} if k.split(".")[-1] in RUNTIME_FIELDS]:
        flat_a.pop(key, None), flat_b.pop(key, None)  # how the model runs, not what it is
    return [
        f"{k}: {flat_a.get(k)!r} (saved) vs {flat_b.get(k)!r} (now)"
        for k in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(k) != flat_b.get(k)
    ]


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (saved as ``run_config.yaml``):
    the ``task`` too when it fine-tunes (a pre-training run's identity stays as it was)."""
    fine_tuning = TaskKind(cfg.get("task", {}).get("kind", TaskKind.lm)) != TaskKind.lm
    keys = (*RESUME_KEYS, "task") if fine_tuning else RESUME_KEYS
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True)
        if OmegaConf.is_config(cfg[k])
        else cfg[k]
        for k in keys
    }


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to continue from (``ckpt_path=`` or ``resume=true``), after checking the
    run directory: a resumed run must have the same model, data, optimizer and schedule, and a
    fresh run must not overwrite another run's checkpoints. Reads, never writes."""
    resume = cfg.get("resume")
    if resume not in (True, False, "auto", None):
        raise ConfigError(f"resume={resume!r}: allowed true, false, auto")
    found = checkpoints_in(out_dir)
    if resume == "auto":  # a requeued SLURM job: continue if there is anything to continue
        resume = bool(found)
    if resume:
        if not found:
            restart = (
                "; the run there stopped before its first checkpoint: resume=auto starts it "
                "again from step 0 with the same config"
                if holds_run(out_dir) and not finished_run(out_dir)
                else ""
            )
            raise ConfigError(
                f"resume=true but {out_dir / 'checkpoints' / 'last.ckpt'} does not exist "
                f"(nothing to resume in hydra.run.dir={out_dir}){restart}"
            )
        check_same_run(cfg, out_dir, "the checkpoints were trained with")
        read_plan(out_dir)  # an unreadable plan.json: refused before the data is prepared
        return check_strategy_loads(cfg.trainer, newest_checkpoint(found))
    if found:
        raise ConfigError(
            f"hydra.run.dir={out_dir} already holds checkpoints of an earlier run: continue "
            f"it with {resume_command(out_dir)}, or choose another directory"
        )
    if cfg.get("resume") == "auto":
        # no checkpoint: an earlier attempt of this config (killed before its first save,
        # or completed without one) starts again or stays as it is; another config's run
        # is not overwritten. Without a run_config.yaml the earlier one never trained.
        if (out_dir / RUN_CONFIG).exists():
            check_same_run(cfg, out_dir, "the run there was started with")
    elif holds_run(out_dir) and launch_rank_is_zero():  # other ranks start once it wrote
        written = ", ".join(n for n in RUN_FILES if (out_dir / n).exists())
        restart = (
            ""
            if finished_run(out_dir)
            else "; it stopped before its first checkpoint: resume=auto starts it again from "
            "step 0 with the same config"
        )
        raise ConfigError(
            f"hydra.run.dir={out_dir} already holds an earlier run ({written}; no checkpoint "
            f"to resume){restart}: choose another directory, or move that run away first"
        )
    return Path(cfg.ckpt_path) if cfg.get("ckpt_path") else None


def check_same_run(cfg: DictConfig, out_dir: Path, what: str) -> None:
    """The run in ``out_dir`` has the model, data, optimizer and schedule of ``cfg``: its
    ``run_config.yaml`` (``what``: whose config that is) names no other value."""
    saved_path = out_dir / RUN_CONFIG
    if not saved_path.is_file():
        raise ConfigError(
            f"cannot resume {out_dir}: its {RUN_CONFIG} (the model, data, optimizer and "
            f"schedule {what}) is missing, so this config cannot be checked against it: "
            "restore it from a copy of the run, or start a new run in another directory "
            "(from the weights: init_from=<checkpoint>)"
        )
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    except (OSError, ValueError, yaml.YAMLError) as err:
        saved = f"{type(err).__name__}: {err}".splitlines()[0]
    if not isinstance(saved, dict):
        raise ConfigError(
            f"cannot resume {out_dir}: its {RUN_CONFIG} cannot be read as a config "
            f"({saved if isinstance(saved, str) else type(saved).__name__}): restore it from a "
            "copy of the run, or start a new run in another directory"
        )
    diffs = _differences(saved, run_identity(cfg))
    if diffs:
        raise ConfigError(
            f"cannot resume {out_dir}: it holds another config; differing "
            f"fields: {'; '.join(diffs[:8])}"
        )


def read_results(out_dir: Path) -> dict[str, Any] | None:
    """``results.json`` of the run in ``out_dir``; None when there is none, or unreadable."""
    try:
        results = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def kept_record(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a process that stops or fails keeps, under ``previous``, of the record it found:
    the last one with results (a completed run's metrics, a stop's step), so extending a
    completed run and failing loses none of them."""
    if results is None:
        return None
    if results.get("status") in ("failed", "running"):
        return results.get("previous")
    return {k: v for k, v in results.items() if k != "previous"}


def finished_run(out_dir: Path) -> dict[str, Any] | None:
    """``results.json`` of a run that completed in ``out_dir``, else None."""
    results = read_results(out_dir)
    return results if results is not None and results.get("status") == "completed" else None


def already_done(
    out_dir: Path, plan: RunPlan, ckpt: dict | None, ckpt_path: Path | None
) -> dict[str, Any] | None:
    """A resumed run (``resume=true`` or ``auto``) whose planned steps are all trained: the
    completed run's results, which it leaves as they are; None when there is training left.
    A checkpoint past the plan's last step (``trainer.max_steps`` lowered), or a completed
    run with no checkpoint and more steps planned, is refused: neither can be continued."""
    step = ckpt["global_step"] if ckpt is not None else None
    if step is not None and step > plan.steps:
        raise ConfigError(
            f"cannot resume {out_dir}: {ckpt_path} is at step {step}, past this run's "
            f"{plan.steps} planned steps (trainer.max_steps or the budget was lowered): keep "
            f"them at {step} or more"
        )
    finished = finished_run(out_dir)
    if finished is None:
        return None
    if step is None and finished.get("global_step") != plan.steps:
        raise ConfigError(
            f"cannot resume {out_dir}: the run completed {finished.get('global_step')} steps "
            f"and has no checkpoint to continue to {plan.steps}; choose another directory"
        )
    if step in (None, plan.steps) and finished.get("global_step") == plan.steps:
        return finished
    return None


def check_continues(cfg: DictConfig, plan: RunPlan, out_dir: Path) -> None:
    """What a resumed run checks of the run it continues in ``out_dir`` (``resume_checkpoint``:
    its checkpoint and config; ``check_resumable``: its plan's task, global batch and
    sequence length), for a resumed sweep's job before any job of the sweep starts."""
    resume_checkpoint(cfg, out_dir)
    check_resumable(read_plan(out_dir), plan, out_dir)


def check_same_tokenizer(ckpt: dict, path: Path, tokenizer: Any) -> None:
    """The data's tokenizer now is the checkpoint's: a changed corpus trains another one,
    whose ids would not mean what the weights learnt."""
    saved = ckpt.get("tokenizer")
    if saved is None or tokenizer is None or json.loads(saved) == json.loads(tokenizer.to_str()):
        return
    raise ConfigError(
        f"checkpoint {path} was trained with another tokenizer than the one this run's data "
        "gives now (the corpus, data.tokenizer or data.vocab_size changed since): resume with "
        "the data it was trained on, or start a new run in another directory"
    )


def check_checkpoint_model(
    ckpt: dict, path: Path, model_cfg: ModelConfig, task: TaskSpec = PRETRAINING
) -> None:
    """A checkpoint from another architecture, knob setting or task (another head, other
    labels) is refused, naming the fields."""
    diffs = _differences(ckpt.get("model_config", {}), model_config_dict(model_cfg), "model")
    diffs += _differences(ckpt.get("task", PRETRAINING.record()), task.record(), "task")
    if diffs:
        raise ConfigError(
            f"checkpoint {path} was trained with another model; differing fields: "
            + "; ".join(diffs)
        )


def param_table(counts: dict[str, int]) -> Table:
    table = Table(title="parameters", show_header=True)
    table.add_column("kind")
    table.add_column("count", justify="right")
    for kind, n in counts.items():
        if n or kind in ("total", "non_embedding"):
            table.add_row(kind, f"{n:,}")
    return table


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    write_json(out_dir / "results.json", redact(results))


def train(cfg: DictConfig) -> float | None:
    """Train one run; write ``results.json`` (completed, failed, preempted or interrupted);
    return the final validation loss. ``cfg`` is read, never written: what the run derives
    from it is the frozen plan (``lmlab.train.plan``), saved as ``plan.json``. A directory
    that holds an earlier run is written to only once this run starts training
    (``lmlab.train.rundir``): a refused or failed start leaves it as it was."""
    start = time.time()
    route_lightning_logs()
    out_dir = Path(cfg.paths.output_dir)
    run = RunDir(out_dir)  # a live run there: refused before anything is written
    results: dict[str, Any] = {"status": "running", "run_name": run_name(cfg), "seed": cfg.seed}
    earlier = kept_record(read_results(out_dir))  # what a stop of this process must not lose
    install_job_command()
    scope = JobScope()
    try:
        checked = check_run(cfg)  # bad input: refused before any work
        warn_unused(checked.model_cfg)
        log.info(checked.batch.describe())
        model_cfg, data_cfg, seq_len = checked.model_cfg, checked.data_cfg, checked.seq_len
        if cfg.get("dry_run"):  # plans a GPU run on any machine
            return dry_run(cfg, model_cfg, data_cfg, seq_len, run)
        if "wandb" in (cfg.get("logger") or {}):
            recorded_wandb_id(out_dir)  # a damaged record: named before any work
        ckpt_path = resume_checkpoint(cfg, out_dir)
        return _fit(
            cfg,
            model_cfg,
            data_cfg,
            seq_len,
            run,
            results,
            start,
            ckpt_path,
            scope,
            checked.callbacks,
            checked.init,
            checked.task_cfg,
        )
    except BaseException as err:
        results.update(how_it_stopped(err, scope.trainer), wall_seconds=time.time() - start)
        if earlier is not None:
            results["previous"] = earlier  # a completed run extended, then stopped
        if run.may_record:
            write_results(out_dir, results)
        status = results["status"]
        if status != "failed" and checkpoints_in(out_dir):
            log.warning("%s: resume with: %s", status, resume_command(out_dir))
        if status == "interrupted" and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from err  # Ctrl-C, whichever way Lightning reported it
        raise
    finally:
        finish_wandb()
        scope.close()  # this job's rank processes have exited before the next job starts
        run.close()


def resume_command(out_dir: Path) -> str:
    """How to continue a run that stopped: in a sweep, the sweep (a stop ends it: this job
    continues and the jobs after it run), else the run."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = absolute(HydraConfig.get().sweep.dir)
        return f"python src/train.py -m <same overrides> resume=auto hydra.sweep.dir={sweep_dir}"
    return f"python src/train.py <same overrides> resume=true hydra.run.dir={out_dir}"


STOP_SIGNALS = {"preempted": "SIGTERM/SIGUSR1", "interrupted": "Ctrl-C (SIGINT)"}


def how_it_stopped(err: BaseException, trainer: L.Trainer | None) -> dict[str, Any]:
    """results.json's ``status`` and ``error`` for a run that did not complete: ``preempted``
    (SIGTERM, SIGUSR1), ``interrupted`` (Ctrl-C, also when a second one made Lightning call
    ``sys.exit(1)``) or ``failed``; with the step of the checkpoint saved at a stop."""
    preemption = next(
        (c for c in getattr(trainer, "callbacks", []) if isinstance(c, Preemption)), None
    )
    ctrl_c = isinstance(err, KeyboardInterrupt) or bool(preemption and preemption.interrupted)
    if ctrl_c and isinstance(err, KeyboardInterrupt | SystemExit | SIGTERMException):
        status = "interrupted"
    elif isinstance(err, SIGTERMException):
        status = "preempted"
    else:
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    saved = preemption.saved if preemption else None
    if saved is None:
        return {
            "status": status,
            "error": f"stopped by {STOP_SIGNALS[status]}; earlier checkpoints are kept",
        }
    return {
        "status": status,
        "error": f"stopped by {STOP_SIGNALS[status]} after saving {saved}",
        "global_step": trainer.global_step,
    }


def dry_run(
    cfg: DictConfig, model_cfg: ModelConfig, data_cfg: DataConfig, seq_len: int, run: RunDir
) -> float | None:
    """Print the plan (parameters, budget, FLOPs, wall time), write plan.json, train nothing.
    Into a directory that holds an earlier run, nothing is written."""
    plan = plan_from_cfg(cfg, model_cfg, data_cfg, seq_len)
    planned = planning_model_config(model_cfg, data_cfg)
    run_plan = make_plan(cfg, planned, data_cfg, seq_len)
    plan["memory"] = memory_needs(run_plan, planned, cfg.trainer, cfg.optim).as_dict()
    Console().print(plan_table(plan))
    if run.earlier:
        log.info("plan.json not written: %s holds an earlier run, left as it was", run.path)
    else:
        log.info("plan: %s", write_json(run.path / PLAN_FILE, plan))
    return None  # no loss: a search (Optuna) records the trial as failed, not as a value


SUMMARY_KEYS = (
    "best_val_loss",
    "val_loss",
    "val_bits_per_byte",
    "tokens_per_second",
    "mfu",
    "params",
    "active_params",
    "non_embedding_params",
    "tokens",
    "flops",
    "status",
)


def summarize_wandb(loggers: list, results: dict[str, Any]) -> None:
    """The run's headline numbers in the W&B summary, for the dashboard's tables and plots."""
    kind = TaskKind(results.get("task", {}).get("kind", TaskKind.lm))
    keys = (*SUMMARY_KEYS, *TASK_RESULTS[kind])
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update({k: results.get(k) for k in keys})


def finish_wandb() -> None:
    """Close the W&B run, so each job of a sweep is its own run and offline files are flushed."""
    import sys

    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """Lightning's Trainer from ``cfg.trainer`` and ``kwargs``, its arguments plain lists and
    dicts (``_convert_="all"``): Lightning 2.4 takes a ListConfig of plugins for one plugin,
    and refused lmlab's checkpoint plugin."""
    return instantiate(cfg.trainer, _convert_="all", **kwargs)


@contextmanager
def logged_at(trainer: L.Trainer, step: int) -> Iterator[None]:
    """A validation after ``fit`` logs its metrics at ``step``: Lightning would log them at
    its count of batches that stepped, which by then includes the last batch (N, not the
    N - 1 where the validation during training, and the evals, put the weights after N
    steps), and which a run resumed from its final checkpoint restores as N - 1. The count
    is Lightning's own (private) attribute, put back afterwards."""
    loop = trainer.fit_loop.epoch_loop
    counted = loop._batches_that_stepped
    loop._batches_that_stepped = step
    try:
        yield
    finally:
        loop._batches_that_stepped = counted


def final_val_limit(final: int | float | None, during: int | float) -> int | float | None:
    """The ``limit_val_batches`` of the validation after the last step, when it differs from
    the one during training (``final_val_batches``); None: the same rows. Compared by type
    too, as Lightning reads them: 1 is one batch, 1.0 the whole split."""
    if final is None or (type(final), final) == (type(during), during):
        return None
    return final


def _fit(
    cfg: DictConfig,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    seq_len: int,
    run: RunDir,
    results: dict[str, Any],
    start: float,
    ckpt_path: Path | None,
    scope: JobScope,
    callbacks: list[L.Callback],
    init: InitFrom | None = None,
    task_cfg: TaskConfig | None = None,
) -> float:
    out_dir = run.path
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task_cfg = task_cfg or TaskConfig()  # task=lm
    dm = DATAMODULES[task_cfg.kind](
        data_cfg, task_cfg, model_cfg.family, seq_len, cfg.seed, init.tokenizer if init else None
    )
    dm.prepare_data()
    dm.setup()
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=dm.vocab_size)
    elif model_cfg.vocab_size < dm.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is below the tokenizer's {dm.vocab_size} "
            "tokens (leave it null to follow the tokenizer)"
        )
    spec = getattr(dm, "spec", PRETRAINING)  # fine-tuning: its labels, once the data is read
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        check_checkpoint_model(ckpt, ckpt_path, model_cfg, spec)
        check_same_tokenizer(ckpt, ckpt_path, getattr(dm, "tokenizer", None))
    plan = make_plan(cfg, model_cfg, data_cfg, seq_len, spec)
    check_state_fits(plan, model_cfg, cfg.trainer, cfg.optim)  # before the model is built
    if cfg.get("resume"):
        saved_batch = (ckpt.get("run_state") or {}).get("batch") if ckpt else None
        if (out_dir / PLAN_FILE).exists() or not saved_batch:
            check_resumable(read_plan(out_dir), plan, out_dir)
        else:  # plan.json deleted: the checkpoint's record of the global batch
            check_resumable({"batch": saved_batch}, plan, out_dir, f"checkpoint {ckpt_path}")
        done = already_done(out_dir, plan, ckpt, ckpt_path)
        if done is not None:
            log.info(
                "%s completed its %d planned steps: nothing to train, its files are left as "
                "they were (raise trainer.max_steps to train further)",
                out_dir,
                plan.steps,
            )
            return done.get("val_loss")
    # a completed run extended (a larger trainer.max_steps) resumes from its last step's
    # checkpoint, written before its final validation: results.json holds that one
    extended = finished_run(out_dir) if cfg.get("resume") and ckpt is not None else None
    if extended is not None and extended.get("global_step") != ckpt["global_step"]:
        extended = None
    # stopped after its last checkpoint (in the final validation, evals, sample): only the
    # run's end is left, which this process does again
    finishing = ckpt is not None and ckpt["global_step"] == plan.steps
    run.open(cfg)  # every check passed: from here on this run writes into the directory
    if rank_zero_only.rank == 0:
        OmegaConf.save(OmegaConf.create(run_identity(cfg)), out_dir / RUN_CONFIG)
        write_json(out_dir / PLAN_FILE, plan.as_dict() | (model_record(init) if init else {}))
    resume_step = ckpt["global_step"] if ckpt else 0
    evals = next((c for c in callbacks if isinstance(c, EvalTasks)), None)
    loggers = build_loggers(
        cfg,
        out_dir,
        resume_step=resume_step,
        revalidates=finishing,
        reevaluates=evals is not None and evals.due_at(resume_step, plan.steps),
    )
    trainer = build_trainer(
        cfg, callbacks=callbacks, logger=loggers or False, **plan.trainer_args()
    )
    scope.trainer = trainer
    set_matmul_precision(cfg.matmul_precision, trainer.strategy.root_device)
    dm.num_train_samples = plan.train_samples
    # The data position is one integer: the resumed run draws exactly the rows that follow.
    dm.start_sample = plan.start_sample(ckpt["global_step"]) if ckpt else 0
    if compile_mode(cfg.compile) != Compile.none:
        # This run compiles afresh. A multirun's jobs share one process: compiling the same
        # code (LMTask.objective, Block.forward) for another job's model counts as a
        # recompile, and past dynamo's limit (8) the later jobs would run eagerly, unsaid.
        torch._dynamo.reset()
    task = LMTask(
        model_cfg,
        optimizer_from(cfg.optim),
        instantiate(cfg.scheduler),
        compile=cfg.compile,
        bytes_per_token=dm.val_bytes_per_token,
        task=spec,
    )
    task.plan_batch = plan.batch.as_dict()  # its checkpoints keep the global batch
    if extended is not None:
        task.best_val_loss = extended.get("best_val_loss")  # with the checkpoint's, the lower
    if init is not None and ckpt_path is None:  # resuming restores its own weights
        dropped, fresh = load_weights(task.model, init, spec.kind)
        log.info("weights from init_from=%s (fresh optimizer and schedule)", init.path)
        if dropped or fresh:
            log.info("left out of the checkpoint: %s", ", ".join(dropped) or "none")
            log.info("initialised fresh: %s", ", ".join(fresh) or "none")
    counts = param_breakdown(task.model)
    if trainer.is_global_zero:
        Console().print(param_table(counts))
        log_param_table(loggers, counts)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rescore = final_val_limit(cfg.get("final_val_batches"), trainer.limit_val_batches)
    if rescore is not None:
        trainer.limit_val_batches = rescore  # the Trainer's own setting, for this last pass
    task.finishing = finishing  # its evals and sample run around this last validation
    if rescore is not None or task.last_val_step != trainer.global_step:
        with logged_at(trainer, log_step(trainer.global_step)):
            trainer.validate(task, datamodule=dm, verbose=False)  # it drops train/* metrics
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
    if "train/loss" not in metrics and task.logged_loss is not None:  # nothing trained here
        metrics["train/loss"] = float(task.logged_loss[1])
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    sample = next((c for c in callbacks if isinstance(c, Sample)), None)
    tokens = trainer.global_step * plan.batch.tokens
    results.update(
        status="completed",
        val_loss=metrics.get("val/loss"),
        best_val_loss=task.best_val_loss,
        val_tokens=task.val_tokens,  # what val_loss averages over (final_val_batches)
        val_perplexity=metrics.get("val/perplexity"),
        val_bits_per_byte=metrics.get("val/bits_per_byte"),
        train_loss=metrics.get("train/loss"),
        params=counts["total"],
        active_params=counts["active"],
        params_per_rank=task.params_per_rank,
        non_embedding_params=counts["non_embedding"],
        param_breakdown=counts,
        tokens=tokens,
        flops=6.0 * plan.budget.n_params * tokens,  # N as budget.params says (active default)
        global_step=trainer.global_step,
        tokens_per_second=throughput.tokens_per_second if throughput else None,
        mfu=throughput.mfu if throughput else None,
        sdpa_kernels=task.sdpa_kernels,
        cross_entropy=task.cross_entropy,
        wall_seconds=time.time() - start,
        device=str(task.device),
        precision=str(trainer.precision),
        torch_threads=torch.get_num_threads(),
        sample=sample.text if sample else None,
        wandb_id=wandb_run_id(out_dir) if "wandb" in (cfg.get("logger") or {}) else None,
        resumed_from=str(ckpt_path) if ckpt_path else None,
        batch=plan.batch.as_dict(),
        budget=plan.budget.as_dict(),
        budget_flops=plan.budget.nominal_flops,
    )
    results.update(evals.metrics if evals else {})  # eval/<task>/<metric> at the last step
    if spec.kind != TaskKind.lm:
        results.update(fine_tuning_results(spec, metrics, trainer.global_step * plan.batch.rows))
    if trainer.is_global_zero:  # the other ranks' W&B experiment is a stand-in
        summarize_wandb(loggers, results)
        write_results(out_dir, results)
        log.info("results: %s", out_dir / "results.json")
    return results["val_loss"]
