"""An lmlab command run in the test process (``run_command``, and module fixtures that train
a run once for a file's tests), as ``lmlab.cli.main.command`` runs it, less its heap work."""

from __future__ import annotations

import contextlib

import pytest


def without_heap_work(patch: pytest.MonkeyPatch) -> None:
    """The process's heap work left out: this process goes on, with its heap frozen once
    (conftest's ``pytest_collection_finish``). The exit's full collection (``before_exit``)
    would take about half a second, and a freeze of a command's imports (``long_lived``)
    would keep the test's garbage alive then."""
    patch.setattr("lmlab.cli.main.before_exit", lambda: None)
    for module in ("main", "train", "sweep_check"):
        patch.setattr(f"lmlab.cli.{module}.long_lived", contextlib.nullcontext)
