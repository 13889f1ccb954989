"""Fine-tuning examples read from files (``lmlab.data.examples``): never stale, text read as
the file's text, refusals that name the file and the line, and ``datasets``' own output kept
from the user. The functions are called directly on small files: no training."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import datasets
import pytest

from lmlab.config import TaskConfig, TaskKind, TaskSource
from lmlab.data.examples import SOURCES, columns, load_splits, read_file
from lmlab.data.labels import label_names, majority
from lmlab.data.split import Split
from lmlab.errors import ConfigError


def jsonl(path: Path, rows: list[dict], blank_lines: int = 0) -> Path:
    path.write_text("\n" * blank_lines + "".join(json.dumps(r) + "\n" for r in rows))
    return path


def classify(train: Path, val: Path | None = None) -> TaskConfig:
    return TaskConfig(
        kind=TaskKind.classify,
        source=TaskSource.files,
        train=str(train),
        val=None if val is None else str(val),
    )


def test_a_file_rewritten_with_its_size_and_modification_time_kept_is_read_again(
    tmp_path: Path,
) -> None:
    """``datasets`` keys a local file by its path and modification time: a file copied with
    ``cp -p`` or ``rsync -a``, or unpacked from an archive, kept its old rows. Rewritten with
    the same size and its times set back, it is read again; read unchanged, it is not."""
    path = tmp_path / "f.jsonl"
    cache = tmp_path / "cache"
    jsonl(path, [{"text": f"a {i:02d}", "label": "ab"[i % 2]} for i in range(40)])
    first = path.stat()
    assert read_file("f", path, cache).examples["text"][0] == "a 00"
    assert read_file("f", path, cache).examples["text"][0] == "a 00"
    entries = sorted(cache.iterdir())
    jsonl(path, [{"text": f"b {i:02d}", "label": "xy"[i % 2]} for i in range(40)])
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (first.st_size, first.st_mtime_ns)
    again = read_file("f", path, cache).examples
    assert again["text"][0] == "b 00" and set(again["label"]) == {"x", "y"}
    assert len(entries) == 1 and len(list(cache.iterdir())) == 2  # one entry a version


def test_text_columns_of_a_csv_are_the_strings_in_the_file(tmp_path: Path) -> None:
    """A CSV's types are guessed: a column of numbers was read as integers and refused as
    "not a text", "007" lost its zeros and "NA" became a missing value. Text columns are
    read as written; a label column keeps its integers (class ids)."""
    path = tmp_path / "num.csv"
    path.write_text("input,target\nthree four,34\nzero zero seven,007\nnot available,NA\n")
    task = TaskConfig(kind=TaskKind.seq2seq, source=TaskSource.files, train=str(path))
    task.val = str(path)
    train, _ = load_splits(task, tmp_path / "cache")
    assert columns(task, train) == (
        ["three four", "zero zero seven", "not available"],
        ["34", "007", "NA"],
    )
    digits = tmp_path / "digits.csv"
    digits.write_text("text,label\n123,0\n0456,1\n7.50,1\n")
    train, _ = load_splits(classify(digits, digits), tmp_path / "cache")
    assert columns(classify(digits, digits), train) == (["123", "0456", "7.50"], [0, 1, 1])


def test_a_number_in_a_jsonl_text_field_is_named_a_number(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "n.jsonl", [{"input": "a b", "target": t} for t in ("ab", 34)])
    task = TaskConfig(kind=TaskKind.seq2seq, source=TaskSource.files, train=str(path))
    task.val = str(path)
    with pytest.raises(ConfigError, match=r"example 2 of task.train=.*n.jsonl holds 34, not a te"):
        columns(task, load_splits(task, tmp_path / "cache")[0])
    with pytest.raises(
        ConfigError, match=r"holds 34, not a text: a number \(a JSON text is quoted"
    ):
        columns(task, load_splits(task, tmp_path / "cache")[0])


def test_two_csv_files_joined_are_refused_at_the_repeated_header(tmp_path: Path) -> None:
    """``cat a.csv b.csv`` repeats the header as an example, which became a class named
    "label" (and turned integer labels into strings)."""
    part = "text,label\n" + "".join(f'"line, {i}",{i % 2}\n' for i in range(3))
    path = tmp_path / "joined.csv"
    path.write_text(part + "\n" + part)
    with pytest.raises(ConfigError) as info:
        read_file(f"task.train={path}", path, tmp_path / "cache")
    assert str(info.value) == (
        f"task.train={path} could not be read as csv: line 6 repeats the header row: two CSV "
        "files joined? (keep the first file's header only)"
    )


@pytest.mark.parametrize(
    ("name", "text", "shown"),
    [
        ("f.jsonl", '{"text": "c", "label": 0.5}', "0.5"),
        ("s.jsonl", '{"text": "c", "label": 1.0}', "1.0"),
        ("f.jsonl", '{"text": "c", "label": [0, 1]}', "[0, 1]"),
        ("f.jsonl", '{"text": "c", "label": {"a": 1}}', "{'a': 1}"),
        ("f.csv", "c,0.07", "0.07"),
        ("f.jsonl", '{"text": "c", "label": -1}', "-1"),
    ],
)
def test_a_label_that_is_no_class_name_is_refused(
    tmp_path: Path, name: str, text: str, shown: str
) -> None:
    """Floats, lists and dicts became class names ("0.5", "[0, 1]"); a column of measurements
    (a regression) gave "label 0.07 unknown to the training split" at the first held-out
    one. Booleans are class names, False and True."""
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("text,label\na,0\nb,1\n" + text + "\n")
        line = "example 3 (line 4)"
    else:
        first = ["x", "y"] if name == "s.jsonl" else [0, 1]  # with 0 and 1, 1.0 makes 0.0 and 1.0
        rows = [json.dumps({"text": t, "label": y}) for t, y in zip("ab", first, strict=True)] + [
            text
        ]
        path.write_text("\n".join(rows) + "\n")
        line = "example 3"
    task = classify(path, path)
    with pytest.raises(ConfigError) as info:
        columns(task, load_splits(task, tmp_path / "cache")[0])
    assert re.fullmatch(
        rf"task.label_column='label': {re.escape(line)} of task.train=.*{re.escape(name)} holds "
        rf"the label {re.escape(shown)}; allowed: strings or integers \(class names or ids from 0; "
        r"lmlab has no regression task\)",
        str(info.value),
    ), str(info.value)
    assert label_names([True, False, True], None, "x") == ("False", "True")


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        ([0, 1, 0, True], "example 4 of task.train=.* holds the label True \\(a boolean\\)"),
        (["pos", "neg", 1], "example 3 of task.train=.* holds the label 1 \\(an integer\\)"),
        ([False, True, "maybe"], "example 3 of .* holds the label 'maybe' \\(a string\\)"),
    ],
)
def test_a_label_column_of_mixed_kinds_is_refused(tmp_path: Path, labels: list, shown: str) -> None:
    """A JSON label column of integers with one ``true`` trained three classes (0, 1 and
    "True"): integers are their own ids, other labels take ids by their text. A column mixing
    kinds is refused, naming the first example of another kind and the first example's."""
    path = jsonl(
        tmp_path / "f.jsonl", [{"text": f"t{i}", "label": y} for i, y in enumerate(labels)]
    )
    task = classify(path, path)
    with pytest.raises(
        ConfigError, match=shown + r", where example 1 holds .*; allowed: labels of one kind"
    ):
        columns(task, load_splits(task, tmp_path / "cache")[0])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (  # read as [1, 2, 10, 3]: eleven classes, 0 to 10
            [{"text": f"t{i}", "label": y} for i, y in enumerate(["1", "2", "10", 3])],
            "task.label_column='label': example 4 of task.train={path} holds the label 3 (an "
            "integer), where example 1 holds '1' (a string); allowed: labels of one kind "
            "(strings as class names, integer class ids, or booleans)",
        ),
        (  # read as [True, False, 2]
            [{"text": f"t{i}", "label": y} for i, y in enumerate(["true", "false", 2])],
            "task.label_column='label': example 3 of task.train={path} holds the label 2 (an "
            "integer), where example 1 holds 'true' (a string); allowed: labels of one kind "
            "(strings as class names, integer class ids, or booleans)",
        ),
        (  # read as [123, 5]: the quoted "123" was named as the number, "not quoted"
            [{"text": "123", "label": "a"}, {"text": 5, "label": "b"}],
            "task.text_column='text': example 2 of task.train={path} holds 5, not a text: a "
            'number (a JSON text is quoted: "5")',
        ),
    ],
)
def test_a_json_field_of_two_kinds_keeps_its_values_as_written(
    tmp_path: Path, rows: list, message: str
) -> None:
    """``datasets`` reads a JSON field whose values are of two kinds as its Json feature,
    which gives back a string that reads as JSON ("1", "true", "123") as that value: the
    labels "1", "2", "10" and one 3 trained eleven classes in silence. The values are the
    file's, so the checks name the example of the other kind, with its value as written."""
    path = jsonl(tmp_path / "f.jsonl", rows)
    task = classify(path, path)
    split = read_file(f"task.train={path}", path, tmp_path / "cache")
    assert list(split.examples["label"]) == [r["label"] for r in rows]
    assert split.examples.column_names == ["text", "label"]
    with pytest.raises(ConfigError) as info:
        columns(task, split)
    assert str(info.value) == message.format(path=path)


