"""What ``results.json`` records of how a run ended: the status and error of a run that did
not complete (``preempted``, ``interrupted``, ``failed``), the tokens and FLOPs of the steps
it trained, the evals during training, the final checkpoint's ``model_digest``; and the
headline numbers in the W&B summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from lmlab.config import TaskKind, redact
from lmlab.errors import chain, first_line, storage_refusal, write_error_words
from lmlab.files import CHECKPOINTS, RESULTS, write_json
from lmlab.train.distributed import lost_rank
from lmlab.train.finetune import TASK_RESULTS
from lmlab.train.preemption import Preemption
from lmlab.train.wandb_run import wandb_may_fail

if TYPE_CHECKING:
    import lightning as L

    from lmlab.train.callbacks import EvalTasks

log = logging.getLogger(__name__)


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    write_json(out_dir / RESULTS, redact(results))


def eval_results(evals: EvalTasks | None) -> dict[str, Any]:
    """What results.json keeps of the evals during training beside their metrics: each task's
    item count (``eval_n_samples``, the harness's ``original`` and ``effective``) and shots
    (``eval_n_shot``) and how they formatted its prompts (``eval_prompts``: the chat settings,
    as an eval record holds them): ``compare`` warns where runs ranked by a task scored
    different counts, with different shots or in other formats; and every eval that failed
    (``eval_failures``: step, tasks and one-line error; the run went on without its
    metrics)."""
    if evals is None:
        return {}
    out: dict[str, Any] = {}
    if evals.metrics and evals.n_samples:
        out["eval_n_samples"] = evals.n_samples
    if evals.metrics and evals.n_shot:
        out["eval_n_shot"] = evals.n_shot
    if evals.metrics and evals.prompts:
        out["eval_prompts"] = evals.prompts
    if evals.failures:
        out["eval_failures"] = list(evals.failures)
    return out


def final_digest(trainer: L.Trainer, out_dir: Path) -> dict[str, str]:
    """``model_digest`` of the run's final checkpoint (its step's file, or ``last.ckpt``), as
    ``lmlab evaluate`` records it in ``eval/step<N>.json``: ``compare`` then takes a record of
    that step only where the digests match (another model's record left in the folder is
    skipped). Of the weights, not the path: a copy of the folder matches too. Left out where
    it cannot be had cheaply (a sharded checkpoint, no checkpoint of the last step) or fails:
    a finished run never fails over it."""
    from lmlab.infer.pretrained import checkpoint_digest

    callback = trainer.checkpoint_callback
    saved = [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    for path in [*(Path(p) for p in saved if p), out_dir / CHECKPOINTS / "last.ckpt"]:
        try:
            digest = checkpoint_digest(path, trainer.global_step)
        except Exception as err:  # noqa: BLE001 (an extra: the run has completed)
            log.warning("results.json gets no model_digest (%s: %s)", type(err).__name__, err)
            return {}
        if digest is not None:
            return {"model_digest": digest}
    return {}


def trained(results: dict[str, Any], step: int) -> dict[str, Any]:
    """``tokens`` and ``flops`` (6 N D, N as ``budget.params`` says: active by default) of
    ``step`` steps of the run whose budget ``results`` holds: none for a fine-tuning run, whose
    padded batches' tokens its budget does not count (``plan.PACKED_TOKEN_FIELDS``)."""
    budget = results["budget"]
    per_step = budget["tokens_per_step"]
    tokens = None if per_step is None else step * per_step
    return {
        "tokens": tokens,
        "flops": None if tokens is None else 6.0 * budget["n_params"] * tokens,
        "global_step": step,
    }


def stopped_early(trainer: L.Trainer, planned: int) -> dict[str, Any]:
    """results.json's ``stopped_early`` for a run that a callback ended before its planned
    steps (Lightning's ``EarlyStopping``, a user's callback setting ``trainer.should_stop``):
    the run completed as configured, but trained fewer steps and did not finish its learning
    rate schedule, which a run compared with others must say. The step, the planned steps,
    the callback that asked (one with ``stopping_reason_message``, EarlyStopping's) and its
    words; said in a warning too. Empty for a run that trained its steps."""
    step = trainer.global_step
    if step >= planned:
        return {}
    asked = next(
        (c for c in trainer.callbacks if getattr(c, "stopping_reason_message", None)), None
    )
    why = None if asked is None else asked.stopping_reason_message
    by = "a callback" if asked is None else type(asked).__name__
    log.warning(
        "stopped early at step %d of %d planned, by %s%s: the learning rate schedule did not "
        "finish (results.json: stopped_early)",
        step,
        planned,
        by,
        f" ({why})" if why else "",
    )
    return {"stopped_early": {"step": step, "planned_steps": planned, "by": by, "why": why}}


STOP_SIGNALS = {"preempted": "SIGTERM/SIGUSR1", "interrupted": "Ctrl-C (SIGINT)"}


def left_to_resume(checkpointed: bool) -> str:
    """What a stop without a checkpoint of its own leaves to resume from."""
    return "earlier checkpoints are kept" if checkpointed else "no checkpoint to resume from"


def how_it_stopped(
    err: BaseException, trainer: L.Trainer | None, checkpointed: bool = True
) -> dict[str, Any]:
    """results.json's ``status`` and ``error`` for a run that did not complete: ``preempted``
    (SIGTERM, SIGUSR1), ``interrupted`` (Ctrl-C, also when a second one made Lightning call
    ``sys.exit(1)``) or ``failed``; with the step of the checkpoint saved at a stop.
    ``checkpointed``: whether the run directory holds a checkpoint (a stop before the first
    has nothing to resume, and says so)."""
    preemption = next(
        (c for c in getattr(trainer, "callbacks", []) if isinstance(c, Preemption)), None
    )
    # a Ctrl-C, also one that stopped a checkpoint save: torch.save raises its own error then
    ctrl_c = any(isinstance(e, KeyboardInterrupt) for e in chain(err))
    asked = bool(preemption and preemption.interrupted)
    if ctrl_c or (asked and isinstance(err, SystemExit | SIGTERMException)):
        status = "interrupted"
    elif isinstance(err, SIGTERMException):
        status = "preempted"
    elif lost_rank(err):  # the collective's traceback says which socket, not why
        return {
            "status": "failed",
            "error": "another rank of this run stopped (its process was killed, or ran out of "
            "memory: the system log, dmesg, or the job scheduler says which; an error of its "
            f"own it would have recorded), so this one could not go on ({first_line(err)})",
        }
    elif (refused := storage_refusal(err)) is not None:  # the save's own error says no why
        kept = "; the checkpoints written before are whole" if checkpointed else ""
        return {"status": "failed", "error": f"{write_error_words(refused)}{kept}"}
    elif any(isinstance(e, BrokenPipeError) for e in chain(err)):  # rich exits with 1 on it
        return {
            "status": "failed",
            "error": "the command's output was closed (BrokenPipeError: what read it, such as "
            f"`| head`, exited), so the run stopped; {left_to_resume(checkpointed)}",
        }
    else:
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    saved = preemption.saved if preemption else None
    if saved is None:
        kept = left_to_resume(checkpointed)
        return {"status": status, "error": f"stopped by {STOP_SIGNALS[status]}; {kept}"}
    return {
        "status": status,
        "error": f"stopped by {STOP_SIGNALS[status]} after saving {saved}",
        "global_step": trainer.global_step,
    }


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
            with wandb_may_fail("writing the summary"):  # a warning: the run has completed
                lg.experiment.summary.update({k: results.get(k) for k in keys})
