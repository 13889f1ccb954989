"""The W&B run's end and its history across a resume, read from W&B's offline records with
its own ``wandb leet inspect`` (the ``wandb_log`` fixture; no server is reachable here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lmlab.train.compose import compose_train
from lmlab.train.guard import NonFiniteError
from lmlab.train.loggers import finish_wandb
from lmlab.train.run import train
from smoke import SMOKE

WANDB = [*SMOKE, "logger=wandb"]


def offline_runs(run_dir: Path, read: Callable[[Path], list[dict]]) -> list[list[dict]]:
    """The records of each offline W&B run under a run directory, oldest first."""
    return [read(f) for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def exit_code(recs: list[dict]) -> int:
    (code,) = [r["exit"].get("exit_code", 0) for r in recs if r["type"] == "exit"]
    return code


def summary(recs: list[dict]) -> dict:
    """The summary as W&B's updates leave it."""
    out: dict = {}
    for r in recs:
        if r["type"] == "summary":
            out.update(r["summary"].get("update", {}))
    return out


def history(recs: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in recs if r["type"] == "history"]


@pytest.mark.slow  # W&B's service process, and its reader's
@pytest.mark.parametrize(
    ("status", "code"), [("completed", 0), ("failed", 1), ("preempted", 143), ("interrupted", 130)]
)
def test_the_wandb_run_ends_with_the_runs_status_error_and_exit_code(
    tmp_path: Path, status: str, code: int, wandb_log
) -> None:
    """W&B calls a run that exits 0 finished: only a completed run does; a stopped one exits as
    the process does (143, 130). The summary holds results.json's status and its error's
    first line (null once completed)."""
    import wandb

    error = None if status == "completed" else "RuntimeError: CUDA out of memory.\nTried more"
    run = wandb.init(mode="offline", dir=tmp_path, project="lmlab-test")
    try:
        finish_wandb({"status": status, "error": error})
        assert wandb.run is None
    finally:
        run.finish()  # no open run left to the next test, whatever happened (a no-op once done)
    (recs,) = offline_runs(tmp_path, wandb_log)
    assert exit_code(recs) == code
    expected = None if error is None else "RuntimeError: CUDA out of memory."
    assert {k: summary(recs).get(k) for k in ("status", "error")} == {
        "status": status,
        "error": expected,
    }


def test_a_failed_run_marks_its_wandb_run_failed(
    tmp_path: Path, cache_dir: Path, wandb_log
) -> None:
    """A run the non-finite guard stops: results.json says failed, and so does its W&B run
    (it said finished, exit code 0, with no status in its summary)."""
    with pytest.raises(NonFiniteError):
        train(compose_train([*WANDB, "optim.lr=1e6"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    (recs,) = offline_runs(tmp_path, wandb_log)
    assert results["status"] == "failed" and exit_code(recs) == 1
    assert summary(recs)["status"] == "failed"
    assert summary(recs)["error"] == results["error"].splitlines()[0]
    assert summary(recs)["error"].startswith("NonFiniteError: non-finite loss")


def test_a_resumed_run_continues_its_wandb_run_from_the_checkpoints_step(
    tmp_path: Path, cache_dir: Path, wandb_log
) -> None:
    """Offline, each start writes its own folder under the run's one W&B id, with the intent to
    resume recorded for ``wandb sync``. W&B's own ``_step`` starts at 0 in each (only the server
    knows the run's last one); the x axis, ``trainer/global_step``, goes on from the
    checkpoint's step in every row of the resumed run, its parameter table's too (it was 0)."""
    train(compose_train([*WANDB, "trainer.max_steps=2"], tmp_path, cache_dir))
    train(compose_train([*WANDB, "trainer.max_steps=3", "resume=true"], tmp_path, cache_dir))
    first, resumed = offline_runs(tmp_path, wandb_log)
    run_id = (tmp_path / "wandb_id").read_text()
    for recs in (first, resumed):
        (run,) = [r["run"] for r in recs if r["type"] == "run"]
        assert run["run_id"] == run_id and run["resume"] is True
    steps = [row["trainer/global_step"] for row in history(resumed)]
    assert steps and min(steps) == 2, steps  # resumed from the step-2 checkpoint
    assert steps == sorted(steps)
    assert any("parameters._type" in row for row in history(resumed))
    assert max(row["trainer/global_step"] for row in history(first)) <= min(steps)
