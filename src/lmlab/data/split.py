"""A split of fine-tuning examples as read (``Split``), and how an error names one of its
examples: by its place in its file or hub split (``example``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import datasets


class Split(NamedTuple):
    examples: datasets.Dataset
    origin: str  # where it was read, for error messages: "task.train=x.jsonl"
    rows: Sequence[int] | None = None  # each example's row in its source (0-based), where a
    # shuffle moved it (the held-out split); None: its row here
    lines: Sequence[int] | None = None  # each source row's line in its file; None: a hub split


def example(row: int, split: Split | None = None) -> str:
    """A 0-based row of ``split`` as errors name it: the example's place in its file or hub
    split (in the held-out split too, whose rows are shuffled), counted from 1 as a JSON Lines
    file's lines are, and its line in the file where that is another number (a CSV's header
    is line 1; blank lines are no examples)."""
    if split is not None and split.rows is not None:
        row = split.rows[row]
    line = None if split is None or split.lines is None else split.lines[row]
    return f"example {row + 1}" + (f" (line {line})" if line not in (None, row + 1) else "")


def clip(text: str, width: int = 40) -> str:
    """A label as an error shows it: a text column taken for the labels has long ones."""
    return text if len(text) <= width else text[: width - 3] + "..."
