"""The run plan: what a run will do, resolved once from the composed config, frozen, and saved
as ``plan.json`` in the run directory beside Hydra's ``.hydra/config.yaml``.

The composed config is never written to after Hydra saved it. Everything a run derives from it
is here instead: the global batch (micro-batch, devices, accumulation), the precision
(``trainer.precision=auto`` resolved), the vocabulary and parameter count, and the budget
(steps, tokens, FLOPs). The Trainer is built with the plan's steps, accumulation and precision,
the sampler draws the plan's rows, and a resumed run is checked against the plan it continues
(``check_resumable``). ``results.json`` repeats the budget and batch for the tools that read
only it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmlab.config import (
    PRETRAINING,
    BudgetConfig,
    DataConfig,
    ModelConfig,
    TaskKind,
    TaskSpec,
)
from lmlab.config.task import EXAMPLES_DIGEST, VAL_LABELS
from lmlab.data.packing import PREPARATION_CHANGES, PREPARATION_VERSION
from lmlab.errors import ConfigError
from lmlab.files import PLAN
from lmlab.model import build_task_model, param_breakdown
from lmlab.train.batch import GlobalBatch, resolve_global_batch
from lmlab.train.budget import Budget, budget_params, resolve_budget
from lmlab.train.machine import resolve_precision

# What a plan records of a prepared corpus (the rows entry's meta.json): rows, tokens and bytes
# per split, and a digest of its text (``packing.text_digest``; plans and cached rows written
# before it have none, and are compared by their counts alone).
TEXT_DIGEST = "text_sha256"  # the corpus record's digest of its text (tokenizer aside)
# What an lmlab that recorded no preparation version prepared otherwise from the same text
# and settings: a run it started trains other rows (or another tokenizer) now, and is refused
# saying so.
PREPARED_OTHERWISE = PREPARATION_CHANGES[1]
CORPUS_RECORD = ("train", "val", TEXT_DIGEST, "names")
PREPARATION = "data_preparation"  # plan.json's record of PREPARATION_VERSION
# what of the plan a checkpoint keeps (``run_state``), for a resume whose plan.json was lost
RESUME_RECORD = ("batch", "corpus", "task", PREPARATION)
# what a refusal of a run whose rows lmlab now prepares otherwise says to do
FINISH_OR_RESTART = (
    "so the data position would point at other rows: finish it with the lmlab version that "
    "started it, or start a new run in another directory from its weights (init_from=<its "
    "checkpoint> data.tokenizer=checkpoint)"
)
# What a budget counts in tokens of packed rows: a fine-tuning run's batches are padded to
# their longest example, so steps x rows x seq_len would overstate what it trains; its plan
# gives none of them (its budget is steps: ``config.task.resolve_task`` refuses the others).
PACKED_TOKEN_FIELDS = ("tokens", "flops", "tokens_per_step", "target_tokens")


@dataclass(frozen=True)
class RunPlan:
    batch: GlobalBatch
    precision: str  # Lightning's precision, resolved: "32-true", "bf16-mixed", ...
    budget: Budget
    vocab_size: int
    params: int  # total parameters
    active_params: int  # what one token runs through (a MoE: top_k of its experts)
    task: TaskSpec = PRETRAINING  # fine-tuning: its kind, labels and example counts
    # pre-training: the prepared corpus's rows, tokens and bytes per split ("train", "val")
    # and its text's digest (CORPUS_RECORD), which a resume must find again (None: not read,
    # as in a dry run or a sweep's checks)
    corpus: dict[str, Any] | None = None

    @property
    def steps(self) -> int:
        return self.budget.steps

    @property
    def train_samples(self) -> int:
        """Training rows the sampler draws over the whole run (steps x global batch)."""
        return self.steps * self.batch.rows

    def start_sample(self, global_step: int) -> int:
        """The data position after ``global_step`` optimizer steps: one integer."""
        return global_step * self.batch.rows

    def trainer_args(self, trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """What the Trainer takes from the plan instead of from ``cfg.trainer``; with
        ``val_check_interval`` in micro-batches. lmlab counts it in optimizer steps, as
        ``log_every_n_steps`` is counted; Lightning counts micro-batches, so its validations
        moved with the accumulation, and with it the device count (null: once, at the end)."""
        args: dict[str, Any] = {
            "max_steps": self.steps,
            "accumulate_grad_batches": self.batch.accumulation,
            "precision": self.precision,
        }
        every = trainer_cfg.get("val_check_interval")
        if every is not None:
            args["val_check_interval"] = every * self.batch.accumulation
        return args

    def as_dict(self) -> dict[str, Any]:
        plan = {
            "steps": self.steps,
            "batch": self.batch.as_dict(),
            "precision": self.precision,
            "vocab_size": self.vocab_size,
            "params": self.params,
            "active_params": self.active_params,
            "train_samples": self.train_samples,
            "budget": self.budget_record(),
            PREPARATION: PREPARATION_VERSION,
        }
        if self.corpus is not None:
            plan["corpus"] = self.corpus
        if self.task.kind != TaskKind.lm:  # a pre-training plan stays as it was
            plan["task"] = self.task.summary()
        return plan

    def budget_record(self) -> dict[str, Any]:
        """The budget as plan.json and results.json record it: a fine-tuning run's without
        the tokens and FLOPs of packed rows (``PACKED_TOKEN_FIELDS``)."""
        record = self.budget.as_dict()
        if self.task.kind != TaskKind.lm:
            record.update(dict.fromkeys(PACKED_TOKEN_FIELDS))
        return record

    def resume_record(self) -> dict[str, Any]:
        """What a resume checks (``check_resumable``): the global batch, the corpus's record
        and a fine-tuning run's examples, for checkpoints to keep."""
        return {key: v for key, v in self.as_dict().items() if key in RESUME_RECORD}


