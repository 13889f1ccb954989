"""The data of lmlab's shipped eval tasks, for their YAML's ``custom_dataset``: the JSONL files
beside this module (made by ``scripts/make_eval_tasks.py``), ``<name>.jsonl`` as the ``test``
split and, for a task that takes few-shot examples, ``<name>.fewshot.jsonl`` as its
``fewshot`` split (drawn from other documents than the items scored). Read into memory, not
through the ``datasets`` cache, so nothing is downloaded or written."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def jsonl(name: str, **_metadata: object) -> datasets.DatasetDict:
    """``<name>.jsonl`` as ``{"test": Dataset}``, with ``"fewshot"`` where ``<name>.fewshot.jsonl``
    exists; lm-eval also passes the task's metadata."""
    splits = {"test": HERE / f"{name}.jsonl", "fewshot": HERE / f"{name}.fewshot.jsonl"}
    return datasets.DatasetDict(
        {split: _rows(path) for split, path in splits.items() if split == "test" or path.exists()}
    )


def _rows(path: Path) -> datasets.Dataset:
    lines = path.read_text(encoding="utf-8").splitlines()
    return datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])
