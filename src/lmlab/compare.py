"""Compare the jobs of a Hydra multirun: a ranked table, a winner with a noise verdict, a plot.

A multirun directory holds one job directory per run (found by ``results.json``, at any depth)
with ``results.json``, ``.hydra/overrides.yaml``, ``.hydra/config.yaml`` and
``csv/metrics.csv``. The knobs are the overrides whose values differ between jobs (falling back
to differing ``config.yaml`` keys); jobs that differ only in ``seed`` are aggregated into one row
(mean, sample std, n). Nothing here prints: :func:`render_table` returns a Rich renderable and
:func:`compare` writes to the Console it is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Columns shown next to the chosen metric (results.json keys), with their table titles.
EXTRA_COLUMNS: dict[str, str] = {
    "val_loss": "val_loss",
    "val_perplexity": "val ppl",
    "val_bits_per_byte": "val bpb",
    "params": "params",
    "tokens": "tokens",
    "tokens_per_second": "tok/s",
    "wall_seconds": "wall s",
}
# Extra columns left out first when the terminal is narrow.
DROP_ORDER = ("wall_seconds", "tokens", "params", "val_bits_per_byte", "val_perplexity")
DROP_ORDER += ("tokens_per_second", "val_loss")
# results.json keys that are not metrics.
NON_METRIC_KEYS = frozenset({"status", "error", "run_name", "seed"})
# metrics.csv columns that are the x axis, not metrics.
CURVE_AXIS_COLUMNS = frozenset({"step", "epoch"})
# Shown with k/M/B suffixes.
HUMAN_KEYS = frozenset({"params", "non_embedding_params", "tokens", "flops", "tokens_per_second"})
# Fixed by the config, not by the seed: no std shown.
NO_STD_KEYS = frozenset({"params", "non_embedding_params", "tokens", "flops"})
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
ERROR_WIDTH = 60


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


@dataclass
class Stat:
    """Mean, sample standard deviation (None for n < 2) and count of the finite values."""

    mean: float | None
    std: float | None
    n: int


@dataclass
class Row:
    """One variant (a group of runs differing only in seed), or one failed run."""

    label: str
    knobs: dict[str, str]
    runs: list[Run]
    stats: dict[str, Stat]
    status: str  # "completed" | "failed"
    error: str | None = None
    rank: int | None = None

    @property
    def n(self) -> int:
        """Number of runs (seeds) in this row."""
        return len(self.runs)

    def value(self, metric: str) -> float | None:
        """The mean of ``metric`` over the row's runs, None when unknown."""
        stat = self.stats.get(metric)
        return None if stat is None else stat.mean


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