def meta_model(model_cfg: ModelConfig, task: TaskSpec = PRETRAINING) -> nn.Module:
    """The model ``task`` trains with shapes only (no storage), for parameter and FLOP
    counts."""
    if model_cfg.vocab_size is None:
        raise ConfigError("planning needs model.vocab_size (see planning_model_config)")
    with torch.device("meta"):
        return build_task_model(model_cfg, task)


def make_plan(
    cfg: DictConfig,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    seq_len: int,
    task: TaskSpec = PRETRAINING,
    corpus: dict[str, Any] | None = None,
) -> RunPlan:
    """The plan of the run ``cfg`` describes; ``model_cfg`` has its final ``vocab_size``,
    ``task`` its labels (fine-tuning: the examples are read), ``corpus`` the prepared
    corpus's counts (``RunPlan.corpus``)."""
    batch = resolve_global_batch(cfg.trainer, data_cfg, seq_len)
    counts = param_breakdown(meta_model(model_cfg, task))
    budget_cfg: BudgetConfig = OmegaConf.to_object(cfg.budget)
    n = budget_params(budget_cfg, counts)
    budget = resolve_budget(budget_cfg, n, batch.tokens, int(cfg.trainer.max_steps))
    precision = resolve_precision(cfg.trainer)
    return RunPlan(
        batch,
        precision,
        budget,
        model_cfg.vocab_size,
        counts["total"],
        counts["active"],
        task,
        corpus,
    )


def read_plan(out_dir: Path) -> dict[str, Any] | None:
    """The plan saved in a run directory, or None (a run from before plans were saved, or
    one whose ``plan.json`` was deleted: its checkpoints keep the global batch too)."""
    path = out_dir / PLAN
    if not path.exists():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        plan = f"{type(err).__name__}: {err}"
    if not isinstance(plan, dict) or not isinstance(plan.get("batch"), dict):
        raise ConfigError(
            f"cannot resume {out_dir}: its {PLAN} cannot be read as a run plan "
            f"({plan if isinstance(plan, str) else 'no batch in it'}): restore it from a copy "
            "of the run, or delete it (the checkpoint's global batch is checked instead)"
        )
    return plan


def corpus_size(corpus: dict[str, Any]) -> str:
    """``1,234 training tokens from 5,678 bytes`` of a plan's ``corpus``."""
    train = corpus.get("train") or {}
    return f"{train.get('tokens', 0):,} training tokens from {train.get('bytes', 0):,} bytes"


