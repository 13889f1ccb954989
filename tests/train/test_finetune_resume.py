"""Resuming a fine-tuning run (task=classify, task=seq2seq): a resumed sweep's checks before
its jobs start, a digest of the examples in plan.json that refuses a resume on other examples
of the same counts and labels (old plans without it still resume), a tokenizer changed by the
examples named as that, and ``task.decode_rows`` (validation only) free to change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lmlab.config import DataConfig, Family, TaskConfig, TaskKind, TaskSource, TokenizerKind
from lmlab.data.finetune import FinetuneDataModule
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.resume import check_same_run, run_identity
from lmlab.train.run import train
from lmlab.train.runfiles import RUN_CONFIG

# a one-layer 32-wide BERT on char tokens, a few steps of 4 examples
TINY = ["task=classify", "task.source=files", "model=bert_tiny", "model.d_model=32"]
TINY += ["model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", "data.tokenizer=char"]
TINY += ["data.batch_size=4", "logger=none"]
WORDS = ["red", "green", "blue", "violet", "orange", "teal"]


def rows(n: int, start: int) -> list[dict]:
    """``n`` examples: a few colour words, labelled by the first one's length."""
    out = []
    for i in range(start, start + n):
        words = [WORDS[(i * k) % len(WORDS)] for k in (1, 2, 3)]
        out.append({"text": " ".join(words), "label": "long" if len(words[0]) > 4 else "short"})
    return out


def write(path: Path, examples: list[dict]) -> Path:
    """The examples as JSON lines; the modification time moves on by a second each write, so
    that ``datasets``, which keys its cache of a file by path and mtime, reads it again."""
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text("".join(json.dumps(r) + "\n" for r in examples))
    later = max(mtime + 1_000_000_000, path.stat().st_mtime_ns)
    os.utime(path, ns=(later, later))
    return path


