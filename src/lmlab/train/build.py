"""What a run builds before it trains (``lmlab.train.run.train``): its data prepared and
split, the model config at the tokenizer's vocabulary, the frozen plan checked (repeated
rows, an overshot budget, a cut warm-up, a training state that cannot fit), a resume checked
against it, and the LightningModule, with ``init_from``'s weights where it starts from them."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmlab.config import PRETRAINING, Compile, ModelConfig, TaskKind, TaskSpec, compile_mode
from lmlab.errors import ConfigError
from lmlab.files import PLAN
from lmlab.train.budget import overshoot
from lmlab.train.completed import already_done, say_done
from lmlab.train.estimate import check_model_vocab
from lmlab.train.finetune import DATAMODULES
from lmlab.train.init_from import load_weights
from lmlab.train.memory import check_state_fits
from lmlab.train.optimizer import optimizer_from
from lmlab.train.plan import (
    CORPUS_RECORD,
    RESUME_RECORD,
    RunPlan,
    check_resumable,
    make_plan,
    read_plan,
)
from lmlab.train.preflight import CheckedRun
from lmlab.train.schedule import warmup_cut
from lmlab.train.task import LMTask

log = logging.getLogger(__name__)


def warn_repeated_rows(global_batch: int, train_rows: int) -> bool:
    """A warning when one step's global batch holds more rows than the training split: the
    sampler goes on into the next epoch's order, so every step repeats rows (a tiny corpus,
    or a large batch): legal, and said. Returns whether it warned."""
    if global_batch <= train_rows:
        return False
    log.warning(
        "each step's %d rows (data.global_batch_size, or data.batch_size x devices x "
        "accumulation) are more than the training split's %d: every step repeats rows, a "
        "batch holds some twice or more (a larger corpus, or a smaller batch, avoids it)",
        global_batch,
        train_rows,
    )
    return True


def check_val_fractions(cfg: DictConfig, dm: Any) -> None:
    """A fraction of the validation split (``trainer.limit_val_batches``, ``final_val_batches``)
    that comes to less than one of ``dm``'s validation batches is refused now, with the data
    prepared and nothing built: Lightning refused it with a traceback once the validation
    began (``final_val_batches``: after the last step, the run marked failed). The batches are
    counted only where a fraction below 1 asks."""
    limits = {
        "trainer.limit_val_batches": cfg.trainer.get("limit_val_batches"),
        "final_val_batches": cfg.get("final_val_batches"),
    }
    fractions = {k: v for k, v in limits.items() if isinstance(v, float) and 0 < v < 1}
    batches = len(dm.val_dataloader()) if fractions else 0
    for name, limit in fractions.items():
        if scored_batches(limit, batches) == 0:
            raise ConfigError(
                f"{name}={limit}: {limit} of the validation split's {batches} batches is less "
                f"than one batch; allowed: a fraction of at least 1/{batches}, or an int of "
                "batches (data.val_batch_size sets their size)"
            )


def scored_batches(limit: int | float | None, batches: int) -> int:
    """The validation batches of ``batches`` that a ``limit_val_batches`` of ``limit`` scores,
    as Lightning counts them: an int that many, a float that fraction (1.0 all)."""
    if limit is None or (isinstance(limit, float) and limit >= 1.0):
        return batches
    return min(int(limit), batches) if isinstance(limit, int) else int(batches * limit)


def warn_partial_validation(cfg: DictConfig, dm: Any, spec: TaskSpec) -> bool:
    """A warning where a fine-tuning run's final validation, whose metrics (``val/acc``,
    ``val/f1``, ``val/exact_match``, ...) are results.json's and what compare ranks, scores
    only the first rows of the validation examples: ``trainer.limit_val_batches`` (20 on
    ``trainer=cpu``) caps it at 320 of a validation file of any size, in the file's order.
    Returns whether it warned."""
    if spec.kind == TaskKind.lm or not spec.val_examples:
        return False
    final = cfg.get("final_val_batches")
    setting = "final_val_batches" if final is not None else "trainer.limit_val_batches"
    limit = final if final is not None else cfg.trainer.get("limit_val_batches")
    loader = dm.val_dataloader()
    batches = len(loader)
    scored = scored_batches(limit, batches)
    if scored >= batches or scored == 0:  # all, or validation off (said where it is set)
        return False
    rows = min(scored * loader.batch_size, spec.val_examples)
    log.warning(
        "validation scores the first %d of the %d validation examples of %s (%s=%s: %d of "
        "their %d batches), so the validation metrics and results.json's are theirs alone; "
        "final_val_batches=1.0 scores all %d after the last step, "
        "trainer.limit_val_batches=1.0 at every validation",
        rows,
        spec.val_examples,
        spec.origin,
        setting,
        limit,
        scored,
        batches,
        spec.val_examples,
    )
    return True


def prepared_data(cfg: DictConfig, checked: CheckedRun) -> tuple[Any, ModelConfig, TaskSpec]:
    """The task's datamodule, its data prepared and split; the model config with the
    tokenizer's vocabulary where it leaves ``vocab_size`` to it; the task's spec (fine-tuning:
    its labels, once the data is read)."""
    task_cfg, model_cfg, init = checked.task_cfg, checked.model_cfg, checked.init
    dm = DATAMODULES[task_cfg.kind](
        checked.data_cfg,
        task_cfg,
        model_cfg.family,
        checked.seq_len,
        cfg.seed,
        init.tokenizer if init else None,
    )
    dm.prepare_data()
    dm.setup()
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=dm.vocab_size)
    check_model_vocab(model_cfg.vocab_size, dm.vocab_size)
    return dm, model_cfg, getattr(dm, "spec", PRETRAINING)


def checked_plan(
    cfg: DictConfig, checked: CheckedRun, model_cfg: ModelConfig, dm: Any, spec: TaskSpec
) -> RunPlan:
    """The frozen run plan, with the prepared corpus's counts; said where its rows repeat
    or its budget is overshot; refused where the training state cannot fit (before the model
    is built)."""
    meta = getattr(dm, "meta", None)  # a pre-training corpus's counts, per split
    corpus = {key: meta[key] for key in CORPUS_RECORD if key in meta} if meta else None
    plan = make_plan(cfg, model_cfg, checked.data_cfg, checked.seq_len, spec, corpus)
    warn_repeated_rows(plan.batch.rows, len(dm.train_rows))
    if over := overshoot(plan.budget.as_dict()):
        log.warning(
            "the budget trains %s tokens, %s: a smaller global batch (data.batch_size, "
            "trainer.accumulate_grad_batches) fits it closer",
            f"{plan.budget.tokens:,}",
            over,
        )
    check_val_fractions(cfg, dm)
    warn_partial_validation(cfg, dm, spec)
    if cut := warmup_cut(cfg.scheduler, plan.steps):
        log.warning(cut)
    if cfg.trainer.get("limit_val_batches") == 0 and not cfg.get("final_val_batches"):
        log.warning(
            "validation is off (trainer.limit_val_batches=0): results.json's val_loss is null, "
            "so compare and a sweeper have no validation loss for this run; "
            "final_val_batches=1.0 scores the final weights once"
        )
    check_state_fits(plan, model_cfg, cfg.trainer, cfg.optim)
    return plan


def checked_resume(
    out_dir: Path, plan: RunPlan, ckpt: dict[str, Any] | None, ckpt_path: Path | None
) -> dict[str, Any] | None:
    """A resume checked against the run's plan (refused where it would read other rows);
    the run's record where it completed every planned step already (nothing to train, said),
    else None."""
    saved = (ckpt.get("run_state") or {}) if ckpt else {}
    if (out_dir / PLAN).exists() or not saved.get("batch"):
        check_resumable(read_plan(out_dir), plan, out_dir)
    else:  # plan.json deleted: the checkpoint's record of the global batch and data
        checked_continuation(ckpt, ckpt_path, plan, out_dir)
    done = already_done(out_dir, plan.steps, ckpt, ckpt_path)
    if done is not None:  # a run without plan.json's record (else ``done_before_data``'s)
        say_done(out_dir, plan.steps)
    return done


def checked_continuation(
    ckpt: dict[str, Any], ckpt_path: Path | None, plan: RunPlan, out_dir: Path
) -> None:
    """A run continuing ``ckpt`` (``ckpt_path=`` in a new directory, or a resume whose
    plan.json is gone) checked against the global batch, sequence length and data its
    checkpoint records: the data position is the checkpoint's step x this run's global batch,
    so another batch skipped rows never trained and counted tokens never seen. A checkpoint
    written before it kept the record has none to check."""
    saved = ckpt.get("run_state") or {}
    if saved.get("batch"):
        record = {key: saved[key] for key in RESUME_RECORD if key in saved}
        check_resumable(record, plan, out_dir, f"checkpoint {ckpt_path}")


def build_task(
    cfg: DictConfig,
    checked: CheckedRun,
    model_cfg: ModelConfig,
    dm: Any,
    spec: TaskSpec,
    plan: RunPlan,
    from_weights: bool,
) -> LMTask:
    """The LightningModule; under ``init_from``, with the checkpoint's weights where
    ``from_weights`` (a resume restores its own)."""
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
        cuda_graphs=bool(cfg.get("cuda_graphs", False)),
    )
    task.plan_record = plan.resume_record()  # its checkpoints keep the global batch and data
    init = checked.init
    if init is not None:
        task.declared = init.declared  # a resume's from the run's own checkpoint
    if init is not None and from_weights:
        dropped, fresh = load_weights(task.model, init, spec.kind)
        step = init.record.get("init_source", {}).get("global_step")
        log.info(
            "weights from init_from=%s: %s%s (fresh optimizer and schedule)",
            init.path,
            init.file,
            "" if step is None else f", step {step}",
        )
        if dropped or fresh:
            log.info("left out of the checkpoint: %s", ", ".join(dropped) or "none")
            log.info("initialised fresh: %s", ", ".join(fresh) or "none")
    return task
