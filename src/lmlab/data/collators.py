"""Objectives live in the collators: each turns packed token rows into model inputs and
``labels`` (-100 where no loss is taken), so ``task.py`` has one loss path for all families."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmlab.config import Family

Batch = dict[str, torch.Tensor]


class CausalLMCollator:
    """Next-token prediction: inputs are rows[:, :-1], labels rows[:, 1:]."""

    def __call__(self, rows_BT1: torch.Tensor) -> Batch:
        rows_BT1 = rows_BT1.long()
        return {"input_ids": rows_BT1[:, :-1], "labels": rows_BT1[:, 1:]}


COLLATORS: dict[Family, Callable[..., Callable[[torch.Tensor], Batch]]] = {
    Family.gpt: lambda **_: CausalLMCollator(),
}
