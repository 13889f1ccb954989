"""The user's own lm-eval tasks: a folder of task YAML files (lm-eval's ``--include_path``),
given as ``include_path=`` to ``lmlab evaluate`` and ``eval.include_path=`` to a training run.

Its tasks are named as the harness names them (each YAML's ``task:``, groups too) and run
beside lmlab's shipped tasks and, online, the harness's own; a YAML's ``!function`` finds its
Python file in the same folder, as in lm-eval. The folder is checked before a model is loaded
or a run trains: it exists, holds task YAML files, and none of its tasks takes the name of a
shipped one (lm-eval would take the later path's, and lmlab reads the shipped tasks' files by
name: the two would disagree on what the name means).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from lmlab.errors import ConfigError


def checked_folders(value: str | None, key: str, shipped: set[str]) -> tuple[str, ...]:
    """``value`` (``key``'s setting: a folder, or None) as the absolute folders the task
    manager takes: () without one; a ConfigError where it is no folder, holds no YAML file,
    or a task in it has a shipped task's name (``shipped``)."""
    if not folders_of(value):
        return ()
    folder = Path(folders_of(value)[0])
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise ConfigError(
            f"{key}={value} {state}: name a folder of lm-eval task YAML files (each with a "
            "`task:` name, as lm-eval's --include_path takes)"
        )
    if not any(folder.rglob("*.yaml")):
        raise ConfigError(
            f"{key}={value} holds no .yaml file: name a folder of lm-eval task YAML files"
        )
    taken = sorted(set(folder_tasks(str(folder))) & shipped)
    if taken:
        raise ConfigError(
            f"{key}={value}: its task {taken[0]!r} has the name of a task lmlab ships; "
            "rename it (the `task:` line of its YAML file)"
        )
    return (str(folder),)


def folders_of(value: str | None) -> tuple[str, ...]:
    """``value`` (an ``include_path`` setting) as the absolute folders the task manager takes,
    named from this process's working directory (``~`` expanded); () without one."""
    if value is None or not str(value).strip():
        return ()
    return (str(Path(os.path.expanduser(str(value))).absolute()),)


@functools.cache
def folder_tasks(folder: str) -> tuple[str, ...]:
    """The task and group names lm-eval finds in ``folder`` (its index of that folder alone)."""
    from lm_eval.tasks import TaskManager

    return tuple(sorted(TaskManager(include_path=folder, include_defaults=False).all_tasks))


def tasks_of(folders: tuple[str, ...]) -> set[str]:
    """Every task and group name in ``folders``."""
    return {name for folder in folders for name in folder_tasks(folder)}
