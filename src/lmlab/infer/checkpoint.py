"""Checkpoint files without Lightning: a single ``.ckpt`` file or a sharded folder, read for
generation, probing and resume checks; a sharded folder consolidated into one checkpoint.

Kept apart from ``lmlab.train.checkpointing`` (the Lightning callbacks): ``lmlab generate``,
``lmlab probe`` and ``lmlab.infer.pretrained`` start without importing Lightning.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmlab.config.local_paths import source_name
from lmlab.config.outpath import beside, publish
from lmlab.errors import ConfigError, first_line
from lmlab.files import CHECKPOINTS, HF_CONFIG, RUN_CONFIG, SHARDED_META, SWEEP_RECORD

log = logging.getLogger(__name__)


def run_dir_of(ckpt: str | os.PathLike) -> Path:
    """The run directory of a checkpoint in ``<run dir>/checkpoints/``; for a checkpoint
    elsewhere, the folder that holds it. (``lmlab evaluate`` and ``probe`` write there, and
    print it.) Named as ``source_name`` names the checkpoint, one name for every spelling:
    ``../a/checkpoints/last.ckpt`` typed in ``runs/b`` is ``runs/a``, never ``runs/b/../a``."""
    folder = Path(source_name(ckpt)).parent
    return folder.parent if folder.name == CHECKPOINTS else folder


def save_new(ckpt: dict[str, Any], out: Path) -> Path:
    """Write ``ckpt`` to the new file ``out``, whole: under a temporary name of this process's
    (``beside``), then given the name only where nothing took it meanwhile (``publish``): of
    two commands writing one ``out`` at once, the second is refused and the first's file kept.
    A Ctrl-C or a full disk leaves no partial file; a ``kill -9``'s is removed by the next
    command writing that ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = beside(out)
    try:
        torch.save(ckpt, tmp)
        publish(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def is_sharded(path: str | Path) -> bool:
    """A sharded (distributed) checkpoint: a folder of per-rank shards and ``meta.pt``."""
    return Path(path).is_dir() and (Path(path) / SHARDED_META).is_file()


def no_checkpoint(key: str, path: Path) -> ConfigError:
    """The refusal for ``key=path`` where ``path`` is neither a checkpoint file nor a sharded
    checkpoint folder: missing, a run directory or its ``checkpoints/`` (its checkpoints are
    named), a Hugging Face model folder (``from_hf`` is named), or another."""
    if not (path.exists() or path.is_symlink()):
        return ConfigError(
            f"{key}={path}: no such file or folder (allowed: a checkpoint file or a sharded "
            "checkpoint folder)"
        )
    # a run directory (one stopped before its first checkpoint has no checkpoints folder, but
    # its run_config.yaml, written as training starts), or its checkpoints folder
    folder = path / CHECKPOINTS if path.name != CHECKPOINTS else path
    if folder.is_dir() or (path / RUN_CONFIG).is_file():
        what = "a run directory" if folder != path else "a run's checkpoints folder"
        saved = sorted(p.name for p in folder.glob("*.ckpt"))
        if not saved:
            return ConfigError(
                f"{key}={path} is {what} that saved no checkpoint (its run stopped before the "
                "first, or they were removed): train it (resume=auto in that directory starts "
                "it again), or give another checkpoint"
            )
        pick = "last.ckpt" if "last.ckpt" in saved else saved[-1]
        more = f" ({len(saved)} there: {', '.join(saved[:4])}{', ...' * (len(saved) > 4)})"
        more = more if len(saved) > 1 else ""
        return ConfigError(
            f"{key}={path} is {what}: give one of its checkpoints, e.g. {key}={folder / pick}{more}"
        )
    if (path / SWEEP_RECORD).is_file():
        return ConfigError(
            f"{key}={path} is a sweep's folder: give a checkpoint of one of its jobs, e.g. "
            f"{key}={path / '<job>' / CHECKPOINTS / 'last.ckpt'} (`lmlab compare {path}` "
            "ranks them)"
        )
    if (path / HF_CONFIG).is_file():
        return ConfigError(
            f"{key}={path} is a Hugging Face model folder, not an lmlab checkpoint: convert it "
            f"with `lmlab convert from_hf={path} out=<file>.ckpt`, then give {key}=<file>.ckpt"
        )
    runs = sorted(p.name for p in path.glob("*/") if (p / CHECKPOINTS).is_dir())
    if runs:  # runs gathered by hand, or the jobs of a sweep whose multirun.yaml is gone
        shown = ", ".join(runs[:4]) + ", ..." * (len(runs) > 4)
        return ConfigError(
            f"{key}={path} is a folder of {len(runs)} run(s) ({shown}): give a checkpoint of "
            f"one, e.g. {key}={path / runs[0] / CHECKPOINTS / 'last.ckpt'} (`lmlab compare "
            f"{path}` ranks them)"
        )
    if path.is_dir():
        return ConfigError(
            f"{key}={path} is a folder but no sharded checkpoint (no {SHARDED_META} inside): "
            "give a checkpoint file or a sharded checkpoint folder"
        )
    if path.is_symlink() and not path.exists():  # a run's last.ckpt after its target went
        return ConfigError(
            f"{key}={path} is a link to {path.readlink()}, which does not exist (removed or "
            "moved): give a checkpoint that is there"
        )
    return ConfigError(f"{key}={path}: not a checkpoint file (a device or a pipe?)")


@contextmanager
def readable(path: Path, what: str = "truncated, corrupt or not a checkpoint") -> Iterator[None]:
    """Reading checkpoint ``path``: any failure becomes a ``ConfigError`` that names the file
    and what is wrong (``what``, then the reader's reason: one line, exit code 2 in every
    tool), not a traceback from the reader."""
    try:
        yield
    except ConfigError:
        raise
    except reader_errors() as err:
        reason = first_line(first_failure(err))
        raise ConfigError(
            f"checkpoint {path} is unreadable ({what}): {reason.split('. ')[0]}"
        ) from err


def reader_errors() -> tuple[type[BaseException], ...]:
    """What a checkpoint reader raises: an ``Exception``, or torch.distributed.checkpoint's
    ``CheckpointException`` for a sharded folder, which derives from ``BaseException`` (caught
    by name: a Ctrl-C is never turned into 'unreadable'). That module is looked up, not
    imported (seconds): only code that imported it raises its exception."""
    api = sys.modules.get("torch.distributed.checkpoint.api")
    return (Exception,) if api is None else (Exception, api.CheckpointException)


def first_failure(err: BaseException) -> BaseException:
    """A ``CheckpointException``'s first rank's error (its own text is a rank list and whole
    tracebacks); any other error as it is."""
    failures = getattr(err, "failures", None)
    return next(iter(failures.values()))[0] if isinstance(failures, dict) and failures else err


def check_shards(path: Path) -> None:
    """A sharded folder is whole, checked without reading a tensor: its ``.metadata`` (the
    index torch.distributed.checkpoint writes) can be read, and every shard file it points
    into is there and at least as long as the furthest byte it places there. A deleted or
    truncated shard (a copy cut short, a full disk) is a ``ConfigError``, as a truncated file
    is; bytes changed inside a shard are not detected."""
    from torch.distributed.checkpoint import FileSystemReader

    with readable(path, "its .metadata, the index of the shards, cannot be read"):
        storage = FileSystemReader(path).read_metadata().storage_data
    if not isinstance(storage, dict) or not storage:
        raise ConfigError(f"checkpoint {path} is unreadable (its .metadata lists no shards)")
    ends: dict[str, int] = {}  # shard file -> the end of the last item placed in it
    for item in storage.values():
        ends[item.relative_path] = max(ends.get(item.relative_path, 0), item.offset + item.length)
    for name, end in sorted(ends.items()):
        shard = path / name
        if not shard.is_file():
            raise ConfigError(
                f"checkpoint {path} is unreadable (shard {name} is missing: a rank's part of "
                "the weights and optimizer state)"
            )
        if (size := shard.stat().st_size) < end:
            raise ConfigError(
                f"checkpoint {path} is unreadable (shard {name} is truncated: {size:,} bytes, "
                f"its .metadata places data up to byte {end:,})"
            )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file memory-mapped, or a sharded checkpoint's metadata (no weights). A
    truncated or corrupt one raises ``ConfigError`` (the reader checks the file's structure,
    not every byte of its tensors); so does a sharded folder with a shard missing or cut
    short (``check_shards``); so does a torch file that holds no dict (a tensor saved alone)."""
    path = Path(path)
    with readable(path):
        if is_sharded(path):
            check_shards(path)
            return torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
        if path.is_dir():
            raise ConfigError(
                f"checkpoint {path} is a folder but not a sharded checkpoint (no {SHARDED_META})"
            )
        check_torch_file(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict):  # torch.save of a tensor or a list: no checkpoint's keys
        raise ConfigError(
            f"checkpoint {path} is not an lmlab checkpoint: it holds a "
            f"{type(ckpt).__name__}, where a checkpoint is a dict (model_config, state_dict, ...)"
        )
    return ckpt


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format: a zip archive
PICKLE_MAGIC = b"\x80"  # torch.save's legacy format (torch's own error names its fix)


def check_torch_file(path: Path) -> None:
    """``path`` starts as a file ``torch.save`` wrote, else a ``ConfigError`` saying what it
    is (empty, JSON text, another file): not the reader's advice to re-save it."""
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return
    if not head:
        raise ConfigError(f"checkpoint {path} is empty (0 bytes)")
    if head.lstrip()[:1] in (b"{", b"["):
        raise ConfigError(f"checkpoint {path} is not a torch checkpoint (it starts like JSON text)")
    raise ConfigError(f"checkpoint {path} is not a torch checkpoint (a zip archive is expected)")


def holds_weights_only(ckpt: dict, path: Path) -> bool:
    """Whether a read checkpoint file holds weights without the optimizer state and step a
    run continues from (``consolidate``'s, a converted model's)."""
    return "state_dict" in ckpt and "optimizer_states" not in ckpt and not is_sharded(path)


def newest_checkpoint(paths: list[Path]) -> Path:
    """The intact training checkpoint among ``paths`` with the highest step (``last.ckpt`` on
    a tie), to resume from. One that cannot be read (truncated, a dangling link, a sharded
    folder with a shard missing or truncated) is passed over with a warning; weights-only
    files (``consolidate``'s) are not training checkpoints.
    None intact: ``ConfigError``."""
    newest: tuple[tuple[int, bool], Path] | None = None
    unreadable, weights_only = [], []
    for path in paths:
        try:
            ckpt = read_checkpoint(path)
        except ConfigError as err:
            log.warning("%s; passed over for the newest intact checkpoint", err)
            unreadable.append(path.name)
            continue
        if holds_weights_only(ckpt, path):
            weights_only.append(path.name)
            continue
        key = (int(ckpt.get("global_step", -1)), path.name == "last.ckpt")
        if newest is None or key > newest[0]:
            newest = (key, path)
    if newest is None:
        found = [f"unreadable: {', '.join(unreadable)}"] if unreadable else []
        found += [f"weights only: {', '.join(weights_only)}"] if weights_only else []
        raise ConfigError(
            f"no intact checkpoint to resume in {paths[0].parent} ({'; '.join(found)})"
        )
    return newest[1]


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
    meta = read_checkpoint(path)
    full: dict[str, Any] = {}
    with readable(path), warnings.catch_warnings():  # "assuming ... a single process"
        warnings.simplefilter("ignore", UserWarning)
        _load_state_dict(
            full,
            storage_reader=FileSystemReader(path),
            planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
            no_dist=True,
        )
    meta.pop("optimizer_states", None)
    return {**meta, "state_dict": full["state_dict"]}
