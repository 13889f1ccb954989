"""Run directories are never damaged: a refused command leaves one byte for byte as it was, a
resumed run appends to its metrics history, a copied directory resumes from its newest step,
``last.ckpt`` is no second copy, and a corrupt checkpoint is named, not a traceback."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shlex
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

import smoke
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.resume import resume_checkpoint
from lmlab.train.run import train

SMOKE = [*smoke.SMOKE, "logger=csv"]  # 4 steps, a checkpoint every 2, validation every 2


def snapshot(run_dir: Path) -> dict[str, object]:
    """Every entry under ``run_dir``: a file's bytes, a link's target, or ``dir``."""
    entries: dict[str, object] = {}
    for path in sorted(run_dir.rglob("*")):
        name = str(path.relative_to(run_dir))
        if path.is_symlink():
            entries[name] = f"-> {os.readlink(path)}"
        else:
            entries[name] = path.read_bytes() if path.is_file() else "dir"
    return entries


def changed(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def steps(run_dir: Path, metric: str) -> list[int]:
    return [int(r["step"]) for r in rows(run_dir) if r.get(metric)]


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A ``SMOKE`` run trained to its end (4 steps, ``last.ckpt`` the file itself): a test that
    reads it reads this one; a test that extends or damages it works on its own copy
    (``copy_of``). No test writes in it."""
    run_dir = tmp_path_factory.mktemp("smoke-run")
    train(compose_train(SMOKE, run_dir, cache_dir))
    return run_dir


@pytest.fixture(scope="module")
def extended_run(
    tmp_path_factory: pytest.TempPathFactory, smoke_run: Path, cache_dir: Path
) -> Path:
    """``smoke_run`` copied as ``cp -L`` or a sync copies it (links become files), then
    extended in the copy from its 4 steps to 8 (``trainer.max_steps=8 resume=true``): a
    completed run resumed with a larger budget, in a copied directory. A test that resumes
    it again works on its own copy. No test writes in it."""
    run_dir = tmp_path_factory.mktemp("extended-run")
    shutil.copytree(smoke_run, run_dir, dirs_exist_ok=True)
    train(compose_train([*SMOKE, "trainer.max_steps=8", "resume=true"], run_dir, cache_dir))
    return run_dir


# 6 steps of two micro-batches each (a global batch of 8 rows, 4 a micro-batch)
ACCUMULATED = [*SMOKE, "trainer.max_steps=6", "data.global_batch_size=8"]


