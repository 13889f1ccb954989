"""The data of lmlab's shipped eval tasks, for their YAML's ``custom_dataset``: the JSONL file
beside this module (made by ``scripts/make_eval_tasks.py``) as one ``test`` split. Read into
memory, not through the ``datasets`` cache, so nothing is downloaded or written."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def jsonl(name: str, **_metadata: object) -> datasets.DatasetDict:
    """``<name>.jsonl`` as ``{"test": Dataset}``; lm-eval also passes the task's metadata."""
    lines = (HERE / f"{name}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
