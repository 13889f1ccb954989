"""``out=``: where a command writes, checked before it does any work.

Nothing the user has is overwritten unless the command owns it (an eval record it merges
into, a plot it redraws), and a path that cannot be written (under a file, a folder where a
file belongs) is one line naming the key, not a traceback after minutes of work.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.errors import ConfigError


def check_parent(out: Path, key: str = "out") -> None:
    """Every existing folder above ``out`` is a folder: ``out=notes.txt/x`` is refused."""
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{key}={out}: {parent} is a file, not a folder (choose a path in a folder)"
                )
            return


def check_file_out(out: Path, key: str = "out", new: bool = True) -> Path:
    """``out`` is a file this command may write: under folders, not a folder itself, and,
    with ``new``, not there yet (nothing is overwritten)."""
    check_parent(out, key)
    if out.is_dir():
        raise ConfigError(f"{key}={out} is a folder: name the file to write")
    if new and (out.exists() or out.is_symlink()):
        raise ConfigError(f"{key}={out} exists: choose a new file (nothing is overwritten)")
    return out


def check_folder_out(out: Path, key: str = "out", empty: bool = False) -> Path:
    """``out`` is a folder this command may write into: not a file, and, with ``empty``, a
    new or empty folder."""
    check_parent(out, key)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{key}={out} is a file: name a folder")
    if empty and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{key}={out} exists and is not an empty folder (nothing is overwritten)")
    return out
