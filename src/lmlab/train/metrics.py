"""Validation metrics per task, all torchmetrics (summed across ranks by torchmetrics itself).
Each set is a module with ``update(batch, logits, model)``, ``compute() -> {name: value}``
(logged as ``val/<name>``), ``of_loss(loss)`` (what follows from the validation loss alone)
and ``reset()``; the loss (``val/loss``) is the task's own."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassExactMatch,
    MulticlassF1Score,
)

from lmlab.config import ModelConfig, TaskKind, TaskSpec
from lmlab.data.collators import IGNORE
from lmlab.infer.generation import greedy_seq2seq
from lmlab.train.callbacks.extras import eager

Batch = dict[str, torch.Tensor]


class ValMetrics(nn.Module):
    """A named set of torchmetrics; ``compute`` returns them in the order they were added."""

    def __init__(self, **metrics: Metric) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(metrics)

    def update(self, batch: Batch, logits_BTV: torch.Tensor, model: nn.Module) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: metric.compute() for name, metric in self.metrics.items()}

    def of_loss(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metrics that the validation loss (the mean over every scored position)
        determines: none here."""
        return {}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


class TokenMetrics(ValMetrics):
    """Language-model metrics over the positions with labels: every token for GPT, the masked
    tokens for BERT (masked-token accuracy and perplexity), the target tokens for T5. The
    perplexity is exp of the validation loss, the mean cross-entropy over those positions
    (torchmetrics' Perplexity computed the same from a second float32 copy of the logits)."""

    def __init__(self, model_cfg: ModelConfig, task: TaskSpec, **extra: Metric) -> None:
        super().__init__(
            accuracy=MulticlassAccuracy(
                model_cfg.vocab_size, average="micro", ignore_index=IGNORE, validate_args=False
            ),
            **extra,
        )

    def update(self, batch: Batch, logits_BTV: torch.Tensor, model: nn.Module) -> None:
        self.metrics["accuracy"].update(logits_BTV.argmax(-1).flatten(), batch["labels"].flatten())

    def of_loss(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"perplexity": loss.exp()}


class Seq2SeqMetrics(TokenMetrics):
    """The target tokens' perplexity and (teacher-forced) accuracy, and ``exact_match``: the
    share of the first ``task.decode_rows`` validation rows whose greedy decode (KV cache,
    as many steps as their longest target) equals the whole target, EOS included."""

    def __init__(self, model_cfg: ModelConfig, task: TaskSpec) -> None:
        exact = MulticlassExactMatch(model_cfg.vocab_size, ignore_index=IGNORE, validate_args=False)
        # task.decode_rows=0 decodes none: no exact match (it was 0.0, measured over no rows)
        super().__init__(model_cfg, task, **({"exact_match": exact} if task.decode_rows else {}))
        self.decode_rows, self.decoded = task.decode_rows, 0

    def update(self, batch: Batch, logits_BTV: torch.Tensor, model: nn.Module) -> None:
        super().update(batch, logits_BTV, model)
        rows = min(self.decode_rows - self.decoded, batch["input_ids"].shape[0])
        if rows <= 0:
            return
        self.decoded += rows
        labels_BS = batch["labels"][:rows]
        # as many steps as these rows' longest target (targets end in padding): the batch may
        # be wider (its other rows, data.pad_to_multiple_of), and steps past it decode padding
        labels_BS = labels_BS[:, : int((labels_BS != IGNORE).sum(1).max())]
        start_B1 = batch["decoder_input_ids"][:rows, :1]
        mask = batch.get("attention_mask")
        # eagerly, as the other decodes of a run (the sample): under compile=blocks the
        # decoder blocks would recompile for each KV-cache layer and length, past dynamo's limit
        with eager():
            predicted_BS = greedy_seq2seq(
                model,
                batch["input_ids"][:rows],
                mask[:rows] if mask is not None else None,
                start_B1,
                labels_BS.shape[1],
            )
        self.metrics["exact_match"].update(predicted_BS, labels_BS)

    def reset(self) -> None:
        super().reset()
        self.decoded = 0


class ClassifyMetrics(ValMetrics):
    """Accuracy (micro: the share of rows classified right) and macro-F1 (the mean of the
    classes' F1, so a rare class weighs as much as a common one)."""

    def __init__(self, model_cfg: ModelConfig, task: TaskSpec) -> None:
        super().__init__(
            acc=MulticlassAccuracy(task.num_labels, average="micro"),
            f1=MulticlassF1Score(task.num_labels, average="macro"),
        )

    def update(self, batch: Batch, logits_BTV: torch.Tensor, model: nn.Module) -> None:
        predicted_B = logits_BTV[:, 0].argmax(-1)  # one prediction per row: (B, 1, labels)
        for metric in self.metrics.values():
            metric.update(predicted_B, batch["labels"][:, 0])


METRICS: dict[TaskKind, Callable[[ModelConfig, TaskSpec], ValMetrics]] = {
    TaskKind.lm: TokenMetrics,
    TaskKind.classify: ClassifyMetrics,
    TaskKind.seq2seq: Seq2SeqMetrics,
}
