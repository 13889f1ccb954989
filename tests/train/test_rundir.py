"""Run directories are never damaged: a resumed run appends to its metrics history."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from lmlab.train.compose import compose_train
from lmlab.train.run import train

SMOKE = ["+debug=smoke", "logger=csv"]  # 4 steps, a checkpoint every 2, validation every 2


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def steps(run_dir: Path, metric: str) -> list[int]:
    return [int(r["step"]) for r in rows(run_dir) if r.get(metric)]


def test_a_resumed_run_appends_to_the_metrics_history(tmp_path: Path, cache_dir: Path) -> None:
    train(compose_train([*SMOKE, "trainer.max_steps=6"], tmp_path, cache_dir))
    train(compose_train([*SMOKE, "trainer.max_steps=10", "resume=true"], tmp_path, cache_dir))
    assert steps(tmp_path, "train/loss") == list(range(10))
    assert steps(tmp_path, "val/loss") == [1, 3, 5, 7, 9]  # after every 2nd step


def test_rows_logged_after_the_resumed_checkpoint_are_replaced(
    tmp_path: Path, cache_dir: Path
) -> None:
    """As if killed after step 4's checkpoint, once the rows of steps 4 and 5 were written:
    the resumed run replays those steps, and the file holds each once, as uninterrupted."""
    run = [*SMOKE, "trainer.max_steps=6", "callbacks.checkpoint.save_top_k=-1"]
    train(compose_train(run, tmp_path, cache_dir))
    uninterrupted = [(r["step"], r["train/loss"], r["val/loss"]) for r in rows(tmp_path)]
    ckpts = tmp_path / "checkpoints"
    (ckpts / "last.ckpt").unlink()
    (ckpts / "step000006.ckpt").unlink()
    shutil.copy(ckpts / "step000004.ckpt", ckpts / "last.ckpt")
    train(compose_train([*run, "resume=true"], tmp_path, cache_dir))
    assert results(tmp_path)["global_step"] == 6
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in rows(tmp_path)] == uninterrupted
