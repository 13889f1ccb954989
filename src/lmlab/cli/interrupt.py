"""What a Ctrl-C before training leaves (``lmlab.cli.train``): ``train()`` records any stop in
``results.json``, so a run interrupted in its checks or while its data was prepared left a
record that said ``interrupted`` with nothing trained, and the next command into the folder
was refused for it. ``JobFolder`` notes a job's folder as the job found it, to put its record
back; ``clear`` removes a folder that holds only what this command wrote, and
``clear_launch`` this call's folder with the parents it made on the way (``outputs/<date>/``)
where nothing else is in them. ``made_above`` and ``note_folder`` record where this call
writes (``lmlab.cli.launch.LAUNCH``), and
``interrupted_before_training`` puts back and removes what a job interrupted before it
trained left, in one line."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from lmlab.cli.launch import LAUNCH, in_multirun
from lmlab.config.locks import LOCK_FILES
from lmlab.errors import storage_fix, write_error_words
from lmlab.files import RESULTS, RUN_CONFIG, write_bytes
from lmlab.train.runfiles import absolute, holds_run


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
        """``results.json`` as it was (none: none), written whole as every record is
        (``lmlab.files.write_bytes``): a second Ctrl-C leaves the one or the other."""
        path = self.path / RESULTS
        if self.record is None:
            path.unlink(missing_ok=True)
        elif _read(path) != self.record:
            write_bytes(path, self.record)


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


def clear_launch() -> None:
    """``clear`` this call's folder (``LAUNCH``), then the parents it made on the way to it,
    innermost first, each where it is empty: another run's folder made there since (a run
    started the same day) keeps its parent."""
    folder = LAUNCH.folder
    if folder is None:
        return
    clear(folder, LAUNCH.existed)
    above = LAUNCH.above
    if LAUNCH.existed or above is None:
        return
    for parent in folder.parents:
        if parent != above and above not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:  # not empty
            return


def made_above(folder: Path) -> Path | None:
    """The outermost of ``folder``'s parents that does not exist yet, which making ``folder``
    makes too (``outputs/`` or ``outputs/<date>/``), or None: called before it is made."""
    missing = None
    for parent in absolute(folder).parents:
        if parent.exists():
            break
        missing = parent
    return missing


def note_folder(folder: Path, existed: bool, above: Path | None = None) -> None:
    """``folder`` is where this call writes, from now on (``LAUNCH``): whether it held
    anything but lock files decides, as it does for Hydra's writes (held where it did), what
    an interrupt before training removes again; ``above``: ``made_above`` as it was before
    this call made the folder."""
    empty = not folder.is_dir() or all(p.name in LOCK_FILES for p in folder.iterdir())
    LAUNCH.folder, LAUNCH.made, LAUNCH.existed = folder, empty, existed and empty
    LAUNCH.above = above if empty and not existed else None


def stop_signal(err: BaseException) -> bool:
    """Whether ``err`` is Lightning's ``SIGTERMException``: a stop signal, during training
    (``lmlab.train.preemption.Preemption``) or before it (``StopBeforeFit``). Looked up only
    where Lightning is loaded, as raising it needs, so a refusal before that import stays
    quick."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(err, exceptions.SIGTERMException)


def interrupted_before_training(job: JobFolder, said: str = "interrupted") -> str:
    """Ctrl-C before ``job`` trained (or a stop signal: ``said``, "preempted (SIGTERM ...)"):
    its ``results.json`` put back as it was, and the folder this call made (a run's, or a
    sweep's whose first job this is; a later job's own folder) removed again; one line saying
    so. A folder that held something kept it: Hydra's writes were held there (a sweep's job
    folder that held no run has Hydra's ``.hydra/``)."""
    job.restore_record()
    num = HydraConfig.get().job.num if in_multirun() else 0
    first = f"{said} before job #{num} trained" if num else f"{said} before training"
    folder = LAUNCH.folder
    if LAUNCH.made and folder is not None and (folder == job.path or folder in job.path.parents):
        if LAUNCH.jobs == 1:  # nothing else of this call's is there
            clear_launch()
            return f"{first}: nothing was written to {folder}"
        clear(job.path, existed=False)
        before = "the job before it is" if num == 1 else f"the {num} jobs before it are"
        return f"{first}: nothing was written to {job.path}; {before} in {folder}"
    if not in_multirun() or holds_run(job.path):
        return f"{first}: nothing was written to {job.path}"
    return f"{first}: nothing was trained in {job.path}, which holds no run"


def disk_full_before_training(full: OSError) -> str:
    """A full disk while Hydra wrote a run's folder, before any job started (its config files,
    its log): the folder this call made removed again, Hydra's half-written files with it,
    in one line. After a sweep's first job nothing is removed."""
    words, fix = write_error_words(full), storage_fix(full)
    folder = LAUNCH.folder
    if not LAUNCH.made or folder is None or LAUNCH.jobs:
        return f"{words}: {fix}, then run the command again"
    clear_launch()
    where = "" if full.filename else f" in {folder}"
    return f"{words}{where}: nothing was kept there; {fix}, then run the command again"
