"""A run's record of how it ended (``results.json``) as a later command in its directory reads
it: the completed run's, what a stop or failure keeps of the one before, and whether a resumed
run has anything left to train. A resumed run that has none is decided before its data is
prepared (``done_before_data``): nothing is read from the data, so a completed run is left as
it is whichever lmlab prepared its data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ConfigError
from lmlab.files import RESULTS, read_record
from lmlab.train.batch import GlobalBatch
from lmlab.train.budget import budget_params, resolve_budget
from lmlab.train.plan import check_same_batch, read_plan

log = logging.getLogger(__name__)


def read_results(out_dir: Path) -> dict[str, Any] | None:
    """``results.json`` of the run in ``out_dir``; None when there is none, or unreadable."""
    return read_record(out_dir / RESULTS) or None


def kept_record(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a process that stops or fails keeps, under ``previous``, of the record it found:
    the last one with results (a completed run's metrics, a stop's step), and under a stop's
    record the completed run's it kept, so extending a completed run and stopping or failing
    any number of times loses none of them (a second preemption of an extension lost them)."""
    if results is None:
        return None
    if results.get("status") in ("failed", "running"):
        return results.get("previous")
    kept = {k: v for k, v in results.items() if k != "previous"}
    if results.get("status") == "completed":
        return kept
    before = results.get("previous")  # a stop's: the completed record, or a stop's keeping it
    while isinstance(before, dict) and before.get("status") != "completed":
        before = before.get("previous")
    if isinstance(before, dict):
        kept["previous"] = before
    return kept


def finished_run(out_dir: Path) -> dict[str, Any] | None:
    """``results.json`` of a run that completed in ``out_dir``, else None."""
    results = read_results(out_dir)
    return results if results is not None and results.get("status") == "completed" else None


def already_done(
    out_dir: Path, steps: int, ckpt: dict | None, ckpt_path: Path | None
) -> dict[str, Any] | None:
    """A resumed run (``resume=true`` or ``auto``) whose ``steps`` planned steps are all
    trained: the completed run's results, which it leaves as they are; None when there is
    training left. A checkpoint past the plan's last step (``trainer.max_steps`` lowered), or
    a completed run with no checkpoint and more steps planned, is refused: neither can be
    continued."""
    step = ckpt["global_step"] if ckpt is not None else None
    if step is not None and step > steps:
        raise ConfigError(
            f"cannot resume {out_dir}: {ckpt_path} is at step {step}, past this run's "
            f"{steps} planned steps (trainer.max_steps or the budget was lowered): keep "
            f"them at {step} or more"
        )
    finished = finished_run(out_dir)
    if finished is None:
        return None
    if step is None and finished.get("global_step") != steps:
        raise ConfigError(
            f"cannot resume {out_dir}: the run completed {finished.get('global_step')} steps "
            f"and has no checkpoint to continue to {steps}; choose another directory"
        )
    if step in (None, steps) and finished.get("global_step") == steps:
        return finished
    return None


def done_before_data(
    cfg: DictConfig, batch: GlobalBatch, out_dir: Path, ckpt: dict, ckpt_path: Path
) -> dict[str, Any] | None:
    """``already_done`` of a resumed run, decided before its data is prepared: the completed
    run's results where ``cfg`` plans the steps it completed, at the global batch ``batch``
    (plan.json's, else refused) and its model's parameter count (plan.json's, which a
    ``flops`` or ``chinchilla`` budget's steps rest on); None where there are steps left (a
    checkpoint past them is refused here) or the run has no plan.json (the data decides). The
    data's own checks (the corpus, the tokenizer, the lmlab version that prepared it) are for a
    run that trains: one with nothing left to train reads none of it, so a sweep resumed by a
    later lmlab whose data preparation changed goes past its completed jobs instead of
    refusing them. The caller says the run is done (``say_done``)."""
    saved = read_plan(out_dir)
    if saved is None:
        return None
    check_same_batch(saved, batch, out_dir)
    counts = {"total": saved.get("params"), "active": saved.get("active_params")}
    budget_cfg = OmegaConf.to_object(cfg.budget)
    n_params = budget_params(budget_cfg, counts)
    if not isinstance(n_params, int):  # a plan.json from before it held them
        return None
    steps = resolve_budget(budget_cfg, n_params, batch.tokens, int(cfg.trainer.max_steps)).steps
    return already_done(out_dir, steps, ckpt, ckpt_path)


def say_done(out_dir: Path, steps: int) -> None:
    """The line a resumed run with nothing left to train logs."""
    log.info(
        "%s completed its %d planned steps: nothing to train, its files are left as they were "
        "(raise trainer.max_steps to train further)",
        out_dir,
        steps,
    )
