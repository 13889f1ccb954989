"""``train(cfg)``: the whole run, importable (tests, sweeps) behind the thin ``src/train.py``."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from lmlab.config import TaskKind
from lmlab.errors import (
    StorageError,
    UnwritableRecordError,
    disk_full,
    first_line,
    storage_fix,
    storage_refusal,
)
from lmlab.files import PLAN, RESULTS, RUN_CONFIG, checkpoints_in, write_json, write_text
from lmlab.infer.checkpoint import read_checkpoint
from lmlab.model import param_breakdown
from lmlab.train.build import (
    build_task,
    checked_continuation,
    checked_plan,
    checked_resume,
    prepared_data,
)
from lmlab.train.callbacks import EvalTasks, Sample, Throughput
from lmlab.train.checkpoint_check import (
    check_checkpoint_model,
    check_checkpoint_optimizer,
    check_same_tokenizer,
)
from lmlab.train.completed import (
    done_before_data,
    finished_run,
    kept_record,
    read_results,
    say_done,
)
from lmlab.train.distributed import JobScope, RankLostError, install_job_command, lost_rank
from lmlab.train.estimate import plan_from_cfg
from lmlab.train.final_validation import final_metrics
from lmlab.train.finetune import fine_tuning_results
from lmlab.train.hardware import set_matmul_precision
from lmlab.train.init_from import model_record
from lmlab.train.lightning_logs import route_lightning_logs
from lmlab.train.loggers import (
    build_loggers,
    kept_run_name,
    log_param_table,
    uses_wandb,
)
from lmlab.train.memory import memory_needs
from lmlab.train.outcome import (
    eval_results,
    final_digest,
    how_it_stopped,
    stopped_early,
    summarize_wandb,
    trained,
    write_results,
)
from lmlab.train.plan import check_preparation, make_plan, read_plan
from lmlab.train.plan_table import param_table, plan_table
from lmlab.train.preemption import HandlersFound, StopBeforeFit
from lmlab.train.preflight import CheckedRun, check_run, warn_unused
from lmlab.train.resume import (
    resume_checkpoint,
    resume_command,
    resumed_from,
    run_identity,
)
from lmlab.train.rundir import RunDir
from lmlab.train.runfiles import holds_run, launch_rank_is_zero
from lmlab.train.schedule import warmup_cut
from lmlab.train.task_state import TRAIN_LOSSES
from lmlab.train.trainer import build_trainer
from lmlab.train.wandb_run import finish_wandb, recorded_wandb_id, wandb_run_id

log = logging.getLogger(__name__)


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
    found = read_results(out_dir)
    earlier = kept_record(found)  # what a stop of this process must not lose
    name = kept_run_name(cfg, found, bool(checkpoints_in(out_dir)))
    results: dict[str, Any] = {"status": "running", "run_name": name, "seed": cfg.seed}
    install_job_command()
    scope = JobScope()
    handlers = HandlersFound()  # put back as the run ends: a sweep's next job takes them
    early = StopBeforeFit()  # a scheduler's stop before fit: no partial cache entry, said
    try:
        early.install()
        checked = check_run(cfg)  # bad input: refused before any work
        warn_unused(checked.model_cfg, checked.data_cfg, checked.task_cfg)
        if launch_rank_is_zero():  # every DDP/FSDP rank runs this, on every node
            log.info(checked.batch.describe())
        if cfg.get("dry_run"):  # plans a GPU run on any machine
            return dry_run(cfg, checked, run)
        if uses_wandb(cfg):
            recorded_wandb_id(out_dir)  # a damaged record: named before any work
        ckpt_path = resume_checkpoint(cfg, out_dir)
        return _fit(cfg, checked, run, results, start, ckpt_path, scope, early)
    except BaseException as err:
        if run.removed():  # a record written now would be a lone results.json in a new folder
            words = (
                f"the run directory {out_dir} was removed while the run trained, with its "
                f"checkpoints and record: the run stopped ({first_line(err)})"
            )
            log.error("%s", words)
            scope.failed = True
            raise StorageError(words) from err
        checkpointed = bool(checkpoints_in(out_dir))
        stopped = how_it_stopped(err, scope.trainer, checkpointed)
        told = run.told_since() if lost_rank(err) else None  # the rank that stopped said why
        if told is not None:
            stopped["error"] = f"another rank of this run failed: {told['error']}"
        results.update(stopped, wall_seconds=time.time() - start)
        trainer_callbacks = getattr(scope.trainer, "callbacks", None) or []
        evals = next((c for c in trainer_callbacks if isinstance(c, EvalTasks)), None)
        results.update(eval_results(evals))  # a stop's cut or failed evals: said, redone
        if "global_step" in results and "batch" in results:  # a stop's saved checkpoint
            results.update(trained(results, results["global_step"]))
        if earlier is not None:
            results["previous"] = earlier  # a completed run extended, then stopped
        status = results["status"]
        scope.failed = status == "failed"  # a stop is every rank's: they stop on their own
        # A stop is every rank's, recorded by rank 0; a failure may be one rank's alone.
        if run.may_record and (run.guard or status == "failed") and told is None:
            record_failure(out_dir, results)
        resume = f"; resume with: {resume_command(out_dir)}" if checkpointed else ""
        if status != "failed" and run.guard and resume:
            log.warning("%s: resume with: %s", status, resume_command(out_dir))
        elif status != "failed" and run.guard and run.opened:  # no checkpoint: say so
            log.warning("%s before the first checkpoint: resume=auto starts it again", status)
        if status == "interrupted" and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from err  # Ctrl-C, whichever way Lightning reported it
        if lost_rank(err):
            raise RankLostError(results["error"] + resume) from err
        if (refused := storage_refusal(err)) is not None:
            again = resume or "; then resume=auto starts the run again"
            words = f"{results['error']}: {storage_fix(refused)}{again}"
            log.error("%s", words)  # train.log keeps it too
            raise StorageError(words) from err
        if isinstance(err, UnwritableRecordError):
            log.error("%s", err)  # train.log keeps it too
        raise
    finally:
        handlers.put_back()  # StopBeforeFit's too, where fit was not reached
        finish_wandb(results)  # its status and error in the W&B summary, exit code non-zero
        scope.close()  # this job's rank processes have exited before the next job starts
        run.close()


def record_failure(out_dir: Path, results: dict[str, Any]) -> None:
    """results.json of a run that did not complete; where it cannot be written (the disk is
    full, as it may be when the run failed), said in the log instead of hiding the error."""
    try:
        write_results(out_dir, results)
    except OSError as err:
        log.error("results.json not written (%s): %s", first_line(err), results.get("error"))


def dry_run(cfg: DictConfig, checked: CheckedRun, run: RunDir) -> float | None:
    """Print the plan (parameters, budget, FLOPs, wall time), write plan.json (marked
    ``dry_run``: a directory holding only that holds no run), train nothing. Into a directory
    that holds an earlier run, nothing is written. Under ``init_from`` the plan holds the
    record of its source the run would write (``init_from``, ``init_source``)."""
    model_cfg, data_cfg, seq_len = checked.model_cfg, checked.data_cfg, checked.seq_len
    plan = plan_from_cfg(cfg, model_cfg, data_cfg, seq_len)
    if checked.init is not None:  # the model is the checkpoint's: plan_from_cfg's "model"
        plan.update(checked.init.record)
    planned = dataclasses.replace(model_cfg, vocab_size=plan["vocab_size"])  # as it planned
    run_plan = make_plan(cfg, planned, data_cfg, seq_len)
    if cut := warmup_cut(cfg.scheduler, run_plan.steps):
        log.warning(cut)
    plan["memory"] = memory_needs(run_plan, planned, cfg.trainer, cfg.optim).as_dict()
    Console().print(plan_table(plan))
    if holds_run(run.path):
        log.info("plan.json not written: %s holds an earlier run, left as it was", run.path)
    else:  # Hydra's .hydra/ and log too, held back where an earlier command left its records
        run.open(cfg)
        log.info("plan: %s", write_json(run.path / PLAN, {"dry_run": True, **plan}))
    return None  # no loss: a search (Optuna) records the trial as failed, not as a value


def _fit(
    cfg: DictConfig,
    checked: CheckedRun,
    run: RunDir,
    results: dict[str, Any],
    start: float,
    ckpt_path: Path | None,
    scope: JobScope,
    early: StopBeforeFit,
) -> float | None:
    """Check the checkpoint it continues where the data does not decide (another program's,
    weights only, another model or optimizer setting: refused before any data work), prepare
    the data, plan, check a resume against the plan, then (every check passed) open the run
    directory, train, validate at the end and write ``results.json``. A stop signal before
    ``fit`` is ``early``'s, during it ``Preemption``'s."""
    out_dir = run.path
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:  # what the data does not decide: refused before it is prepared
        check_checkpoint_model(ckpt, ckpt_path, checked.model_cfg, task=None)
        check_checkpoint_optimizer(ckpt, ckpt_path, cfg.optim)
    if cfg.get("resume") and ckpt is not None:  # a completed run: nothing of its data read
        done = done_before_data(cfg, checked.batch, out_dir, ckpt, ckpt_path)
        if done is not None:
            say_done(out_dir, done["global_step"])
            return done.get("val_loss")
        check_preparation(read_plan(out_dir), out_dir)  # steps left: its data read again
    dm, model_cfg, spec = prepared_data(cfg, checked)
    evals = next((c for c in checked.callbacks if isinstance(c, EvalTasks)), None)
    if evals is not None and getattr(dm, "tokenizer", None) is not None:
        evals.check_answers(dm.tokenizer, model_cfg)  # before the first step, not at each eval
    if ckpt is not None:
        # the tokenizer first: a corpus that trains another one (a char vocabulary with a
        # character more) also changes the model's vocab_size, which is not what to fix
        check_same_tokenizer(
            ckpt, ckpt_path, getattr(dm, "tokenizer", None), getattr(dm, "meta", None)
        )
        check_checkpoint_model(ckpt, ckpt_path, model_cfg, spec)
    plan = checked_plan(cfg, checked, model_cfg, dm, spec)
    if cfg.get("resume"):
        done = checked_resume(out_dir, plan, ckpt, ckpt_path)
        if done is not None:
            return done.get("val_loss")
    elif ckpt is not None:  # ckpt_path= in a new directory: its data position, the same way
        checked_continuation(ckpt, ckpt_path, plan, out_dir)
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
        # written whole (a temporary file renamed over it): rewritten in place, a disk that
        # filled as a resume rewrote it left the run's only record of its config empty
        write_text(out_dir / RUN_CONFIG, OmegaConf.to_yaml(run_identity(cfg)))
        init = checked.init
        write_json(out_dir / PLAN, plan.as_dict() | (model_record(init) if init else {}))
    resume_step = ckpt["global_step"] if ckpt else 0
    source = {"resumed_from": None, "resumed_step": None}  # the checkpoint, before the fit
    if ckpt_path is not None:
        source = {"resumed_from": str(resumed_from(ckpt_path)), "resumed_step": resume_step}
        if launch_rank_is_zero():  # once a run, as the global batch's line
            log.info("continuing from step %d: %s", resume_step, source["resumed_from"])
    # the checkpoint's memory map let go: a resumed run held the file it resumed from, whose
    # disk space a later save's pruning (save_top_k) or last.ckpt's re-link then did not free
    # until the run ended, one checkpoint more on the disk (Lightning reads it again to restore)
    del ckpt
    callbacks = checked.callbacks
    if evals is not None and ckpt_path is not None:
        # the evals of the checkpoint's step ran after it was saved: their failures are in
        # the record only (earlier steps' are in the checkpoint, later steps train again)
        evals.carry((read_results(out_dir) or {}).get("eval_failures"), resume_step)
    loggers = build_loggers(
        cfg,
        out_dir,
        resume_step=resume_step,
        revalidates=finishing,
        reevaluates=evals is not None and evals.due_at(resume_step, plan.steps),
        plan=plan.as_dict(),
    )
    trainer = build_trainer(
        cfg, callbacks=callbacks, logger=loggers or False, **plan.trainer_args(cfg.trainer)
    )
    scope.trainer = trainer
    set_matmul_precision(cfg.matmul_precision, trainer.strategy.root_device)
    dm.num_train_samples = plan.train_samples
    # The data position is one integer: the resumed run draws exactly the rows that follow.
    dm.start_sample = plan.start_sample(resume_step)  # 0 for a new run
    task = build_task(cfg, checked, model_cfg, dm, spec, plan, from_weights=ckpt_path is None)
    if extended is not None:
        task.best_val_loss = extended.get("best_val_loss")  # with the checkpoint's, the lower
    counts = param_breakdown(task.model)
    # what a stop's record keeps beside its step (``trained``), and a completed run's too
    results.update(
        params=counts["total"],
        active_params=counts["active"],
        batch=plan.batch.as_dict(),
        budget=plan.budget_record(),
        budget_flops=plan.budget.nominal_flops,
    )
    if trainer.is_global_zero:
        Console().print(param_table(counts))
        log_param_table(loggers, counts, step=resume_step)
    early.release()  # Lightning's and Preemption's handlers from here
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    metrics = final_metrics(cfg, trainer, task, dm, finishing)
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    sample = next((c for c in callbacks if isinstance(c, Sample)), None)
    results.update(
        status="completed",
        val_loss=metrics.get("val/loss"),
        best_val_loss=task.best_val_loss,
        val_tokens=task.val_tokens,  # what val_loss averages over (final_val_batches)
        val_perplexity=metrics.get("val/perplexity"),
        val_bits_per_byte=metrics.get("val/bits_per_byte"),
        **{key: metrics.get(name) for name, key in TRAIN_LOSSES.items()},
        params_per_rank=task.params_per_rank,
        non_embedding_params=counts["non_embedding"],
        param_breakdown=counts,
        **trained(results, trainer.global_step),
        tokens_per_second=throughput.tokens_per_second if throughput else None,
        mfu=throughput.mfu if throughput else None,
        sdpa_kernels=task.sdpa_kernels,
        cross_entropy=task.cross_entropy,
        wall_seconds=time.time() - start,
        device=str(task.device),
        precision=str(trainer.precision),
        torch_threads=torch.get_num_threads(),
        sample=sample.text if sample else None,
        wandb_id=wandb_run_id(out_dir) if uses_wandb(cfg) else None,
        **source,
    )
    results.update(evals.metrics if evals else {})  # eval/<task>/<metric> at the last step
    results.update(eval_results(evals))
    results.update(stopped_early(trainer, plan.steps) if trainer.is_global_zero else {})
    if spec.kind != TaskKind.lm:
        results.update(fine_tuning_results(spec, metrics, trainer.global_step * plan.batch.rows))
    if trainer.is_global_zero:  # the other ranks' W&B experiment is a stand-in
        results.update(final_digest(trainer, out_dir))
        summarize_wandb(loggers, results)
        write_completed(out_dir, results, trainer.global_step)
    return results["val_loss"]


def write_completed(out_dir: Path, results: dict[str, Any], step: int) -> None:
    """``results.json`` of the completed run; where it cannot be written (other than a
    full disk, said with the other full-disk stops), one line naming the resume that
    writes it without training again."""
    try:
        write_results(out_dir, results)
    except OSError as err:
        if disk_full(err) is not None:
            raise
        raise UnwritableRecordError(
            f"the run trained to step {step} and saved its checkpoints, but "
            f"{out_dir / RESULTS} could not be written ({err.strerror or err}): make it "
            f"writable, then {resume_command(out_dir)} writes it, training nothing again"
        ) from err
    log.info("results: %s", out_dir / RESULTS)
