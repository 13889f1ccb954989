"""``out=``: where a command writes, checked before it does any work.

Nothing the user has is overwritten unless the command owns it (an eval record it merges
into, a plot it redraws), and a path that cannot be written (under a file, a folder where a
file belongs) is one line naming the key, not a traceback after minutes of work.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from lmlab.errors import ConfigError
from lmlab.files import SHARDED_META

log = logging.getLogger(__name__)


def check_parent(out: Path, key: str = "out") -> None:
    """Every existing folder above ``out`` is a folder (``out=notes.txt/x`` is refused), and
    none is a sharded checkpoint: the next save of that checkpoint (a run's ``last.ckpt``)
    replaces its folder whole, and what ``out`` wrote there with it."""
    existing = [parent for parent in out.absolute().parents if parent.exists()]
    if existing and not existing[0].is_dir():
        raise ConfigError(
            f"{key}={out}: {existing[0]} is a file, not a folder (choose a path in a folder)"
        )
    for folder in existing:
        if folder.suffix == ".ckpt" and (folder / SHARDED_META).is_file():
            raise ConfigError(
                f"{key}={out} is inside the sharded checkpoint {folder}, which its next save "
                "replaces whole: choose a path outside it"
            )


def check_writable(out: Path, key: str = "out", folder: bool = False) -> None:
    """``out`` can be written, tried before any work: the folders missing above it (and
    ``out`` itself, for a ``folder``) are made and a temporary file named as the atomic
    writers name theirs (``.<name>.<random>.tmp``) is created beside it, then all of it is
    removed again. A read-only place, a name too long, a full disk: one line naming the key
    and the system's reason."""
    target = out.absolute()
    where = target if folder else target.parent
    made: list[Path] = []  # folders this check made, removed again (deepest first)
    try:
        for above in [*reversed(where.parents), where]:
            if not above.exists():
                above.mkdir()
                made.append(above)
        fd, probe = tempfile.mkstemp(dir=where, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise cannot_write(out, key, err) from None
    finally:
        for above in reversed(made):
            with contextlib.suppress(OSError):
                above.rmdir()


def cannot_write(out: Path, key: str, err: OSError) -> ConfigError:
    """The one line for ``out`` the system refuses: the key, the path, the system's reason."""
    return ConfigError(f"{key}={out}: cannot write there ({err.strerror or err})")


def check_file_out(out: str | Path, key: str = "out", new: bool = True) -> Path:
    """``out`` is a file this command may write: under folders, not a folder itself (nor a
    name that ends with a slash, as a new folder's does), with ``new`` not there yet
    (nothing is overwritten), and writable there (``check_writable``)."""
    if str(out).endswith(("/", os.sep)):  # Path() drops the slash: a file of that name
        raise ConfigError(f"{key}={out} names a folder (it ends with /): name the file to write")
    out = Path(out)
    try:  # a name too long fails even a look (ENAMETOOLONG)
        check_parent(out, key)
        if out.is_dir():
            raise ConfigError(f"{key}={out} is a folder: name the file to write")
        if new and (out.exists() or out.is_symlink()):
            raise ConfigError(f"{key}={out} exists: choose a new file (nothing is overwritten)")
    except OSError as err:
        raise cannot_write(out, key, err) from None
    check_writable(out, key)
    return out


def check_folder_out(out: Path, key: str = "out", empty: bool = False) -> Path:
    """``out`` is a folder this command may write into: not a file, with ``empty`` a new or
    empty folder, and writable (``check_writable``)."""
    try:  # a name too long fails even a look (ENAMETOOLONG)
        check_parent(out, key)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{key}={out} is a file: name a folder")
        if empty and out.is_dir() and any(out.iterdir()):
            raise ConfigError(
                f"{key}={out} exists and is not an empty folder (nothing is overwritten)"
            )
    except OSError as err:
        raise cannot_write(out, key, err) from None
    check_writable(out, key, folder=True)
    return out


def beside(out: Path) -> Path:
    """Where a command writes ``out`` before ``publish`` names it: a hidden name beside it of
    this machine's and this process's (``.<name>.<host>.<pid>.tmp``). Those that killed
    commands of this machine left are removed first (``remove_left``)."""
    remove_left(out)
    return out.with_name(f".{out.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def remove_left(out: Path) -> None:
    """Remove the temporary files and folders beside ``out`` (``beside``) whose process is
    gone: a conversion killed while it wrote (a model-sized hidden folder, which nothing
    removed). Only this machine's: a process of another machine sharing the folder may still
    be writing its own."""
    host = socket.gethostname()
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{re.escape(host)}\.(\d+)\.tmp")
    try:
        found = [(p, int(m[1])) for p in out.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    except OSError:  # no folder yet
        return
    for path, pid in found:
        if pid == os.getpid() or _alive(pid):
            continue
        log.info("removing %s, left by a command killed while it wrote %s", path, out)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def publish(tmp: Path, out: Path, key: str = "out") -> None:
    """Give the finished ``tmp`` (a file or folder written beside ``out``) the name ``out``,
    unless something took that name while the command worked (the same command run twice at
    once): the check before the work holds only for its moment. A file is linked to the name
    and its temporary name removed, which fails where the name exists; a folder is renamed,
    which replaces only an empty folder. The caller removes ``tmp`` where this raises."""
    try:
        if tmp.is_dir():
            os.replace(tmp, out)
            return
        try:
            os.link(tmp, out)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if out.exists() or out.is_symlink():  # no hard links here: checked, then renamed
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out)) from err
            os.replace(tmp, out)
            return
        tmp.unlink()
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        what = "a folder that is not empty" if out.is_dir() else "a file"
        raise ConfigError(
            f"{key}={out} is now {what}: another command wrote it while this one ran "
            "(nothing is overwritten; this one's output is not kept)"
        ) from None
