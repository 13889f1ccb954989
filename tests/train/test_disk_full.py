"""A full disk at each write a run makes before it trains: one line naming the file (a write
whose data did not fit reports no file of its own), exit code 1, no half-written file left,
and what the folder held kept as it was; a checkpoints folder that cannot be written, the
same."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import smoke
from in_process import without_heap_work
from lmlab.cli.hydra_errors import unwritable
from lmlab.cli.main import command
from lmlab.config.locks import LOCK_FILE
from lmlab.train.dirlock import lock_run_dir, unlock_run_dir

SMOKE = [*smoke.SMOKE, "logger=csv"]
FREE = "free space, then run the command again"


def full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")  # as a flush reports it: no file


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lmlab train SMOKE`` run once to its end (4 steps, the CSV logger), as ``run_command``
    runs it: the completed run that each test extending one copies (``completed_copy``); no
    test writes in it."""
    run_dir = tmp_path_factory.mktemp("completed") / "run"
    root = logging.getLogger()
    handlers = list(root.handlers)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exited:
        without_heap_work(patch)
        command("train", [*SMOKE, f"hydra.run.dir={run_dir}"])
    for handler in [h for h in root.handlers if h not in handlers]:  # Hydra's job logging:
        root.removeHandler(handler)  # its file handler would append to the run's train.log
        handler.close()
    assert exited.value.code == 0
    return run_dir


def completed_copy(completed: Path, run_dir: Path) -> list[str]:
    """The completed run copied into ``run_dir`` (``last.ckpt`` stays a link); the command
    line that trained it there."""
    shutil.copytree(completed, run_dir, symlinks=True, dirs_exist_ok=True)
    return [*SMOKE, f"hydra.run.dir={run_dir}"]


def writes_failing_in(
    patch: pytest.MonkeyPatch, folder: Path, fail: Callable[[Path], None]
) -> None:
    """``Path.write_bytes`` of a file in ``folder`` calls ``fail(file)`` first (which raises),
    as a file system that refuses writes there does; other writes go through."""
    write = Path.write_bytes

    def failing(self: Path, data: bytes) -> int:
        if self.parent == folder:
            fail(self)
        return write(self, data)

    patch.setattr(Path, "write_bytes", failing)


