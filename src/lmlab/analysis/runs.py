"""Read run directories: one :class:`Run` per job that ``lmlab train`` left, for every
analysis tool (compare, scaling).

A job directory is found by its ``results.json`` (at any depth under the given directory) and
holds ``results.json``, ``plan.json`` (the frozen run plan: steps, global batch, precision),
``.hydra/overrides.yaml``, ``.hydra/config.yaml``, ``csv/metrics.csv`` and, once ``lmlab
evaluate`` has scored a checkpoint, ``eval/step<N>.json`` (a record of the final step whose
``model_digest`` is not the one results.json holds is another model's, and skipped). A job
that has not ended
(``.hydra/`` without results.json, or results.json still ``running``) is ``running`` where a
live process holds its lock or its sweep's, else ``killed``. A dry run's folder
(``dry_run=true``: ``.hydra/`` and a ``plan.json`` marked ``dry_run``) holds no run: it is
left out (:func:`dry_runs` lists them), not counted as a job that was refused. Nor is a
folder whose results.json no run wrote (a JSON object without ``status``, and no ``.hydra/``
or ``plan.json`` beside it: notes left in a sweep's folder; :func:`not_runs` lists them); a
results.json with a ``status`` is a run's even alone, as in the folders of results.json files that
``lmlab scaling`` is given (``docs/isoflop``). A run started with ``init_from`` trained the
checkpoint's model, not the one its config composed: plan.json's ``model`` replaces the
config's. A basic sweeper's ``multirun.yaml`` holds its grid, so the jobs of it that have no
folder (a sweep stopped before them) are known too (:mod:`lmlab.analysis.sweep_grid`).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from lmlab.config import flatten
from lmlab.config.locks import LOCK_FILE, SWEEP_LOCK_FILE, live_holder
from lmlab.errors import ConfigError

# results.json statuses of a run stopped by a signal, with a checkpoint to resume from.
STOPPED = ("preempted", "interrupted")
# statuses of a job that has not ended: a live process holds its lock, or none does.
RUNNING, KILLED = "running", "killed"
UNFINISHED = (*STOPPED, RUNNING, KILLED)
# metrics.csv columns that are the x axis, not metrics.
CURVE_AXIS_COLUMNS = frozenset({"step", "epoch"})
_NUMBER_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_EVAL_RECORD_RE = re.compile(r"step(\d+)")  # eval/step<N>.json, N the weights' step


class RunDirError(ConfigError):
    """A directory that holds no readable runs (missing, or no results.json); one line."""


@dataclass
class Run:
    """One job of the multirun: its directory and what the trainer left there."""

    dir: Path
    results: dict[str, Any]
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    evals: dict[str, float] = field(default_factory=dict)
    """``eval/<task>/<metric>`` from ``lmlab evaluate`` of the run's newest evaluated step."""
    eval_step: int | None = None
    """The step of the weights ``evals`` scored (its ``eval/step<N>.json``); None without."""
    eval_items: dict[str, int] = field(default_factory=dict)
    """Per task of ``evals``, the items it scored (the record's ``n_samples``, else its
    ``limit``)."""
    skipped_evals: list[str] = field(default_factory=list)
    """Why each ``eval/step<N>.json`` that is not this run's was skipped (one line each)."""
    choices: dict[str, str] = field(default_factory=dict)
    """The option of each config group it ran with (``model: gpt_tiny``), overridden or not."""

    @property
    def failed(self) -> bool:
        """True unless results.json says ``status: completed``."""
        return self.results.get("status") != "completed"

    @property
    def stopped(self) -> bool:
        """Stopped before its end by a signal (``preempted``, ``interrupted``), with a
        checkpoint to resume from: not finished, but not failed either."""
        return self.results.get("status") in STOPPED

    @property
    def state(self) -> str:
        """``completed``, ``failed``, or the status of a run that has not finished
        (``UNFINISHED``: stopped by a signal, still running, or killed)."""
        status = self.results.get("status")
        return status if status in ("completed", *UNFINISHED) else "failed"

    @property
    def error(self) -> str | None:
        """The error message of a failed run (or a stand-in naming its status)."""
        if not self.failed:
            return None
        error = self.results.get("error")
        return str(error) if error else f"status {self.results.get('status')!r}"

    @property
    def seed(self) -> Any:
        """The seed from results.json, else config.yaml, else the overrides."""
        for source in (self.results, self.flat_config, self.overrides):
            if source.get("seed") is not None:
                return source["seed"]
        return None

    @cached_property
    def flat_config(self) -> dict[str, Any]:
        """config.yaml flattened to dotted keys."""
        return flatten(self.config)


