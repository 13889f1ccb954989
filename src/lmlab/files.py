"""Text records written whole (a run's ``results.json``, ``plan.json``, ``.hydra/*.yaml``, CSV
history, W&B id, name and project, eval records; compare's and scaling's ``.json``): a
temporary file beside the target, named for this
process, renamed over it. A reader sees the old file or the new one, never half of one; a
write that fails (a full disk, a Ctrl-C) leaves no temporary file, and its error names the
file (a flush that found the disk full names none of its own). Checkpoints are written the
same way by ``lmlab.train.checkpointing.AtomicCheckpointIO``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmlab.errors import naming


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole (its folder made where missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes sharing a file
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise naming(err, path) from err
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` whole (``write_text``)."""
    return write_text(path, json.dumps(data, indent=2, default=str))
