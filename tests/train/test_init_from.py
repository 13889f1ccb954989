"""What a run records of the checkpoint ``init_from`` names: plan.json's ``init_source`` (the
path made absolute, the file loaded and its step), which a resume keeps when the source run
has moved on; and one source however it is spelt (relative from any working folder, absolute,
through a linked folder, the file a ``last.ckpt`` pointed at), which a resume compares rather
than the words typed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from lmlab.train.init_from import loaded_source, same_source, source_name
from smoke import SMOKE


def test_the_record_names_the_file_a_link_pointed_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``last.ckpt`` is a link to a step file: the record names the link made absolute (its
    folders' links followed) and the step file it pointed at when it was read."""
    ckpts = tmp_path / "runs" / "first" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step000002.ckpt").write_bytes(b"")
    (ckpts / "last.ckpt").symlink_to("step000002.ckpt")
    (tmp_path / "linked").symlink_to(tmp_path / "runs")
    monkeypatch.chdir(tmp_path / "linked")
    assert loaded_source(Path("first/checkpoints/last.ckpt"), {"global_step": 2}) == {
        "path": str(ckpts / "last.ckpt"),
        "file": str(ckpts / "step000002.ckpt"),
        "global_step": 2,
    }


@pytest.mark.slow
def test_plan_json_records_the_step_an_init_from_run_started_from(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started with a relative ``init_from`` through ``last.ckpt``: plan.json said
    ``last.ckpt`` only, so once the source run trained on nothing said which step's weights
    the run took. The record names that step, and a resume after the source moved on keeps
    it."""
    smoke = [*SMOKE, "logger=none", "callbacks.sample=null", "trainer.max_steps=2"]
    smoke += ["checkpoint.every_n_steps=2", "callbacks.checkpoint.save_top_k=2"]
    first, run_dir = tmp_path / "first", tmp_path / "run"
    assert run_command("train", *smoke, f"hydra.run.dir={first}") == 0
    init = [*smoke, "data.tokenizer=checkpoint", f"hydra.run.dir={run_dir}"]
    init += ["init_from=../first/checkpoints/last.ckpt"]
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert run_command("train", *init) == 0
    started = {
        "init_from": "../first/checkpoints/last.ckpt",
        "init_source": {
            "path": str(first / "checkpoints" / "last.ckpt"),
            "file": str(first / "checkpoints" / "step000002.ckpt"),
            "global_step": 2,
        },
    }
    plan = json.loads((run_dir / "plan.json").read_text())
    assert {k: plan[k] for k in started} == started
    longer = ["trainer.max_steps=4", "resume=true"]
    assert run_command("train", *smoke, *longer, f"hydra.run.dir={first}") == 0
    capsys.readouterr()
    assert run_command("train", *init, *longer) == 0, capsys.readouterr().err
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 4
    plan = json.loads((run_dir / "plan.json").read_text())
    assert {k: plan[k] for k in started} == started  # the start's, not last.ckpt's step 4


def test_one_source_for_every_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's records against later spellings of its source: the same file named from
    another folder, by its absolute path, through a linked folder or by the step file the link
    pointed at (or a link to that) is the same source, also once the ``last.ckpt`` it names
    has moved on; another step of the same run is not."""
    ckpts = tmp_path / "runs" / "first" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (2, 4):
        (ckpts / f"step00000{step}.ckpt").write_bytes(b"")
    (ckpts / "last.ckpt").symlink_to("step000002.ckpt")
    (tmp_path / "linked").symlink_to(tmp_path / "runs")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine.ckpt").symlink_to(ckpts / "step000002.ckpt")
    monkeypatch.chdir(tmp_path / "runs")
    typed = "first/checkpoints/last.ckpt"  # run_config.yaml's, and plan.json's record
    record = {"init_from": typed, "init_source": loaded_source(Path(typed), {"global_step": 2})}
    (ckpts / "last.ckpt").unlink()
    (ckpts / "last.ckpt").symlink_to("step000004.ckpt")  # the source run trained on
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("HOME", str(tmp_path))
    same = [
        str(ckpts / "last.ckpt"),
        "../runs/first/checkpoints/last.ckpt",
        str(tmp_path / "linked" / "first" / "checkpoints" / "last.ckpt"),
        "../linked/first/checkpoints/step000002.ckpt",
        "mine.ckpt",
        "~/elsewhere/mine.ckpt",  # zsh, or quoted: the ~ reaches lmlab
        "~/runs/first/checkpoints/last.ckpt",
        typed,  # the words typed then: a resume reads its own checkpoint, not this file
    ]
    for name in same:
        assert same_source(name, typed, record), name
    assert not same_source(str(ckpts / "step000004.ckpt"), typed, record)
    # a plan.json saved before the record (or deleted): the words, read from here
    assert same_source(typed, typed, {})
    assert same_source(source_name(typed), typed, {})
    assert not same_source(str(ckpts / "last.ckpt"), typed, {})


@pytest.mark.slow
def test_an_init_from_run_resumes_under_another_name_of_its_source(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started with a relative ``init_from``, resumed from another folder through a
    linked folder: the resume was refused as "another config" (init_from compared as typed).
    So is one named from the home folder with a ``~`` (zsh, or quoted, passes it on), which
    a new run (planned here) read as a folder named ``~``.
    Another step of the source is still another run, named with the file the run loaded."""
    smoke = [*SMOKE, "logger=none", "callbacks.sample=null", "trainer.max_steps=2"]
    smoke += ["checkpoint.every_n_steps=2", "callbacks.checkpoint.save_top_k=2"]
    first, run_dir = tmp_path / "first", tmp_path / "run"
    assert run_command("train", *smoke, f"hydra.run.dir={first}") == 0
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "b" / "linked").symlink_to(first)
    init = [*smoke, "data.tokenizer=checkpoint", f"hydra.run.dir={run_dir}"]
    monkeypatch.chdir(tmp_path / "a")
    assert run_command("train", *init, "init_from=../first/checkpoints/last.ckpt") == 0
    monkeypatch.setenv("HOME", str(tmp_path))
    home = ["data.tokenizer=checkpoint", "init_from='~/first/checkpoints/last.ckpt'"]
    planned = [*smoke, *home, "dry_run=true", f"hydra.run.dir={tmp_path / 'planned'}"]
    assert run_command("train", *planned) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "planned" / "plan.json").read_text())["dry_run"]
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    longer = ["trainer.max_steps=4", "resume=true"]
    code = run_command("train", *init, *longer, "init_from=linked/checkpoints/last.ckpt")
    assert code == 0, capsys.readouterr().err
    code = run_command("train", *init, *longer, "init_from='~/first/checkpoints/last.ckpt'")
    assert code == 0, capsys.readouterr().err
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 4
    assert run_command("train", *smoke, *longer, f"hydra.run.dir={first}") == 0
    other = first / "checkpoints" / "step000004.ckpt"
    capsys.readouterr()
    assert run_command("train", *init, "trainer.max_steps=6", "resume=true", f"init_from={other}")
    err = capsys.readouterr().err
    assert "differing fields: init_from" in err and os.fspath(other) in err, err
    assert os.fspath(first / "checkpoints" / "step000002.ckpt") in err, err  # the one loaded


def test_a_dry_run_plans_the_record_of_its_source(tmp_path: Path) -> None:
    """A dry run's plan.json holds the ``init_from`` and ``init_source`` a run of the same
    command records (it had neither), and its printed plan names the file and step. The
    checkpoint is written here: a dry run reads its metadata, not its weights."""
    from rich.console import Console

    from lmlab.config import ModelConfig, model_config_dict
    from lmlab.train.compose import compose_train
    from lmlab.train.plan_table import plan_table
    from lmlab.train.run import train

    model = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=300, max_seq_len=64)
    source = tmp_path / "source.ckpt"
    record = {"model_config": model_config_dict(model), "state_dict": {}, "tokenizer": "{}"}
    torch.save(record | {"global_step": 7}, source)
    typed = ["data.tokenizer=checkpoint", f"init_from={source}", "dry_run=true"]
    train(compose_train([*SMOKE, "logger=none", *typed], tmp_path / "dry", tmp_path))
    plan = json.loads((tmp_path / "dry" / "plan.json").read_text())
    assert plan["dry_run"] and plan["vocab_size"] == 300  # the checkpoint's model planned
    assert plan["init_from"] == str(source)
    assert plan["init_source"] == loaded_source(source, {"global_step": 7})
    console = Console(width=200, record=True)
    console.print(plan_table(plan))
    (row,) = [line for line in console.export_text().splitlines() if "init_from" in line]
    assert row.rstrip(" │").endswith(f"{source} (step 7)"), row
    narrow = Console(width=60, record=True)  # a long path folds over lines, none of it cut
    narrow.print(plan_table(plan))
    shown = re.sub(r"[\s│]", "", narrow.export_text())
    assert re.sub(r"\s", "", f"{source} (step 7)") in shown, narrow.export_text()
