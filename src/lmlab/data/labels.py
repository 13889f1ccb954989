"""Class labels of a fine-tuning classification: the checks of a split's label column (a
missing label, one that is no class, a column mixing kinds: ``check_labels``), and their ids,
given once from the training split (``label_names``, ``label_ids``), and what always
answering the most frequent validation label scores (``majority``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lmlab.config import TaskConfig
from lmlab.data.split import Split, clip, example
from lmlab.errors import ConfigError


def check_labels(task: TaskConfig, labels: list[Any], split: Split) -> None:
    """A ConfigError naming the field and the example of the first label of ``split`` that
    is missing, no class (``no_class``) or of another kind than the first (``mixed_kinds``)."""
    if None in labels:
        raise ConfigError(
            f"task.label_column={task.label_column!r}: {example(labels.index(None), split)} "
            f"of {split.origin} has no label (JSON null or no such key; in a CSV an empty field "
            "or a missing-value mark pandas reads as none: NA, N/A, None, null, nan, ...; a "
            "class of such a name: spell it otherwise)"
        )
    odd = no_class(labels, task.num_labels)
    if odd is not None:
        ids = f"ids 0 .. {task.num_labels - 1}" if task.num_labels else "ids from 0"
        raise ConfigError(
            f"task.label_column={task.label_column!r}: {example(odd, split)} of {split.origin} "
            f"holds the label {clip(repr(labels[odd]))}; allowed: strings or integers (class "
            f"names or {ids}; lmlab has no regression task)"
        )
    mixed = mixed_kinds(labels)
    if mixed is not None:
        first, value = labels[0], labels[mixed]
        raise ConfigError(
            f"task.label_column={task.label_column!r}: {example(mixed, split)} of "
            f"{split.origin} holds the label {clip(repr(value))} ({label_kind(value)}), where "
            f"{example(0, split)} holds {clip(repr(first))} ({label_kind(first)}); allowed: "
            "labels of one kind (strings as class names, integer class ids, or booleans)"
        )


def label_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return "an integer" if isinstance(value, int) else "a string"


def mixed_kinds(labels: list[Any]) -> int | None:
    """The row of the first label of another kind (``label_kind``) than the first one's. Each
    kind names classes its own way (an integer is its id, the others take ids in the sorted
    order of their text), so a JSON column of integers with one ``true`` trained three
    classes, "True" among them."""
    kind = label_kind(labels[0])
    return next((r for r, v in enumerate(labels) if label_kind(v) != kind), None)


def no_class(labels: list[Any], num_labels: int | None = None) -> int | None:
    """The row of the first label that is no class name or id: a float (1.0 too), a list, a
    dict, or an integer below 0 or (with ``task.num_labels``) from ``num_labels`` on; one with a
    fraction first, since with integers one 1.0 makes every label a float. Booleans are class
    names, False and True. Checked in every split, so that a held-out or validation label
    such as GLUE's -1 (no label) is named as no class id, not as one the training split
    lacks (``label_ids``)."""

    def odd_one(v: Any) -> bool:
        if isinstance(v, int) and not isinstance(v, bool):
            return v < 0 or (num_labels is not None and v >= num_labels)
        return isinstance(v, float | list | dict)

    odd = [r for r, v in enumerate(labels) if odd_one(v)]
    fractions = [r for r in odd if isinstance(labels[r], float) and not labels[r].is_integer()]
    return next(iter(fractions + odd), None)


def label_names(labels: list[Any], num_labels: int | None, origin: str) -> tuple[str, ...]:
    """The class names in id order, from the training labels. Integer labels are their own
    ids, 0 .. num_labels - 1 (null: the largest + 1); any other labels (strings) take ids in
    the sorted order of their text. Deterministic: the same data gives the same ids."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        n = num_labels or max(labels) + 1  # each in 0 .. n - 1: ``columns`` (``no_class``)
        names = tuple(str(i) for i in range(n))
    else:
        names = tuple(sorted({str(v) for v in labels}))
        if num_labels is not None and num_labels != len(names):
            raise ConfigError(
                f"task.num_labels={num_labels}, but {origin} has {len(names)} labels: "
                f"{', '.join(names[:20])}"
            )
    present = sorted({str(v) for v in labels})  # integer ids 0 .. n - 1 may be missing
    if len(present) < 2:
        raise ConfigError(
            f"task.label_column: {origin} has one label only ({present[0]}): a classifier "
            "needs examples of two or more"
        )
    return names


def label_ids(labels: list[Any], names: tuple[str, ...], origin: str | Split) -> list[int]:
    """Each label's id; a label the training split does not have is a ConfigError, naming
    its example in the file where ``origin`` is the split (``example``)."""
    split = origin if isinstance(origin, Split) else None
    index = {name: i for i, name in enumerate(names)}
    for row, value in enumerate(labels):
        if value is None or str(value) not in index:
            shown = ", ".join(clip(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            held = split is not None and split.rows is not None  # lmlab's hold-out drew it
            raise ConfigError(
                f"task.label_column: {example(row, split)} of {split.origin if split else origin} "
                f"has label {clip(repr(value))}, unknown to the training split (its "
                f"{len(names)} labels: {shown})" + (HELD_ALONE if held else "")
            )
    return [index[str(v)] for v in labels]


# Said where the example of a label the training split lacks is one lmlab held out: the user
# wrote no validation split to mend.
HELD_ALONE = (
    ": the shuffle that holds out task.val_fraction drew every example of that label; give "
    "more examples of it, leave it out, or give validation examples (task.val, task.val_split)"
)


def majority(
    ids: list[int], names: tuple[str, ...], origin: str
) -> tuple[tuple[int, ...], str | None]:
    """The validation examples of each label (in id order), and a line saying them with the
    accuracy of always answering the most frequent: the floor a classifier's ``val_acc``
    beats, which a sorted or skewed validation file hides (``val_f1``, macro, does not). No
    line without validation examples."""
    counts = Counter(ids)
    per_label = tuple(counts.get(i, 0) for i in range(len(names)))
    if not ids:
        return per_label, None
    top = max(range(len(names)), key=per_label.__getitem__)
    total = len(ids)
    shown = sorted(range(len(names)), key=lambda i: -per_label[i])
    spelled = ", ".join(f"{clip(names[i])} {per_label[i]:,}" for i in shown[:10])
    more = f", ... ({len(names)} labels)" if len(names) > 10 else ""
    return per_label, (
        f"validation labels of {origin}: {spelled}{more}; always answering "
        f"{clip(names[top])} scores val_acc {per_label[top] / total:.3f}"
    )
