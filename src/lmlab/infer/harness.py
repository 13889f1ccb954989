"""Tasks for ``LmlabLM``: find them, check them, run them, and record what they gave.

Tasks are lm-eval's: the ones shipped in ``infer/tasks/`` (YAML + JSONL made by
``scripts/make_eval_tasks.py``, offline) and, for users who are online, any task the harness
knows (hellaswag, lambada_openai, arc_easy, ...), whose dataset it downloads. Names are checked
and datasets fetched before a model is loaded or a run trains, so an unknown name or a hub task
offline fails at once, naming the task. Results become flat metrics, ``eval/<task>/<metric>``,
the names every logger and ``lmlab compare`` use.

lm-eval is imported inside the functions: importing this module costs nothing, so the
training command line starts as fast without evals as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from lmlab.config import DataConfig, Family, Source
from lmlab.config.locks import lock_current
from lmlab.data.hub import hub_reachable, offline_hub
from lmlab.data.packing import trained_documents
from lmlab.data.sources import load_documents
from lmlab.errors import ConfigError, first_line
from lmlab.files import CHECKPOINTS, EVAL_RECORDS, write_text

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_DATA = DataConfig()  # the corpus settings the shipped tasks are held out of
log = logging.getLogger(__name__)


# family -> how the harness treats it (``LmlabLM.backend``): only decoders and encoder-decoders
# give the probability of a continuation; BERT has none
BACKENDS = {Family.gpt: "causal", Family.t5: "seq2seq"}


def check_family(family: Family, what: str) -> None:
    """Only the families with a ``BACKENDS`` entry (GPT, T5) can be evaluated."""
    if family not in BACKENDS:
        raise ConfigError(
            f"{what}: a bert model is an encoder with a masked-LM head and gives no probability "
            "of a continuation, which every lm-eval request needs; allowed: gpt (causal) or t5 "
            "(encoder-decoder) models"
        )


def shipped_tasks() -> list[str]:
    """The offline tasks that ship with lmlab (their YAML files' names)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


@functools.cache
def task_manager(hub: bool) -> Any:
    """lm-eval's ``TaskManager`` over the shipped tasks, plus the harness's own when ``hub``
    (indexing its thousands of YAML files takes seconds, so only when a name needs them)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=hub)


def parse_tasks(value: str | Sequence[str] | None) -> list[str]:
    """``a,b,c`` or ``[a,b,c]`` (the list syntax of ``eval.tasks`` in training), or a list,
    as task names; none: every shipped task."""
    if value is None:
        return shipped_tasks()
    listed = isinstance(value, str) and value.startswith("[") and value.endswith("]")
    names = (value[1:-1] if listed else value).split(",") if isinstance(value, str) else value
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(f"tasks={value!r} names no task; shipped: {', '.join(shipped_tasks())}")
    return names


def check_tasks(names: Sequence[str], where: str = "tasks") -> bool:
    """Every name is a task whose data can be read now; returns whether the hub's task index
    is needed (a name that is not shipped). A hub task's dataset is downloaded (or found in
    the cache) here, before any model is loaded: offline, that fails naming the task."""
    shipped = set(shipped_tasks())
    hub_names = [n for n in names if n not in shipped]
    if not hub_names:
        return False
    manager = task_manager(hub=True)
    unknown = [n for n in hub_names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            f"{where}: unknown task {unknown[0]!r}; allowed: the shipped offline tasks "
            f"({', '.join(sorted(shipped))}) or an lm-eval task (`lm_eval ls tasks` lists them)"
        )
    offline = not hub_reachable()
    for name in hub_names:
        with offline_hub(offline), quiet_harness():
            try:
                manager.load([name])
            except Exception as err:  # the hub raises many types: no network, gated, missing
                state = "the hub is unreachable (offline) and " if offline else ""
                raise ConfigError(
                    f"{where}: task {name!r} needs its dataset from the Hugging Face hub; "
                    f"{state}it could not be loaded ({type(err).__name__}"
                    f"{': ' + first_line(err) if str(err).strip() else ''}); the shipped tasks run "
                    f"offline: {', '.join(sorted(shipped))}"
                ) from None
    return True


def trained_items(names: Sequence[str], data_cfg: DataConfig) -> list[str]:
    """For each shipped task of ``names`` whose items come from files that a run on
    ``data_cfg`` trains on, a line saying so. The tasks are drawn from the files the default
    corpus holds out at its default settings (``scripts/make_eval_tasks.py``); the files held
    out fill a share of the bytes in the order of a hash of their names, so another
    ``data.val_fraction`` or ``data.max_bytes`` holds out others, and the model then trains
    on the text it is scored on (QA: 203 of ``stdlib_nextline``'s 300 items at
    ``val_fraction=0.02``). Other corpora are not read for this."""
    shipped = set(shipped_tasks())
    shipped = [n for n in names if n in shipped]
    if data_cfg.source != Source.stdlib or not shipped:
        return []
    trained = _stdlib_trained_files(data_cfg.val_fraction, data_cfg.max_bytes)
    lines = []
    for task in shipped:
        files = {item["source"].rsplit(":", 1)[0] for item in task_items(f"{task}.jsonl")}
        if seen := files & trained:
            lines.append(
                f"{task}: {len(seen)} of the {len(files)} files its items come from are in this "
                f"run's training split (data.val_fraction={data_cfg.val_fraction}, "
                f"data.max_bytes={data_cfg.max_bytes}), so its scores count text the model "
                "trained on; the shipped tasks are held out of Python 3.11's standard library "
                f"at data.val_fraction={DEFAULT_DATA.val_fraction} of the whole corpus "
                f"(data.max_bytes={DEFAULT_DATA.max_bytes})"
            )
    return lines


@functools.cache
def _stdlib_trained_files(val_fraction: float, max_bytes: int | None) -> frozenset[str]:
    """The names of the standard library's files a run on it trains on (its training split;
    where it has too few files to hold whole ones out, every file)."""
    docs = load_documents(
        DataConfig(source=Source.stdlib, val_fraction=val_fraction, max_bytes=max_bytes)
    )
    return frozenset(docs[i][0] for i in trained_documents(docs, val_fraction))


# Shipped tasks that take no shots: their YAML sets num_fewshot: 0, which lm-eval keeps
# whatever num_fewshot asks (a rolling perplexity scores whole texts).
NO_SHOTS = ("stdlib_perplexity",)


def fewshot_pool(name: str) -> int:
    """How many few-shot examples shipped task ``name`` can draw: its ``fewshot`` split, or
    where it has none (lm-eval then draws from the items scored, leaving out the one scored)
    its items but one."""
    if (TASKS_DIR / f"{name}.fewshot.jsonl").exists():
        return len(task_items(f"{name}.fewshot.jsonl"))
    return len(task_items(f"{name}.jsonl")) - 1


@functools.cache
def task_items(file: str) -> tuple[dict[str, Any], ...]:
    """The items of a shipped task's JSONL file (``TASKS_DIR``), read once."""
    lines = (TASKS_DIR / file).read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line) for line in lines if line.strip())