def test_a_csv_label_pandas_reads_as_missing_is_named_as_such(tmp_path: Path) -> None:
    """A CSV class written ``None`` or ``NA`` (pandas' missing-value marks, which the label
    column keeps: R writes a missing label ``NA``) was refused as "has no label", of a line
    that shows one; the refusal says which fields read as missing."""
    path = tmp_path / "f.csv"
    path.write_text("text,label\na,positive\nb,None\nc,negative\n")
    with pytest.raises(ConfigError) as info:
        load_splits(classify(path, path), tmp_path / "cache")
    assert str(info.value).startswith(
        f"task.label_column='label': example 2 (line 3) of task.train={path} has no label (JSON "
        "null or no such key; in a CSV an empty field or a missing-value mark pandas reads as "
        "none: NA, N/A, None, null, nan, ...; a class of such a name: spell it otherwise)"
    ), str(info.value)


def test_a_held_out_label_that_is_no_class_id_is_named_so(tmp_path: Path) -> None:
    """A held-out -1 (GLUE's "no label") was "unknown to the training split: the shuffle
    that holds out task.val_fraction drew every example of that label; give more examples of
    it", of a label no example may have; so was one past task.num_labels. Each is named as no
    class id, in the held-out split as in a validation file."""
    rows = [{"text": f"t {i}", "label": i % 2} for i in range(40)]
    for label, num_labels, ids in ((-1, None, "from 0"), (2, 2, "0 .. 1")):
        rows[4]["label"] = label  # row 4 is held out by the fixed shuffle (seed 0)
        path = jsonl(tmp_path / "t.jsonl", rows)
        for task in (classify(path), classify(jsonl(tmp_path / "t2.jsonl", rows[:4]), path)):
            task.num_labels = num_labels
            with pytest.raises(ConfigError) as info:
                load_splits(task, tmp_path / "cache")
            assert re.fullmatch(
                rf"task.label_column='label': example 5 of task.(train|val)={re.escape(str(path))}"
                rf"( \(task.val_fraction=0.1 held out\))? holds the label {label}; allowed: "
                rf"strings or integers \(class names or ids {ids}; lmlab has no regression task\)",
                str(info.value),
            ), str(info.value)


