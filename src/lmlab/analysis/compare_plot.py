"""``compare.png``: metric curves vs step (mean and std band over seeds) and the final metric per
variant as bars, best first, failed runs hatched. matplotlib is imported when a plot is drawn."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.analysis.multirun import Run, curve_column
from lmlab.analysis.ranking import Row, unranked_reason
from lmlab.analysis.run_files import optimizer_steps
from lmlab.analysis.stat import fmt_stat, truncate
from lmlab.files import save_figure

CREATOR = "lmlab compare"  # compare.png's mark: a file without it is not replaced


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
    return save_figure(fig, path, metadata={"Creator": CREATOR})  # what compare may replace


def _colors(rows: Sequence[Row]) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) if r.status != "failed" else "grey" for i, r in enumerate(rows)]


def _plot_curves(ax: Any, rows: Sequence[Row], metric: str, colors: list[Any]) -> None:
    columns = {c for row in rows for run in row.runs for c in run.curve}
    column = curve_column(metric, columns) or curve_column("val_loss", columns)
    if column is not None and all(
        len(run.curve.get(column, [])) <= 1 for row in rows for run in row.runs
    ):
        # measured once per run (a sweep that validates at the end): no curve to draw, so the
        # training loss's, whose final values the bars do not show
        column = curve_column("train_loss", columns) or column
    if column is None:
        ax.text(0.5, 0.5, "no metrics.csv curves", ha="center", transform=ax.transAxes)
        return
    shown = []
    for row, color in zip(rows, colors, strict=True):
        curve = _mean_curve(row.runs, column)
        if curve is None:
            continue
        steps, mean, std, n, left_out = curve
        failed = row.status == "failed"
        note = f" (n={n}" + (f", {left_out} non-finite left out" if left_out else "") + ")"
        note = note if n > 1 or left_out else ""
        if failed:
            note = f" ({row.runs[0].state.upper()})"
        ax.plot(
            steps, mean, color=color, ls="--" if failed else "-", lw=1.6, label=row.label + note
        )
        if std is not None:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        shown.append((steps, mean, std))
    _focus_ylim(ax, shown)
    band = ", band = ±1 std over seeds" if any(s[2] is not None for s in shown) else ""
    ax.set(xlabel="optimizer steps", ylabel=column, title=f"{column} vs step{band}")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8)


def _mean_curve(
    runs: Sequence[Run], column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int] | None:
    """One run's curve, or the mean and std over runs on their common step range; with the
    number of runs it is over and of those left out. A run whose curve turns non-finite (a
    diverged seed's nan) is left out where another run's stays finite, as the bars and the
    table leave its nan out: its finite part alone cut the mean's steps short at the
    divergence and pulled the mean off the other runs'."""
    points = [run.curve.get(column, []) for run in runs]
    points = [p for p in points if p]
    finite = [p for p in points if all(math.isfinite(v) for _, v in p)]
    kept = finite or points  # every run diverged: the steps before it, shared
    series = [s for s in (_series(p) for p in kept) if s[0].size]
    if not series:
        return None
    left_out = len(points) - len(kept)
    if len(series) == 1:
        return series[0][0], series[0][1], None, 1, left_out
    lo, hi = max(s[0][0] for s in series), min(s[0][-1] for s in series)
    grid = np.unique(np.concatenate([s[0] for s in series]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if grid.size == 0:
        return series[0][0], series[0][1], None, 1, left_out
    stack = np.stack([np.interp(grid, x, y) for x, y in series])
    return grid, stack.mean(axis=0), stack.std(axis=0, ddof=1), len(series), left_out


def _series(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """A metrics.csv column's finite values by optimizer step (not Lightning's logging step,
    one less), the last of a step's rows counting."""
    by_step = {optimizer_steps(step): value for step, value in points if math.isfinite(value)}
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
        n = row.count(metric)  # the values the mean ± std is over, as the table's n
        text = fmt_stat(row.stats[metric], metric) + (f" (n={n})" if n > 1 else "")
        ax.text(value + (std or 0.0) + 0.01 * (right - left), i, text, va="center", fontsize=8)
    for i, row in enumerate(rows):
        if row.rank is None:
            ax.barh(i, right - left, left=left, color="whitesmoke", hatch="//", edgecolor="grey")
            failed = row.status == "failed"
            word = row.runs[0].state.upper() if failed else unranked_reason(row, metric)
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
    lines = [
        f"{r.runs[0].state.upper()} {r.label}: {truncate(r.error or '', 90)}"
        for r in failed[:limit]
    ]
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more runs that did not complete")
    return "\n".join(lines)