def load_runs(path: str | Path) -> list[Run]:
    """Load every job under a multirun directory, ordered by job directory (0, 1, ..., 10).

    Job directories with ``.hydra/`` but without results.json are runs too: ``running`` or
    ``killed`` (``Run.state``), as is a results.json that still says ``running``. A dry run's
    are not (:func:`dry_runs`).
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise RunDirError(f"{root} is a file: give a multirun directory or a run directory")
    if not root.is_dir():
        raise RunDirError(f"multirun directory does not exist: {root}")
    job_dirs, started, planned, strays = job_folders(root)
    if not job_dirs and not started and strays:
        names = truncate_names([str(d.relative_to(root)) for d in sorted(strays)])
        raise RunDirError(
            f"no run under {root}: its results.json in {names} was not written by a run (no "
            ".hydra/ or plan.json beside it, and no status in it)"
        )
    if not job_dirs and not started and planned:
        raise RunDirError(
            f"no run under {root}: its {len(planned)} job folder(s) are dry runs "
            "(dry_run=true writes the plan and trains nothing); train without dry_run=true"
        )
    if not job_dirs and started:  # a sweep whose first job still runs, say
        states = [_unfinished(d, root, {}) for d in sorted(started)]
        raise RunDirError(
            f"no run under {root} has written its results.json yet ({len(started)} started: "
            + "; ".join(_tally(states))
            + ")"
        )
    if not job_dirs:
        raise RunDirError(f"no results.json under {root}: not a multirun directory?")
    runs = [_load_run(d, root, has_results=True) for d in job_dirs]
    runs += [_load_run(d, root, has_results=False) for d in started]
    return sorted(runs, key=lambda run: _path_key(run.dir.relative_to(root)))


def job_folders(root: Path) -> tuple[set[Path], set[Path], set[Path], set[Path]]:
    """The job folders under ``root``: those with a results.json, those started without one
    (``.hydra/``), the dry runs' (:func:`_planned`), which are neither, and the folders whose
    results.json no run wrote (:func:`_is_run`), which are no job's."""
    found = {p.parent for p in root.rglob("results.json") if p.is_file()}
    strays = {d for d in found if not _is_run(d)}
    job_dirs = found - strays
    started = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")} - found
    planned = {d for d in started if _planned(d, root)}
    return job_dirs, started - planned, planned, strays


def _is_run(folder: Path) -> bool:
    """Whether the results.json in ``folder`` is a run's: lmlab's files beside it
    (``.hydra/``, ``plan.json``), or a ``status`` in it, which every run writes (a folder
    holding a run's results.json alone, as ``lmlab scaling`` is given them). One that does
    not parse is a run's too, whose file broke: ranked as failed, ``unreadable``."""
    if (folder / ".hydra").is_dir() or (folder / "plan.json").is_file():
        return True
    results = _read_json(folder / "results.json")
    return not isinstance(results, dict) or "status" in results


def not_runs(path: str | Path) -> list[Path]:
    """The folders under ``path`` whose results.json no run wrote (a user's notes in a sweep's
    folder), which :func:`load_runs` leaves out, ordered as the runs are."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(job_folders(root)[3], key=lambda d: _path_key(d.relative_to(root)))


def not_runs_note(path: str | Path) -> str | None:
    """What ``compare`` and ``scaling`` say of the folders :func:`not_runs` finds, or None."""
    root = Path(path)
    strays = [str(d.relative_to(root)) for d in not_runs(root)]
    if not strays:
        return None
    return (
        f"left out {len(strays)} folder(s) whose results.json no run wrote "
        f"({truncate_names(strays)}): no .hydra/ or plan.json beside it, and no status in it"
    )


def truncate_names(names: list[str], limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``limit`` names of a list."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def dry_runs(path: str | Path) -> list[Path]:
    """The dry runs' folders under ``path`` (``dry_run=true``: a plan, nothing trained), which
    :func:`load_runs` leaves out, ordered as the runs are."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(job_folders(root)[2], key=lambda d: _path_key(d.relative_to(root)))


def _planned(job_dir: Path, root: Path) -> bool:
    """Whether a folder without results.json is a dry run's: its plan.json is marked
    ``dry_run`` (a run that trains replaces it as it starts) and no run has started there
    since (no lock file, held or left by a kill, and no live sweep holding one above it)."""
    plan = _read_json(job_dir / "plan.json")
    return (
        isinstance(plan, dict)
        and plan.get("dry_run") is True
        and not (job_dir / LOCK_FILE).exists()
        and _live_holder(job_dir, root) is None
    )