def check_fewshot(names: Sequence[str], num_fewshot: int | None) -> None:
    """``num_fewshot`` within each shipped task's pool (``fewshot_pool``), before a model is
    loaded: the harness's own refusal came after, as a traceback. A hub task's pool is known
    once its data are loaded (``run_tasks`` says it in the same words)."""
    if not num_fewshot:
        return
    shipped = set(shipped_tasks()) - set(NO_SHOTS)
    for name in names:
        if name in shipped and num_fewshot > (pool := fewshot_pool(name)):
            raise ConfigError(
                f"num_fewshot={num_fewshot}: task {name!r} has {pool} few-shot examples; "
                f"allowed: 0 to {pool}"
            )


NOTICE_LOGGERS = ("lm_eval", "lm_eval.api.task", "lm_eval.evaluator", "lm_eval.api.model")


class _DropNotices(logging.Filter):
    """The harness's notices that say nothing about lmlab's use of it."""

    NOTICES = ("Custom kwargs can be passed", "No chat template", "chat_template")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOTICES)


@contextlib.contextmanager
def quiet_harness(progress: bool = False) -> Iterator[None]:
    """lm-eval at WARNING (its INFO lines would fill a training log) and without its notices;
    without ``progress``, its progress bars and prints (to stderr and stdout) are dropped
    (logging's handlers keep their streams). Bootstrapped standard errors are computed in
    this process: a pool of worker processes inside a training run is not worth starting."""
    harness_log = logging.getLogger("lm_eval")
    level, notices = harness_log.level, _DropNotices()
    harness_log.setLevel(logging.WARNING)
    for name in NOTICE_LOGGERS:  # a logger's filter sees its own records only
        logging.getLogger(name).addFilter(notices)
    saved = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        with contextlib.ExitStack() as stack:
            if not progress:
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            yield
    finally:
        harness_log.setLevel(level)
        for name in NOTICE_LOGGERS:
            logging.getLogger(name).removeFilter(notices)
        if saved is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = saved