def stat(values: Iterable[float | None]) -> Stat:
    """Mean and sample std (ddof=1) of the finite values; std is None when n < 2."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Stat(None, None, 0)
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return Stat(float(np.mean(finite)), std, len(finite))


# --------------------------------------------------------------------------- aggregation


def aggregate(
    runs: Sequence[Run],
    metric: str,
    *,
    higher_is_better: bool = False,
    knobs: Sequence[str] | None = None,
) -> list[Row]:
    """Group completed runs differing only in seed into rows, rank them by ``metric`` (best
    first), then completed rows without a value, then one row per failed run."""
    if not runs:
        raise CompareError("no runs to compare")
    check_metric(runs, metric)
    knobs = list(varying_knobs(runs) if knobs is None else knobs)
    keys = list(dict.fromkeys([metric, *EXTRA_COLUMNS]))
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        if not run.failed:
            groups.setdefault(tuple(knob_value(run, k) for k in knobs), []).append(run)
    rows = [_row(group, knobs, keys) for group in groups.values()]
    seeds_vary = len({repr(run.seed) for run in runs}) > 1
    rows += [_row([run], knobs, keys, seeds_vary) for run in runs if run.failed]
    return _rank(rows, metric, higher_is_better)


def _row(runs: list[Run], knobs: list[str], keys: list[str], seeds_vary: bool = False) -> Row:
    values = {k: knob_value(runs[0], k) for k in knobs}
    failed = runs[0].failed
    label = variant_label(values)
    if failed and seeds_vary:
        label += f" (seed={runs[0].seed})"
    return Row(
        label=label,
        knobs=values,
        runs=runs,
        stats={key: stat(run_value(run, key) for run in runs) for key in keys},
        status="failed" if failed else "completed",
        error=runs[0].error if failed else None,
    )


def _rank(rows: list[Row], metric: str, higher_is_better: bool) -> list[Row]:
    ranked = [r for r in rows if r.status == "completed" and r.value(metric) is not None]
    sign = -1.0 if higher_is_better else 1.0
    ranked.sort(key=lambda r: (sign * (r.value(metric) or 0.0), r.label))
    for i, row in enumerate(ranked, start=1):
        row.rank = i
    unranked = [r for r in rows if r.status == "completed" and r.rank is None]
    return ranked + unranked + [r for r in rows if r.status == "failed"]


def pooled_std(a: Stat, b: Stat) -> float | None:
    """Pooled sample std of two groups; None when neither has seed replicates."""
    dof = max(a.n - 1, 0) + max(b.n - 1, 0)
    if dof == 0:
        return None
    ss = max(a.n - 1, 0) * (a.std or 0.0) ** 2 + max(b.n - 1, 0) * (b.std or 0.0) ** 2
    return math.sqrt(ss / dof)


def noise_verdict(best: Row, second: Row, metric: str) -> str:
    """Whether the winner's lead exceeds 2 x the pooled seed std (a heuristic, not a test)."""
    a, b = best.stats[metric], second.stats[metric]
    diff = abs((a.mean or 0.0) - (b.mean or 0.0))
    pooled = pooled_std(a, b)
    if pooled is None:
        return (
            "no seed replicates (n=1 for both), so the noise is unknown: "
            "rerun the top variants with more seeds"
        )
    real = diff > 2 * pooled
    text = (
        f"difference {fmt(diff, metric)} {'>' if real else '<='} 2 x pooled std "
        f"{fmt(pooled, metric)}: {'likely real' if real else 'within noise'}"
    )
    if min(a.n, b.n) < 2:
        text += " (std from the variant with seed replicates only)"
    return text


def summarize(rows: Sequence[Row], metric: str, higher_is_better: bool = False) -> list[str]:
    """Winner, runner-up with the gap, and the noise verdict, as lines of text."""
    ranked = [r for r in rows if r.rank is not None]
    failed = [r for r in rows if r.status == "failed"]
    lines: list[str] = []
    if not ranked:
        lines.append(f"no winner: no completed run has a value for {metric}")
    else:
        best = ranked[0]
        lines.append(f"winner: {best.label} ({metric} = {fmt_stat(best.stats[metric], metric)})")
    if len(ranked) == 1:
        lines.append("no runner-up: only one variant has a value")
    elif len(ranked) > 1:
        best, second = ranked[0], ranked[1]
        gap = abs((best.value(metric) or 0.0) - (second.value(metric) or 0.0))
        rel = f" ({gap / abs(best.value(metric) or 1.0):.1%})" if best.value(metric) else ""
        lines.append(
            f"runner-up: {second.label} ({metric} = {fmt_stat(second.stats[metric], metric)}); "
            f"gap {fmt(gap, metric)}{rel}, {'higher' if higher_is_better else 'lower'} is better"
        )
        lines.append(noise_verdict(best, second, metric))
    if failed:
        lines.append(f"{len(failed)} of {sum(r.n for r in rows)} runs failed (bottom of the table)")
    return lines


# --------------------------------------------------------------------------- table