def _live_holder(job_dir: Path, root: Path) -> str | None:
    """The pid of a live process holding the job's run lock, else None; a job without a lock
    file (not yet taken, or released as it ended) asks the lock of a sweep folder it sits in
    (up to ``root``: a sweep's job as it starts). A lock file that nobody holds is a killed
    job's, whether or not its sweep goes on (a launcher running jobs in other processes)."""
    if (job_dir / LOCK_FILE).exists():
        return live_holder(job_dir / LOCK_FILE)
    holder, folder = None, job_dir
    while holder is None and folder != root and root in folder.parents:
        folder = folder.parent
        holder = live_holder(folder / SWEEP_LOCK_FILE)
    return holder


def _unfinished(job_dir: Path, root: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The results of a job that has not ended (none, or ``running``) with the status it has
    now: ``running`` where a live process holds its lock or its sweep's; ``killed`` where it
    trained (results.json says ``running``) or left its lock file behind (a ``kill -9``);
    else ``failed``: refused before it took its lock, with nothing written but ``.hydra/``."""
    holder = _live_holder(job_dir, root)
    if holder is not None:
        error = f"pid {holder} holds its lock"
        return {**results, "status": RUNNING, "error": error, "holder": holder}
    # nothing live: a results.json written since the folders were listed is the job's own
    # (a run writes it before it lets go of its lock)
    if (job_dir / "results.json").is_file():
        current = _read_results(job_dir / "results.json")
        if current.get("status") != RUNNING:
            return current
    if results or (job_dir / LOCK_FILE).exists():
        unwritten = "" if results else "no results.json, and "
        return {
            **results,
            "status": KILLED,
            "error": f"{unwritten}no live process holds its lock: resume=auto continues it",
        }
    return {"status": "failed", "error": NEVER_TRAINED}


NEVER_TRAINED = (
    "no results.json: refused before training (train.log or its command's output says why)"
)


def _tally(states: list[dict[str, Any]]) -> list[str]:
    """What the jobs without a results.json are, one clause per kind."""
    holders = [s["holder"] for s in states if s.get("status") == RUNNING]
    killed = sum(s.get("status") == KILLED for s in states)
    refused = sum(s.get("error") == NEVER_TRAINED for s in states)
    clauses = []
    if holders:
        clauses.append(
            f"{len(holders)} still running (pid {', '.join(sorted(set(holders)))}): compare "
            "again when they end"
        )
    if killed:
        clauses.append(f"{killed} killed before they ended: resume=auto continues them")
    if refused:
        clauses.append(f"{refused} refused before training: train.log or the command says why")
    if len(states) > len(holders) + killed + refused:  # ended since they were listed
        clauses.append("the others ended meanwhile: compare again")
    return clauses


def _path_key(path: Path) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def _load_run(job_dir: Path, root: Path, has_results: bool) -> Run:
    results = _read_results(job_dir / "results.json") if has_results else {}
    if not has_results or results.get("status") == RUNNING:
        results = _unfinished(job_dir, root, results)
    overrides = read_yaml(job_dir / ".hydra" / "overrides.yaml")
    config = read_yaml(job_dir / ".hydra" / "config.yaml")
    plan = _read_json(job_dir / "plan.json")
    if isinstance(config, dict) and isinstance(plan, dict) and isinstance(plan.get("model"), dict):
        config = {**config, "model": plan["model"]}
    record = _read_evals(job_dir, results)
    return Run(
        dir=job_dir,
        results=results,
        overrides=_parse_overrides(overrides if isinstance(overrides, list) else []),
        config=config if isinstance(config, dict) else {},
        curve=_read_curve(job_dir),
        evals=record.metrics,
        eval_step=record.step,
        eval_items=record.items,
        skipped_evals=record.skipped,
        choices=_read_choices(job_dir / ".hydra" / "hydra.yaml"),
    )


def _read_choices(path: Path) -> dict[str, str]:
    """Hydra's ``runtime.choices`` (each group's option; none when unreadable)."""
    hydra = read_yaml(path)
    choices = (
        hydra.get("hydra", {}).get("runtime", {}).get("choices")
        if isinstance(hydra, dict)
        else None
    )
    if not isinstance(choices, dict):
        return {}
    return {str(k): str(v) for k, v in choices.items() if v is not None and "/" not in str(k)}


@dataclass
class _EvalRecord:
    """What :func:`_read_evals` found: the record used (its step, metrics and per-task item
    counts) and why any newer one was skipped."""

    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _read_evals(job_dir: Path, results: dict[str, Any]) -> _EvalRecord:
    """The ``eval/step<N>.json`` with the largest N as a number (step 1000000 after step
    999999; ``lmlab evaluate`` of the final checkpoint, usually); other names and unreadable
    files are skipped. So is the record of the run's final step (results.json's
    ``global_step``) whose ``model_digest`` is not results.json's, the digest of that
    checkpoint: another model's evaluation, left in the folder or copied there (named in
    ``skipped``); the next record, or results.json's own eval metrics, count instead. A record
    of another step cannot be checked so (results.json knows the final weights only) and
    counts as before, as does any record where either side has no digest (older runs).
    Empty without one."""
    records = []
    for path in job_dir.glob("eval/step*.json"):
        match = _EVAL_RECORD_RE.fullmatch(path.stem)
        if match:
            records.append((int(match[1]), path))
    final, digest = results.get("global_step"), results.get("model_digest")
    skipped = []
    for step, path in sorted(records, reverse=True):
        try:
            record = json.loads(path.read_text())
            metrics = record.get("metrics", {})
        except (OSError, ValueError, AttributeError):
            continue
        theirs = record.get("model_digest")
        known = isinstance(theirs, str) and isinstance(digest, str)
        if step == final and known and theirs != digest:
            skipped.append(
                f"{path}: its model_digest {theirs} is not that of the run's final checkpoint "
                f"({digest}, results.json): the evaluation of another model, skipped"
            )
            continue
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        return _EvalRecord(step, values, _record_items(record), skipped)
    return _EvalRecord(skipped=skipped)


def _record_items(record: dict[str, Any]) -> dict[str, int]:
    """Per task of an eval record, the items it scored: the harness's ``n_samples``
    (``effective``), else the ``limit`` it ran with; tasks with neither are left out."""
    tasks = record.get("tasks")
    out = {}
    for task, entry in (tasks if isinstance(tasks, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        settings = entry.get("lm_eval")
        limit = settings.get("limit") if isinstance(settings, dict) else None
        count = item_count(entry.get("n_samples"), limit)
        if count is not None:
            out[str(task)] = count
    return out


def item_count(n_samples: Any, limit: Any = None) -> int | None:
    """The items a task was scored on: lm-eval's ``n-samples`` entry (``{"original": 300,
    "effective": 20}``, or a bare count), else ``limit`` (at most that many); None unknown."""
    if isinstance(n_samples, dict):
        n_samples = n_samples.get("effective", n_samples.get("original"))
    for value in (n_samples, limit):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _read_results(path: Path) -> dict[str, Any]:
    """``results.json``; one that cannot be read ranks as a failed run (``compare``), marked
    ``unreadable`` so that a tool can say it was the file, not the run, that failed."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"status": "failed", "unreadable": True, "error": f"unreadable results.json: {exc}"}
    if not isinstance(results, dict):
        return {
            "status": "failed",
            "unreadable": True,
            "error": "results.json is not a JSON object",
        }
    return results


