"""What an evaluation leaves: its record, ``<run dir>/eval/step<N>.json`` (``eval_path``), one
entry per task with the checkpoint it scored, the harness's results and the settings they
depend on; merged with the entries an earlier evaluation of the same weights left (``check_record``
refuses other weights), written under a lock, and the replaced entries named; and the
console table of the results (``table``). Running the tasks is ``lmlab.infer.harness``'s."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmlab.config.local_paths import source_name
from lmlab.config.locks import lock_current
from lmlab.config.prompts import CHAT_SETTINGS, prompt_format
from lmlab.errors import ConfigError
from lmlab.files import CHECKPOINTS, EVAL_RECORDS, write_text
from lmlab.infer.harness import flat_metrics

log = logging.getLogger(__name__)


# The settings of an evaluation that a task's numbers depend on; each task's entry in a record
# holds those it was run with (a record merges runs of other settings). ``run_tasks`` passes
# the model's batch size to the harness, and ``LmlabLM.get_model_info`` its dtype and
# ``max_gen_toks`` (a generating task's answers end there where the task sets no length);
# ``run_tasks`` adds whether each request was formatted in the chat template, and how.
RUN_SETTINGS = ("limit", "bootstrap_iters", "batch_size", "dtype", "max_gen_toks", *CHAT_SETTINGS)


def eval_record(
    results: dict[str, Any], checkpoint: str, step: int | None, digest: str | None = None
) -> dict[str, Any]:
    """What ``<run dir>/eval/step<N>.json`` holds for one evaluation: the checkpoint, its step
    and ``model_digest`` (what ``check_record`` compares), the flat metrics and, per task, the
    checkpoint file it scored, the harness's results, item count, version, shots, metric
    directions and the settings it ran with (``lm_eval``: the harness's version,
    ``RUN_SETTINGS``)."""
    config = results.get("config", {})
    from lm_eval import __version__ as lm_eval_version

    settings = {"version": lm_eval_version, **{k: config.get(k) for k in RUN_SETTINGS}}
    tasks = {}
    for task, metrics in results.get("results", {}).items():
        tasks[task] = {
            "checkpoint": checkpoint,
            "results": metrics,
            "n_samples": results.get("n-samples", {}).get(task),
            "version": results.get("versions", {}).get(task),
            "n_shot": results.get("n-shot", {}).get(task),
            "higher_is_better": results.get("higher_is_better", {}).get(task),
            "lm_eval": dict(settings),
        }
    return {
        "checkpoint": checkpoint,
        "global_step": step,
        "model_digest": digest,
        "metrics": flat_metrics(results),
        "tasks": tasks,
    }


def eval_path(ckpt: str | os.PathLike, step: int | None) -> Path:
    """``<run dir>/eval/step<N>.json`` (N: the checkpoint's training step) for a checkpoint in
    ``<run dir>/checkpoints/``, whose checkpoints of one step hold the same weights
    (``last.ckpt`` and ``step-<N>.ckpt``). For a checkpoint elsewhere, ``eval/<name>.json``
    beside it, named by its file: a folder of loose checkpoints may hold several of one step.
    The run's folder as ``run_dir_of`` names it (no ``..``: the path is printed)."""
    from lmlab.infer.checkpoint import run_dir_of

    named = Path(source_name(ckpt))
    in_run = named.parent.name == CHECKPOINTS
    name = f"step{step:06d}" if in_run and step is not None else named.stem
    return run_dir_of(ckpt) / EVAL_RECORDS / f"{name}.json"


RECORD_KEYS = ("checkpoint", "global_step", "metrics", "tasks")


def read_eval_record(path: str | Path, key: str = "out") -> dict[str, Any] | None:
    """The eval record at ``path`` (None: there is none yet); anything else there is refused,
    never overwritten. ``path`` as typed: a name ending with a slash is a folder's."""
    from lmlab.config.outpath import check_file_out

    path = check_file_out(path, key, new=False)
    if path.is_symlink() and not path.exists():  # written, it would replace the link
        raise ConfigError(
            f"{key}={path} is a symbolic link to {os.readlink(path)}, which does not exist: "
            "name a new file, or the file it points to (nothing is overwritten)"
        )
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        old = None
    if not well_formed(old):
        raise ConfigError(
            f"{key}={path} exists and is not an lmlab eval record: choose a new file (nothing "
            "is overwritten)"
        )
    return old


def well_formed(record: Any) -> bool:
    """Whether ``record`` has an eval record's shape (``eval_record``'s), so that a merge can
    read it: a record damaged by hand was found only after every task had run."""
    if not isinstance(record, dict) or not set(RECORD_KEYS) <= set(record):
        return False
    step = record["global_step"]
    return (
        isinstance(record["checkpoint"], str)
        and (step is None or (isinstance(step, int) and not isinstance(step, bool)))
        and isinstance(record["metrics"], dict)
        and isinstance(record["tasks"], dict)
        and all(_well_formed_task(entry) for entry in record["tasks"].values())
        and isinstance(record.get("lm_eval", {}), dict)
    )


def _well_formed_task(entry: Any) -> bool:
    """A task's entry as ``eval_record`` writes it, in the parts a merge reads."""
    if not isinstance(entry, dict):
        return False
    parts = (entry.get("results", {}), entry.get("n_samples") or {}, entry.get("lm_eval", {}))
    return all(isinstance(part, dict) for part in parts)


def same_weights(a: str, b: str, step_a: int | None, step_b: int | None) -> bool:
    """Whether checkpoints ``a`` and ``b`` are taken to hold the same weights by their paths
    (a record without ``model_digest``): one step, and one file (``last.ckpt`` is a link) or
    one run's ``checkpoints/`` folder. (``last.ckpt`` moves on as its run trains: the same
    file at another step holds other weights.) Each path is the file it names
    (``source_name``): ``<run>/x/../checkpoints`` is that run's folder."""
    if step_a != step_b:
        return False
    pa, pb = Path(source_name(a)), Path(source_name(b))
    one_run = pa.parent == pb.parent and pa.parent.name == CHECKPOINTS and step_a is not None
    return one_run or pa.resolve() == pb.resolve()


def modified_ns(checkpoint: Path) -> int | None:
    """When checkpoint ``checkpoint`` (a file, or a sharded folder: its newest file) was last
    written; None where it is not there."""
    try:
        if checkpoint.is_dir():
            return max((p.stat().st_mtime_ns for p in checkpoint.iterdir()), default=None)
        return checkpoint.stat().st_mtime_ns
    except OSError:
        return None


def step_of(step: int | None) -> str:
    """``step 64``, or ``no step`` for a checkpoint that holds none (``from_hf``'s)."""
    return "no step" if step is None else f"step {step}"


def other_weights(
    old: dict[str, Any], path: Path, checkpoint: str, step: int | None, digest: str | None
) -> str | None:
    """Why record ``old`` (at ``path``) is not of the weights of ``checkpoint`` (at ``step``,
    its ``model_digest`` ``digest``), or None where it is. Both digests known: they decide.
    A record written before records held one: the paths (``same_weights``), and a checkpoint
    written after the record holds weights the record never saw (a file copied over)."""
    if old["global_step"] != step:
        return f"this checkpoint is of {step_of(step)}"
    if old.get("model_digest") and digest:
        if old["model_digest"] != digest:
            return "this checkpoint's weights, model config or tokenizer differ"
        return None
    if not same_weights(old["checkpoint"], checkpoint, old["global_step"], step):
        return f"{checkpoint} is another file, and not of its run"
    written = modified_ns(Path(checkpoint))
    if written is not None and path.exists() and written > path.stat().st_mtime_ns:
        return f"{checkpoint} was written after that record"
    return None


def check_record(
    path: Path, checkpoint: str, step: int | None, key: str = "out", digest: str | None = None
) -> dict[str, Any] | None:
    """``path`` is free (None), or holds this checkpoint's record (returned: the new tasks
    merge into it). The record of other weights (``other_weights``) is refused before any
    task runs, so no record ever mixes two."""
    old = read_eval_record(path, key)
    why = None if old is None else other_weights(old, path, checkpoint, step, digest)
    if why:
        raise ConfigError(
            f"{key}={path} holds the eval of another checkpoint ({old['checkpoint']}, "
            f"{step_of(old['global_step'])}; {why}): choose another out= or move that record away "
            "(records of two checkpoints are never mixed)"
        )
    return old


def merge_records(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over ``old`` (the same weights): a task in ``new`` replaces its old entry and
    all its old metrics, every other task of ``old`` stays whole. Each task keeps the
    checkpoint file it scored (the top-level ``checkpoint`` is the newest evaluation's: the
    same weights, maybe another file) and the settings it ran with; a record written before
    tasks held their own (the top-level ``checkpoint``, one top-level ``lm_eval`` block) gives
    them to its tasks."""
    inherited = {"checkpoint": old["checkpoint"]}
    if old.get("lm_eval") is not None:
        inherited["lm_eval"] = old["lm_eval"]
    tasks = {
        name: {**inherited, **entry}
        for name, entry in old.get("tasks", {}).items()
        if name not in new["tasks"]
    }
    replaced = tuple(f"eval/{name}/" for name in new["tasks"])
    metrics = {k: v for k, v in old.get("metrics", {}).items() if not k.startswith(replaced)}
    digest = new.get("model_digest") or old.get("model_digest")
    merged = {**new, "model_digest": digest, "metrics": {**metrics, **new["metrics"]}}
    now = {name: {"checkpoint": new["checkpoint"], **e} for name, e in new["tasks"].items()}
    return {**merged, "tasks": {**tasks, **now}}


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write (or merge into, ``merge_records``: tasks evaluated earlier for the same weights
    stay) ``path``, atomically; ``check_record`` refuses what may not be merged. The read,
    merge and write hold the record's lock (``record_lock``): two evaluations of one
    checkpoint that end together each keep their tasks (one of them was lost). A task
    evaluated again is said in the log with what it replaces."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with record_locked(path):
        old = check_record(
            path, record["checkpoint"], record["global_step"], digest=record.get("model_digest")
        )
        if old is not None:
            for line in replaced_results(old, record):
                log.warning("%s", line)
            record = merge_records(old, record)
        return write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def record_lock(path: Path) -> Path:
    """The lock file of eval record ``path``: in this user's folder of the machine's
    temporary one, named for the record's path, so that nothing is written beside the
    record. (A lock of the record's folder waited, after every task had run, for the live
    run whose folder it was: a run holds a ``flock`` on its folder.) One lock for every
    spelling of the record's path (``source_name``: ``../a/eval/x.json``, its absolute path,
    a linked folder's path to it), so that two evaluations naming it so take turns."""
    key = hashlib.sha256(source_name(path).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"lmlab-{os.getuid()}-eval-locks"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{key}.lock"


@contextlib.contextmanager
def record_locked(path: Path) -> Iterator[None]:
    """Hold eval record ``path``'s lock (``record_lock``), and remove its file on release
    (``lock_current`` makes that safe for a waiter), so that no lock file is left per record
    evaluated. No lock to be had (a read-only temporary folder): the record is written
    without one."""
    fd = None
    with contextlib.suppress(OSError):
        lock = record_lock(path)
        fd = lock_current(lock, lambda opened: fcntl.flock(opened, fcntl.LOCK_EX), 0o600)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)  # while held: a waiter on it will find it gone and retry
            os.close(fd)


def replaced_results(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """A line for each task of ``new`` that replaces a result of ``old`` scored on other
    items or settings (a quick ``limit=20`` over the full 300): its item count and settings
    before and now."""

    def described(entry: dict[str, Any], fallback: Any) -> tuple[Any, dict[str, Any]]:
        items = (entry.get("n_samples") or {}).get("effective")
        settings = {**(entry.get("lm_eval") or fallback or {}), "n_shot": entry.get("n_shot")}
        # the batch size changes a score at rounding only (batched equals unbatched); the chat
        # settings are compared as the prompts they make (a 0-shot task's turns are none)
        kept = [k for k in RUN_SETTINGS if k != "batch_size" and k not in CHAT_SETTINGS]
        described = {k: settings.get(k) for k in (*kept, "n_shot")}
        prompts = prompt_format(settings, entry.get("n_shot"))
        return items, described | {"prompts": prompts}

    lines = []
    for name, entry in new["tasks"].items():
        if name not in old["tasks"]:
            continue
        was, now = described(old["tasks"][name], old.get("lm_eval")), described(entry, None)
        # a setting an older record does not hold is not a change
        differ = [k for k in now[1] if was[1][k] is not None and now[1][k] != was[1][k]]
        if was[0] != now[0] or differ:
            changed = ", ".join(f"{k}={now[1][k]} (was {was[1][k]})" for k in differ)
            lines.append(
                f"{name}: replaces its earlier result ({was[0]} items) with this one "
                f"({now[0]} items{'; ' + changed if changed else ''})"
            )
    return lines


def table(results: dict[str, Any]) -> str:
    """The harness's own markdown table of the results."""
    from lm_eval.utils import make_table

    return make_table(results)
