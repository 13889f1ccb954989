"""Checkpoint files without Lightning: a single ``.ckpt`` file or a sharded folder, read for
generation, probing and resume checks; a sharded folder consolidated into one checkpoint.

Kept apart from ``lmlab.train.checkpointing`` (the Lightning callbacks): ``lmlab generate``,
``lmlab probe`` and ``lmlab.infer.pretrained`` start without importing Lightning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

# What Lightning's ModelParallelStrategy writes next to the shards: everything but the weights
# and optimizer states (step, loops, callbacks, model_config, tokenizer).
SHARDED_META = "meta.pt"


def is_sharded(path: str | Path) -> bool:
    """A sharded (distributed) checkpoint: a folder of per-rank shards and ``meta.pt``."""
    return Path(path).is_dir() and (Path(path) / SHARDED_META).is_file()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file memory-mapped, or a sharded checkpoint's metadata (no weights)."""
    path = Path(path)
    if is_sharded(path):
        return torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
    if path.is_dir():
        raise ValueError(f"{path} is a folder but not a sharded checkpoint (no {SHARDED_META})")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def consolidate(path: str | Path) -> dict[str, Any]:
    """One single-process checkpoint from a sharded one, with no process group: the full
    weights (``state_dict``) and the metadata. Optimizer states are left out: the result is
    for generation and evaluation on any device (resume a sharded run from its folder)."""
    # what torch.distributed.checkpoint.format_utils.dcp_to_torch_save does, kept in memory
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    if not is_sharded(path):
        raise ValueError(f"{path} is not a sharded checkpoint folder (no {SHARDED_META} inside)")
    full: dict[str, Any] = {}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        _load_state_dict(
            full,
            storage_reader=FileSystemReader(path),
            planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
            no_dist=True,
        )
    meta = read_checkpoint(path)
    meta.pop("optimizer_states", None)
    return {**meta, "state_dict": full["state_dict"]}