def fmt(value: float | None, key: str = "", like: float | None = None) -> str:
    """A number for the table: k/M/B for sizes and throughput, else 4 decimals below 10 and 2
    above; ``like`` formats a std with the decimals of its mean."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    ref = abs(value if like is None else like)
    if key in HUMAN_KEYS or ref >= 1e4:
        return _human(value)
    return f"{value:.4f}" if ref < 10 else f"{value:.2f}"


def _human(value: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def fmt_stat(s: Stat, key: str = "") -> str:
    """``mean ± std`` (just the mean when n < 2 or for sizes); ``-`` when unknown."""
    if s.mean is None:
        return MISSING
    if s.std is None or key in NO_STD_KEYS:
        return fmt(s.mean, key)
    return f"{fmt(s.mean, key)} ± {fmt(s.std, key, like=s.mean)}"


def _truncate(text: str, width: int = ERROR_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(
    rows: Sequence[Row],
    knobs: Sequence[str],
    metric: str,
    *,
    higher_is_better: bool = False,
    width: int | None = None,
) -> Table:
    """The comparison as a Rich table, rows in the given order, the winner in bold green.

    Given the console ``width``, the least important extra columns (wall s, tokens, ...) are
    left out until the table fits; rank, knobs, metric and n are always shown unwrapped."""
    names = short_names(knobs)
    titles = ["#", *(names.get(k, k) for k in knobs or ["variant"]), metric, "n"]
    extras = _fit_extras(rows, knobs, metric, titles, width)
    cells = [_cells(row, knobs, metric, extras) for row in rows]
    runs = sum(r.n for r in rows)
    direction = "higher" if higher_is_better else "lower"
    table = Table(title=f"{metric} ({direction} is better): {runs} runs, {len(rows)} rows")
    for i, title in enumerate([*titles, *(EXTRA_COLUMNS[k] for k in extras)]):
        left = 0 < i < len(titles) - 2
        min_width = max([len(title), *(len(c[i]) for c in cells)])
        table.add_column(
            title, justify="left" if left else "right", no_wrap=True, min_width=min_width
        )
    table.add_column("status", overflow="fold", min_width=6)
    for row, row_cells in zip(rows, cells, strict=True):
        table.add_row(*row_cells, style=_row_style(row))
    return table


def _fit_extras(
    rows: Sequence[Row], knobs: Sequence[str], metric: str, titles: list[str], width: int | None
) -> list[str]:
    """The extra columns that fit in ``width`` (the status column may wrap down to 24)."""
    extras = [k for k in EXTRA_COLUMNS if k != metric]
    while width is not None:
        cells = [_cells(row, knobs, metric, extras) for row in rows]
        all_titles = [*titles, *(EXTRA_COLUMNS[k] for k in extras), "status"]
        widths = [max([len(t), *(len(c[i]) for c in cells)]) for i, t in enumerate(all_titles)]
        widths[-1] = min(widths[-1], 24)
        droppable = [k for k in DROP_ORDER if k in extras]
        if sum(w + 3 for w in widths) + 1 <= width or not droppable:
            break
        extras.remove(droppable[0])
    return extras


def _cells(row: Row, knobs: Sequence[str], metric: str, extras: list[str]) -> list[str]:
    knob_cells = [row.knobs[k] for k in knobs] if knobs else [row.label]
    if row.status == "failed":
        main, status = "FAILED", f"FAILED: {_truncate(row.error or '')}"
    else:
        main = fmt_stat(row.stats[metric], metric)
        status = "ok" if row.rank is not None else f"no {metric}"
    return [
        str(row.rank) if row.rank is not None else MISSING,
        *knob_cells,
        main,
        str(row.n),
        *(fmt_stat(row.stats[key], key) for key in extras),
        status,
    ]


def _row_style(row: Row) -> str:
    if row.rank == 1:
        return "bold green"
    if row.status == "failed":
        return "red"
    return "" if row.rank is not None else "yellow"


# --------------------------------------------------------------------------- plot


def plot(
    rows: Sequence[Row], path: str | Path, metric: str, *, higher_is_better: bool = False
) -> Path:
    """Write a PNG: metric curves vs step (mean and std band over seeds) on the left, the final
    metric per row as horizontal bars, best first, failed rows hatched, on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(14, max(5.0, 1.5 + 0.4 * len(rows))), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_curve, ax_bar = fig.subplots(1, 2, width_ratios=[1.1, 1.0])
    colors = _colors(rows)
    _plot_curves(ax_curve, rows, metric, colors)
    _plot_bars(ax_bar, rows, metric, higher_is_better, colors)
    caption = _caption(rows)
    if caption:
        fig.supxlabel(caption, fontsize=8, color="dimgrey")
    fig.savefig(path)
    return path


def _colors(rows: Sequence[Row]) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) if r.status != "failed" else "grey" for i, r in enumerate(rows)]


