"""The one error type for bad user input: caught by ``src/train.py`` and shown without traceback,
and ``first_line``, which puts a library's error into such a message; a full disk, found in
an error's chain (``disk_full``) and said in one line (``DiskFullError``)."""

import errno
from collections.abc import Iterator


class ConfigError(ValueError):
    """A config value, path or file the user gave is not usable; the message names the field,
    the value and what is allowed."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of ``err``'s message (its type's name where it has none), cut
    to ``limit`` characters: a library's error inside a one-line ConfigError."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


def disk_full_words(full: OSError) -> str:
    """``no space left on device writing <file>`` (or ``disk quota exceeded``)."""
    what = "disk quota exceeded" if full.errno == errno.EDQUOT else "no space left on device"
    return f"{what} writing {full.filename}" if full.filename else what


def naming(err: OSError, path: object) -> OSError:
    """``err``, or where it names no file (a write that found the disk full when its data
    were flushed), the same error naming ``path``, the file being written."""
    return err if err.filename else OSError(err.errno, err.strerror, str(path))


class DiskFullError(RuntimeError):
    """A run that stopped because its disk is full: one line, with what to do, instead of the
    save's traceback (the checkpoints written before are whole: saves are atomic)."""


class UnwritableRecordError(RuntimeError):
    """A run that trained to its end whose ``results.json`` could not be written (a read-only
    or immutable file): one line saying what to do, instead of a traceback."""
