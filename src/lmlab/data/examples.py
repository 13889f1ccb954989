"""Fine-tuning examples (``task=classify``, ``task=seq2seq``) as they are read: from a set
shipped with lmlab (``corpora/<name>.{train,val}.jsonl``), local JSONL or CSV files, or a
``datasets`` hub name (``datasets.load_dataset`` reads all three), split, checked and
labelled. Without a validation file or split, a fixed fraction of the training examples is
held out (``task.val_fraction``, seed 0). Class labels are checked and get ids once, from
the training split (``lmlab.data.labels``). Every refusal names the field, the file and the
example's place in it (``lmlab.data.split.example``).
``lmlab.data.finetune`` tokenises them into the data module.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

from lmlab.config import TaskConfig, TaskKind, TaskSource
from lmlab.config.task import FILE_FORMATS
from lmlab.data.csv_texts import csv_texts
from lmlab.data.hub import load_dataset
from lmlab.data.labels import check_labels, label_ids, label_names
from lmlab.data.sources import stat_identity
from lmlab.data.split import Split, example
from lmlab.errors import ConfigError, first_line

CORPORA = Path(__file__).resolve().parent / "corpora"

# The two columns each task reads (fields of TaskConfig): the model's input, what it predicts.
COLUMNS = {
    TaskKind.classify: ("text_column", "label_column"),
    TaskKind.seq2seq: ("input_column", "target_column"),
}


def read_file(origin: str, path: str | Path, cache_dir: Path, texts: Sequence[str] = ()) -> Split:
    """One JSONL or CSV file as a ``datasets.Dataset``; ``origin`` names it in errors, and each
    example's line in the file comes with it. The columns ``texts`` of a CSV are its text as
    written (``csv_texts``). Read again whenever the file changed (``file_version``)."""
    kind = FILE_FORMATS[Path(path).suffix.lower()]
    path = Path(path).expanduser()
    header, lines = csv_lines(origin, path) if kind == "csv" else ([], json_lines(origin, path))
    try:
        with quiet_datasets():
            ds = datasets.load_dataset(
                kind,
                data_files=str(path),
                split="train",
                cache_dir=str(cache_dir / file_version(path)),
                **csv_texts(header, texts),
            )
    except Exception as err:  # datasets raises many types for a malformed file
        cause = err  # datasets wraps the parser's own words ("Expected 2 fields in line 5")
        while cause.__cause__ is not None:
            cause = cause.__cause__
        why = what_is_wrong(path, kind) or first_line(cause)
        raise ConfigError(f"{origin} could not be read as {kind}: {why}") from None
    ds = as_written(path, ds) if kind == "json" else ds
    return Split(ds, origin, None, lines if lines is not None and len(lines) == len(ds) else None)


def file_version(path: Path) -> str:
    """The folder of ``datasets``' cache for this version of the file. ``datasets`` knows a
    local file by its path and modification time only, so a file rewritten with its time kept
    (``cp -p``, ``rsync -a``, an archive unpacked) gave the old rows; here it is known as the
    corpus's files are (``stat_identity``: size, inode, modification and change times)."""
    identity = json.dumps(stat_identity(path))
    return "file-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def as_written(path: Path, ds: datasets.Dataset) -> datasets.Dataset:
    """``ds`` (the JSON file ``path``) with each field that mixes kinds of value holding the
    values the file holds. ``datasets`` reads such a field as its Json feature, which gives
    back a string that reads as JSON as that value: the labels "1", "2", "10" beside one 3
    came back as class ids and trained eleven classes, 0 to 10, and "true" came back as a
    boolean. As written, the columns' checks (``columns``) name the example of another kind.
    (By the feature's name: an older ``datasets`` has none, and fails on such a file.)"""
    features = {n: f for n, f in ds.features.items() if type(f).__name__ == "Json"}
    if not features:
        return ds
    text = path.read_text(encoding="utf-8")  # datasets read it: UTF-8 JSON or JSON Lines
    try:
        whole = json.loads(text)
        records = whole if isinstance(whole, list) else [whole]
    except ValueError:  # JSON Lines ("\n" ends a line: a JSON string may hold U+2028)
        records = [json.loads(line) for line in text.split("\n") if line.strip()]
    if len(records) != len(ds) or not all(isinstance(r, dict) for r in records):
        return ds  # not one record per example: datasets' values
    order = ds.column_names
    for name, feature in features.items():
        written = [json.dumps(r.get(name)) for r in records]  # as the feature stores them
        ds = ds.remove_columns(name).add_column(name, written, feature=feature)
    return ds.select_columns(order)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """``datasets``' log and progress bars off while it reads a file, as they were after: a
    file it cannot read is lmlab's one line (``datasets``' ERROR line counts rows otherwise)."""
    level = datasets.utils.logging.get_verbosity()
    bars_off = datasets.utils.are_progress_bars_disabled()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.utils.logging.set_verbosity(level)
        if not bars_off:
            datasets.enable_progress_bars()


