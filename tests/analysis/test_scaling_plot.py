"""Tests for lmlab.analysis.scaling_plot: what scaling.png draws, read from matplotlib's objects
(lines, styles, labels), not from pixels, for the shipped sweep (docs/isoflop) and synthetic
ones."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from test_scaling import write_runs
from test_scaling_bootstrap import OFFSETS, TARGET, sweep, true_n_opt

from lmlab.analysis.scaling import analyze
from lmlab.config import CONF_DIR

SHIPPED = CONF_DIR.parent / "docs" / "isoflop"


def drawn(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> tuple[dict[str, Any], Axes, Axes]:
    """``analyze``'s result and scaling.png's two panels (profiles, frontier)."""
    figures: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    result = analyze(root, out=tmp_path / root.name, **kwargs)  # a folder per sweep drawn
    profiles, frontier = figures[0].axes
    return result, profiles, frontier


def parabola_line(ax: Axes, coeffs: list[float]) -> Line2D:
    """The line of ``ax`` that draws the parabola ``coeffs`` in log10 N (the same arithmetic
    on the same points: equal to the last bit)."""
    (line,) = [
        ln
        for ln in ax.get_lines()
        if len(ln.get_xdata()) > 2
        and np.array_equal(ln.get_ydata(), np.polyval(coeffs, np.log10(ln.get_xdata())))
    ]
    return line


def test_a_parabola_without_a_minimum_is_not_drawn_as_a_fitted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the shipped sweep the curvature gate finds no minimum at 2e12 and 2e13, and approach 2
    leaves them out, yet their parabolas were drawn solid like 6e12's, whose minimum it fits:
    they are dotted, and the legend says what a dotted parabola is."""
    result, profiles, _ = drawn(SHIPPED, tmp_path, monkeypatch, target_flops=1e15)
    budgets = result["approach2"]["budgets"]
    fitted = [parabola_line(profiles, b["coeffs"]) for b in budgets if "N_opt" in b]
    flat = [parabola_line(profiles, b["coeffs"]) for b in budgets if "N_opt" not in b]
    assert [b["status"].startswith("flat, no minimum") for b in budgets] == [True, False, True]
    assert [ln.get_linestyle() for ln in fitted] == ["-"]
    assert [ln.get_linestyle() for ln in flat] == [":", ":"]
    legend = profiles.get_legend()
    styles = {
        text.get_text(): handle.get_linestyle()
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
        if isinstance(handle, Line2D)
    }
    assert styles["parabola, no minimum (not fitted)"] == ":"
    assert styles["parabola in log N (approach 2)"] == "-"


def test_approach_2_s_bootstrap_intervals_are_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scaling.json held approach 2's 90% intervals (``approach2.interval``) but the figure
    drew the law and the target's N_opt as if exact: the legend now gives a's interval, and
    the target's N_opt has a bar from its interval's low to its high end, annotated."""
    root = write_runs(tmp_path / "sweep", sweep(np.random.default_rng(3)))
    result, _, frontier = drawn(root, tmp_path, monkeypatch, target_flops=TARGET)
    interval = result["approach2"]["interval"]
    low, high = result["target"]["approach2"]["N_opt_interval"]
    assert interval["N_opt"] == [low, high] and low < high
    (bar,) = [ln for ln in frontier.get_lines() if "bootstrap interval" in ln.get_label()]
    assert bar.get_label() == "approach 2 at target: 90% bootstrap interval"
    assert list(bar.get_xdata()) == [TARGET, TARGET]
    assert list(bar.get_ydata()) == [low, high]
    a_low, a_high = interval["a"]
    (law,) = [ln for ln in frontier.get_lines() if ln.get_label().startswith("approach 2: ")]
    assert law.get_label().endswith(f", a in [{a_low:.3f}, {a_high:.3f}] (90%)")
    n_opt = result["target"]["approach2"]["N_opt"]
    texts = [t.get_text() for t in frontier.texts]
    assert f"{n_opt:.3g} [{low:.3g}, {high:.3g}]" in texts


def test_no_interval_no_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the bootstrap gives no interval (every budget 3 sizes, one run each: nothing
    measures the noise), the figure draws none and the law's label claims none."""
    runs = sweep(np.random.default_rng(3))
    three = {round(o, 6) for o in OFFSETS[2:5]}
    runs = [r for r in runs if round(math.log10(r["params"] / true_n_opt(r["flops"])), 6) in three]
    root = write_runs(tmp_path / "sweep", runs)
    result, _, frontier = drawn(root, tmp_path, monkeypatch, target_flops=TARGET)
    assert result["approach2"]["interval"]["N_opt"] is None
    assert not [ln for ln in frontier.get_lines() if "interval" in ln.get_label()]
    (law,) = [ln for ln in frontier.get_lines() if ln.get_label().startswith("approach 2: ")]
    assert ", a in [" not in law.get_label()


EXTRAPOLATED = "vertex outside the sampled N (extrapolated)"


def test_an_optimum_outside_the_sampled_n_is_drawn_hollow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped sweep's only minimum, at 6e12, lies at N=9.3e4, below its smallest run
    (1.5e5): the fit calls it extrapolated, and the figure drew it as a filled star like an
    optimum among the runs. It is a hollow star in both panels, named in their legends; a
    sweep whose vertices all lie among its runs draws none."""
    result, profiles, frontier = drawn(SHIPPED, tmp_path, monkeypatch, target_flops=1e15)
    (outside,) = [b for b in result["approach2"]["budgets"] if b.get("extrapolated")]
    assert outside["N_opt"] < min(outside["N"])
    for ax, xy in ((profiles, ("N_opt", "loss_min")), (frontier, ("flops", "N_opt"))):
        (star,) = [ln for ln in ax.get_lines() if ln.get_label() == EXTRAPOLATED]
        assert (star.get_marker(), star.get_markerfacecolor()) == ("*", "white")
        assert (list(star.get_xdata()), list(star.get_ydata())) == (
            [outside[xy[0]]],
            [outside[xy[1]]],
        )
    root = write_runs(tmp_path / "sweep", sweep(np.random.default_rng(3)))
    result, profiles, frontier = drawn(root, tmp_path, monkeypatch, target_flops=TARGET)
    assert not any(b.get("extrapolated") for b in result["approach2"]["budgets"])
    for ax in (profiles, frontier):
        assert not [ln for ln in ax.get_lines() if ln.get_label() == EXTRAPOLATED]


def test_the_title_says_approach_2_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped sweep has one budget with a minimum, and approach 2 is skipped: the title
    named approach 3's law alone, as if approach 2 had not been tried."""
    figures: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    result = analyze(SHIPPED, out=tmp_path / "shipped", target_flops=1e15)
    assert result["approach2"]["status"] == "skipped"
    title = figures[0].get_suptitle()
    assert title.startswith("Chinchilla scaling fits   approach 3: L = ")
    assert title.endswith("|   approach 2: skipped, 1 of 3 budgets with a minimum (needs 2)")
