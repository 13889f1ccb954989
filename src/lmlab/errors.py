"""The one error type for bad user input: caught by ``src/train.py`` and shown without traceback,
and ``first_line``, which puts a library's error into such a message; a write the storage
refused, a full disk (``disk_full``) or a folder of the run that cannot be written
(``refused_write``), found in an error's chain and said in one line
(``StorageError``)."""

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path


class ConfigError(ValueError):
    """A config value, path or file the user gave is not usable; the message names the field,
    the value and what is allowed."""


_SAID: set[str] = set()  # say_once's lines given (every job of a sweep is checked twice)


def say_once(log: logging.Logger, level: int, line: str) -> None:
    """``line`` to ``log`` at ``level`` the first time this process says it; a repeat (the
    same check of each of a sweep's jobs, before and as it runs) is left out."""
    if line not in _SAID:
        _SAID.add(line)
        log.log(level, line)


def spelled(value: object, quote: bool = False) -> str:
    """``value`` as a config spells it: ``true``/``false``/``null``, not Python's
    ``True``/``False``/``None``; a string in quotes where ``quote`` (a word that is not one of
    the allowed ones), anything else as ``str`` gives it."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if quote and isinstance(value, str) else str(value)


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of ``err``'s message (its type's name where it has none), cut
    to ``limit`` characters: a library's error inside a one-line ConfigError."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]


# A write the storage has no room for: a full disk, a quota, or a file past the largest one
# this process may write (``ulimit -f``: Python ignores the SIGXFSZ that would end it, so the
# write fails with EFBIG; or the file system's own limit, FAT32's 4 GiB). torch.save hides
# each behind the same "unexpected pos" (``disk_full``).
NO_ROOM = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (past ulimit -f or the file system's largest file)",
}
DISK_FULL = tuple(NO_ROOM)


def chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and the errors it was raised from or while handling, newest first."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def disk_full(err: BaseException | None) -> OSError | None:
    """The "no space left on device" (or quota) ``OSError`` in ``err``'s chain: ``torch.save``
    on a full disk raises its own ``RuntimeError`` ("unexpected pos ...") while handling it."""
    full = (e for e in chain(err) if isinstance(e, OSError) and e.errno in DISK_FULL)
    return next(full, None)


def written(err: OSError) -> str | None:
    """The file ``err`` met writing: a copy's or a rename's destination (``filename2``;
    ``shutil.copyfile`` on a full disk names its source first, as W&B's media copied from a
    temporary folder into the run's ``wandb/`` showed: a file on a disk with room), else the
    one file it names."""
    return err.filename2 or err.filename


def write_error_words(err: OSError) -> str:
    """``no space left on device writing <file>`` (``disk quota exceeded``, ``file too large
    ...``, ``permission denied``, ``operation not permitted``, ``read-only file system``)."""
    if err.errno in NO_ROOM:
        what = NO_ROOM[err.errno]
    else:
        what = (err.strerror or os.strerror(err.errno or 0)).lower()
    return f"{what} writing {written(err)}" if written(err) else what


# What a file system answers a write into a folder this process may not change: its mode, an
# immutable folder (chattr +i), a read-only mount.
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class WriteRefusedError(OSError):
    """A write the file system refused (``NOT_WRITABLE``), naming the file meant (a
    checkpoint, a run's record: ``csv/metrics.csv``, ``results.json``) rather than the
    temporary file it is written through (``lmlab.train.checkpointing.AtomicCheckpointIO``,
    ``lmlab.files.write_bytes``)."""


def refused_write(err: BaseException | None) -> OSError | None:
    """The ``WriteRefusedError`` in ``err``'s chain, if any."""
    return next((e for e in chain(err) if isinstance(e, WriteRefusedError)), None)


def refused_save(err: BaseException, path: Path) -> OSError | None:
    """The error a save of ``path`` (a checkpoint, or a record written whole) raises instead of
    ``err`` where the storage refused it, naming ``path`` rather than its temporary file or one
    rank's shard: a full disk (``OSError``) or a folder that cannot be written
    (``WriteRefusedError``);
    None where ``err`` is another error. Looks into the ranks' errors of a sharded save
    (torch.distributed.checkpoint's ``CheckpointException.failures``)."""
    for found in chain(err):
        failures = getattr(found, "failures", None)
        ranks = failures.values() if isinstance(failures, dict) else []
        inner = [r[0] if isinstance(r, tuple) else r for r in ranks]
        for e in [found, *(c for r in inner if isinstance(r, BaseException) for c in chain(r))]:
            if isinstance(e, OSError) and e.errno in (*DISK_FULL, *NOT_WRITABLE):
                kind = OSError if e.errno in DISK_FULL else WriteRefusedError
                return kind(e.errno, e.strerror, str(path))
    return None


def storage_refusal(err: BaseException | None) -> OSError | None:
    """A full disk (``disk_full``) or a checkpoint or record that could not be written
    (``refused_write``) in ``err``'s chain: a stop said in one line. A completed run's
    ``results.json`` that could not be written is said in its own words
    (``UnwritableRecordError``: the resume that writes it without training again)."""
    if any(isinstance(e, UnwritableRecordError) for e in chain(err)):
        return None
    return disk_full(err) or refused_write(err)


def storage_fix(err: OSError) -> str:
    """What the user does about ``storage_refusal``'s error: free space, raise the file-size
    limit, or make the folder writable."""
    if err.errno == errno.EFBIG:
        return "raise ulimit -f or use a file system that holds larger files"
    if err.errno in DISK_FULL or not written(err):
        return "free space"
    return f"make {Path(written(err)).parent} writable"


def naming(err: OSError, path: object) -> OSError:
    """``err``, or where it names no file (a write that found the disk full when its data
    were flushed), the same error naming ``path``, the file being written."""
    return err if err.filename else OSError(err.errno, err.strerror, str(path))


class StorageError(RuntimeError):
    """A run that stopped because its storage refused a write (a full disk, a checkpoints
    folder that cannot be written): one line, with what to do, instead of the save's
    traceback (the checkpoints written before are whole: saves are atomic)."""


class UnwritableRecordError(RuntimeError):
    """A run that trained to its end whose ``results.json`` could not be written (a read-only
    or immutable file): one line saying what to do, instead of a traceback."""