def json_lines(origin: str, path: Path) -> list[int] | None:
    """Each example's line in a JSON Lines file: its lines that are not blank (``datasets``
    skips those). None where it cannot be read (``datasets`` then says why). A line that is
    not UTF-8 is refused, naming it: ``datasets`` reads it, and the first use of its text
    failed in a traceback."""
    lines = []
    try:
        with path.open("rb") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    line.decode("utf-8")
                    lines.append(n)
    except OSError:
        return None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{origin} could not be read as json: line {n} is not UTF-8 ({err.reason} at byte "
            f"{err.start} of the line): save the file as UTF-8"
        ) from None
    return lines


def csv_lines(origin: str, path: Path) -> tuple[list[str], list[int] | None]:
    """A CSV's header and each example's first line (the header is line 1; a quoted field
    can span lines; blank lines are skipped, as pandas skips them). A line that repeats the
    header, as two files joined with ``cat`` do, is refused: it would be an example whose
    label is the column's name, and so is a line with more fields than the header names:
    pandas then takes the first column for the rows' index, every column one to the left of
    its name (an unquoted comma in every text, a trailing comma on every line). ([], None)
    where the ``csv`` module cannot read the file (``datasets`` then says why)."""
    header: list[str] = []
    lines: list[int] = []
    start = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for record in reader:
                if header and record == header:
                    raise ConfigError(
                        f"{origin} could not be read as csv: line {start} repeats the header "
                        "row: two CSV files joined? (keep the first file's header only)"
                    )
                if record and not header:
                    header = record
                    check_names(origin, header)
                elif record:
                    if len(record) > len(header):
                        raise ConfigError(
                            f"{origin} could not be read as csv: line {start} has "
                            f"{len(record)} fields, the header {len(header)} "
                            f"({', '.join(header)}): quote a field that holds a comma "
                            '("red, green"), and end no line with one'
                        )
                    lines.append(start)
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error):  # a field over the csv module's 128 KiB too
        return [], None
    return header, lines


def check_names(origin: str, header: list[str]) -> None:
    """A header that names a column twice is refused: pandas reads the second as "text.1",
    and the examples were the first column's, unsaid."""
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        names = " and ".join(f'"{name}"' for name in twice)
        raise ConfigError(
            f"{origin} could not be read as csv: its header ({', '.join(header)}) names "
            f"{names} twice: give each column a name of its own"
        )


def what_is_wrong(path: Path, kind: str) -> str | None:
    """Why ``datasets`` could not read a file, in the file's terms (its own errors name its
    internals: ``StopIteration``, "corresponds to no data"); None if not found here."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        return first_line(err)
    filled = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not filled:
        return "the file is empty: no examples"
    if kind == "csv":
        return "a header row and no examples" if len(filled) == 1 else None
    first: dict[str, tuple[int, str, Any]] = {}  # each field's first line, kind and value
    for n, line in filled:
        try:
            row = json.loads(line)
        except ValueError as err:
            return f"line {n} is not JSON ({err})"
        if not isinstance(row, dict):
            return f'line {n} is not a JSON object (one example per line: {{"text": ...}})'
        for key, value in row.items():
            if value is None:
                continue
            seen = first.setdefault(key, (n, json_kind(value), value))
            if seen[1] != json_kind(value):
                return (
                    f"line {n}'s {key!r} is {json_kind(value)} ({value!r}), line {seen[0]}'s "
                    f"{seen[1]} ({seen[2]!r}): a field holds one kind of value on every line "
                    '(a label written "1.5" where the others are text)'
                )
    return None


def json_kind(value: Any) -> str:
    """What kind of JSON value ``value`` is, as ``datasets`` needs one per column (an integer
    and a float are both numbers: a column of both is read as floats)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}[type(value)]


def shipped_splits(task: TaskConfig, cache_dir: Path) -> tuple[Split, Split | None]:
    train, val = (
        read_file(
            f"task.name={task.name} ({split})", CORPORA / f"{task.name}.{split}.jsonl", cache_dir
        )
        for split in ("train", "val")
    )
    return train, val


def file_splits(task: TaskConfig, cache_dir: Path) -> tuple[Split, Split | None]:
    texts = [getattr(task, field_name) for field_name in text_fields(task)]
    train = read_file(f"task.train={task.train}", task.train, cache_dir, texts)
    if task.val is None:
        return train, None
    return train, read_file(f"task.val={task.val}", task.val, cache_dir, texts)