def held_out_error(task: TaskConfig, cache: Path) -> str:
    with pytest.raises(ConfigError, match="unknown to the training split") as info:
        load_splits(task, cache)
    return str(info.value)


def test_an_unknown_held_out_label_is_named_by_its_place_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held-out split is shuffled: its row number was no place in the file. The error
    names the example in the file's order and its line (a CSV's header is line 1; blank
    lines are skipped), or a hub split's example in the split's order."""
    labels = ["ab"[i % 2] if i % 3 else f"only{i}" for i in range(60)]
    rows = [{"text": f"t {i}", "label": label} for i, label in enumerate(labels)]
    path = jsonl(tmp_path / "blank.jsonl", rows, blank_lines=2)
    message = held_out_error(classify(path), tmp_path / "cache")
    found = re.search(r"example (\d+) \(line (\d+)\) of .* has label '(only\d+)'", message)
    assert found, message
    n, line, label = int(found[1]), int(found[2]), found[3]
    assert (line, labels[n - 1]) == (n + 2, label)
    assert json.loads(path.read_text().splitlines()[line - 1])["label"] == label

    path = tmp_path / "f.csv"
    path.write_text("text,label\n" + "".join(f"t {i},{label}\n" for i, label in enumerate(labels)))
    message = held_out_error(classify(path), tmp_path / "cache")
    found = re.search(r"example (\d+) \(line (\d+)\) of .* has label '(only\d+)'", message)
    assert found, message
    assert path.read_text().splitlines()[int(found[2]) - 1].endswith(f",{found[3]}")

    hub = datasets.Dataset.from_list(rows)
    monkeypatch.setitem(SOURCES, TaskSource.hf, lambda task, cache: (Split(hub, "hub"), None))
    task = TaskConfig(kind=TaskKind.classify, source=TaskSource.hf, name="x", val_split=None)
    message = held_out_error(task, tmp_path / "cache")
    found = re.search(
        r"example (\d+) of hub \(task.val_fraction=0.1 held out\) has label '(.*)'", message
    )
    assert found and labels[int(found[1]) - 1] == found[2], message


def test_a_label_the_hold_out_took_whole_says_what_to_do(tmp_path: Path) -> None:
    """A rare label (one example) that the shuffle holding out task.val_fraction drew: the
    refusal said "unknown to the training split", of a split the user never wrote; it says
    that the hold-out drew it and what to do. A validation file's unknown label does not."""
    rows = [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(40)]
    rows[4]["label"] = "rare"  # row 4 is held out by the fixed shuffle (seed 0)
    message = held_out_error(classify(jsonl(tmp_path / "t.jsonl", rows)), tmp_path / "cache")
    assert "label 'rare', unknown to the training split" in message
    assert message.endswith(
        "drew every example of that label; give more examples of it, "
        "leave it out, or give validation examples (task.val, task.val_split)"
    )
    val = jsonl(tmp_path / "v.jsonl", [{"text": "v", "label": "unseen"}])
    message = held_out_error(classify(tmp_path / "t.jsonl", val), tmp_path / "cache")
    assert "unknown to the training split" in message and "drew" not in message


