"""What a Ctrl-C before training leaves (``lmlab.cli.train``): ``train()`` records any stop in
``results.json``, so a run interrupted in its checks or while its data was prepared left a
record that said ``interrupted`` with nothing trained, and the next command into the folder
was refused for it. ``JobFolder`` notes a job's folder as the job found it, to put its record
back; ``clear`` removes a folder that holds only what this command wrote."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lmlab.train.rundir import RUN_CONFIG

RESULTS = "results.json"


@dataclass(frozen=True)
class JobFolder:
    """A job's folder as ``train()`` found it, for Ctrl-C before training: ``train()``
    records any stop in ``results.json``, so a run interrupted in its checks or while its
    data was prepared left a record that said ``interrupted`` with nothing trained, and the
    next command into the folder was refused for it (an earlier run; an earlier sweep)."""

    path: Path
    record: bytes | None  # results.json as it was
    identity: int | None  # run_config.yaml's mtime (ns): written when training starts

    @classmethod
    def of(cls, path: Path) -> JobFolder:
        return cls(path, _read(path / RESULTS), _mtime(path / RUN_CONFIG))

    def started(self) -> bool:
        """Whether training started: every check passed and the run wrote its identity."""
        return _mtime(self.path / RUN_CONFIG) != self.identity

    def restore_record(self) -> None:
        """``results.json`` as it was (none: none)."""
        path = self.path / RESULTS
        if self.record is None:
            path.unlink(missing_ok=True)
        elif _read(path) != self.record:
            path.write_bytes(self.record)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def clear(folder: Path, existed: bool) -> None:
    """Remove ``folder``, which holds only what this call wrote; one that existed (empty)
    before it stays, empty."""
    shutil.rmtree(folder, ignore_errors=True)
    if existed:
        folder.mkdir(exist_ok=True)