def hub_splits(task: TaskConfig, cache_dir: Path) -> tuple[Split, Split | None]:
    def load(split: str) -> Split:
        ds = load_dataset("task.name", task.name, task.subset, split, cache_dir=str(cache_dir))
        return Split(ds, f"task.name={task.name} split={split}")

    return load(task.train_split), load(task.val_split) if task.val_split else None


SOURCES: dict[TaskSource, Callable[[TaskConfig, Path], tuple[Split, Split | None]]] = {
    TaskSource.shipped: shipped_splits,
    TaskSource.files: file_splits,
    TaskSource.hf: hub_splits,
}


def load_splits(task: TaskConfig, cache_dir: Path) -> tuple[Split, Split]:
    """The training and validation examples; without validation ones, ``task.val_fraction``
    of the training examples, held out by a fixed shuffle (the same for every run seed)."""
    train, val = SOURCES[task.source](task, cache_dir)
    origin = train.origin
    if val is None:
        train, val = held_out(task, train)
        origin = f"{origin} (less the task.val_fraction={task.val_fraction} held out)"
    if task.kind == TaskKind.classify:  # here, where a label's line is known (label_ids)
        names = label_names(columns(task, train)[1], task.num_labels, origin)
        label_ids(columns(task, val)[1], names, val)
    return train, val


def held_out(task: TaskConfig, train: Split) -> tuple[Split, Split]:
    """``task.val_fraction`` of ``train``'s examples, and the others; each keeps its row in
    the source (``Split.rows``), so that errors name its place in the file, not the shuffle's.
    The rows are those ``train.examples.train_test_split`` holds out, with the same seed."""
    columns(task, train)  # a file of another shape is named by its columns, not "too few"
    n = len(train.examples)
    if n < 2:
        raise ConfigError(f"{train.origin} holds {n} examples: too few to split")
    parts = datasets.Dataset.from_dict({"row": range(n)}).train_test_split(
        test_size=task.val_fraction, seed=0
    )

    def part(name: str, origin: str) -> Split:
        rows = parts[name]["row"]
        return Split(train.examples.select(rows), origin, rows, train.lines)

    held = f"{train.origin} (task.val_fraction={task.val_fraction} held out)"
    return part("train", train.origin), part("test", held)


def text_fields(task: TaskConfig) -> tuple[str, ...]:
    """The fields of ``task`` that name text columns: its input (and the pair's second text),
    and seq2seq's target."""
    pair = ("text_pair_column",) if task.text_pair_column is not None else ()
    if task.kind == TaskKind.seq2seq:
        return (*COLUMNS[task.kind], *pair)
    return (COLUMNS[task.kind][0], *pair)


def columns(task: TaskConfig, split: Split) -> tuple[list[Any], list[Any]]:
    """The task's two columns of ``split``, inputs and targets; with ``task.text_pair_column``
    each input is a pair of texts (a, b). A missing column, an empty split, a text that is
    not a string, a missing label or one that is no class (``no_class``) is a ConfigError
    naming the field and the example (``example``)."""
    pair = ("text_pair_column",) if task.text_pair_column is not None else ()
    fields = (*COLUMNS[task.kind], *pair)
    values = {}
    for field_name in fields:
        column = getattr(task, field_name)
        if column not in split.examples.column_names:
            raise ConfigError(
                f"task.{field_name}={column!r} is not a column of {split.origin} (its columns: "
                f"{', '.join(split.examples.column_names)})"
            )
        values[field_name] = list(split.examples[column])
    inputs, targets = (values[f] for f in COLUMNS[task.kind])
    if not inputs:
        raise ConfigError(f"{split.origin} holds no examples")
    for field_name in text_fields(task):
        bad = next((r for r, t in enumerate(values[field_name]) if not isinstance(t, str)), None)
        if bad is not None:
            value = values[field_name][bad]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            raise ConfigError(
                f"task.{field_name}={getattr(task, field_name)!r}: {example(bad, split)} of "
                f"{split.origin} holds {value!r}, not a text"
                + (f': a number (a JSON text is quoted: "{value}")' if number else "")
            )
    if task.kind == TaskKind.seq2seq:  # an empty target: nothing to learn, a free exact match
        empty = next((r for r, t in enumerate(targets) if not t.strip()), None)
        if empty is not None:
            raise ConfigError(
                f"task.target_column={task.target_column!r}: {example(empty, split)} of "
                f"{split.origin} is empty; allowed: a target text to predict (leave the "
                "example out)"
            )
    if task.kind == TaskKind.classify:
        check_labels(task, targets, split)
    if pair:
        inputs = list(zip(inputs, values["text_pair_column"], strict=True))
    return inputs, targets


def input_texts(inputs: list[Any]) -> list[str]:
    """The texts of ``columns``' inputs: each text, or both texts of each pair."""
    return [t for x in inputs for t in x] if inputs and isinstance(inputs[0], tuple) else inputs
