"""A full disk at each write a run makes before it trains: one line naming the file (a write
whose data did not fit reports no file of its own), exit code 1, no half-written file left,
and what the folder held kept as it was."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import smoke
from lmlab.cli.hydra_errors import unwritable
from lmlab.config.locks import LOCK_FILE
from lmlab.train.dirlock import lock_run_dir, unlock_run_dir

SMOKE = [*smoke.SMOKE, "logger=csv"]
FREE = "free space, then run the command again"


def full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")  # as a flush reports it: no file


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
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completed run extended on a full disk: Hydra's writes, held until training starts,
    did not fit (``.hydra/config.yaml``). The message named no file and the temporary file
    stayed; the checkpoints and ``.hydra/`` are as they were, and the resume it names works
    once there is space."""
    argv = [*SMOKE, f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *argv) == 0
    kept = {
        p: p.read_bytes() for p in [*tmp_path.glob("checkpoints/*"), *tmp_path.glob(".hydra/*")]
    }
    write = Path.write_text

    def full_in_the_run(self: Path, text: str, *args: object, **kwargs: object) -> int:
        if self.parent == tmp_path / ".hydra":
            self.touch()  # made; its data do not fit
            full()
        return write(self, text, *args, **kwargs)

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", full_in_the_run)
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
