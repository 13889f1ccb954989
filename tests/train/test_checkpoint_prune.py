"""``save_top_k`` keeps the newest k step checkpoints of the run directory after any resume:
one from an older step (``last.ckpt`` dangling), one in a copied directory, one that finds a
newer step checkpoint it cannot read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import smoke
from lmlab.train.checkpointing import Checkpoint
from lmlab.train.compose import compose_train
from lmlab.train.run import train

RUN = [*smoke.SMOKE, "logger=none", "callbacks.sample=null", "checkpoint.every_n_steps=2"]


def step_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name != "last.ckpt")


@pytest.mark.parametrize("k", [2, 3])
def test_a_resume_past_a_dangling_last_ckpt_keeps_the_newest_k(
    tmp_path: Path, cache_dir: Path, k: int
) -> None:
    """The newest step checkpoint removed, ``last.ckpt`` dangles and the run resumes from the
    one before: Lightning never removes the file a run resumed from, which then stayed beside
    the k newer ones (three files for k=2, four for k=3)."""
    run = [*RUN, f"callbacks.checkpoint.save_top_k={k}"]
    first = 2 * k
    train(compose_train([*run, f"trainer.max_steps={first}"], tmp_path, cache_dir))
    ckpts = tmp_path / "checkpoints"
    (ckpts / f"step{first:06d}.ckpt").unlink()  # last.ckpt, a link to it, dangles
    train(compose_train([*run, "trainer.max_steps=10", "resume=true"], tmp_path, cache_dir))
    newest = [f"step{s:06d}.ckpt" for s in range(10 - 2 * (k - 1), 11, 2)]
    assert step_files(tmp_path) == newest
    assert os.readlink(ckpts / "last.ckpt") == "step000010.ckpt"


def test_a_copied_run_directory_keeps_the_newest_k(tmp_path: Path, cache_dir: Path) -> None:
    """In a copied directory Lightning keeps no record of the files its checkpoints list (they
    name the original's folder), so it never removed the copy's older step checkpoint."""
    run = [*RUN, "callbacks.checkpoint.save_top_k=1"]
    train(compose_train([*run, "trainer.max_steps=4"], tmp_path / "a", cache_dir))
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)  # links become files, as cp -L or a sync makes them
    train(compose_train([*run, "trainer.max_steps=6", "resume=true"], copy, cache_dir))
    assert step_files(copy) == ["step000006.ckpt"]
    assert step_files(tmp_path / "a") == ["step000004.ckpt"]  # the original is left alone


class Removals(SimpleNamespace):
    """A stand-in for the trainer's rank 0: records what the callback removes."""

    def __init__(self) -> None:
        super().__init__(is_global_zero=True, removed=[])
        self.strategy = SimpleNamespace(remove_checkpoint=self.removed.append)


@pytest.mark.parametrize("k", [1, 2])
def test_pruning_never_removes_a_step_newer_than_the_one_saved(tmp_path: Path, k: int) -> None:
    """After step 6 is saved: the older steps beyond the newest k go; step 10 (left by an
    earlier process, passed over by a resume as unreadable) stays until a save replaces it;
    files not named as step checkpoints stay."""
    named = {"filename": "step{step:06d}", "auto_insert_metric_name": False}  # as conf/ names
    callback = Checkpoint(dirpath=tmp_path, save_top_k=k, **named)
    others = ["last.ckpt", ".step000008.ckpt.x1.tmp", "notes.txt", "best.ckpt"]
    for name in [*(f"step{s:06d}.ckpt" for s in (2, 4, 6, 10)), *others]:
        (tmp_path / name).touch()
    trainer = Removals()
    callback.prune(trainer, str(tmp_path / "step000006.ckpt"))
    kept_older = [4] if k == 2 else []
    assert sorted(Path(p).name for p in trainer.removed) == [
        f"step{s:06d}.ckpt" for s in (2, 4) if s not in kept_older
    ]


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """lmlab's messages among the captured ones (a library's own, W&B's say, are not these)."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("lmlab")]


def test_removing_more_than_the_one_a_save_replaces_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume with a smaller ``save_top_k`` removed every older kept checkpoint in silence."""
    named = {"filename": "step{step:06d}", "auto_insert_metric_name": False}
    for s in (2, 4, 6, 8):
        (tmp_path / f"step{s:06d}.ckpt").touch()
    with caplog.at_level("WARNING"):
        Checkpoint(dirpath=tmp_path, save_top_k=3, **named).prune(
            Removals(), str(tmp_path / "step000008.ckpt")
        )
        assert said(caplog) == []  # the one a save replaces: said by nobody
        Checkpoint(dirpath=tmp_path, save_top_k=1, **named).prune(
            Removals(), str(tmp_path / "step000008.ckpt")
        )
    assert said(caplog) == [
        f"save_top_k=1: removing 3 older step checkpoints of {tmp_path} "
        "(step000002.ckpt, step000004.ckpt, step000006.ckpt)"
    ]
