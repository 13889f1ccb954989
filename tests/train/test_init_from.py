"""What a run records of the checkpoint ``init_from`` names: plan.json's ``init_source`` (the
path made absolute, the file loaded and its step), which a resume keeps when the source run
has moved on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.train.init_from import loaded_source
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