def _read_json(path: Path) -> Any:
    """The file's JSON, None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _parse_overrides(items: Iterable[Any]) -> dict[str, str]:
    """``["+model.act=gelu", "~x"]`` -> ``{"model.act": "gelu", "x": "<deleted>"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if re.split(r"[./]", key)[0] == "hydra":
            continue
        out[key] = canonical(value) if sep else "<deleted>"
    return out


def canonical(value: Any) -> str:
    """A value as a comparable string: override text and config values of the same value match
    (``"true"`` and ``True``, ``"0.10"`` and ``0.1``)."""
    if isinstance(value, str):
        text = value
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, dict | list):
            return text
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value):
            value = float(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return _compact(value)
    return str(value)


def _compact(value: float) -> str:
    """A float as short as it reads: ``1e5``, not ``100000.0``, for a whole number of five
    digits or more (a learning rate typed as 1e5); else its ``repr``. Both round-trip, so two
    values read alike only where they are equal."""
    text = repr(value)
    if math.isfinite(value) and value == int(value) and abs(value) >= 1e4:
        mantissa, _, exponent = f"{value:e}".partition("e")
        short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        if float(short) == value and len(short) < len(text):
            return short
    return text


def _read_curve(job_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """metrics.csv as ``{column: [(step, value), ...]}`` in file order, empty cells skipped."""
    path = job_dir / "csv" / "metrics.csv"
    if not path.is_file():
        found = sorted(job_dir.glob("csv/**/metrics.csv"))
        if not found:
            return {}
        path = found[-1]
    curve: dict[str, list[tuple[float, float]]] = {}
    try:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                step = _to_float(row.get("step"))
                if step is None:
                    continue
                for column, raw in row.items():
                    value = _to_float(raw)
                    if column and column not in CURVE_AXIS_COLUMNS and value is not None:
                        curve.setdefault(column, []).append((step, value))
    except (OSError, csv.Error):
        return curve
    return curve


def _to_float(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None