def corpus_change(was: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """How the corpus a run trained on (``was``, its plan's record) differs from this run's
    (``now``), said for the message; None when it is the same, or when either was not read.
    Each record is compared on the keys both hold: a plan written before the text digest was
    recorded is checked by its counts."""
    if was is None or now is None:
        return None
    shared = [key for key in CORPUS_RECORD if key in was and key in now]
    if all(was[key] == now[key] for key in shared):
        return None
    if any(was.get(split) != now.get(split) for split in ("train", "val")):
        return f"{PLAN} has {corpus_size(was)}, this run's data {corpus_size(now)}"
    return (
        f"the same size ({corpus_size(now)}) but other text (its digest "
        f"{was.get('text_sha256')}, now {now.get('text_sha256')})"
    )


def split_moved(was: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """How the same text (``TEXT_DIGEST``, of every document before the split) of a run's
    corpus (``was``) is split otherwise now (``now``), said for the message; None where the
    splits are the same, or the text is not known to be (either record without a digest)."""
    digests = [(record or {}).get(TEXT_DIGEST) for record in (was, now)]
    if None in digests or digests[0] != digests[1]:
        return None
    splits = [
        [(record.get(s) or {}).get("bytes") for s in ("train", "val")] for record in (was, now)
    ]
    if splits[0] == splits[1]:
        return None
    (train_was, val_was), (train_now, val_now) = splits
    return (
        f"the same text (its digest {digests[0]}) held {train_was:,} training and {val_was:,} "
        f"validation bytes then, {train_now:,} and {val_now:,} now"
    )


def task_change(
    was: dict[str, Any] | None, now: dict[str, Any] | None, source: str = PLAN
) -> str | None:
    """How the examples a fine-tuning run trained on (``was``, its plan's task record) differ
    from this run's (``now``), said for the message; None when they are the same, or when
    this run's plan holds no task: one made before the examples are read (a sweep's checks,
    which read no corpus either; the job checks again once it has read them), or a
    pre-training run's, which its config has told apart already (``check_same_run``). The
    examples' digest is compared where both records hold one: a plan written before it was
    recorded is checked by its counts and labels."""
    if now is None:
        return None
    digests = [(record or {}).get(EXAMPLES_DIGEST) for record in (was, now)]
    was, now = (
        None
        if record is None
        else {k: v for k, v in record.items() if k not in (EXAMPLES_DIGEST, VAL_LABELS)}
        for record in (was, now)
    )
    if was != now:
        return f"its {source} has task {was}, this run {now}"
    if None in digests or digests[0] == digests[1]:
        return None
    return (
        f"the same {now['train_examples']:,} training and {now['val_examples']:,} validation "
        f"examples and labels, other contents (their digest {digests[0]}, now {digests[1]})"
    )


def check_preparation(saved: dict[str, Any] | None, out_dir: Path, source: str = PLAN) -> None:
    """A run whose record (``saved``: its plan, or its checkpoint's part of it) names another
    data preparation version than this lmlab's (``PREPARATION_VERSION``) is refused, saying
    what changed between them; read before the data is prepared. A record without one is
    left to ``split_moved`` and ``corpus_change``, once the data is prepared."""
    was = (saved or {}).get(PREPARATION)
    if was is None or was == PREPARATION_VERSION:
        return
    newer = range(was + 1, PREPARATION_VERSION + 1) if isinstance(was, int) else ()
    changes = "; ".join(PREPARATION_CHANGES[v] for v in newer if v in PREPARATION_CHANGES)
    raise ConfigError(
        f"cannot resume {out_dir}: the lmlab that started it prepared its data otherwise (its "
        f"{source} records {PREPARATION}={was}, this lmlab's is {PREPARATION_VERSION}: "
        f"{changes or 'a later lmlab started it'}), {FINISH_OR_RESTART}"
    )


def check_resumable(
    saved: dict[str, Any] | None, plan: RunPlan, out_dir: Path, source: str = PLAN
) -> None:
    """A resumed run continues the data position ``step x global batch rows`` of the run it
    continues, so its data (the corpus, or a fine-tuning run's examples), global batch and
    sequence length must be the same; its steps (a longer run), precision and device count may
    differ. ``saved``: the run directory's plan, or (``source``: a checkpoint) the part of it
    its checkpoint records (``RESUME_RECORD``; older checkpoints: the batch only). What ``plan``
    has not read (a sweep's checks: no corpus, no examples) is left to the run, which checks
    again once it has read them."""
    if saved is None:
        return
    check_preparation(saved, out_dir, source)
    # a checkpoint written before it kept its task record has none to compare (its task's
    # fields are checked with its model: checkpoint_check.check_checkpoint_model)
    if (source == PLAN or "task" in saved) and (
        changed := task_change(saved.get("task"), plan.as_dict().get("task"), source)
    ):
        origin = plan.task.origin or f"task={plan.task.kind.value}"
        raise ConfigError(
            f"cannot resume {out_dir}: the examples of {origin} changed since it "
            f"started: {changed} (the data position would point at other examples): resume "
            "with the examples it was trained on (a relative task.train or task.val is read "
            "from the working directory), or start a new run"
        )
    started = saved.get("corpus") or {}
    if (
        plan.corpus
        and "names" in plan.corpus
        and "text_sha256" in started
        and "names" not in started
    ):
        raise ConfigError(
            f"cannot resume {out_dir}: it started when lmlab named a local data=hf dataset's "
            "rows by data.name's path; they are named by their row now (the split no longer "
            "depends on how the path is typed), which holds other rows out for validation, "
            "so the data position would point at other rows: finish it with the lmlab version "
            "that started it, or start a new run"
        )
    if moved := split_moved(saved.get("corpus"), plan.corpus):
        raise ConfigError(
            f"cannot resume {out_dir}: the lmlab that started it split its corpus otherwise: "
            f"{moved} ({PREPARED_OTHERWISE}), {FINISH_OR_RESTART}"
        )
    changed = corpus_change(saved.get("corpus"), plan.corpus)
    if changed:
        raise ConfigError(
            f"cannot resume {out_dir}: its corpus changed since it started: {changed} (the "
            "data position would point at other rows): resume with the data it was trained "
            "on (a relative data.path is read from the working directory), or start a new run"
        )
    check_same_batch(saved, plan.batch, out_dir, source)


def check_same_batch(
    saved: dict[str, Any], batch: GlobalBatch, out_dir: Path, source: str = PLAN
) -> None:
    """The global batch and sequence length of the run ``saved`` records (its plan, or its
    checkpoint's part of it) are ``batch``'s: a resume's data position is steps x global batch
    rows, and a completed run's steps were trained at its own."""
    was, now = saved["batch"], batch.as_dict()
    for key in ("global_batch_size", "seq_len"):
        if was.get(key) != now[key]:
            raise ConfigError(
                f"cannot resume {out_dir}: its {source} has {key}={was.get(key)}, this run "
                f"{now[key]} (the data position is steps x global batch): keep the global batch "
                "(data.global_batch_size) and sequence length of the run you continue"
            )