def _plot_curves(ax: Any, rows: Sequence[Row], metric: str, colors: list[Any]) -> None:
    columns = {c for row in rows for run in row.runs for c in run.curve}
    column = curve_column(metric, columns) or curve_column("val_loss", columns)
    if column is None:
        ax.text(0.5, 0.5, "no metrics.csv curves", ha="center", transform=ax.transAxes)
        return
    shown = []
    for row, color in zip(rows, colors, strict=True):
        curve = _mean_curve(row.runs, column)
        if curve is None:
            continue
        steps, mean, std = curve
        failed = row.status == "failed"
        note = " (FAILED)" if failed else (f" (n={row.n})" if row.n > 1 else "")
        ax.plot(
            steps, mean, color=color, ls="--" if failed else "-", lw=1.6, label=row.label + note
        )
        if std is not None:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        shown.append((steps, mean, std))
    _focus_ylim(ax, shown)
    band = ", band = ±1 std over seeds" if any(s[2] is not None for s in shown) else ""
    ax.set(xlabel="step", ylabel=column, title=f"{column} vs step{band}")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8)


def _mean_curve(
    runs: Sequence[Run], column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """One run's curve, or the mean and std over runs on their common step range."""
    series = [_series(run.curve.get(column, [])) for run in runs]
    series = [s for s in series if s[0].size]
    if not series:
        return None
    if len(series) == 1:
        return series[0][0], series[0][1], None
    lo, hi = max(s[0][0] for s in series), min(s[0][-1] for s in series)
    grid = np.unique(np.concatenate([s[0] for s in series]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if grid.size == 0:
        return series[0][0], series[0][1], None
    stack = np.stack([np.interp(grid, x, y) for x, y in series])
    return grid, stack.mean(axis=0), stack.std(axis=0, ddof=1)


def _series(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    by_step = {step: value for step, value in points if math.isfinite(value)}
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([by_step[s] for s in steps], dtype=float)


def _focus_ylim(ax: Any, curves: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> None:
    """Zoom the y axis on the last 85% of training, where the variants differ."""
    if not curves:
        return
    last = max(float(steps[-1]) for steps, _, _ in curves)
    ys: list[np.ndarray] = []
    for steps, mean, std in curves:
        keep = steps >= 0.15 * last
        spread = std[keep] if std is not None else 0.0
        ys += [mean[keep] - spread, mean[keep] + spread]
    values = np.concatenate(ys) if ys else np.array([])
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 1.0
        ax.set_ylim(lo - pad, hi + pad)


def _plot_bars(
    ax: Any, rows: Sequence[Row], metric: str, higher_is_better: bool, colors: list[Any]
) -> None:
    ranked = [(i, r) for i, r in enumerate(rows) if r.rank is not None]
    left, right = _bar_limits([(r.value(metric), r.stats[metric].std) for _, r in ranked])
    for i, row in ranked:
        value, std = row.value(metric) or 0.0, row.stats[metric].std
        ax.barh(i, value - left, left=left, xerr=std, color=colors[i], capsize=4)
        text = fmt_stat(row.stats[metric], metric) + (f" (n={row.n})" if row.n > 1 else "")
        ax.text(value + (std or 0.0) + 0.01 * (right - left), i, text, va="center", fontsize=8)
    for i, row in enumerate(rows):
        if row.rank is None:
            ax.barh(i, right - left, left=left, color="whitesmoke", hatch="//", edgecolor="grey")
            word = "FAILED" if row.status == "failed" else f"no {metric}"
            x = left + 0.02 * (right - left)
            ax.text(x, i, word, va="center", fontsize=9, color="dimgrey", weight="bold")
    ax.set_yticks(range(len(rows)), [textwrap.fill(r.label, 38) for r in rows], fontsize=8)
    if rows and rows[0].rank == 1:
        ax.get_yticklabels()[0].set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlim(left, right)
    ax.set_xlabel(metric + (" (axis does not start at 0)" if left > 0 else ""))
    direction = "higher" if higher_is_better else "lower"
    ax.set_title(f"final {metric}, best first ({direction} is better)")
    ax.grid(axis="x", alpha=0.3)


def _bar_limits(values: list[tuple[float | None, float | None]]) -> tuple[float, float]:
    """x range: zoomed in when all values are positive and close together, room for labels."""
    points = [(v, e or 0.0) for v, e in values if v is not None]
    if not points:
        return 0.0, 1.0
    lo, hi = min(v - e for v, e in points), max(v + e for v, e in points)
    span = hi - lo
    zoom = lo > 0 and span < 0.5 * hi
    left = max(0.0, lo - 0.8 * max(span, 0.05 * lo)) if zoom else min(0.0, lo)
    return left, hi + 0.45 * ((hi - left) or 1.0)


def _caption(rows: Sequence[Row], limit: int = 5) -> str:
    failed = [r for r in rows if r.status == "failed"]
    lines = [f"FAILED {r.label}: {_truncate(r.error or '', 90)}" for r in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more failed runs")
    return "\n".join(lines)


# --------------------------------------------------------------------------- output


def to_json(
    rows: Sequence[Row],
    knobs: Sequence[str],
    metric: str,
    *,
    higher_is_better: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """The comparison as JSON-ready data (NaN/inf become null)."""
    winner = next((r.label for r in rows if r.rank == 1), None)
    return {
        "metric": metric,
        "higher_is_better": higher_is_better,
        "knobs": list(knobs),
        "winner": winner,
        "summary": summarize(rows, metric, higher_is_better),
        "rows": [_row_json(row, root) for row in rows],
    }


def _row_json(row: Row, root: Path | None) -> dict[str, Any]:
    return {
        "rank": row.rank,
        "label": row.label,
        "knobs": row.knobs,
        "status": row.status,
        "error": row.error,
        "n": row.n,
        "seeds": [run.seed for run in row.runs],
        "runs": [str(run.dir.relative_to(root) if root else run.dir) for run in row.runs],
        "metrics": {
            key: {"mean": _finite(s.mean), "std": _finite(s.std), "n": s.n}
            for key, s in row.stats.items()
        },
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def compare(
    path: str | Path,
    metric: str = "val_loss",
    out: str | Path | None = None,
    *,
    higher_is_better: bool = False,
    console: Console | None = None,
) -> list[Row]:
    """Load a multirun, rank its variants by ``metric``, write ``compare.png`` and
    ``compare.json`` into ``out`` (default: the multirun dir) and, given a Console, print the
    table and the winner summary. Returns the rows, best first, failed runs last."""
    root = Path(path)
    runs = load_runs(root)
    knobs = varying_knobs(runs)
    rows = aggregate(runs, metric, higher_is_better=higher_is_better, knobs=knobs)
    if console is not None:
        table = render_table(
            rows, knobs, metric, higher_is_better=higher_is_better, width=console.width
        )
        console.print(table)
        for line in summarize(rows, metric, higher_is_better):
            console.print(Text(line, style="bold green" if line.startswith("winner") else ""))
    out_dir = Path(out) if out is not None else root
    data = to_json(rows, knobs, metric, higher_is_better=higher_is_better, root=root)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot(rows, out_dir / "compare.png", metric, higher_is_better=higher_is_better)
        (out_dir / "compare.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise CompareError(f"cannot write to {out_dir}: {exc.strerror or exc}") from exc
    if console is not None:
        console.print(Text(f"wrote {png} and {out_dir / 'compare.json'}", style="dim"))
    return rows


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The CLI arguments of ``src/compare.py``."""
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description="Rank the jobs of a Hydra multirun; write compare.png and compare.json.",
    )
    parser.add_argument(
        "multirun_dir", metavar="MULTIRUN_DIR", help="e.g. multirun/2024-06-01/12-00-00"
    )
    parser.add_argument(
        "--metric",
        default="val_loss",
        help="results.json key or metrics.csv column to rank by (default: val_loss)",
    )
    parser.add_argument("--out", default=None, help="output dir (default: MULTIRUN_DIR)")
    parser.add_argument(
        "--higher-is-better",
        action="store_true",
        help="rank descending (e.g. tokens_per_second, mfu)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, 1 when all runs failed, 2 on bad input (one-line error)."""
    args = build_parser().parse_args(argv)
    console, errors = Console(), Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200  # piped into a log: do not squeeze the table to 80 columns
    try:
        rows = compare(
            args.multirun_dir,
            args.metric,
            args.out,
            higher_is_better=args.higher_is_better,
            console=console,
        )
    except CompareError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    if rows and all(row.status == "failed" for row in rows):
        errors.print(f"error: all {len(rows)} runs failed", markup=False, highlight=False)
        return 1
    return 0