@pytest.fixture(scope="module")
def accumulated_run(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[Path, list[tuple[str, int, int | None]]]:
    """An ``ACCUMULATED`` run trained to its end, a step checkpoint every 2 steps, all kept
    (``last.ckpt`` links to step 6's), with ``BarAt`` watching it: the run directory, and the
    progress bar before each of its training batches (``BarAt.seen``). A test that resumes or
    damages the run works on its own copy (``copy_of``). No test writes in it."""
    run_dir = tmp_path_factory.mktemp("accumulated-run")
    kept = ["checkpoint.every_n_steps=2", "callbacks.checkpoint.save_top_k=-1"]
    BarAt.seen.clear()
    bar = "+callbacks.bar._target_=test_rundir.BarAt"
    train(compose_train([*ACCUMULATED, *kept, bar], run_dir, cache_dir))
    seen = list(BarAt.seen)
    BarAt.seen.clear()
    return run_dir, seen


# 6 steps, a step checkpoint every 2, three validation batches (a stop can land between two)
SIX_STEPS = [*SMOKE, "trainer.max_steps=6", "trainer.limit_val_batches=3"]
SIX_STEPS += ["checkpoint.every_n_steps=2"]


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A ``SIX_STEPS`` run trained to its end, uninterrupted, every step checkpoint kept
    (``save_top_k=-1``; ``last.ckpt`` links to step 6's). A test that extends it works on
    its own copy (``copy_of``). No test writes in it."""
    run_dir = tmp_path_factory.mktemp("six-step-run")
    train(compose_train([*SIX_STEPS, "callbacks.checkpoint.save_top_k=-1"], run_dir, cache_dir))
    return run_dir


# SMOKE without a logger, its final checkpoint a step file that last.ckpt links to
STEP_FILES = [*SMOKE, "logger=none", "callbacks.checkpoint.save_top_k=-1"]


@pytest.fixture(scope="module")
def step_files_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A ``STEP_FILES`` run trained to its end: ``checkpoints/step000004.ckpt``, and
    ``last.ckpt`` linking to it. A test that resumes or damages it works on its own copy
    (``copy_of``). No test writes in it."""
    run_dir = tmp_path_factory.mktemp("step-files-run")
    train(compose_train(STEP_FILES, run_dir, cache_dir))
    return run_dir


def copy_of(run_dir: Path, into: Path) -> Path:
    """``run_dir`` copied into ``into`` (which may exist, empty), links kept as links."""
    shutil.copytree(run_dir, into, symlinks=True, dirs_exist_ok=True)
    return into


@pytest.fixture
def untimed_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run's throughput a fixed 1000 tokens/s, its 4 timed training steps of the model
    left out (tests/train/test_estimate.py times them): the tests that use it check where a
    plan is written and what is refused, not how fast the model trains."""
    from lmlab.train import estimate

    def fixed(*args: object) -> tuple[float, list[float]]:
        return 1000.0, [0.1, 0.1, 0.1]

    monkeypatch.setattr(estimate, "measure_tokens_per_second", fixed)


def test_a_config_composed_in_python_runs_where_the_command_line_would() -> None:
    """``compose_train`` without ``output_dir`` (a notebook's ``train(compose_train([...]))``)
    left ``paths.output_dir`` None, Hydra's runtime folder being set only inside a Hydra job:
    ``train()`` failed in pathlib. It is ``hydra.run.dir``, the default or the override, and
    every path below it follows."""
    cfg = compose_train(["+debug=smoke"])
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", cfg.paths.output_dir)
    assert cfg.callbacks.checkpoint.dirpath == f"{cfg.paths.output_dir}/checkpoints"
    assert cfg.logger.csv.save_dir == cfg.paths.output_dir
    assert compose_train(["hydra.run.dir=runs/a"]).paths.output_dir == "runs/a"


def test_refused_commands_leave_the_run_directory_byte_for_byte(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, untimed_plans: None
) -> None:
    """Hydra writes ``.hydra/`` and ``train.log`` before the task runs: a command that is
    refused, before or after the data is prepared, must leave all of it, ``results.json``,
    ``plan.json`` and the checkpoints exactly as the completed run left them. A completed
    run resumed (by hand, or by a resumed sweep's ``resume=auto``) trains nothing and is left
    as it was too; without its checkpoints, the directory still holds the run."""
    # data.seq_len unset (the model's 64-token length, SHORT_ROWS' rows): named below as the
    # same run
    plain = ["+debug=smoke", "logger=csv", "model.max_seq_len=64"]
    here = [*plain, f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *here) == 0
    before = snapshot(tmp_path)
    assert {"results.json", ".hydra/config.yaml", "train.log", "plan.json"} <= set(before)

    def output() -> str:
        return "".join(capsys.readouterr())

    refusals = [
        (["model.activation=relu"], "already holds checkpoints of an earlier run"),
        (["resume=true", "model.activation=relu"], "cannot resume .* another config"),
        # refused only once the data is prepared: the global batch is 8 rows, the run's was 4
        (["resume=true", "trainer.accumulate_grad_batches=2"], "global_batch_size=4, this run 8"),
        (["resume=true", "trainer.max_steps=2"], "at step 4, past this run's 2 planned steps"),
    ]
    for extra, message in refusals:
        output()
        assert run_command("train", *here, *extra) == 2, extra
        assert re.search(message, out := output()), out
        assert changed(before, snapshot(tmp_path)) == [], extra
    for resume in ("true", "auto"):
        assert run_command("train", *here, f"resume={resume}") == 0
        assert "completed its 4 planned steps: nothing to train" in (out := output()), out
        assert changed(before, snapshot(tmp_path)) == [], resume
    assert run_command("train", *here, "dry_run=true") == 0  # prints the plan, writes nothing
    # the sequence length it trained at, named rather than left null: the same run
    seq_len = json.loads((tmp_path / "plan.json").read_text())["batch"]["seq_len"]
    assert run_command("train", *here, "resume=true", f"data.seq_len={seq_len}") == 0
    assert changed(before, snapshot(tmp_path)) == []

    # the run's records damaged or deleted: named in one line (no traceback), and a copy of
    # the directory is left as it was; without plan.json, the checkpoint's global batch
    damages = [
        ("plan.json", '{"steps": 6', [], r"plan.json cannot be read as a run plan \(JSONDecode"),
        ("plan.json", "[]", [], "plan.json cannot be read as a run plan"),
        ("run_config.yaml", "model: [unclosed", [], "run_config.yaml cannot be read as a config"),
        ("plan.json", None, ["trainer.accumulate_grad_batches=2"], "checkpoint .*ckpt has "),
    ]
    copy = tmp_path.parent / f"{tmp_path.name}-damaged"
    for name, text, extra, message in damages:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(tmp_path, copy, symlinks=True)
        (copy / name).unlink()
        if text is not None:
            (copy / name).write_text(text)
        damaged = snapshot(copy)
        output()
        assert run_command("train", *plain, f"hydra.run.dir={copy}", "resume=true", *extra) == 2
        assert re.search(message, out := output()) and "Traceback" not in out, out
        assert changed(damaged, snapshot(copy)) == [], name
    assert "global_batch_size=4, this run 8" in out, out

    shutil.rmtree(tmp_path / "checkpoints")
    before = snapshot(tmp_path)
    output()
    assert run_command("train", *here) == 2
    assert "already holds an earlier run (results.json, plan.json" in (out := output()), out
    # resume=auto with nothing to resume starts afresh, but not over another config's run
    assert run_command("train", *here, "resume=auto", "model.activation=relu") == 2
    assert re.search("cannot resume .* another config", out := output()), out
    assert run_command("train", *here, "resume=auto") == 0  # completed: left alone
    assert run_command("train", *here, "resume=auto", "trainer.max_steps=6") == 2
    assert "no checkpoint to continue to 6" in (out := output()), out
    assert changed(before, snapshot(tmp_path)) == []
    assert "resume=auto starts it again" not in out  # completed: nothing to start again

    # killed before its first checkpoint (results.json still says running): both refusals
    # name resume=auto, which starts it again
    record = results(tmp_path) | {"status": "running"}
    (tmp_path / "results.json").write_text(json.dumps(record))
    before = snapshot(tmp_path)
    for extra in ([], ["resume=true"]):
        assert run_command("train", *here, *extra) == 2
        assert "stopped before its first checkpoint: resume=auto starts it again from step 0" in (
            out := output()
        ), out
        assert changed(before, snapshot(tmp_path)) == [], extra
    assert run_command("train", *here, "resume=auto") == 0
    assert results(tmp_path)["status"] == "completed"


def test_a_refused_first_command_leaves_the_directory_to_the_corrected_one(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, untimed_plans: None
) -> None:
    """A command refused in a new directory by the run's checks (its budget, its data) leaves
    nothing there, as one refused for the config's own values: no results.json that compare
    would rank as a failed run, no .hydra/ or train.log; a folder it made is gone, one that
    existed stays, empty. A dry run writes its plan; nothing trained, so the corrected command
    runs in it (and a directory with a trained run is still refused)."""
    here = [*SMOKE, f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *here, "trainer.max_steps=-1") == 2
    assert "max_steps" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    new = tmp_path.parent / f"{tmp_path.name}-new"
    missing = ["data=text", f"data.path={tmp_path / 'missing.txt'}", f"hydra.run.dir={new}"]
    assert run_command("train", *SMOKE, *missing) == 2
    assert "does not exist" in capsys.readouterr().err and not new.exists()
    for steps in (8, 6):  # a dry run's plan.json is no run either: the next dry run rewrites it
        assert run_command("train", *here, f"trainer.max_steps={steps}", "dry_run=true") == 0
        assert json.loads((tmp_path / "plan.json").read_text())["steps"] == steps
    assert run_command("train", *here) == 0  # and a run replaces it
    assert results(tmp_path)["status"] == "completed"
    assert "dry_run" not in json.loads((tmp_path / "plan.json").read_text())
    capsys.readouterr()
    assert run_command("train", *here, "model.activation=relu") == 2
    assert "already holds checkpoints" in "".join(capsys.readouterr())


def test_a_resumed_run_appends_to_the_metrics_history(
    tmp_path: Path, smoke_run: Path, cache_dir: Path
) -> None:
    copy_of(smoke_run, tmp_path)  # 4 steps, completed
    train(compose_train([*SMOKE, "trainer.max_steps=10", "resume=true"], tmp_path, cache_dir))
    assert steps(tmp_path, "train/loss") == list(range(10))
    assert steps(tmp_path, "val/loss") == [1, 3, 5, 7, 9]  # after every 2nd step


def test_rows_logged_after_the_resumed_checkpoint_are_replaced(
    tmp_path: Path, accumulated_run: tuple[Path, list], cache_dir: Path
) -> None:
    """As if killed after step 4's checkpoint, once the rows of steps 4 and 5 were written:
    the resumed run replays those steps, and the file holds each once, as uninterrupted.
    Two micro-batches a step: the checkpoint, saved once step 4's validation ends, is a
    step boundary."""
    run = [*ACCUMULATED, "checkpoint.every_n_steps=2", "callbacks.checkpoint.save_top_k=-1"]
    copy_of(accumulated_run[0], tmp_path)  # run's 6 steps, uninterrupted
    uninterrupted = [(r["step"], r["train/loss"], r["val/loss"]) for r in rows(tmp_path)]
    ckpts = tmp_path / "checkpoints"
    (ckpts / "last.ckpt").unlink()
    (ckpts / "step000006.ckpt").unlink()
    shutil.copy(ckpts / "step000004.ckpt", ckpts / "last.ckpt")
    whole = results(tmp_path)
    train(compose_train([*run, "resume=true"], tmp_path, cache_dir))
    again = results(tmp_path)
    assert again["global_step"] == 6 and again["batch"]["accumulation"] == 2
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in rows(tmp_path)] == uninterrupted
    assert [again[k] for k in ("train_loss", "val_loss", "best_val_loss")] == [
        whole[k] for k in ("train_loss", "val_loss", "best_val_loss")
    ]


class SignalAt(L.Callback):
    """Test hook: ``signum`` (SIGTERM by default) to this process once, between two batches of
    the validation that follows step ``step``, or with ``batch=N`` after training batch N
    instead (counted from 0, micro-batches each), or with ``start=true`` as ``fit`` sets up;
    on every rank, or on rank ``rank`` only."""

    def __init__(
        self,
        step: int = -1,
        signum: int = signal.SIGTERM,
        rank: int | None = None,
        batch: int = -1,
        start: bool = False,
    ) -> None:
        self.step, self.signum, self.rank, self.batch = step, signum, rank, batch
        self.start = start  # as fit sets up, before a stop is caught at a step's end

    def setup(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if self.start:  # Python's own Ctrl-C handler, as in a terminal (a job started in the
            signal.signal(signal.SIGINT, signal.default_int_handler)  # background ignores it)
            self._signal(trainer)

    def _signal(self, trainer: L.Trainer) -> None:
        if self.rank is None or self.rank == trainer.global_rank:
            self.step = self.batch = -1
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            self._signal(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.total.completed == self.batch:
            self._signal(trainer)


class RemoveRunDir(L.Callback):
    """Test hook: removes the run directory after training step ``step``, as ``rm -rf`` from
    another shell would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            shutil.rmtree(trainer.default_root_dir)


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_a_run_directory_removed_while_it_trains_stops_the_run_in_one_line(
    logger: str,
    tmp_path: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    cache_dir: Path,
    monkeypatch,
) -> None:
    """``rm -rf`` of the run directory mid-run: with the CSV logger two tracebacks ending in
    its ``FileNotFoundError`` and a new folder holding a lone results.json; without a logger
    the run went on saving checkpoints into a folder made anew, without its config, plan or
    record, and said it completed. Now it stops at the next write (a log row, a checkpoint)
    with one line, and writes nothing more."""
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    run_dir = tmp_path / "run"
    hook = ["+callbacks.rm._target_=test_rundir.RemoveRunDir", "+callbacks.rm.step=2"]
    every = ["trainer.max_steps=6", "checkpoint.every_n_steps=3", "trainer.log_every_n_steps=1"]
    argv = [*SMOKE, f"logger={logger}", *every, f"hydra.run.dir={run_dir}", *hook]
    assert run_command("train", *argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: the run directory {run_dir} was removed while the run trained, with its "
        "checkpoints and record: the run stopped ("
    ), err
    assert err.count("\n") == 1 and not run_dir.exists()


def test_every_rank_tells_a_run_directory_removed_while_it_trains(
    tmp_path: Path, monkeypatch
) -> None:
    """A DDP rank other than 0 asked whether the run directory was removed by its own lock,
    which it never takes, and so wrote a failed results.json into a folder made anew while
    rank 0 wrote none (``rm -rf`` of a 2-rank run between two checkpoints). Every rank now
    asks rank 0's lock file, as the checkpoint callback does before a save."""
    from lmlab.config.locks import LOCK_FILE
    from lmlab.train.rundir import RunDir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text("4242\n")  # rank 0's, taken before it started rank 1
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    run = RunDir(run_dir)
    assert not run.guard and not run.removed()
    run.open(compose_train([f"hydra.run.dir={run_dir}"]))
    assert not run.removed()
    shutil.rmtree(run_dir)
    assert run.removed()
    run_dir.mkdir()  # made anew, as a write of results.json would
    assert run.removed()


def test_ctrl_c_before_the_first_step_says_there_is_nothing_to_resume(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, cache_dir: Path, monkeypatch
) -> None:
    """Ctrl-C once training started, before any checkpoint: results.json said "earlier
    checkpoints are kept" and the log nothing; now both say there is none, and how to start
    again (a plain rerun into the folder is refused: it holds the run's plan)."""
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.start=true"]
    argv = [*SMOKE, f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *argv, *hook, f"+callbacks.stop.signum={int(signal.SIGINT)}") == 130
    out = "".join(capsys.readouterr())
    assert "interrupted before the first checkpoint: resume=auto starts it again" in out, out
    r = results(tmp_path)
    assert r["status"] == "interrupted"
    assert r["error"] == "stopped by Ctrl-C (SIGINT); no checkpoint to resume from"
    assert run_command("train", *argv, "resume=auto") == 0
    assert results(tmp_path)["status"] == "completed"


@pytest.mark.parametrize(
    ("code", "words", "fix"),
    [
        ("ENOSPC", "no space left on device", "free space"),
        # a file past `ulimit -f` (Python ignores SIGXFSZ) or the file system's largest file:
        # seen with `ulimit -f 10000` and gpt_tiny's 16 MB checkpoint, the same traceback
        (
            "EFBIG",
            "file too large (past ulimit -f or the file system's largest file)",
            "raise ulimit -f or use a file system that holds larger files",
        ),
    ],
)
def test_a_full_disk_is_said_in_one_line_with_the_resume(
    tmp_path: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    cache_dir: Path,
    monkeypatch,
    code: str,
    words: str,
    fix: str,
) -> None:
    """``torch.save`` on a full disk raises its own RuntimeError ("unexpected pos") while
    handling ENOSPC: the run printed both tracebacks and results.json named the second. Now
    one line names the disk, exit 1, and results.json says the same. A file over the size
    limit (EFBIG) was that traceback still: it stops the same way, saying what to raise."""
    import errno

    import torch

    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    save = torch.save

    def full_at_step_4(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            try:
                number = getattr(errno, code)
                raise OSError(number, os.strerror(number))  # torch's: no file
            except OSError:  # torch raises its own error so: the OSError is its context
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_4)
    argv = [
        *SMOKE,
        "trainer.max_steps=6",
        "checkpoint.every_n_steps=2",
        f"hydra.run.dir={tmp_path}",
    ]
    assert run_command("train", *argv) == 1
    err = capsys.readouterr().err
    ckpt = tmp_path / "checkpoints" / "last.ckpt"  # smoke's save_top_k=0: the file itself
    said = f"{words} writing {ckpt}; the checkpoints written before"
    assert "Traceback" not in err and f"error: {said}" in err, err
    assert f"{fix}; resume with: python src/train.py" in err, err
    r = results(tmp_path)
    assert r["status"] == "failed" and r["error"].startswith(said), r["error"]
    assert said in (tmp_path / "train.log").read_text()  # the log keeps it too
    assert not list(ckpt.parent.glob(".*.tmp"))


def stop_at_4_and_resume(run: list[str], run_dir: Path, cache_dir: Path) -> dict:
    """``run`` into ``run_dir``, stopped by SIGTERM in the validation after step 4, then
    resumed; the stop's record."""
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.step=4"]
    with pytest.raises(SIGTERMException):
        train(compose_train([*run, *hook], run_dir, cache_dir))
    stop = results(run_dir)
    assert stop["status"] == "preempted" and stop["global_step"] == 4
    train(compose_train([*run, "resume=true"], run_dir, cache_dir))
    return stop


def test_a_stop_during_validation_resumes_into_one_history(
    tmp_path: Path, six_step_run: Path, cache_dir: Path
) -> None:
    """Stopped mid-validation, Lightning saves a checkpoint whose resume runs a partial
    validation and logs every later step one step off. The stop waits for the validation's
    end instead: the resumed history is the uninterrupted one, row for row. Step 4 is a
    periodic checkpoint's step too, saved once at that point: ``last.ckpt`` links to it. The
    stop's record keeps the tokens and FLOPs its checkpoint trained, beside the budget."""
    run = [*SIX_STEPS, "callbacks.checkpoint.save_top_k=1"]
    whole_dir = six_step_run  # the uninterrupted run (its step checkpoints all kept)
    stopped = tmp_path / "stopped"
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.step=4"]
    with pytest.raises(SIGTERMException):
        train(compose_train([*run, *hook], stopped, cache_dir))
    ckpts = stopped / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000004.ckpt"]
    assert os.readlink(ckpts / "last.ckpt") == "step000004.ckpt"
    assert results(stopped)["error"].endswith("after saving " + str(ckpts / "last.ckpt"))
    # what the stop's checkpoint trained, beside the budget: 4 of the whole run's 6 steps
    stop, whole = results(stopped), results(whole_dir)
    assert stop["global_step"] == 4 and stop["tokens"] == whole["tokens"] * 4 // 6
    assert stop["flops"] == 6.0 * whole["budget"]["n_params"] * stop["tokens"]
    assert all(stop[k] == whole[k] for k in ("budget", "batch", "params", "active_params"))
    train(compose_train([*run, "resume=true"], stopped, cache_dir))
    history = [(r["step"], r["train/loss"], r["val/loss"]) for r in rows(stopped)]
    assert history == [(r["step"], r["train/loss"], r["val/loss"]) for r in rows(whole_dir)]


def test_a_stop_between_micro_batches_waits_for_the_step(tmp_path: Path, cache_dir: Path) -> None:
    """SIGTERM after the first of a step's two micro-batches: the run stops once that step's
    update is made (a checkpoint there holds no half-accumulated step), at step 3 not 2."""
    run = [*ACCUMULATED, "trainer.val_check_interval=null"]  # the final validation only
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.batch=4"]
    with pytest.raises(SIGTERMException):
        train(compose_train([*run, *hook], tmp_path, cache_dir))
    r = results(tmp_path)
    assert r["status"] == "preempted" and r["global_step"] == 3, r
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_run_leaves_the_signal_handlers_as_it_found_them(tmp_path: Path, cache_dir: Path) -> None:
    """Two runs in one process, as a sweep's jobs under Hydra's basic launcher or a notebook:
    the first run's handlers outlived it (Lightning's teardown put back those it found as
    ``fit`` began, which were the run's own), so after a stopped run a Ctrl-C only logged,
    and the next run, which takes SIGUSR1 only where no handler is set, left a SIGUSR1 to
    the finished run and trained through it to the end. Now each run, stopped or completed,
    leaves the handlers it found, and the second one stops at the step of its signal."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    found = {signum: signal.getsignal(signum) for signum in signals}
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.batch=1"]
    with pytest.raises(SIGTERMException):  # SIGTERM after step 2's batch: a stopped run
        train(compose_train([*SMOKE, *hook], tmp_path / "first", cache_dir))
    assert {s: signal.getsignal(s) for s in signals} == found
    usr1 = f"+callbacks.stop.signum={int(signal.SIGUSR1)}"
    with pytest.raises(SIGTERMException):
        train(compose_train([*SMOKE, *hook, usr1], tmp_path / "second", cache_dir))
    r = results(tmp_path / "second")
    assert r["status"] == "preempted" and r["global_step"] == 2, r
    assert {s: signal.getsignal(s) for s in signals} == found
    train(compose_train(SMOKE, tmp_path / "third", cache_dir))  # completed
    assert {s: signal.getsignal(s) for s in signals} == found


class BarAt(L.Callback):
    """Test hook: the training progress bar's description, count and total before each
    training batch, in ``seen``."""

    seen: list[tuple[str, int, int | None]] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        bar = trainer.progress_bar_callback.train_progress_bar
        BarAt.seen.append((bar.desc, bar.n, bar.total))


def test_the_progress_bar_counts_the_runs_micro_batches(
    accumulated_run: tuple[Path, list],
) -> None:
    """The bar counts micro-batches (Lightning's ``batch_idx``): its total is the run's 6 steps
    x 2 micro-batches. Lightning's took the optimizer steps left, and the bar ran past it:
    ``6/6``, then ``7/?``."""
    seen = accumulated_run[1]  # an ACCUMULATED run's bar, before each training batch
    assert len(seen) == 12 and {total for _, _, total in seen} == {12}, seen


def test_a_resumed_runs_progress_bar_counts_to_the_runs_end(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Lightning sets the bar's total as an epoch starts, and a resumed run continues its one
    epoch: its bar read ``Training: 70/?`` where the fresh run's read ``Epoch 0: 70/100``. It
    reads as the fresh run's, from the micro-batches the stopped run trained (two a step)."""
    run = [*ACCUMULATED, "+callbacks.bar._target_=test_rundir.BarAt"]
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.batch=3"]
    BarAt.seen.clear()
    with pytest.raises(SIGTERMException):
        train(compose_train([*run, *hook], tmp_path, cache_dir))
    fresh, trained = BarAt.seen[0], len(BarAt.seen)
    assert fresh[1:] == (0, 12) and trained == 2 * results(tmp_path)["global_step"], BarAt.seen
    BarAt.seen.clear()
    train(compose_train([*run, "resume=true"], tmp_path, cache_dir))
    assert BarAt.seen[0] == (fresh[0], trained, 12), BarAt.seen[0]


def untimed(run_dir: Path) -> list[tuple[tuple[str, str], ...]]:
    """``metrics.csv``'s rows, sorted, without the throughput columns, which each process
    times anew (a resume with no step to train logs the last step's evals after its row)."""
    return sorted(
        tuple((k, v) for k, v in r.items() if not k.startswith("perf/")) for r in rows(run_dir)
    )


# what a resume changes in results.json (its name, W&B's too, stays the run's)
RESUME_FIELDS = {"resumed_from", "resumed_step", "wall_seconds"}


def test_a_run_stopped_after_its_last_checkpoint_resumes_into_the_same_end(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A run stopped after its last step's checkpoint (in the final validation, the evals or
    the sample) has no step left to train. Its resume validates again, runs the last step's
    evals and the sample, and writes the results the uninterrupted run wrote: the last step's
    train loss, the best validation loss, the throughput and the kernels come from the
    checkpoint. ``metrics.csv`` holds the final validation once, whether or not the stopped
    run had logged it. Two stops: SIGTERM in the final validation (its checkpoint is saved
    once the validation ends), and a ``kill -9`` before the validation's row was written."""
    run = [*SMOKE, "eval.tasks=[stdlib_nextline]", "eval.limit=3"]
    train(compose_train(run, tmp_path / "whole", cache_dir))
    whole, history = results(tmp_path / "whole"), untimed(tmp_path / "whole")
    assert whole["train_loss"] and whole["tokens_per_second"] and whole["sample"]
    assert "eval/stdlib_nextline/acc" in whole and rows(tmp_path / "whole")[-2]["val/loss"]
    assert rows(tmp_path / "whole")[-1]["eval/stdlib_nextline/acc"]  # after the checkpoint

    def same_end(run_dir: Path, timed: set[str], name: str) -> None:
        again = results(run_dir)
        assert again["status"] == "completed" and again["resumed_from"]
        assert again["run_name"] == name  # the name of the run it continues
        differ = {k for k in whole.keys() | again.keys() if whole.get(k) != again.get(k)}
        assert differ - {"run_name"} <= RESUME_FIELDS | timed, again
        assert all(again[k] for k in timed)
        assert untimed(run_dir) == history

    stopped = tmp_path / "stopped"
    stop = stop_at_4_and_resume(run, stopped, cache_dir)  # named with its stop hook
    same_end(stopped, {"tokens_per_second", "mfu"}, stop["run_name"])  # timed in that process

    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "whole", killed, symlinks=True)
    (killed / "results.json").unlink()  # a kill -9 leaves the process no moment to write it
    with open(killed / "csv" / "metrics.csv") as f:
        lines = f.readlines()
    del lines[-2]  # no final validation's row (the last step's evals follow it)
    (killed / "csv" / "metrics.csv").write_text("".join(lines))
    train(compose_train([*run, "resume=auto"], killed, cache_dir))
    same_end(killed, set(), whole["run_name"])  # the whole run's checkpoint: its throughput


def test_a_resumed_run_reports_the_best_validation_loss_of_every_process(
    tmp_path: Path, six_step_run: Path, cache_dir: Path
) -> None:
    """The checkpoint keeps the best validation loss so far; the resumed run's
    ``best_val_loss`` starts from it. A periodic checkpoint whose step is validated is saved
    once that validation ends, so it holds it; the last step's is saved before the final
    validation, which a resume from it runs again, and a run extended past its end takes
    that one from its results."""
    run = [*SIX_STEPS, "callbacks.checkpoint.save_top_k=-1"]
    copy_of(six_step_run, tmp_path)  # run's 6 steps, completed
    val = {int(r["step"]) + 1: float(r["val/loss"]) for r in rows(tmp_path) if r["val/loss"]}
    assert sorted(val) == [2, 4, 6] and val[4] < val[2], val  # step 4's own is its best
    ckpts = tmp_path / "checkpoints"
    best = {
        step: torch.load(ckpts / f"step00000{step}.ckpt", weights_only=True)["run_state"]
        for step in (2, 4, 6)
    }
    assert best[2]["best_val_loss"] == pytest.approx(val[2], rel=1e-6)
    assert best[4]["best_val_loss"] == pytest.approx(val[4], rel=1e-6)
    assert best[6]["best_val_loss"] == pytest.approx(val[4], rel=1e-6)
    assert best[6]["train_loss"] == pytest.approx(results(tmp_path)["train_loss"])
    # extended past its end: step 6's own validation is in results.json, as if it were the
    # best (0.5 is below any loss this run reaches); then the checkpoint's
    ended = results(tmp_path) | {"best_val_loss": 0.5}
    (tmp_path / "results.json").write_text(json.dumps(ended))
    train(compose_train([*run, "trainer.max_steps=8", "resume=true"], tmp_path, cache_dir))
    assert results(tmp_path)["best_val_loss"] == 0.5
    path = (ckpts / "last.ckpt").resolve()
    ckpt = torch.load(path, weights_only=True)
    assert step_of(path) == 8 and ckpt["run_state"]["best_val_loss"] == 0.5  # carried on
    ckpt["run_state"]["best_val_loss"] = 0.25
    torch.save(ckpt, path)
    train(compose_train([*run, "trainer.max_steps=10", "resume=true"], tmp_path, cache_dir))
    assert results(tmp_path)["best_val_loss"] == 0.25


def test_a_copied_run_directory_resumes_from_its_newest_checkpoint(
    tmp_path: Path, extended_run: Path, cache_dir: Path
) -> None:
    """ModelCheckpoint does not recognise its files in a copied directory: it wrote
    ``last-v1.ckpt`` and left ``last.ckpt`` behind, so the next resume went back in time."""
    run = SMOKE  # smoke_run's, completed at step 4
    copy = extended_run  # smoke_run copied (links become files), then resumed to step 8 there
    cfg = compose_train([*run, "trainer.max_steps=8", "resume=true"], copy, cache_dir)
    ckpts = copy / "checkpoints"
    assert not list(ckpts.glob("last-v*")), sorted(p.name for p in ckpts.iterdir())
    assert step_of(ckpts / "last.ckpt") == 8
    assert step_of(resume_checkpoint(cfg, copy)) == 8
    copy = tmp_path / "b"  # the next resume, in a copy of its own (copied again)
    shutil.copytree(extended_run, copy)
    ckpts = copy / "checkpoints"
    train(compose_train([*run, "trainer.max_steps=10", "resume=true"], copy, cache_dir))
    assert step_of(ckpts / "last.ckpt") == 10 and not list(ckpts.glob("last-v*"))


def test_checkpoints_hold_one_copy_per_step_and_every_tool_follows_last(
    tmp_path: Path, smoke_run: Path, run_command
) -> None:
    ckpts = smoke_run / "checkpoints"
    last = ckpts / "last.ckpt"
    entries = list(ckpts.iterdir())
    distinct_steps = {step_of(p) for p in entries}
    largest = max(p.lstat().st_size for p in entries)
    sizes = {p.name: p.lstat().st_size for p in entries}  # a link's own size, not its target's
    assert sum(sizes.values()) <= len(distinct_steps) * largest * 1.01, sizes
    assert step_of(last) == 4 == results(smoke_run)["global_step"]
    assert run_command("generate", f"ckpt={last}", "max_new_tokens=2") == 0
    assert run_command("probe", f"ckpt={last}", f"out={tmp_path / 'maps.png'}") == 0


def test_last_ckpt_never_points_at_a_removed_checkpoint(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save_top_k=1 removes the previous step checkpoint after saving the next one: by then
    ``last.ckpt`` already links to the new one (a kill in between leaves a working link)."""
    from lmlab.train.checkpointing import Checkpoint

    removed, remove = [], Checkpoint._remove_checkpoint

    def spy(self: Checkpoint, trainer: L.Trainer, filepath: str) -> None:
        last = Path(self.dirpath) / "last.ckpt"
        removed.append((Path(filepath).name, last.resolve().name))
        remove(self, trainer, filepath)

    monkeypatch.setattr(Checkpoint, "_remove_checkpoint", spy)
    steps = ["checkpoint.every_n_steps=2", "callbacks.checkpoint.save_top_k=1"]  # not smoke's 0
    train(compose_train([*smoke.SMOKE, "logger=none", *steps], tmp_path, cache_dir))
    assert removed == [("step000002.ckpt", "step000004.ckpt")]


def test_save_top_k_keeps_the_newest_k_step_checkpoints(tmp_path: Path, cache_dir: Path) -> None:
    """``save_top_k=3`` keeps the three newest steps (Lightning refuses k > 1 unless a value
    is monitored: the step is), and a resumed run goes on keeping them."""
    run = [*smoke.SMOKE, "logger=none", "checkpoint.every_n_steps=2"]
    run += ["callbacks.checkpoint.save_top_k=3", "trainer.max_steps=8"]
    train(compose_train(run, tmp_path, cache_dir))
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt",
        "step000004.ckpt",
        "step000006.ckpt",
        "step000008.ckpt",
    ]
    assert os.readlink(ckpts / "last.ckpt") == "step000008.ckpt"
    train(compose_train([*run, "trainer.max_steps=10", "resume=true"], tmp_path, cache_dir))
    assert sorted(p.name for p in ckpts.iterdir())[1:] == [
        "step000006.ckpt",
        "step000008.ckpt",
        "step000010.ckpt",
    ]
    assert os.readlink(ckpts / "last.ckpt") == "step000010.ckpt"


def truncate(path: Path) -> None:
    """Cut the file at ``path`` (not a link's target) to half its bytes, as a full disk or an
    interrupted copy leaves it."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def test_a_corrupt_checkpoint_is_named_by_every_tool(
    tmp_path: Path, smoke_run: Path, cache_dir: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.ckpt"
    shutil.copy(smoke_run / "checkpoints" / "last.ckpt", bad)
    truncate(bad)
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"not a checkpoint")
    expected = {"generate": bad, "probe": bad, "consolidate": sharded}
    for tool, path in expected.items():
        capsys.readouterr()
        assert run_command(tool, f"ckpt={path}") == 2, tool
        err = capsys.readouterr().err
        assert err.startswith(f"error: checkpoint {path}") and "unreadable" in err, err
        assert len(err.strip().splitlines()) == 1, err
    with pytest.raises(ConfigError, match=rf"checkpoint {bad} is unreadable"):
        train(compose_train([*smoke.SMOKE, f"ckpt_path={bad}"], tmp_path / "new", cache_dir))


def test_resume_continues_from_the_newest_intact_checkpoint(
    tmp_path: Path, step_files_run: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated ``last.ckpt`` (a real file here, as a preempted save or a copy makes it) is
    passed over with a warning for the intact step checkpoint beside it; files left by a save
    that was killed (``.<name>.<random>.tmp``) are removed when the next run starts."""
    run = STEP_FILES
    copy_of(step_files_run, tmp_path)  # run's 4 steps: step000004.ckpt, last.ckpt its link
    ckpts = tmp_path / "checkpoints"
    truncate(ckpts / "last.ckpt")
    orphans = [ckpts / ".step000006.ckpt.k2j4x9.tmp", ckpts / ".last.ckpt.tmp"]
    orphans[0].write_bytes(b"half a checkpoint")
    orphans[1].mkdir()  # a sharded save's folder
    with caplog.at_level(logging.WARNING):
        train(compose_train([*run, "trainer.max_steps=6", "resume=true"], tmp_path, cache_dir))
    r = results(tmp_path)
    assert r["status"] == "completed" and r["global_step"] == 6
    assert r["resumed_from"] == str(ckpts / "step000004.ckpt")
    assert any("last.ckpt" in m and "unreadable" in m for m in caplog.messages), caplog.messages
    assert not any(p.exists() for p in orphans)
    for path in [p for p in ckpts.iterdir() if p.is_file() and not p.is_symlink()]:
        truncate(path)
    with pytest.raises(ConfigError, match=r"no intact checkpoint .* \(unreadable: last.ckpt, st"):
        train(compose_train([*run, "trainer.max_steps=8", "resume=true"], tmp_path, cache_dir))


def test_a_resumed_sweep_is_checked_against_its_runs_before_any_job_trains(
    tmp_path: Path,
    cache_dir: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``resume=auto`` into a sweep's folder with another grid: the job whose config changed
    (gelu -> swiglu in folder 1) is named and the sweep is refused before any job trains, the
    folder byte for byte as it was (job 0 used to train on, and Hydra's launcher rewrote
    job 1's ``.hydra/``). Resumed with its own grid, each job continues and gets ``.hydra/``
    as configured, with nothing of how it was held; the first invocation's
    ``multirun.yaml`` is kept as ``multirun.1.yaml``."""
    from lmlab.train.held import HELD_SUBDIR

    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    sweep = tmp_path / "sweep"
    common = ["-m", *SMOKE, "callbacks.sample=null", f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *common, "model.activation=relu,gelu") == 0
    before, first_multirun = snapshot(sweep), (sweep / "multirun.yaml").read_bytes()
    more = ["resume=auto", "trainer.max_steps=6"]
    assert run_command("train", *common, "model.activation=relu,swiglu", *more) == 2
    err = capsys.readouterr().err
    assert "error: 1 of the sweep's 2 jobs would be refused, so none was started" in err, err
    assert f"#1 model.activation=swiglu: cannot resume {sweep / '1'}: it holds another " in err
    assert "differing fields: model.activation: 'gelu' (saved) vs 'swiglu' (now)" in err
    assert changed(before, snapshot(sweep)) == []

    assert run_command("train", *common, "model.activation=relu,gelu", *more) == 0
    assert [results(sweep / job)["global_step"] for job in "01"] == [6, 6]
    # the first invocation's multirun.yaml is kept; Hydra wrote the second's in its place
    assert (sweep / "multirun.1.yaml").read_bytes() == first_multirun
    task = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    assert "model.activation=relu,gelu" in task and "resume=auto" in task
    hydra_yaml = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_yaml["output_subdir"] == ".hydra"
    added = ("output_subdir", HELD_SUBDIR, "HeldFileHandler")
    assert not [o for o in hydra_yaml["overrides"]["hydra"] if any(a in o for a in added)]
    assert hydra_yaml["job_logging"]["handlers"]["file"]["class"] == "logging.FileHandler"
    assert HELD_SUBDIR not in hydra_yaml["job"]["env_set"]
    record = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]  # the sweep's too
    assert not [o for o in record["overrides"]["hydra"] if any(a in o for a in added)]
    assert record["output_subdir"] == ".hydra" and HELD_SUBDIR not in record["job"]["env_set"]
    overrides = yaml.safe_load((sweep / "0" / ".hydra" / "overrides.yaml").read_text())
    assert "resume=auto" in overrides and "model.activation=relu" in overrides


def test_a_resumed_sweep_whose_steps_were_reordered_is_refused_before_any_job_trains(
    tmp_path: Path,
    cache_dir: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``trainer.max_steps=2,4`` resumed as ``4,2``: the sweep's checks passed (each job's
    config is the run's), job 0 was extended to 4 steps, then job 1 was refused for its
    checkpoint at step 4. Now the job whose checkpoint is past its planned steps is named
    with its folder before any job trains, and the folder is left as it was."""
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    sweep = tmp_path / "sweep"
    common = ["-m", *SMOKE, "callbacks.sample=null", f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *common, "trainer.max_steps=2,4") == 0
    before = snapshot(sweep)
    assert run_command("train", *common, "trainer.max_steps=4,2", "resume=auto") == 2
    err = capsys.readouterr().err
    assert "error: 1 of the sweep's 2 jobs would be refused, so none was started" in err, err
    assert (
        f"#1 trainer.max_steps=2: cannot resume {sweep / '1'}: "
        f"{sweep / '1' / 'checkpoints' / 'last.ckpt'} is at step 4, past this run's 2 planned "
        "steps (trainer.max_steps or the budget was lowered): keep them at 4 or more"
    ) in err, err
    assert changed(before, snapshot(sweep)) == []
    assert [results(sweep / job)["global_step"] for job in "01"] == [2, 4]


def hold_lock(path: Path, pid: str) -> int:
    """Hold ``path``'s lock as another live process would (its pid written): a second open
    file description of this process conflicts with it, as another process's would."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode())
    return fd


@pytest.mark.parametrize("resume", [True, False])
def test_a_sweep_into_a_live_sweeps_folder_is_refused_before_it_writes(
    resume: bool, tmp_path: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """Another process's sweep is live in the folder (its lock held): a second sweep there is
    refused before any check or write, the folder byte for byte as it was. It used to go on:
    with ``resume=auto`` its checks passed against the live runs, Hydra rewrote
    ``multirun.yaml`` and each job met the live one's at its run lock."""
    from lmlab.config.locks import SWEEP_LOCK_FILE

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "results.json").write_text('{"status": "running"}')  # a live job's
    (sweep / "multirun.yaml").write_text("live: true\n")
    held = hold_lock(sweep / SWEEP_LOCK_FILE, "4242")
    before = snapshot(sweep)
    argv = ["-m", *SMOKE, f"hydra.sweep.dir={sweep}", *(["resume=auto"] if resume else [])]
    try:
        assert run_command("train", *argv) == 2
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert (
        f"error: hydra.sweep.dir={sweep} is in use by a live sweep (pid 4242): wait for it to "
        "end (then resume=auto continues its runs), or choose another directory"
    ) in err, err
    assert "earlier sweep" not in err  # refused for the live sweep first
    assert changed(before, snapshot(sweep)) == []


def test_runs_and_sweeps_never_write_into_a_live_one_of_the_other_kind(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, cache_dir: Path, monkeypatch
) -> None:
    """A sweep job whose folder a live run is starting in (``.hydra/`` and ``train.log``
    only, so far) is refused and writes nothing there: Hydra's launcher rewrote that
    ``.hydra/`` as a multirun's and appended the job's error to the run's log, and the sweep
    exited 0. A run into a live sweep's folder, and a sweep into a live run's directory, are
    refused with the holder's pid (the run trained beside the sweep's jobs, and compare
    ranked it)."""
    from lmlab.config.locks import LOCK_FILE, SWEEP_LOCK_FILE

    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "hydra.yaml").write_text("mode: RUN\n")
    (sweep / "0" / "train.log").write_text("the live run's first line\n")
    held = hold_lock(sweep / "0" / LOCK_FILE, "4242")
    before = snapshot(sweep / "0")
    try:
        assert run_command("train", "-m", *SMOKE, f"hydra.sweep.dir={sweep}") == 1
    finally:
        os.close(held)
    out = "".join(capsys.readouterr())  # the job's error is logged (stdout), the exit's: stderr
    assert f"hydra.run.dir={sweep / '0'} is in use by a live run (pid 4242)" in out, out
    assert "error: the sweep's only job failed" in out
    assert changed(before, snapshot(sweep / "0")) == []

    for kind, command, lock in [
        ("sweep", ["train", *SMOKE, f"hydra.run.dir={tmp_path / 'a'}"], SWEEP_LOCK_FILE),
        ("run", ["train", "-m", *SMOKE, f"hydra.sweep.dir={tmp_path / 'a'}"], LOCK_FILE),
    ]:
        held = hold_lock(tmp_path / "a" / lock, "4343")
        before = snapshot(tmp_path / "a")
        try:
            assert run_command(*command) == 2
        finally:
            os.close(held)
        key = command[-1].partition("=")[0]
        message = f"error: {key}={tmp_path / 'a'} is in use by a live {kind} (pid 4343): wait"
        assert message in capsys.readouterr().err
        assert changed(before, snapshot(tmp_path / "a")) == []


def finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"status": "completed"}')
    (folder / "plan.json").write_text("{}")
    return folder


def test_a_run_or_sweep_inside_a_live_sweeps_folder_is_refused(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """A live sweep's folder, its jobs' folders not all there yet: a single run into one of
    them (or deeper) was accepted; the sweep's job then failed at the run's lock, and the
    sweep's ``resume=auto`` later took the run for the job. Refused now, with the sweep's
    folder and pid, as is a sweep into a folder under it; nothing is written."""
    from lmlab.config.locks import SWEEP_LOCK_FILE

    sweep = tmp_path / "sweep"
    finished_run(sweep / "0")
    (sweep / "multirun.yaml").write_text("live: true\n")
    held = hold_lock(sweep / SWEEP_LOCK_FILE, "4242")
    before = snapshot(sweep)
    try:
        for command, folder in [
            (["train", *SMOKE], sweep / "1"),  # the job the live sweep starts next
            (["train", *SMOKE, "resume=auto"], sweep / "a" / "b" / "1"),
            (["train", "-m", *SMOKE], sweep / "more"),
        ]:
            key = "hydra.sweep.dir" if "-m" in command else "hydra.run.dir"
            assert run_command(*command, f"{key}={folder}") == 2, folder
            assert capsys.readouterr().err == (
                f"error: {key}={folder} is inside {sweep}, the folder of a live sweep (pid "
                "4242), whose jobs write there: wait for it to end, or choose a directory "
                "outside it\n"
            )
            assert changed(before, snapshot(sweep)) == [], folder
    finally:
        os.close(held)


def test_a_run_and_a_sweep_never_nest_in_a_finished_one_of_the_other_kind(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """A single run into a finished sweep's folder (Hydra's ``multirun.yaml``, or a W&B
    agent's job folders alone) is refused: it trained beside the jobs and compare ranked it
    among them. So is a sweep into a finished run's directory, whose jobs went inside the
    run, and a new run or sweep at any depth inside a finished sweep's or run's folder (one
    there was ranked with the sweep's jobs, or with the run). Each folder is left byte for
    byte as it was; a job's own folder is still continued (``resume``'s checks)."""
    sweep = tmp_path / "sweep"
    finished_run(sweep / "0")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    agent = tmp_path / "agent"
    finished_run(agent / "abc123")
    run = finished_run(tmp_path / "run")
    for folder in (run, sweep / "0"):  # lmlab's runs: Hydra's config beside the run files
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
    for folder, command, message in [
        (
            sweep,
            ["train", *SMOKE],
            f"hydra.run.dir={sweep} is a sweep's folder (multirun.yaml "
            "and the runs in 0): compare would rank a run here among the sweep's jobs",
        ),
        (
            agent,
            ["train", *SMOKE, "resume=auto"],
            f"hydra.run.dir={agent} is a sweep's folder (the runs in abc123)",
        ),
        (
            run,
            ["train", "-m", *SMOKE, "resume=auto"],
            f"hydra.sweep.dir={run} holds a single "
            "run (results.json, plan.json): the sweep's jobs would be nested in it",
        ),
        (
            sweep,
            ["train", *SMOKE, f"hydra.run.dir={sweep / '7'}"],
            f"hydra.run.dir={sweep / '7'} is inside {sweep}, a sweep's folder (multirun.yaml): "
            "compare and scaling would rank what runs here among the sweep's jobs; choose a "
            "directory outside it (a sweep takes more jobs with -m <overrides> resume=auto "
            "hydra.sweep.dir=<its folder>)",
        ),
        (
            sweep,
            ["train", "-m", *SMOKE, f"hydra.sweep.dir={sweep / 'more'}"],
            f"hydra.sweep.dir={sweep / 'more'} is inside {sweep}, a sweep's folder",
        ),
        (
            run,
            ["train", *SMOKE, "resume=auto", f"hydra.run.dir={run / 'a' / 'b'}"],
            f"hydra.run.dir={run / 'a' / 'b'} is inside {run}, a run's folder (results.json, "
            "plan.json): compare and scaling would rank what runs here with that run; choose "
            "a directory outside it\n",
        ),
        (
            sweep,
            ["train", "-m", *SMOKE, f"hydra.sweep.dir={sweep / '0' / 'more'}"],
            f"hydra.sweep.dir={sweep / '0' / 'more'} is inside {sweep / '0'}, a run's folder",
        ),
    ]:
        key = "hydra.sweep.dir" if "-m" in command else "hydra.run.dir"
        if not any(arg.startswith(f"{key}=") for arg in command):
            command = [*command, f"{key}={folder}"]
        before = snapshot(folder)
        assert run_command(*command) == 2
        assert f"error: {message}" in capsys.readouterr().err
        assert changed(before, snapshot(folder)) == []
    from lmlab.train.dirlock import refuse_run_in_sweep_dir

    refuse_run_in_sweep_dir(sweep / "0")  # a job's own folder: resume continues it
    loose = tmp_path / "models"  # loose checkpoints, one evaluated: eval/ beside them
    (loose / "eval").mkdir(parents=True)
    (loose / "eval" / "gpt2.json").write_text("{}")
    refuse_run_in_sweep_dir(loose / "gpt2-finetuned")
    project = tmp_path / "project"  # a project's own checkpoints/ and another tool's record
    (project / "checkpoints").mkdir(parents=True)
    (project / "checkpoints" / "gpt2.ckpt").write_bytes(b"x")
    (project / "results.json").write_text('{"accuracy": 0.9}')
    refuse_run_in_sweep_dir(project / "runs" / "a")
    empty = tmp_path / "empty"  # a sweep's multirun.yaml and no job yet
    empty.mkdir()
    (empty / "multirun.yaml").write_text("hydra: {}\n")
    refuse_run_in_sweep_dir(empty / "x" / "y")
    bare = tmp_path / "bare"  # a finished run made with hydra.output_subdir=null: no .hydra/
    for name, text in [("plan.json", "{}"), ("run_config.yaml", "seed: 1\n")]:
        (bare / name).parent.mkdir(exist_ok=True)
        (bare / name).write_text(text)
    with pytest.raises(ConfigError, match=f"is inside {bare}, a run's folder .plan.json, run_"):
        refuse_run_in_sweep_dir(bare / "a")


@pytest.mark.parametrize(
    ("jobs", "subdir", "named"),
    [
        (["a/0", "a/1"], "hydra.sweep.subdir=a/${hydra.job.num}", "a/0, a/1"),
        (["."], "hydra.sweep.subdir=.", "."),
        (["0"], "hydra.sweep.dir={tmp}/missing/../sweep", "0"),
    ],
    ids=["nested", "itself", "dotdot"],
)
def test_an_earlier_sweeps_runs_are_found_wherever_its_jobs_sat(
    jobs: list[str], subdir: str, named: str, tmp_path: Path, run_command, capsys
) -> None:
    """A sweep into a finished sweep's folder is refused before anything is written, whether
    its jobs sat a level down (``a/${hydra.job.num}``: reading that override raised in the
    sweep's start, so none of its checks ran, and each job failed alone after Hydra rewrote
    ``multirun.yaml``), in the folder itself (``.``), or behind a ``..`` through a folder
    that does not exist (it looked new, and the dry run rewrote the jobs' ``.hydra/``)."""
    sweep = tmp_path / "sweep"
    for job in jobs:
        finished_run(sweep / job)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    before = snapshot(sweep)
    where = subdir.format(tmp=tmp_path) if "{tmp}" in subdir else subdir
    argv = ["-m", *SMOKE, "model.activation=relu,gelu", "dry_run=true", where]
    if "sweep.dir" not in where:
        argv.append(f"hydra.sweep.dir={sweep}")
    assert run_command("train", *argv) == 2
    assert (
        f"error: hydra.sweep.dir={sweep} already holds the runs of an earlier sweep ({named}): "
    ) in capsys.readouterr().err
    assert changed(before, snapshot(sweep)) == []
    assert not (tmp_path / "missing").exists()


def test_a_sweep_job_meeting_an_earlier_run_is_told_the_sweeps_resume(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """A job that meets an earlier run's checkpoints (deeper than the sweep's start looks)
    names the sweep's ``resume=auto``: the job's own ``resume=true`` would not be a sweep."""
    sweep = tmp_path / "sweep"
    earlier = finished_run(sweep / "a/b/c/0")
    (earlier / "checkpoints").mkdir()
    (earlier / "checkpoints" / "last.ckpt").write_bytes(b"")
    argv = ["-m", *SMOKE, "hydra.sweep.subdir=a/b/c/${hydra.job.num}", f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *argv) != 0
    assert (
        f"already holds checkpoints of an earlier run: continue it with python src/train.py -m "
        f"<same overrides> resume=auto hydra.sweep.dir={sweep}, or choose another directory"
    ) in "".join(capsys.readouterr())


def test_a_run_directory_named_through_dotdot_is_its_own(
    tmp_path: Path, run_command, untimed_plans: None
) -> None:
    """``hydra.run.dir=<x>/../run``: the run took its lock under that spelling and looked for
    it again under Hydra's (``..`` resolved), and refused itself as a live run (its own pid)."""
    argv = [*SMOKE, "dry_run=true", f"hydra.run.dir={tmp_path}/missing/../run"]
    assert run_command("train", *argv) == 0
    assert (tmp_path / "run").is_dir() and not (tmp_path / "missing").exists()


def test_a_folder_typed_with_a_tilde_is_in_the_home_folder(
    tmp_path: Path, run_command, monkeypatch: pytest.MonkeyPatch, untimed_plans: None
) -> None:
    """``"hydra.run.dir='~/runs/a'"``, quoted for Hydra as lmlab's own refusal of the
    unquoted form advises: Hydra made a folder named ``~`` in the working directory (where a
    later ``rm -rf ~`` to tidy it removes the home folder). A run's and a sweep's folder
    typed so are in the home folder, as a shell reads ``~``."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert run_command("train", *SMOKE, "dry_run=true", "hydra.run.dir='~/runs/a'") == 0
    assert (home / "runs" / "a" / "plan.json").is_file()
    sweep = [*SMOKE, "dry_run=true", "model.activation=relu,gelu", "hydra.sweep.dir='~/sw'"]
    assert run_command("train", "-m", *sweep) == 0
    assert sorted(p.name for p in (home / "sw").iterdir() if p.is_dir()) == ["0", "1"]
    assert not list(cwd.iterdir())


@pytest.mark.parametrize("name", ["日本", "a,b", "it's"])
def test_a_sweep_folder_lmlab_names_is_quoted_for_its_jobs(name: str, tmp_path: Path) -> None:
    """A sweep folder lmlab names again for the jobs (``..`` resolved, or a fresh default) is
    an override Hydra reads back as that folder: unquoted, Hydra refused ``日本`` for every
    job and read ``a,b`` as a sweep of two folders, so no job ran."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from lmlab.cli.rundir_callback import name_dir

    config = OmegaConf.create({"hydra": {"sweep": {"dir": "x"}, "overrides": {"hydra": []}}})
    name_dir(config, "sweep", tmp_path / name)
    parsed = OverridesParser.create().parse_override(config.hydra.overrides.hydra[-1])
    assert not parsed.is_sweep_override() and parsed.value() == str(tmp_path / name)


def test_the_resume_command_an_error_names_runs_as_pasted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``resume with:`` command names a folder with a space or ``日本`` quoted for the
    shell and for Hydra: split as a shell splits it, Hydra reads the folder back."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lmlab.train.resume import resume_command

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # a single run's, not a sweep's
    out_dir = tmp_path / "a b" / "日本, it's"
    words = shlex.split(resume_command(out_dir))
    assert words[:2] == ["python", "src/train.py"]
    parsed = OverridesParser.create().parse_override(words[-1])
    assert parsed.key_or_group == "hydra.run.dir" and parsed.value() == str(out_dir)


def test_a_stopped_sweep_names_the_command_that_continues_it(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, cache_dir: Path, monkeypatch
) -> None:
    """A stop (SIGTERM here) ends the whole sweep, so its job names the sweep's resume, not
    the job's own (``resume=true hydra.run.dir=<sweep>/0``, which would leave any later
    jobs unrun); that command continues the stopped job."""
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    sweep = tmp_path / "sweep"
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.step=2"]
    argv = ["-m", *SMOKE, "callbacks.sample=null", "model.activation=relu"]
    assert run_command("train", *argv, *hook, f"hydra.sweep.dir={sweep}") == 143
    out = "".join(capsys.readouterr())
    assert (
        "preempted: resume with: python src/train.py -m <same overrides> resume=auto "
        f"hydra.sweep.dir={sweep}"
    ) in out, out
    assert run_command("train", *argv, "resume=auto", f"hydra.sweep.dir={sweep}") == 0
    assert results(sweep / "0")["status"] == "completed"


@pytest.mark.parametrize("chosen", [True, False])
def test_a_sweep_holds_its_folders_lock_until_it_ends(
    chosen: bool,
    tmp_path: Path,
    run_command,
    monkeypatch: pytest.MonkeyPatch,
    cache_dir: Path,
) -> None:
    """Every job of a sweep runs with its folder locked, a chosen folder or the default
    ``multirun/<date>/<time>``; the lock is released, its file removed, when the sweep ends."""
    import fcntl

    import lmlab.train.run
    from lmlab.config.locks import SWEEP_LOCK_FILE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    seen: list[tuple[str, bool]] = []

    def probe(cfg) -> float:  # a job: is its sweep folder locked by a live process?
        from hydra.core.hydra_config import HydraConfig

        lock = Path(HydraConfig.get().sweep.dir).absolute() / SWEEP_LOCK_FILE
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            seen.append((lock.read_text().strip(), True))
        else:
            seen.append(("", False))
        finally:
            os.close(fd)
        return 1.0

    monkeypatch.setattr(lmlab.train.run, "train", probe)
    where = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if chosen else []
    jobs = ["relu", "gelu"] if chosen else ["relu"]  # every job; the default folder: one
    assert run_command("train", "-m", *SMOKE, f"model.activation={','.join(jobs)}", *where) == 0
    assert seen == [(str(os.getpid()), True)] * len(jobs)
    assert not list(tmp_path.rglob(SWEEP_LOCK_FILE))


def test_a_probe_of_the_lock_is_waited_out_not_taken_for_a_live_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another command's probe (``refuse_if_live``: a shared lock for an instant) that a run
    meets as it takes its lock: the run waits it out. A lock held past the wait is a live
    one's. (The wait is set long, then to nothing, so that no timing decides the test.)"""
    import fcntl
    import threading

    import lmlab.train.dirlock as dirlock
    from lmlab.config.locks import LOCK_FILE

    probe = os.open(tmp_path / LOCK_FILE, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.01, fcntl.flock, (probe, fcntl.LOCK_UN)).start()
    monkeypatch.setattr(dirlock, "PROBE_WAIT_S", 60.0)
    dirlock.lock_run_dir(tmp_path)  # it used to be refused: "in use by a live run (pid unknown)"
    dirlock.unlock_run_dir(tmp_path)
    os.close(probe)
    held = os.open(tmp_path / LOCK_FILE, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)  # never released: a live holder's
    monkeypatch.setattr(dirlock, "PROBE_WAIT_S", 0.0)
    try:
        with pytest.raises(ConfigError, match=r"is in use by a live run"):
            dirlock.lock_run_dir(tmp_path)
    finally:
        os.close(held)


def test_a_deleted_lock_file_lets_no_second_run_into_a_live_runs_folder(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """A live run's ``.lmlab.lock`` deleted by hand (taken for a stale one): a second run
    there used to take a new lock file and start, and its clean-up of temporary files broke
    the first run's checkpoint save. The run holds its folder too: the second is refused,
    the folder as it was, and the probe ``compare`` asks (``live_holder``) still tells the
    run is live. Once the first
    process is gone, the folder is free."""
    import subprocess
    import sys

    from lmlab.config.locks import LOCK_FILE, live_holder
    from lmlab.train import dirlock

    run_dir = tmp_path / "run"
    live = subprocess.Popen(  # a live run's locks, taken as a run takes them
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from lmlab.train.dirlock import "
            "lock_run_dir; lock_run_dir(Path(sys.argv[1])); print('held', flush=True); "
            "time.sleep(120)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout.readline().strip() == "held"
        assert live_holder(run_dir / LOCK_FILE) == str(live.pid)
        (run_dir / LOCK_FILE).unlink()
        assert live_holder(run_dir / LOCK_FILE) == "unknown"  # live, its pid unknown
        holds = rf"pid unknown: a process holds the folder itself, and no live {LOCK_FILE}"
        with pytest.raises(ConfigError, match=holds):
            dirlock.lock_run_dir(run_dir)
        capsys.readouterr()
        assert run_command("train", *smoke.SMOKE, f"hydra.run.dir={run_dir}") == 2
        said = capsys.readouterr().err
        assert f"hydra.run.dir={run_dir} is in use by a live run (pid unknown: a" in said
        assert list(run_dir.iterdir()) == []  # nothing written, no lock file taken
        (run_dir / ".hydra").mkdir()  # as the live run's Hydra wrote it
        (run_dir / ".hydra" / "overrides.yaml").write_text("[]\n")
        assert run_command("compare", tmp_path) != 0  # nothing to compare yet, and why
        assert "1 still running (pid unknown)" in capsys.readouterr().err
        (run_dir / LOCK_FILE).write_text("999999\n")  # a stale pid, held by no process
        with pytest.raises(ConfigError, match=holds) as refused:
            dirlock.lock_run_dir(run_dir)
        assert "999999" not in str(refused.value)  # not named as the folder's holder
    finally:
        live.kill()
        live.wait()
    assert live_holder(run_dir / LOCK_FILE) is None
    dirlock.lock_run_dir(run_dir)  # the kernel dropped the dead process's locks


def test_a_forked_child_that_outlives_its_killed_run_holds_none_of_its_locks(
    tmp_path: Path,
) -> None:
    """A run's forked children (DataLoader workers, ``data.num_workers`` > 0) outlive a
    ``kill -9`` of the run by up to 5 s, until they notice. A ``flock`` belongs to the open
    file, which a fork shares: the workers kept the run's folder locked, and a ``resume=true``
    right after the kill was refused as "in use by a live run", naming the dead run's pid. A
    forked child now holds none of the locks: once the run is dead its folder is free."""
    import subprocess
    import sys

    from lmlab.config.locks import LOCK_FILE, live_holder
    from lmlab.train import dirlock

    run_dir = tmp_path / "run"
    live = subprocess.Popen(  # a run's locks, a forked child, then the run killed
        [
            sys.executable,
            "-c",
            "import multiprocessing as mp, os, sys, time; from pathlib import Path; "
            "from lmlab.train.dirlock import lock_run_dir; lock_run_dir(Path(sys.argv[1])); "
            "ready = lambda: (print(os.getpid(), flush=True), time.sleep(120)); "
            "mp.get_context('fork').Process(target=ready).start(); time.sleep(120)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(live.stdout.readline())  # the child's own line: it runs
    try:
        assert live_holder(run_dir / LOCK_FILE) == str(live.pid)
        live.kill()
        live.wait()
        os.kill(child, 0)  # the child lives on
        assert live_holder(run_dir / LOCK_FILE) is None
        dirlock.lock_run_dir(run_dir)  # was: in use by a live run (pid <the killed run's>)
        dirlock.unlock_run_dir(run_dir)
    finally:
        live.kill()
        os.kill(child, signal.SIGKILL)
    dirlock.unlock_run_dir(run_dir)


def test_a_taken_default_run_dir_gives_the_next_free_one(tmp_path: Path) -> None:
    """The default directory is named by the second a run starts: a live run's (another open
    lock) or an earlier run's is passed over for ``<dir>_2``, ``_3``, ..., and left as it was."""
    import fcntl

    from lmlab.config.locks import LOCK_FILE
    from lmlab.train.dirlock import fresh_run_dir, lock_run_dir, unlock_run_dir

    base = tmp_path / "12-00-00"
    assert fresh_run_dir(base) == base  # free: itself
    unlock_run_dir(base)
    held = os.open(base / LOCK_FILE, os.O_RDWR | os.O_CREAT)  # another run's, live
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (tmp_path / "12-00-00_2").mkdir()
    (tmp_path / "12-00-00_2" / "results.json").write_text("{}")  # an earlier run's
    before = snapshot(tmp_path / "12-00-00_2")
    try:
        assert fresh_run_dir(base) == tmp_path / "12-00-00_3"
        with pytest.raises(ConfigError, match=rf"^hydra.run.dir={base} is in use by a live run "):
            lock_run_dir(base)  # a chosen directory: refused
    finally:
        os.close(held)
    assert changed(before, snapshot(tmp_path / "12-00-00_2")) == []
    assert not (tmp_path / "12-00-00_2" / LOCK_FILE).exists()
    unlock_run_dir(tmp_path / "12-00-00_3")


@pytest.fixture
def same_second(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command from here on starts at 2026-11-30 12:00:00 (Hydra's ``${now:...}``), in
    ``tmp_path``."""
    import datetime as real

    import hydra.core.utils

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 30, 12, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))


def test_two_sweeps_started_in_the_same_second_get_a_folder_each(
    tmp_path: Path, same_second: None, run_command, capsys
) -> None:
    """multirun/<date>/<time> taken by a sweep of the same second: the second sweep, its
    multirun.yaml and its jobs go to <time>_2 (they shared the folder: each sweep lost the jobs
    whose folder the other's live job held, and multirun.yaml was overwritten)."""
    first = tmp_path / "multirun/2026-11-30/12-00-00"
    second = first.with_name("12-00-00_2")
    argv = ["-m", *SMOKE, "callbacks.sample=null"]
    assert run_command("train", *argv, "model.activation=relu") == 0
    before = snapshot(first)
    assert run_command("train", *argv, "model.activation=gelu") == 0
    out = capsys.readouterr().out
    assert (
        f"{first} is taken (a sweep started in the same second); this sweep is in {second}" in out
    )
    assert changed(before, snapshot(first)) == []
    results = json.loads((second / "0" / "results.json").read_text())
    assert results["status"] == "completed" and results["run_name"] == "job0"
    assert "model.activation=gelu" in (second / "multirun.yaml").read_text()
    assert (
        yaml.safe_load((second / "0" / ".hydra" / "config.yaml").read_text())["model"]["activation"]
        == "gelu"
    )


def test_two_runs_started_in_the_same_second_get_a_directory_each(
    tmp_path: Path, same_second: None, run_command, capsys
) -> None:
    """``outputs/<date>/<time>`` taken by a run of the same second: the second run goes to
    ``<time>_2`` (it was refused: the directory held the first run's checkpoints). A chosen
    ``hydra.run.dir`` is never changed."""
    first, second = (
        tmp_path / "outputs/2026-11-30/12-00-00",
        tmp_path / "outputs/2026-11-30/12-00-00_2",
    )
    assert run_command("train", *SMOKE, "callbacks.sample=null") == 0
    before = snapshot(first)
    assert run_command("train", *SMOKE, "callbacks.sample=null") == 0
    assert f"{first} is taken (a run started in the same second); this run is in {second}" in (
        capsys.readouterr().out
    )
    assert changed(before, snapshot(first)) == []
    assert json.loads((second / "results.json").read_text())["status"] == "completed"
    assert yaml.safe_load((second / ".hydra" / "hydra.yaml").read_text())["hydra"]["run"][
        "dir"
    ] == str(second)
    chosen = ["+debug=smoke", f"hydra.run.dir={first}"]
    assert run_command("train", *chosen) == 2  # the user's choice: refused, not moved
    assert "already holds checkpoints of an earlier run" in capsys.readouterr().err


LAUNCHERS = {  # each rank's environment, {rank} its rank
    "torchrun: WORLD_SIZE=2": {"WORLD_SIZE": "2", "RANK": "{rank}", "LOCAL_RANK": "{rank}"},
    "srun: SLURM_NTASKS=2": {
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "{rank}",
        "SLURM_LOCALID": "{rank}",
        "SLURM_JOB_NAME": "lmlab",
        "SLURM_JOB_ID": "4242",
    },
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("rank", ["0", "1"])
def test_launcher_ranks_without_a_chosen_run_dir_are_refused(
    launcher: str,
    rank: str,
    tmp_path: Path,
    run_command,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    """torchrun and srun start every rank with the same command: without ``hydra.run.dir``
    each names ``outputs/<date>/<time>`` by the second it started, and ranks that straddle a
    second split the run (a sharded checkpoint too) over two folders. Every rank is refused
    before anything is written (srun's ranks each wrote their own folder: the check read
    torchrun's ``WORLD_SIZE`` alone, where Lightning reads ``SLURM_NTASKS``). (Lightning's own
    DDP children get the folder: those tests pass.)"""
    monkeypatch.chdir(tmp_path)
    for name, value in LAUNCHERS[launcher].items():
        monkeypatch.setenv(name, value.format(rank=rank))
    assert run_command("train", "+debug=smoke") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: this is one of 2 processes that a launcher ({launcher}) sta")
    assert (
        err.rstrip().endswith("give them one with hydra.run.dir=<folder>") and err.count("\n") == 1
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_launchers_other_ranks_save_no_hydra_record(
    launcher: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun's and srun's every rank runs the whole command: each rank's Hydra saved
    ``.hydra/`` into the run's one folder, over a resumed run's record of the launch before,
    ahead of rank 0 keeping it (``config.<n>.yaml`` then held the new launch's config and
    train.log said it changed nothing), and into a new folder ahead of rank 0, which kept it
    as an earlier launch's; each rank's Hydra appended its log lines to rank 0's train.log.
    Only rank 0 saves it and logs to train.log; the others to rank<N>.log, as Lightning's own
    children are told."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from lmlab.cli.rundir_callback import RunDirCallback
    from lmlab.config import CONF_DIR

    for name, value in LAUNCHERS[launcher].items():
        monkeypatch.setenv(name, value.format(rank=1))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        config = compose("train", [f"hydra.run.dir={tmp_path / 'run'}"], return_hydra_config=True)
    handler = config.hydra.job_logging.handlers.file
    log_file = OmegaConf.to_container(handler)["filename"]  # the job's name names it
    assert config.hydra.output_subdir == ".hydra" and log_file.endswith("/${hydra.job.name}.log")
    RunDirCallback().on_run_start(config)
    assert config.hydra.output_subdir is None and config.hydra.job.name == "rank1"
    # a rank Lightning started (LOCAL_RANK; in a SLURM job, SLURM_PROCID 0 inherited) keeps
    # the name job_command gave it
    for name in LAUNCHERS[launcher]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    config.hydra.output_subdir, config.hydra.job.name = ".hydra", "rank1"
    RunDirCallback().on_run_start(config)
    assert config.hydra.output_subdir is None and config.hydra.job.name == "rank1"
    assert list(tmp_path.iterdir()) == []  # rank 0 makes and guards the folder


def test_a_failed_extension_keeps_the_completed_runs_record(
    tmp_path: Path, smoke_run: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completed run extended (a larger trainer.max_steps) that then fails or stops records
    that, and keeps what it found under ``previous``: the completed run's metrics and sample
    are not lost. A damaged ``wandb_id`` is refused before any work, the directory as it was."""
    from lmlab.train import run as run_module

    copy_of(smoke_run, tmp_path)  # SMOKE, completed
    whole = results(tmp_path)

    def broken(*args, **kwargs) -> None:
        raise RuntimeError("a failure once training started")

    monkeypatch.setattr(run_module, "build_trainer", broken)
    longer = [*SMOKE, "trainer.max_steps=6", "resume=true"]
    with pytest.raises(RuntimeError, match="once training started"):
        train(compose_train(longer, tmp_path, cache_dir))
    failed = results(tmp_path)
    assert failed["status"] == "failed" and "once training started" in failed["error"]
    assert failed["previous"] == whole
    with pytest.raises(RuntimeError):  # failing again keeps the last record with results
        train(compose_train(longer, tmp_path, cache_dir))
    assert results(tmp_path)["previous"] == whole

    monkeypatch.undo()
    (tmp_path / "wandb_id").write_text("not a valid/id!")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"wandb_id holds 'not a valid/id!', not a W&B run id"):
        train(compose_train([*longer, "logger=wandb"], tmp_path, cache_dir))
    assert changed(before, snapshot(tmp_path)) == []


def test_a_second_ctrl_c_that_stops_a_checkpoint_save_is_an_interrupt() -> None:
    """A second Ctrl-C while the stop's checkpoint was written: torch.save raised its own
    RuntimeError while handling the KeyboardInterrupt, and the run was recorded ``failed``
    with torch's words ("unexpected pos"), exit code 1 and a traceback."""
    from lmlab.train.outcome import how_it_stopped

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos"
            ) from None
    except RuntimeError as err:
        assert err.__context__ is not None  # from None hides it in the traceback only
        stopped = how_it_stopped(err, trainer=None, checkpointed=True)
    assert stopped == {
        "status": "interrupted",
        "error": "stopped by Ctrl-C (SIGINT); earlier checkpoints are kept",
    }
    assert how_it_stopped(RuntimeError("boom"), trainer=None)["status"] == "failed"


def test_a_closed_output_is_named_in_the_record() -> None:
    """``lmlab train ... | head -1``: rich's console meets the closed pipe and exits with
    ``SystemExit(1)`` while handling the ``BrokenPipeError``; results.json said only
    ``SystemExit: 1``."""
    from lmlab.train.outcome import how_it_stopped

    try:
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            raise SystemExit(1) from None  # rich's Console.on_broken_pipe
    except SystemExit as err:
        stopped = how_it_stopped(err, trainer=None, checkpointed=False)
    assert stopped == {
        "status": "failed",
        "error": "the command's output was closed (BrokenPipeError: what read it, such as "
        "`| head`, exited), so the run stopped; no checkpoint to resume from",
    }


def test_an_empty_checkpoints_link_made_before_the_first_run_is_no_earlier_run(
    tmp_path: Path, run_command
) -> None:
    """``checkpoints`` linked to a larger disk before the first run: the run was refused
    ("already holds an earlier run (checkpoints/; no checkpoint to resume)"), and so was
    resume=auto. It trains there now, and resumes from what it saved there."""
    disk = tmp_path / "larger-disk"
    disk.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(disk)
    argv = [*SMOKE, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"]
    assert run_command("train", *argv) == 0
    assert step_of(disk / "last.ckpt") == 2 and (run_dir / "checkpoints").is_symlink()
    assert run_command("train", *argv[:-2], "trainer.max_steps=4", argv[-1], "resume=true") == 0
    assert results(run_dir)["global_step"] == 4 and step_of(disk / "last.ckpt") == 4


def test_a_resume_does_not_warn_that_its_own_checkpoints_are_there(
    tmp_path: Path, run_command, recwarn: pytest.WarningsRecorder
) -> None:
    """Every resume warned "Checkpoint directory ... exists and is not empty" (Lightning's
    ModelCheckpoint): the run's own checkpoints, which it resumes from; a new run into a
    folder that holds a run's is refused before."""
    keep = ["callbacks.checkpoint.save_top_k=-1", "checkpoint.every_n_steps=1"]  # step files
    argv = [*SMOKE, *keep, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *argv) == 0
    assert run_command("train", *argv[:-2], "trainer.max_steps=4", argv[-1], "resume=true") == 0
    assert results(tmp_path)["global_step"] == 4
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 4
    said = [str(w.message) for w in recwarn]
    assert not [m for m in said if "exists and is not empty" in m], said


@pytest.mark.parametrize("ended", [True, False])
@pytest.mark.parametrize("sent", ["SIGINT", "SIGTERM"])
def test_a_stop_after_training_ended_says_the_end_of_run_work_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ended: bool, sent: str
) -> None:
    """A Ctrl-C or a SIGTERM during the end-of-run sample said "stopping after this step",
    and the sample went on for minutes: there was no step left to stop after. Now it says
    the run ends with its checkpoint and record, the sample cut short (``Sample``)."""
    from types import SimpleNamespace

    from lmlab.train.preemption import NOTHING, PREEMPT, Preemption

    stop = Preemption(str(tmp_path))
    stop._fit_loop = SimpleNamespace(
        max_steps=4,
        max_epochs=-1,
        epoch_loop=SimpleNamespace(global_step=4 if ended else 3),
        epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)),
    )
    before = signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level("INFO"):
            if sent == "SIGINT":
                stop._on_sigint()
            else:
                stop._on_sigterm(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGINT, before)
    said = " ".join(caplog.messages)
    assert ("training has ended" in said) == ended
    assert ("stopping after this step" in said) == (not ended)
    assert stop.stop_asked()  # the evals and the sample end early
    if sent == "SIGINT":
        assert (stop._asked == NOTHING) == ended  # no training step is left to stop after
    else:  # preempted: a stop in the last step's validation saves and resumes its evals
        assert stop._asked == PREEMPT


@pytest.mark.parametrize("name", [".hydra", "csv", "checkpoints"])
def test_a_file_where_the_run_makes_a_folder_is_refused_before_anything_is_written(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, name: str
) -> None:
    """A file of the user's named ``csv`` or ``.hydra`` in the run directory: the run failed
    midway with a FileExistsError traceback, after writing results.json and the plan, and
    the next command took the folder for an earlier run's."""
    (tmp_path / name).write_text("user data\n")
    assert run_command("train", *SMOKE, f"hydra.run.dir={tmp_path}") == 2
    said = f"error: hydra.run.dir={tmp_path}: {tmp_path / name} is a file where the run makes"
    assert capsys.readouterr().err.startswith(said)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == "user data\n"


def test_a_completed_record_outlives_any_number_of_stops() -> None:
    """An extension of a completed run preempted twice (a requeued job) kept the first stop's
    record alone: the completed run's metrics, sample and digest were gone."""
    from lmlab.train.completed import kept_record

    completed = {"status": "completed", "global_step": 8, "val_loss": 7.9}
    first = {"status": "preempted", "global_step": 105, "previous": kept_record(completed)}
    second = {"status": "interrupted", "global_step": 196, "previous": kept_record(first)}
    assert second["previous"] == {"status": "preempted", "global_step": 105, "previous": completed}
    third = {"status": "preempted", "global_step": 250, "previous": kept_record(second)}
    assert third["previous"] == {"status": "interrupted", "global_step": 196, "previous": completed}
    failed = {"status": "failed", "error": "x", "previous": kept_record(third)}
    assert kept_record(failed) == kept_record(third)  # a failure keeps what it kept
    assert kept_record(completed | {"previous": first}) == completed  # the newest results


def write_sharded(path: Path, step: int) -> Path:
    """A sharded checkpoint laid out as trainer=fsdp writes one (``.distcp`` shards, their
    index ``.metadata``, ``meta.pt``), written by torch.distributed.checkpoint in this one
    process, no process group: a tiny GPT's weights over two shard files."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from lmlab.config import ModelConfig, model_config_dict
    from lmlab.model import build_model

    model_cfg = ModelConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=2)
    state = {f"model.{k}": v for k, v in build_model(model_cfg).state_dict().items()}
    with warnings.catch_warnings():  # "assuming ... a single process"
        warnings.simplefilter("ignore", UserWarning)
        writer = dcp.FileSystemWriter(path, thread_count=2)
        dcp.save({"state_dict": state}, storage_writer=writer, no_dist=True)
    meta = {"global_step": step, "model_config": model_config_dict(model_cfg)}
    torch.save(meta, path / "meta.pt")
    return path


def corrupt(path: Path) -> None:
    """Overwrite the first 64 bytes of the file at ``path``, its length kept."""
    with open(path, "r+b") as f:
        f.write(b"\0" * 64)


# What a copy cut short, a full disk or a lost node leaves of a sharded folder; the shard is
# __0_1.distcp, the second of write_sharded's two.
DAMAGE = {
    "shard deleted": lambda d: (d / "__0_1.distcp").unlink(),
    "shard truncated": lambda d: truncate(d / "__0_1.distcp"),
    "shard one byte short": lambda d: os.truncate(
        d / "__0_1.distcp", d.joinpath("__0_1.distcp").stat().st_size - 1
    ),
    ".metadata deleted": lambda d: (d / ".metadata").unlink(),
    ".metadata truncated": lambda d: truncate(d / ".metadata"),
}


def sharded_run(run_dir: Path, cfg) -> Path:
    """``run_dir`` as an FSDP run leaves it: its config, and sharded checkpoints at steps 2 and
    4 with ``last.ckpt`` linking to step 4."""
    from omegaconf import OmegaConf

    from lmlab.train.resume import run_identity
    from lmlab.train.runfiles import RUN_CONFIG

    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(run_identity(cfg)), run_dir / RUN_CONFIG)
    for step in (2, 4):
        write_sharded(ckpts / f"step00000{step}.ckpt", step)
    (ckpts / "last.ckpt").symlink_to("step000004.ckpt")
    return ckpts


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """A ``resume=true`` config of trainer=fsdp, and a folder as an FSDP run of it leaves it
    (``sharded_run``), made once: each test damages its own copy. Nothing writes in it."""
    fsdp = [*smoke.SMOKE, "trainer=fsdp", "trainer.accelerator=cpu", "resume=true"]
    run_dir = tmp_path_factory.mktemp("fsdp-run")
    cfg = compose_train(fsdp, run_dir, tmp_path_factory.mktemp("fsdp-cache"))
    sharded_run(run_dir, cfg)
    return cfg, run_dir


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_passes_over_a_sharded_checkpoint_with_a_missing_or_cut_piece(
    damage: str, tmp_path: Path, fsdp_run: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    """Only ``meta.pt`` of a sharded folder was read: one with a shard deleted was chosen and
    every rank failed loading it. Now its ``.metadata`` and shard sizes are checked, and it is
    passed over with a warning for the newest intact one, as a truncated file is."""
    cfg, run_dir = fsdp_run
    ckpts = copy_of(run_dir, tmp_path) / "checkpoints"  # resume_checkpoint reads tmp_path's
    assert resume_checkpoint(cfg, tmp_path) == ckpts / "last.ckpt"
    DAMAGE[damage](ckpts / "step000004.ckpt")
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(cfg, tmp_path) == ckpts / "step000002.ckpt"
    warned = [m for m in caplog.messages if "step000004.ckpt is unreadable" in m]
    assert warned and "passed over" in warned[0], caplog.messages
    DAMAGE[damage](ckpts / "step000002.ckpt")
    with pytest.raises(ConfigError, match=r"no intact checkpoint .* \(unreadable: last.ckpt, st"):
        resume_checkpoint(cfg, tmp_path)


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``write_sharded``'s folder at step 4, written once: each test damages its own copy."""
    return write_sharded(tmp_path_factory.mktemp("sharded") / "step000004.ckpt", 4)


@pytest.mark.parametrize("damage", [*sorted(DAMAGE), "shard corrupt"])
def test_a_damaged_sharded_folder_is_named_in_one_line_by_every_tool(
    damage: str, tmp_path: Path, sharded_folder: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """consolidate and generate printed torch's tracebacks (CheckpointException, which is no
    Exception; AssertionError; PytorchStreamReader); a shard's bytes changed in place, its
    length kept, is found only by reading it, and is named all the same."""
    folder = copy_of(sharded_folder, tmp_path / "step000004.ckpt")
    (DAMAGE.get(damage) or (lambda d: corrupt(d / "__0_1.distcp")))(folder)
    for tool in ("consolidate", "generate"):
        capsys.readouterr()
        assert run_command(tool, f"ckpt={folder}") == 2, tool
        err = capsys.readouterr().err
        assert err.startswith(f"error: checkpoint {folder} is unreadable ("), err
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step000004.ckpt"]  # nothing written


@pytest.mark.parametrize("trainer", ["cpu", "ddp"])
def test_resuming_a_sharded_run_with_a_trainer_that_cannot_load_it_is_refused(
    trainer: str, tmp_path: Path
) -> None:
    """trainer=cpu or ddp on an FSDP run's folders crashed after the data was prepared with
    IsADirectoryError on last.ckpt; now one line, before the data is prepared, says how to go
    on. trainer=fsdp resumes on any device count."""
    run = [*smoke.SMOKE, "logger=none", "resume=true", "trainer.accelerator=cpu"]
    cfg = compose_train([*run, f"trainer={trainer}"], tmp_path / "run", tmp_path / "cache")
    sharded_run(tmp_path / "run", cfg)
    before = snapshot(tmp_path)
    message = r"is sharded .* continue it with trainer=fsdp .* init_from=.*lmlab consolidate"
    with pytest.raises(ConfigError, match=message):
        resume_checkpoint(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert changed(before, snapshot(tmp_path)) == []  # no data prepared, nothing written
    for devices in (1, 2):
        fsdp = [*run, "trainer=fsdp", f"trainer.devices={devices}"]
        fsdp_cfg = compose_train(fsdp, tmp_path / "run", tmp_path / "cache")
        assert (
            resume_checkpoint(fsdp_cfg, tmp_path / "run") == tmp_path / "run/checkpoints/last.ckpt"
        )


def test_an_extended_run_follows_its_new_schedule_from_the_first_step(
    tmp_path: Path, extended_run: Path, cache_dir: Path
) -> None:
    """A completed run resumed with a larger ``trainer.max_steps`` trains every step after
    the checkpoint at the new schedule's rate: the restored optimizer held the old schedule's
    (decayed to its floor at its last step), and the first step after the checkpoint ran
    at it."""
    from lmlab.train.schedule import warmup_cosine_factor

    run = [*SMOKE, "trainer.max_steps=4", "trainer.log_every_n_steps=1", "logger=csv"]
    # SMOKE's own values (smoke_run, completed), then [*run, "trainer.max_steps=8", "resume=true"]
    lr = {int(r["step"]): float(r["train/lr"]) for r in rows(extended_run) if r.get("train/lr")}
    cfg = compose_train(run, tmp_path / "x", cache_dir)
    base, warmup, floor = cfg.optim.lr, cfg.scheduler.warmup_steps, cfg.scheduler.min_lr_ratio
    new = {s: base * warmup_cosine_factor(s, warmup, 8, floor) for s in range(4, 8)}
    assert sorted(lr) == list(range(8))
    for step in range(4, 8):  # the logged rate, the one the step ran with
        assert lr[step] == pytest.approx(new[step], rel=1e-6), (step, lr, new)
    # the run's one Lightning epoch goes on: the extension's rows said epoch 1 (the old plan's
    # last batch, marked in its checkpoint, ended the epoch for Lightning)
    assert {r["epoch"] for r in rows(extended_run)} == {"0"}


def test_a_resume_keeps_the_gradient_clipping_and_says_a_new_precision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume with another ``trainer.gradient_clip_val`` trained on silently, and plan.json
    then held the new value as if every step had: refused now, as another learning rate is.
    Another precision (a resume on another GPU, or a CPU) computes the same function rounded
    otherwise: allowed, with a warning naming both. The clipping algorithm left unset is
    Lightning's default, ``norm``, in any case; ``value`` is another run. A run_config.yaml
    saved before it held the trainer's fields is not compared on them."""
    from omegaconf import OmegaConf

    from lmlab.train.resume import check_same_run, run_identity
    from lmlab.train.runfiles import RUN_CONFIG

    def config(*extra: str):
        return compose_train([*smoke.SMOKE, *extra], tmp_path, tmp_path / "cache")

    OmegaConf.save(OmegaConf.create(run_identity(config())), tmp_path / RUN_CONFIG)
    clipped = config("trainer.gradient_clip_val=0.01")
    with pytest.raises(
        ConfigError, match=re.escape("trainer.gradient_clip_val: 1.0 (saved) vs 0.01 (now)")
    ):
        check_same_run(clipped, tmp_path, "the checkpoints were trained with", continues=True)
    for norm in ("norm", "Norm"):
        check_same_run(config(f"+trainer.gradient_clip_algorithm={norm}"), tmp_path, "", True)
    with pytest.raises(ConfigError, match=re.escape("algorithm: 'norm' (saved) vs 'value' (now)")):
        check_same_run(config("+trainer.gradient_clip_algorithm=value"), tmp_path, "", True)
    with caplog.at_level(logging.WARNING, logger="lmlab.train.resume"):
        check_same_run(config("trainer.precision=bf16-mixed"), tmp_path, "", continues=True)
    assert caplog.messages == [
        "trainer.precision: '32-true' (saved) vs 'bf16-mixed' (now): the steps from the "
        "checkpoint on train in the new one; run_config.yaml and plan.json will hold it"
    ]
    older = {k: v for k, v in run_identity(config()).items() if k != "trainer"}
    OmegaConf.save(OmegaConf.create(older), tmp_path / RUN_CONFIG)
    check_same_run(clipped, tmp_path, "the checkpoints were trained with", continues=True)


def test_best_val_loss_is_over_the_rows_training_validates_on(
    tmp_path: Path, cache_dir: Path
) -> None:
    """``final_val_batches`` scores other rows after the last step (here the whole split
    against training's one batch): ``val_loss`` is that score, and ``best_val_loss`` is the
    best of training's validations, one set of rows; it took the minimum of both, so a run
    could report a best drawn from another sample than every validation it ran."""
    run = [*SMOKE, "trainer.limit_val_batches=1", "final_val_batches=1.0"]
    train(compose_train(run, tmp_path, cache_dir))
    val = [float(r["val/loss"]) for r in rows(tmp_path) if r["val/loss"]]
    assert len(val) == 3  # steps 2 and 4 on one batch, then the whole split
    done = results(tmp_path)
    assert done["val_loss"] == pytest.approx(val[2], rel=1e-6)
    assert done["best_val_loss"] == pytest.approx(min(val[:2]), rel=1e-6)
    assert val[2] < min(val[:2])  # the whole split's score was the lowest: it was taken


def test_a_run_without_validation_says_so(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``trainer.limit_val_batches=0`` completed with ``val_loss`` null and no word: a sweep's
    ranking then had nothing to rank it by. It is said at the start, with the way to score the
    final weights all the same."""
    with caplog.at_level(logging.WARNING):
        train(compose_train([*SMOKE, "trainer.limit_val_batches=0"], tmp_path, cache_dir))
    assert results(tmp_path)["val_loss"] is None
    assert any("validation is off" in m for m in caplog.messages), caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run = [*SMOKE, "trainer.limit_val_batches=0", "final_val_batches=1.0"]
        train(compose_train(run, tmp_path / "final", cache_dir))
    assert results(tmp_path / "final")["val_loss"] is not None
    assert not any("validation is off" in m for m in caplog.messages), caplog.messages


@pytest.mark.parametrize("limit", ["trainer.limit_val_batches", "final_val_batches"])
def test_a_validation_fraction_under_one_batch_is_refused_before_training(
    tmp_path: Path, cache_dir: Path, limit: str
) -> None:
    """A fraction of the validation split under one of its batches (the smoke slice's 54 at
    4 rows on Python 3.11's standard library, 75 on 3.12's: 0.01 x 54 < 1) was Lightning's
    traceback at the first validation, and under ``final_val_batches`` after the last step,
    the run trained and marked failed. It is refused once the data is prepared, naming the
    field, the batches and the least fraction."""
    message = rf"^{re.escape(limit)}=0\.01: 0\.01 of the validation split's (\d+) batches is "
    with pytest.raises(ConfigError, match=message) as refused:
        train(compose_train([*SMOKE, f"{limit}=0.01"], tmp_path, cache_dir))
    batches = int(re.match(message, str(refused.value)).group(1))
    assert 1 < batches < 100  # 0.01 of them under one
    said = f"{batches} batches is less than one batch; allowed: a fraction of at least 1/{batches}"
    assert said in str(refused.value)
    assert not (tmp_path / "checkpoints").exists()


def test_every_launch_of_a_resumed_run_keeps_its_hydra_record(
    tmp_path: Path, run_command, monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    """A resume rewrote ``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``,
    ``plan.json`` and ``results.json``: the first launch's overrides as typed, its planned
    steps and what it ended with were lost.
    Each launch's are kept beside the newest (``<name>.<n>.<suffix>``, 1 the first), the log
    names the fields a launch changed, and a refused resume keeps nothing new."""
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    run = [*SMOKE, "callbacks.sample=null", f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *run) == 0
    hydra = tmp_path / ".hydra"
    first = {p.name: p.read_bytes() for p in hydra.iterdir()}
    assert sorted(first) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert run_command("train", *run, "trainer.max_steps=6", "resume=true") == 0
    second = {p.name: p.read_bytes() for p in hydra.iterdir() if "." not in p.stem}
    assert run_command("train", *run, "trainer.max_steps=4", "resume=true") == 2  # refused
    assert run_command("train", *run, "trainer.max_steps=8", "resume=true") == 0
    for name in first:
        kept = f"{Path(name).stem}.{{}}.yaml"
        assert (hydra / kept.format(1)).read_bytes() == first[name]
        assert (hydra / kept.format(2)).read_bytes() == second[name]
    assert len(list(hydra.iterdir())) == 9
    plans = [json.loads((tmp_path / f"plan{n}.json").read_text()) for n in (".1", ".2", "")]
    assert [plan["steps"] for plan in plans] == [4, 6, 8]
    ended = [json.loads((tmp_path / f"results{n}.json").read_text()) for n in (".1", ".2", "")]
    assert [(r["status"], r["global_step"]) for r in ended] == [("completed", s) for s in (4, 6, 8)]
    typed = [yaml.safe_load((hydra / f"overrides{n}.yaml").read_text()) for n in ("", ".1")]
    assert "trainer.max_steps=8" in typed[0] and "resume=true" in typed[0]
    assert not any("max_steps" in o or "resume" in o for o in typed[1])
    log = (tmp_path / "train.log").read_text()
    assert (
        "kept as .hydra/config.1.yaml, .hydra/hydra.1.yaml, .hydra/overrides.1.yaml, "
        "plan.1.json, results.1.json" in log
    )
    assert "this launch changes: resume: False -> True; trainer.max_steps: 4 -> 6" in log
    assert "this launch changes: trainer.max_steps: 6 -> 8" in log


def test_a_resumed_runs_record_names_the_checkpoint_it_continued(
    tmp_path: Path, step_files_run: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """results.json's ``resumed_from`` said ``checkpoints/last.ckpt``, a link that the resume's
    own saves point at its last step: the record named the final checkpoint as the one it
    started from. It names the file the link pointed to, and the step; so does the log."""
    run = [*SMOKE, "logger=none", "callbacks.checkpoint.save_top_k=2"]
    # its first 4 steps: one checkpoint, as save_top_k=2 leaves it (last.ckpt links to it)
    copy_of(step_files_run, tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert os.readlink(ckpts / "last.ckpt") == "step000004.ckpt"
    with caplog.at_level(logging.INFO):
        train(compose_train([*run, "trainer.max_steps=6", "resume=true"], tmp_path, cache_dir))
    assert os.readlink(ckpts / "last.ckpt") == "step000006.ckpt"
    r = results(tmp_path)
    assert (r["resumed_from"], r["resumed_step"]) == (str(ckpts / "step000004.ckpt"), 4)
    assert f"continuing from step 4: {ckpts / 'step000004.ckpt'}" in caplog.messages