def example_files(folder: Path) -> tuple[Path, Path]:
    return write(folder / "train.jsonl", rows(24, 0)), write(folder / "val.jsonl", rows(8, 24))


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_a_fine_tuning_sweep_resumes_and_extends_with_resume_auto(
    tmp_path: Path,
    cache_dir: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resumed sweep checks each job against its run before any job starts, with a plan
    that has not read the examples: the task saved in the job's plan.json is left to the job,
    which checks it once it has read them. The sweep was refused, comparing the saved task
    with none."""
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    train_file, val_file = example_files(tmp_path)
    sweep = tmp_path / "sweep"
    common = ["-m", *TINY, f"task.train={train_file}", f"task.val={val_file}", "seed=1,2"]
    common += [f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *common, "trainer.max_steps=2") == 0
    extended = run_command("train", *common, "trainer.max_steps=4", "resume=auto")
    assert extended == 0, capsys.readouterr().err[-2000:]
    assert [results(sweep / job)["global_step"] for job in "01"] == [4, 4]
    assert all(results(sweep / job)["resumed_from"] for job in "01")


def test_a_resume_on_changed_examples_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    """Examples of the same counts and labels (every label swapped, every text reversed: the
    same characters, so the same char tokenizer; the validation file's labels swapped) are
    other examples: plan.json's digest of them refuses the resume, naming the files, and
    without plan.json the checkpoint's copy of it. A
    character more trains another tokenizer, which the refusal says the examples changed.
    The examples it trained on resume, also from a plan and checkpoint written before the
    digest and the validation label counts (none in them)."""
    train_file, val_file = example_files(tmp_path)
    run_dir = tmp_path / "run"
    run = [*TINY, f"task.train={train_file}", f"task.val={val_file}", "trainer.max_steps=2"]
    resume = [*run, "trainer.max_steps=4", "resume=true"]
    train(compose_train(run, run_dir, cache_dir))
    original = {path: path.read_text() for path in (train_file, val_file)}
    swap = {"long": "short", "short": "long"}
    changes = {
        train_file: [
            [r | {"label": swap[r["label"]]} for r in rows(24, 0)],
            [r | {"text": r["text"][::-1]} for r in rows(24, 0)],
        ],
        val_file: [[r | {"label": swap[r["label"]]} for r in rows(8, 24)]],
    }
    plan, kept = run_dir / "plan.json", tmp_path / "plan.json"
    for path, variants in changes.items():
        for examples in variants:
            write(path, examples)
            for plan_deleted in (False, True):  # then the checkpoint's record of the examples
                if plan_deleted:
                    plan.rename(kept)
                with pytest.raises(ConfigError) as refused:
                    train(compose_train(resume, run_dir, cache_dir))
                message = str(refused.value)
                assert message.startswith(
                    f"cannot resume {run_dir}: the examples of task.train={train_file} and "
                    f"task.val={val_file} changed since it started: the same 24 training and "
                    "8 validation examples and labels, other contents (their digest "
                ), message
                assert "resume with the examples it was trained on" in message, message
            kept.rename(plan)
            write(path, [json.loads(line) for line in original[path].splitlines()])
    more = rows(24, 0)
    more[3]["text"] += " ~"  # a character the char tokenizer did not have
    write(train_file, more)
    with pytest.raises(ConfigError, match=r"another tokenizer") as refused:
        train(compose_train(resume, run_dir, cache_dir))
    message = str(refused.value)
    assert "the examples of task.train or task.val (or of task.source" in message, message
    assert "corpus" not in message, message
    write(train_file, rows(24, 0))
    # a run from before the digest and the validation label counts: its plan.json and
    # checkpoint have neither
    plan = json.loads((run_dir / "plan.json").read_text())
    digest = plan["task"].pop("examples_sha256")
    assert plan["task"].pop("val_labels") == {"long": 4, "short": 4}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    ckpt_path = (run_dir / "checkpoints" / "last.ckpt").resolve()
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["task"]["examples_sha256"]
    torch.save(ckpt, ckpt_path)
    train(compose_train(resume, run_dir, cache_dir))
    assert results(run_dir)["global_step"] == 4
    assert json.loads((run_dir / "plan.json").read_text())["task"]["examples_sha256"] == digest


def spec(tmp_path: Path, cache_dir: Path, name: str, train: list, val: list, **task: object):
    """The TaskSpec of examples ``train`` and ``val``, written to ``tmp_path / name``."""
    folder = tmp_path / name
    folder.mkdir()
    train_file, val_file = (
        write(folder / f"{s}.jsonl", ex) for s, ex in [("t", train), ("v", val)]
    )
    cfg = TaskConfig(source=TaskSource.files, train=str(train_file), val=str(val_file), **task)
    data = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(cache_dir))
    family = Family.t5 if cfg.kind == TaskKind.seq2seq else Family.bert
    dm = FinetuneDataModule(data, cfg, family, 32, 0)
    dm.setup()
    return dm.spec


@pytest.mark.parametrize("kind", ["seq2seq", "pairs"])
def test_the_examples_digest_covers_inputs_pair_texts_targets_and_order(
    tmp_path: Path, cache_dir: Path, kind: str
) -> None:
    """The digest changes with any input, second text, target or label, in either split, and
    with their order; the same examples in other files give the same digest."""
    if kind == "seq2seq":
        task = {"kind": TaskKind.seq2seq}
        train = [{"input": f"def f{i}(x):", "target": f"f{i}"} for i in range(8)]
        parts = ["input", "target"]
    else:
        task = {"kind": TaskKind.classify, "text_pair_column": "text_pair"}
        train = [{"text": f"a{i}", "text_pair": f"b{i}", "label": i % 2} for i in range(8)]
        parts = ["text", "text_pair", "label"]
    val = train[:4]
    base = spec(tmp_path, cache_dir, "base", train, val, **task)
    assert base.examples_sha256 is not None
    assert spec(tmp_path, cache_dir, "copy", train, val, **task).examples_sha256 == (
        base.examples_sha256
    )
    variants = {"order": (train[::-1], val), "val order": (train, val[::-1])}
    for part in parts:  # one example's text with a letter more, or its other label

        def edit(row: dict, part: str = part) -> dict:
            return row | {part: 1 - row[part] if part == "label" else row[part] + "z"}

        variants[part] = ([edit(train[0]), *train[1:]], val)
        variants[f"val {part}"] = (train, [*val[:3], edit(val[3])])
    for name, (t, v) in variants.items():
        now = spec(tmp_path, cache_dir, name.replace(" ", "_"), t, v, **task)
        assert now.examples_sha256 != base.examples_sha256, name


def test_task_decode_rows_may_change_on_resume(tmp_path: Path) -> None:
    """``task.decode_rows`` sets how many validation rows are decoded for exact match: what
    validation measures, not what is trained, so a resume may change it (as it may
    ``trainer.val_check_interval``), and ``data.pad_to_multiple_of`` the shapes of the same
    batches; another task field still refuses it."""
    seq2seq = ["task=seq2seq", "model=t5_tiny", "task.decode_rows=16"]
    cfg = compose_train(seq2seq, tmp_path)
    OmegaConf.save(OmegaConf.create(run_identity(cfg)), tmp_path / RUN_CONFIG)
    with open_dict(cfg):
        cfg.task.decode_rows = 32
        cfg.data.pad_to_multiple_of = 8  # batch widths (null: as the device wants): free too
    check_same_run(cfg, tmp_path, "the run was started with")
    with open_dict(cfg):
        cfg.task.max_target_len = 8
    with pytest.raises(ConfigError, match=r"task.max_target_len: None \(saved\) vs 8 \(now\)"):
        check_same_run(cfg, tmp_path, "the run was started with")
