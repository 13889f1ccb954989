"""Read a Hydra multirun: one :class:`Run` per job, the knobs that vary between jobs, and a
metric's value per run.

A multirun directory holds one job directory per run (found by ``results.json``, at any depth)
with ``results.json``, ``.hydra/overrides.yaml``, ``.hydra/config.yaml`` and
``csv/metrics.csv``. The knobs are the overrides whose values differ between jobs (falling back
to differing ``config.yaml`` keys). A killed job (``.hydra/`` without results.json) is a failed
run.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

# results.json keys that are not metrics.
NON_METRIC_KEYS = frozenset({"status", "error", "run_name", "seed"})
# metrics.csv columns that are the x axis, not metrics.
CURVE_AXIS_COLUMNS = frozenset({"step", "epoch"})
# Shown with k/M/B suffixes.
# Config keys that are bookkeeping, not knobs (fallback when overrides do not vary).
_EXCLUDED_TOKENS = frozenset(
    {"path", "paths", "dir", "dirs", "root", "file", "files", "cwd", "seed"}
    | {"timestamp", "date", "datetime", "now"}
)
_EXCLUDED_GROUPS = frozenset({"hydra", "wandb", "logger", "logging", "paths"})
_EXCLUDED_LEAVES = frozenset({"run_name", "run_id", "experiment_name"})
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
MISSING = "-"
_ABSENT = object()


class CompareError(ValueError):
    """Bad input to the comparison (missing directory, no runs, unknown metric); one line."""


@dataclass
class Run:
    """One job of the multirun: its directory and what the trainer left there."""

    dir: Path
    results: dict[str, Any]
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True unless results.json says ``status: completed``."""
        return self.results.get("status") != "completed"

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


# --------------------------------------------------------------------------- loading


def load_runs(path: str | Path) -> list[Run]:
    """Load every job under a multirun directory, ordered by job directory (0, 1, ..., 10).

    Job directories with ``.hydra/`` but without results.json (killed jobs) become failed runs.
    """
    root = Path(path)
    if not root.is_dir():
        raise CompareError(f"multirun directory does not exist: {root}")
    job_dirs = {p.parent for p in root.rglob("results.json") if p.is_file()}
    if not job_dirs:
        raise CompareError(f"no results.json under {root}: not a multirun directory?")
    orphans = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")} - job_dirs
    runs = [_load_run(d, has_results=True) for d in job_dirs]
    runs += [_load_run(d, has_results=False) for d in orphans]
    return sorted(runs, key=lambda run: _path_key(run.dir.relative_to(root)))


def _path_key(path: Path) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def _load_run(job_dir: Path, has_results: bool) -> Run:
    if has_results:
        results = _read_results(job_dir / "results.json")
    else:
        results = {"status": "failed", "error": "no results.json (job killed or still running?)"}
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    config = _read_yaml(job_dir / ".hydra" / "config.yaml")
    return Run(
        dir=job_dir,
        results=results,
        overrides=_parse_overrides(overrides if isinstance(overrides, list) else []),
        config=config if isinstance(config, dict) else {},
        curve=_read_curve(job_dir),
    )


def _read_results(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"status": "failed", "error": f"unreadable results.json: {exc}"}
    if not isinstance(results, dict):
        return {"status": "failed", "error": "results.json is not a JSON object"}
    return results


def _read_yaml(path: Path) -> Any:
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
        return repr(value)
    return str(value)


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


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists and scalars are leaves."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# --------------------------------------------------------------------------- knobs


def varying_knobs(runs: Sequence[Run]) -> list[str]:
    """The override keys whose values differ between runs, in command-line order; ``seed`` and
    constant overrides excluded. Falls back to differing config.yaml keys (no paths, dirs,
    seeds, run names, timestamps) when no override varies."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(k for k in run.overrides if not _is_seed_key(k)))
    knobs = [k for k in keys if len({knob_value(r, k) for r in runs}) > 1]
    return knobs or _config_knobs(runs)


def _is_seed_key(key: str) -> bool:
    return re.split(r"[./]", key)[-1] == "seed"


def knob_value(run: Run, key: str) -> str:
    """The run's value for a knob: its override, else its config value, else ``-``."""
    if key in run.overrides:
        return run.overrides[key]
    value = run.flat_config.get(key, _ABSENT)
    return MISSING if value is _ABSENT or isinstance(value, dict) else canonical(value)


def _config_knobs(runs: Sequence[Run]) -> list[str]:
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.flat_config))
    knobs = []
    for key in keys:
        values = [run.flat_config.get(key) for run in runs]
        if _excluded_config_key(key) or any(_looks_like_path(v) for v in values):
            continue
        if len({knob_value(r, key) for r in runs}) > 1:
            knobs.append(key)
    return knobs


def _excluded_config_key(key: str) -> bool:
    parts = key.split(".")
    tokens = {t for part in parts for t in part.lower().split("_")}
    return (
        bool(tokens & _EXCLUDED_TOKENS)
        or parts[0] in _EXCLUDED_GROUPS
        or parts[-1] in _EXCLUDED_LEAVES
        or key == "name"
    )


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and (
        value.startswith(("/", "~", "./")) or bool(_DATE_RE.search(value))
    )


def short_names(knobs: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix that still tells each knob apart (``model.act`` -> ``act``)."""
    out: dict[str, str] = {}
    for knob in knobs:
        parts = knob.split(".")
        out[knob] = knob
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if sum(o == suffix or o.endswith("." + suffix) for o in knobs) == 1:
                out[knob] = suffix
                break
    return out


def variant_label(knobs: dict[str, str]) -> str:
    """``norm_placement=pre, activation=gelu`` (short knob names); ``all runs`` without knobs."""
    names = short_names(list(knobs))
    return ", ".join(f"{names[k]}={v}" for k, v in knobs.items()) or "all runs"


# --------------------------------------------------------------------------- metrics


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric results.json keys (null counts) and metrics.csv columns present in any run."""
    names: set[str] = set()
    for run in runs:
        names.update(
            k
            for k, v in run.results.items()
            if k not in NON_METRIC_KEYS and (v is None or _is_number(v))
        )
        names.update(run.curve)
    return sorted(names)


def check_metric(runs: Sequence[Run], metric: str) -> None:
    """Raise CompareError naming the available metrics when ``metric`` is unknown."""
    if metric in available_metrics(runs):
        return
    if any(curve_column(metric, run.curve) for run in runs):
        return
    available = ", ".join(available_metrics(runs)) or "none"
    raise CompareError(f"unknown metric {metric!r}; available: {available}")


def curve_column(metric: str, columns: Iterable[str]) -> str | None:
    """The metrics.csv column for a metric: ``val_loss`` -> ``val/loss``,
    ``tokens_per_second`` -> ``perf/tokens_per_second``; None when there is none."""
    columns = list(columns)
    if metric in columns:
        return metric
    for column in columns:
        if column.replace("/", "_") == metric:
            return column
    tails = [c for c in columns if c.split("/")[-1] == metric]
    return tails[0] if len(tails) == 1 else None


def run_value(run: Run, metric: str) -> float | None:
    """results.json value of ``metric``, else (completed runs only: a failed run's partial curve
    is not a final value) the last value of its metrics.csv column."""
    value = run.results.get(metric)
    if _is_number(value):
        return float(value)
    if run.failed:
        return None
    column = curve_column(metric, run.curve)
    if column and run.curve[column]:
        return run.curve[column][-1][1]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