def test_a_full_disk_while_hydra_writes_a_new_run_folder_leaves_no_folder(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hydra's ``.hydra/hydra.yaml`` did not fit: the command said ``[Errno 28] No space left
    on device`` with exit code 2 (bad input), naming nothing, and left the half-written
    folder, which the next command took for an earlier run's."""
    import hydra.core.utils

    save = hydra.core.utils._save_config

    def full_at_hydra_yaml(cfg: object, filename: str, output_dir: Path) -> None:
        if filename == "hydra.yaml":
            (output_dir / filename).touch()  # made; its data do not fit
            full()
        save(cfg, filename, output_dir)

    monkeypatch.setattr(hydra.core.utils, "_save_config", full_at_hydra_yaml)
    run_dir = tmp_path / "run"
    assert run_command("train", *SMOKE, f"hydra.run.dir={run_dir}") == 1
    said = f"error: no space left on device in {run_dir}: nothing was kept there; {FREE}\n"
    assert capsys.readouterr().err == said
    assert not run_dir.exists()


def test_a_full_disk_at_the_run_folders_lock_names_the_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's pid did not fit: the error named no file ("cannot write None"), and the
    empty lock file stayed."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch, pytest.raises(OSError) as raised:
        patch.setattr(os, "write", full)
        lock_run_dir(run_dir)
    lock = run_dir / LOCK_FILE
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(lock)
    assert str(unwritable(raised.value)) == f"no space left on device writing {lock}: {FREE}"
    assert list(run_dir.iterdir()) == []
    lock_run_dir(run_dir)  # the lock was let go: taken again at once
    unlock_run_dir(run_dir)


def test_a_full_disk_extending_a_run_names_the_file_and_keeps_the_checkpoints(
    tmp_path: Path,
    completed: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completed run extended on a full disk: Hydra's writes, held until training starts,
    did not fit (``.hydra/config.yaml``). The message named no file and the temporary file
    stayed; the checkpoints and ``.hydra/`` are as they were, and the resume it names works
    once there is space."""
    argv = completed_copy(completed, tmp_path)
    kept = {
        p: p.read_bytes() for p in [*tmp_path.glob("checkpoints/*"), *tmp_path.glob(".hydra/*")]
    }

    def full_in_the_run(file: Path) -> None:
        file.touch()  # made; its data do not fit
        full()

    capsys.readouterr()
    with monkeypatch.context() as patch:
        writes_failing_in(patch, tmp_path / ".hydra", full_in_the_run)
        assert run_command("train", *argv, "trainer.max_steps=6", "resume=auto") == 1
    err = capsys.readouterr().err
    file = tmp_path / ".hydra" / "config.yaml"
    assert f"error: no space left on device writing {file}; the checkpoints written" in err, err
    assert "resume with: python src/train.py" in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in kept} == kept
    assert sorted(p.name for p in (tmp_path / ".hydra").iterdir()) == sorted(
        p.name for p in kept if p.parent.name == ".hydra"
    )
    assert run_command("train", *argv, "trainer.max_steps=6", "resume=true") == 0


def test_a_full_disk_at_run_config_yaml_keeps_the_runs_record_of_its_config(
    tmp_path: Path,
    completed: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completed run extended as the disk fills: ``.hydra/`` fitted, ``run_config.yaml``
    did not. Rewritten in place, the file was emptied, and every later resume was refused
    (``run_config.yaml ... cannot be read``: the run's only record of its model, data and
    optimizer). Written whole, it is kept as it was, the message names it, and the resume it
    names works once there is space."""
    import io

    argv = completed_copy(completed, tmp_path)
    record = tmp_path / "run_config.yaml"
    kept = record.read_bytes()
    opened = io.open

    def full_at_run_config(file: object, mode: str = "r", *args: object, **kwargs: object):
        handle = opened(file, mode, *args, **kwargs)  # made, or cut to nothing, by "w"
        if "w" in mode and record.name in os.fspath(file):
            handle.close()
            full()  # its data do not fit
        return handle

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(io, "open", full_at_run_config)
        assert run_command("train", *argv, "trainer.max_steps=6", "resume=true") == 1
    assert record.read_bytes() == kept
    err = capsys.readouterr().err
    assert f"error: no space left on device writing {record}; the checkpoints" in err, err
    assert not list(tmp_path.glob(".run_config.yaml.*"))  # no temporary file left
    assert run_command("train", *argv, "trainer.max_steps=6", "resume=true") == 0


def test_a_results_json_that_cannot_be_written_at_the_end_is_one_line(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that trained to its end whose results.json is read-only (an immutable file):
    it ended in a traceback, the old record left saying ``completed`` at an earlier step.
    Now one line says what to do, exit code 1, and the resume it names writes the record."""
    import json

    from lmlab.train import run as run_module

    write = run_module.write_results

    def read_only(out_dir: Path, results: dict) -> None:
        if results["status"] == "completed":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(out_dir))
        write(out_dir, results)

    argv = [*SMOKE, f"hydra.run.dir={tmp_path}"]
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "write_results", read_only)
        assert run_command("train", *argv) == 1
    err = capsys.readouterr().err
    said = f"error: the run trained to step 4 and saved its checkpoints, but {tmp_path}"
    assert err.splitlines()[-1].startswith(said), err  # the one line, after any warning
    assert "could not be written (Operation not permitted): make it" in err, err
    assert "make it writable, then python src/train.py <same overrides> resume=true" in err
    assert "Traceback" not in err and said[7:] in (tmp_path / "train.log").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    assert run_command("train", *argv, "resume=true") == 0
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 4


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES, errno.EROFS])
def test_a_checkpoints_folder_that_cannot_be_written_is_one_line(
    code: int,
    tmp_path: Path,
    completed: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completed run extended into a checkpoints folder made immutable (``chattr +i``),
    read-only or on a read-only mount: the save's traceback named its temporary file. Now one
    line names the checkpoint and the folder to make writable, exit code 1, results.json says
    the same, the earlier checkpoints are as they were, and the resume it names works once
    the folder is writable."""
    import json
    import tempfile

    argv = completed_copy(completed, tmp_path)
    ckpts = tmp_path / "checkpoints"
    kept = {p: p.read_bytes() for p in ckpts.iterdir()}
    mkstemp = tempfile.mkstemp

    def refused(*args: object, dir: str | None = None, prefix: str = "", **kwargs: object):
        if Path(dir or ".") == ckpts:
            raise OSError(code, os.strerror(code), str(ckpts / f"{prefix}x1y2.tmp"))
        return mkstemp(*args, dir=dir, prefix=prefix, **kwargs)

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", refused)
        assert run_command("train", *argv, "trainer.max_steps=6", "resume=true") == 1
    err = capsys.readouterr().err
    words = os.strerror(code).lower()
    said = f"{words} writing {ckpts / 'last.ckpt'}; the checkpoints written before are whole"
    assert err.splitlines()[-1] == (
        f"error: {said}: make {ckpts} writable; resume with: python src/train.py <same "
        f"overrides> resume=true hydra.run.dir={tmp_path}"
    ), err
    assert "Traceback" not in err and ".tmp" not in err, err
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "failed" and record["error"] == said
    assert {p: p.read_bytes() for p in ckpts.iterdir()} == kept
    assert run_command("train", *argv, "trainer.max_steps=6", "resume=true") == 0
    assert json.loads((tmp_path / "results.json").read_text())["global_step"] == 6


def test_an_immutable_results_json_is_said_as_the_record_not_the_folder(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``chattr +i results.json``: the record is written to a temporary file, whose rename
    over it the file system refuses. The stop names the record and the resume that writes it
    (not a folder to make writable: the folder is)."""
    argv = [*SMOKE, f"hydra.run.dir={tmp_path}"]
    record = tmp_path / "results.json"
    replace = Path.replace

    def immutable(self: Path, target: Path) -> Path:
        if Path(target) == record:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(self), None, str(target))
        return replace(self, target)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "replace", immutable)
        assert run_command("train", *argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(
        f"error: the run trained to step 4 and saved its checkpoints, but {record} could not "
        "be written (Operation not permitted): make it writable, then python src/train.py"
    ), err
    assert not list(tmp_path.glob(".results.json.*"))


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES, errno.EROFS])
def test_a_logger_folder_that_cannot_be_written_is_one_line(
    code: int,
    tmp_path: Path,
    completed: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completed run extended with its ``csv/`` made immutable (``chattr +i``), read-only
    or on a read-only mount: the resume rewrites ``metrics.csv`` through a temporary file
    there, and ended in a traceback naming that file. One line names ``metrics.csv`` and the
    folder to make writable, exit code 1, and the resume it names works once it is."""
    import json

    argv = completed_copy(completed, tmp_path)
    csv_dir = tmp_path / "csv"

    def refused(file: Path) -> None:  # as the file system answers the temporary file's open
        raise OSError(code, os.strerror(code), str(file))

    capsys.readouterr()
    with monkeypatch.context() as patch:
        writes_failing_in(patch, csv_dir, refused)
        assert run_command("train", *argv, "trainer.max_steps=6", "resume=true") == 1
    err = capsys.readouterr().err
    said = f"{os.strerror(code).lower()} writing {csv_dir / 'metrics.csv'}"
    assert err.splitlines()[-1].startswith(f"error: {said}; the checkpoints written"), err
    assert f"make {csv_dir} writable; resume with: python src/train.py" in err, err
    assert "Traceback" not in err and ".tmp" not in err, err
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    assert run_command("train", *argv, "trainer.max_steps=6", "resume=true") == 0
    assert json.loads((tmp_path / "results.json").read_text())["global_step"] == 6


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EPERM, errno.EROFS])
def test_a_sharded_save_refused_by_the_storage_names_the_checkpoint(code: int) -> None:
    """A sharded (FSDP) save that the storage refused failed in a traceback naming the save's
    temporary folder, or one rank's shard inside torch.distributed.checkpoint's
    ``CheckpointException`` (which chains nothing: it holds each rank's error). Seen here with
    ``chattr +i`` on a 2-rank FSDP run's checkpoints folder. ``refused_save`` finds the error
    there and names the checkpoint, as a single-file save does, so the run stops in one line
    (``storage_refusal``); any other error is left as it was."""
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    from lmlab.errors import WriteRefusedError, refused_save, storage_refusal

    ckpt = Path("/runs/a/checkpoints/last.ckpt")
    try:
        raise OSError(code, os.strerror(code), f"{ckpt.parent}/.last.ckpt.tmp/__1_0.distcp")
    except OSError as shard_error:
        failures = {1: _wrap_exception(shard_error)}
    for raised in [
        CheckpointException("save failed", failures),  # a rank's write of its shard
        OSError(code, os.strerror(code), f"{ckpt.parent}/.last.ckpt.tmp"),  # the folder
    ]:
        said = refused_save(raised, ckpt)
        assert said is not None and said.errno == code and said.filename == str(ckpt)
        assert isinstance(said, WriteRefusedError) == (code != errno.ENOSPC)
        try:
            raise said from raised
        except OSError as err:
            assert storage_refusal(err) is said
    assert refused_save(CheckpointException("x", {0: _wrap_exception(ValueError())}), ckpt) is None
    assert refused_save(RuntimeError("unexpected pos"), ckpt) is None


def test_a_full_disk_met_by_a_copy_names_the_file_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B copies a table it logs from a temporary folder into the run's ``wandb/``; on a full
    ``wandb/`` the run stopped with ``no space left on device writing /tmp/tmp...wandb-media/
    ....table.json``: ``shutil`` names the copy's source first, a file on a disk with room."""
    import shutil

    from lmlab.errors import write_error_words

    source, copy = tmp_path / "media" / "parameters.table.json", tmp_path / "wandb" / "t.json"
    source.parent.mkdir()
    copy.parent.mkdir()
    source.write_text("{}")
    monkeypatch.setattr(os, "sendfile", full)
    with pytest.raises(OSError) as raised:
        shutil.copyfile(source, copy)
    assert write_error_words(raised.value) == f"no space left on device writing {copy}"
