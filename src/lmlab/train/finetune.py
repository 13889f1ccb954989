"""What a run does differently per task (``task=lm|classify|seq2seq``): the data it trains on
and what results.json reports. The model's head comes from ``lmlab.model.build_task_model``
and the validation metrics from ``lmlab.train.metrics``; the rest of a run is the same for
every task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmlab.config import TaskKind, TaskSpec
from lmlab.data.datamodule import LMDataModule
from lmlab.data.finetune import FinetuneDataModule

# The data each task trains on: packed rows of a corpus, or fine-tuning examples; called with
# (data config, task config, family, sequence length, seed, tokenizer JSON or None).
DATAMODULES: dict[TaskKind, Callable[..., LMDataModule]] = {
    TaskKind.lm: lambda data_cfg, task_cfg, *rest: LMDataModule(data_cfg, *rest),
    TaskKind.classify: FinetuneDataModule,
    TaskKind.seq2seq: FinetuneDataModule,
}
# The results.json keys of each task's own validation metrics (compare.py ranks by any).
TASK_RESULTS: dict[TaskKind, dict[str, str]] = {
    TaskKind.lm: {},
    TaskKind.classify: {"val_acc": "val/acc", "val_f1": "val/f1"},
    TaskKind.seq2seq: {"val_accuracy": "val/accuracy", "val_exact_match": "val/exact_match"},
}


def fine_tuning_results(spec: TaskSpec, metrics: dict[str, float], examples: int) -> dict[str, Any]:
    """What results.json says of a fine-tuning run besides the loss: its task (kind, labels,
    example counts), its own metrics, and the examples trained on. (Its tokens and FLOPs are
    left empty, as its budget leaves them: ``plan.PACKED_TOKEN_FIELDS``.)"""
    return {
        "task": spec.summary(),
        **{key: metrics.get(name) for key, name in TASK_RESULTS[spec.kind].items()},
        "examples": examples,
        "epochs": examples / spec.train_examples,
    }
