"""Model families built from one block library; ``build_model`` is the only entry point."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lmlab.config import Family, ModelConfig, TaskKind, TaskSpec
from lmlab.model.bert import BERT, ClassificationHead
from lmlab.model.gpt import GPT
from lmlab.model.params import flops_per_token, param_breakdown, recompute_flops_per_token
from lmlab.model.t5 import T5

FAMILIES: dict[Family, Callable[[ModelConfig], nn.Module]] = {
    Family.gpt: GPT,
    Family.bert: BERT,
    Family.t5: T5,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the family's model from a validated ``ModelConfig`` (vocab_size must be set)."""
    return FAMILIES[cfg.family](cfg)


def build_classifier(cfg: ModelConfig, num_labels: int) -> nn.Module:
    """BERT with a sequence-classification head in place of its MLM head."""
    return BERT(cfg, head=ClassificationHead(cfg, num_labels))


# The model each task trains: the family's own for pre-training and seq2seq (T5 as it is), a
# classifier for classify (``lmlab.config.check_task_model`` has checked the family).
TASK_MODELS: dict[TaskKind, Callable[[ModelConfig, TaskSpec], nn.Module]] = {
    TaskKind.lm: lambda cfg, task: build_model(cfg),
    TaskKind.classify: lambda cfg, task: build_classifier(cfg, task.num_labels),
    TaskKind.seq2seq: lambda cfg, task: build_model(cfg),
}


def build_task_model(cfg: ModelConfig, task: TaskSpec) -> nn.Module:
    """The model ``task`` trains (``TaskSpec()``: pre-training, ``build_model``)."""
    return TASK_MODELS[task.kind](cfg, task)


__all__ = [
    "FAMILIES",
    "TASK_MODELS",
    "build_classifier",
    "build_model",
    "build_task_model",
    "flops_per_token",
    "param_breakdown",
    "recompute_flops_per_token",
]
