"""A run's records on disk: the names a run directory gives them, and text records written
whole and read back.

- Names (``RESULTS``, ``PLAN``, ``RUN_CONFIG``, ``CHECKPOINTS``, ``EVAL_RECORDS``, and a
  sweep folder's ``SWEEP_RECORD``): ``lmlab train`` writes them; resume, ``compare``,
  ``scaling``, ``evaluate`` and the Ctrl-C handler read them, by these names alone.
  ``checkpoints_in``: a run directory's checkpoints, which a resume continues and by which
  ``compare`` says whether ``resume=auto`` continues an unfinished run or starts it again.
- ``write_text``/``write_json``/``save_figure`` (a run's ``results.json``, ``plan.json``,
  ``.hydra/*.yaml``, CSV history, W&B id, name and project, eval records; compare's and
  scaling's ``.json`` and ``.png``, probe's plot): a
  temporary file beside the target, named for this process, renamed over it. A reader sees
  the old file or the new one, never half of one; a write that fails (a full disk, a Ctrl-C)
  leaves no temporary file, and its error names the file (a flush that found the disk full
  names none of its own). Checkpoints are written the same way by
  ``lmlab.train.checkpointing.AtomicCheckpointIO``.
- ``read_json``/``read_record``: a record read as nothing where it is missing or unreadable
  (the command that needs it says what it lacks).
- ``keep_numbered``: the records of an earlier launch (a run's ``.hydra/*.yaml``, a sweep's
  ``multirun.yaml``) kept as ``<name>.<n>.yaml`` before a resume rewrites them, so every
  launch stays described; readers read the unnumbered files, the newest launch's."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import naming, refused_save

# A run directory's records.
RESULTS = "results.json"  # the run's outcome: status, losses, tokens, W&B id (train.outcome)
PLAN = "plan.json"  # the frozen run plan: batch, steps, data (train.plan)
RUN_CONFIG = "run_config.yaml"  # what a resumed run must share with the run (train.resume)
CHECKPOINTS = "checkpoints"  # *.ckpt: files, links or sharded folders
# What Lightning's ModelParallelStrategy writes next to the shards of a sharded checkpoint
# (a folder): everything but the weights and optimizer states (step, loops, callbacks,
# model_config, tokenizer).
SHARDED_META = "meta.pt"
# What marks a Hugging Face model folder (save_pretrained's): ``lmlab convert from_hf`` reads it.
HF_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"  # its generation defaults (to_hf writes it back)
EVAL_RECORDS = "eval"  # lmlab evaluate's records of the run's checkpoints (infer.harness)
# Hydra's record of a sweep's invocation, in the sweep's folder: what marks a sweep's folder.
SWEEP_RECORD = "multirun.yaml"
# Hydra's record of a run's launch, in its ``.hydra/`` (``hydra.output_subdir``): the composed
# config, Hydra's own (runtime, choices, overrides) and the overrides as typed.
LAUNCH_RECORDS = ("config.yaml", "hydra.yaml", "overrides.yaml")


def checkpoints_in(out_dir: Path) -> list[Path]:
    """Every checkpoint of a run directory, readable or not: ``checkpoints/*.ckpt`` (files,
    links, sharded folders) and the ``hpc_ckpt_<n>.ckpt`` Lightning saves on a SLURM
    time-limit signal before requeueing. A resume continues the newest; without any,
    ``resume=auto`` starts the run again."""
    ckpt_dir = out_dir / CHECKPOINTS
    found = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    return found + sorted(out_dir.glob("hpc_ckpt_*.ckpt"))


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole (its folder made where missing)."""
    return write_bytes(path, text.encode("utf-8"))


def save_figure(fig: Any, path: Path, **savefig: Any) -> Path:
    """A matplotlib figure written to ``path`` whole, in the format its suffix names: rendered
    in memory, then ``write_bytes``. Saved in place, a kill while it was written left a
    truncated file that the next ``compare``/``scaling``/``probe`` took for the user's and
    refused to replace."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or None, **savefig)
    return write_bytes(path, buffer.getvalue())


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole (its folder made where missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes sharing a file
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        refused = refused_save(err, path)  # a full disk, a folder that cannot be written
        if refused is not None:
            raise refused from err  # naming the file meant, not its temporary file
        if isinstance(err, OSError):
            raise naming(err, path) from err
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` whole (``write_text``)."""
    return write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> Any:
    """The file's JSON, None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (``results.json``, ``plan.json``); empty where there is
    none or the file cannot be read as one."""
    record = read_json(path)
    return record if isinstance(record, dict) else {}


def kept_as(path: Path, n: int) -> Path:
    """``path`` as kept for launch ``n``: ``.hydra/config.yaml`` -> ``.hydra/config.1.yaml``."""
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


def keep_numbered(paths: Sequence[Path]) -> int | None:
    """Copies of those of ``paths`` that exist, each beside it as ``kept_as(path, n)`` with
    the first ``n`` (1, 2, ...) that none of them has yet: one launch's records, kept under
    one number before the next launch rewrites them. Copies keep the files' times (when that
    launch wrote them). Returns ``n``, or None where none of ``paths`` exists."""
    present = [path for path in paths if path.is_file()]
    if not present:
        return None
    n = 1
    while any(kept_as(path, n).exists() for path in paths):
        n += 1
    for path in present:
        shutil.copy2(path, kept_as(path, n))
    return n