@contextlib.contextmanager
def kept_random_state() -> Iterator[None]:
    """The harness seeds Python's, NumPy's and torch's global generators; inside a training
    run they are put back afterwards, so a run with evals draws the same numbers as one
    without (and resumes exactly)."""
    py, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):  # the harness seeds the GPUs' generators too
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def run_tasks(
    lm: Any,
    names: Sequence[str],
    limit: int | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``lm`` on ``names`` (checked by ``check_tasks``), with
    its fixed seeds: the same model gives the same results. The global random state is as
    before. Returns the harness's results dict (no per-item samples)."""
    import lm_eval.evaluator
    from lm_eval import simple_evaluate

    hub = any(n not in shipped_tasks() for n in names)
    # simple_evaluate also describes the machine (pip, GPUs, OS: 1.5 s on the 2-core CPU, more
    # under load) for a report lmlab does not write: skipped, at every in-training eval too;
    # so is the git commit of the working directory (not the model's: outside a repository,
    # git printed "fatal: not a git repository" on every evaluation)
    no_env_info = mock.patch.object(lm_eval.evaluator, "add_env_info", lambda results: None)
    no_git = mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None)
    offline = offline_hub(hub and not hub_reachable())
    with offline, quiet_harness(progress), kept_random_state(), no_env_info, no_git:
        try:
            return simple_evaluate(
                model=lm,
                tasks=list(names),
                task_manager=task_manager(hub),
                limit=limit,
                num_fewshot=num_fewshot,
                bootstrap_iters=bootstrap_iters,
                batch_size=getattr(lm, "batch_size", None),  # recorded only: lm is built
                log_samples=False,
            )
        except ValueError as err:  # the few-shot sampler's, for a pool smaller than asked
            if num_fewshot and "Sample larger than population" in str(err):
                raise ConfigError(
                    f"num_fewshot={num_fewshot}: a task of {', '.join(names)} has fewer "
                    "few-shot examples than that"
                ) from None
            raise


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``results["results"]`` as ``{"eval/<task>/<metric>": value}``: lm-eval's key
    ``acc,none`` becomes ``acc`` (``acc_<filter>`` for another filter), standard errors
    included; values that are not numbers (``N/A``) and the item count are left out."""
    out: dict[str, float] = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if key == "sample_len" or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # sample_len: the item count, not a metric
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            out[f"eval/{task}/{name}"] = float(value)
    return out


# The settings of an evaluation that a task's numbers depend on; each task's entry in a record
# holds those it was run with (a record merges runs of other settings). ``run_tasks`` passes
# the model's batch size to the harness, and ``LmlabLM.get_model_info`` its dtype and
# ``max_gen_toks`` (a generating task's answers end there where the task sets no length).
RUN_SETTINGS = ("limit", "bootstrap_iters", "batch_size", "dtype", "max_gen_toks")


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


def eval_path(ckpt: Path, step: int | None) -> Path:
    """``<run dir>/eval/step<N>.json`` (N: the checkpoint's training step) for a checkpoint in
    ``<run dir>/checkpoints/``, whose checkpoints of one step hold the same weights
    (``last.ckpt`` and ``step-<N>.ckpt``). For a checkpoint elsewhere, ``eval/<name>.json``
    beside it, named by its file: a folder of loose checkpoints may hold several of one step."""
    from lmlab.infer.checkpoint import run_dir_of

    in_run = ckpt.absolute().parent.name == CHECKPOINTS
    name = f"step{step:06d}" if in_run and step is not None else ckpt.absolute().stem
    return run_dir_of(ckpt) / EVAL_RECORDS / f"{name}.json"


RECORD_KEYS = ("checkpoint", "global_step", "metrics", "tasks")


def read_eval_record(path: Path, key: str = "out") -> dict[str, Any] | None:
    """The eval record at ``path`` (None: there is none yet); anything else there is refused,
    never overwritten."""
    from lmlab.config.outpath import check_file_out

    check_file_out(path, key, new=False)
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
    file at another step holds other weights.)"""
    if step_a != step_b:
        return False
    pa, pb = Path(a).absolute(), Path(b).absolute()
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
    run whose folder it was: a run holds a ``flock`` on its folder.)"""
    key = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:16]
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
        # the batch size changes a score at rounding only (batched equals unbatched)
        return items, {k: settings.get(k) for k in (*RUN_SETTINGS, "n_shot") if k != "batch_size"}

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