def test_a_file_datasets_cannot_read_shows_lmlab_s_line_only(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """``datasets`` logged its own ERROR line, with another row number, and drew progress
    bars before the one-line refusal; its settings are as they were afterwards."""
    datasets.enable_progress_bars()
    datasets.utils.logging.set_verbosity(logging.WARNING)
    path = tmp_path / "broken.jsonl"  # datasets reads it, and fails
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", \n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        read_file(f"task.train={path}", path, tmp_path / "cache")
    read_file("good", jsonl(tmp_path / "good.jsonl", [{"text": "a", "label": 0}]), tmp_path / "c")
    out, err = capfd.readouterr()
    assert out == err == ""
    assert not datasets.utils.are_progress_bars_disabled()
    assert datasets.utils.logging.get_verbosity() == logging.WARNING


def test_the_missing_value_strings_stand_where_pandas_moves_its_private_list() -> None:
    """``STR_NA_VALUES`` is a private name of pandas: where a pandas lacks it, the list its
    documentation gives stands in, and it is the same list."""
    import subprocess
    import sys

    code = (
        "import sys, types, datasets; "  # pandas loaded first: it reads the name itself
        "sys.modules['pandas._libs.parsers'] = types.ModuleType('without_the_name'); "
        "import lmlab.data.csv_texts as e; print(sorted(e.STR_NA_VALUES))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from pandas._libs.parsers import STR_NA_VALUES

    assert out.stdout.strip() == str(sorted(STR_NA_VALUES))


def test_an_empty_input_text_in_a_jsonl_file_is_counted_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A JSON Lines text "" (or whitespace) trained in silence, the model reading [CLS] [SEP]
    alone and taught the label from nothing, where the same empty field in a CSV is refused
    as missing. Counted per split, naming the first by its place in the file; either text of
    a pair counts."""
    from lmlab.data.finetune import report_empty

    rows = [{"text": t, "text_pair": p, "label": "ab"[i % 2]} for i, (t, p) in enumerate(
        [("x y", "z"), ("", "z"), ("x", "z"), (" \t", "z"), ("x", ""), ("x", "z")]
    )]  # fmt: skip
    path = jsonl(tmp_path / "e.jsonl", rows, blank_lines=1)
    task = classify(path, path)
    split = read_file("task.train=e.jsonl", path, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="lmlab.data.finetune"):
        assert report_empty(columns(task, split)[0], split, ("text_column",)) == 2
        assert "2 of 6 examples of task.train=e.jsonl have an empty input" in caplog.text
        assert "the first is example 2 (line 3)" in caplog.text
        task.text_pair_column = "text_pair"
        fields = ("text_column", "text_pair_column")
        assert report_empty(columns(task, split)[0], split, fields) == 3
        caplog.clear()
        assert report_empty(["a", "b c"], split, ("text_column",)) == 0
    assert not caplog.text


def test_a_csv_header_that_names_a_column_twice_is_refused(tmp_path: Path) -> None:
    """pandas reads ``text,text,label``'s second column as "text.1": the examples were the
    first column's, the second unread and unsaid."""
    path = tmp_path / "twice.csv"
    path.write_text("text,text,label\na,b,0\nc,d,1\n")
    with pytest.raises(ConfigError) as info:
        read_file(f"task.train={path}", path, tmp_path / "cache", ["text"])
    assert str(info.value) == (
        f"task.train={path} could not be read as csv: its header (text, text, label) names "
        '"text" twice: give each column a name of its own'
    )


def test_the_validation_labels_are_counted_with_what_the_most_frequent_scores() -> None:
    """A validation file of 6 "neg", 3 "pos", 1 "x": a classifier that always answers "neg"
    scores val_acc 0.6, which the run says at its start and plan.json records."""
    counts, said = majority([0] * 6 + [1] * 3 + [2], ("neg", "pos", "x"), "task.val=v.csv")
    assert counts == (6, 3, 1)
    assert said == (
        "validation labels of task.val=v.csv: neg 6, pos 3, x 1; always answering neg "
        "scores val_acc 0.600"
    )
    assert majority([], ("a", "b"), "v") == ((0, 0), None)  # no validation examples: no floor
    counts, said = majority([2, 2, 0], ("a", "b", "c"), "v")  # a label with none: counted 0
    assert counts == (1, 0, 2) and said.endswith(
        "c 2, a 1, b 0; always answering c scores val_acc 0.667"
    )
