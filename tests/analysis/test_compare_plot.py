"""Tests for lmlab.analysis.compare_plot: what compare.png draws, read from matplotlib's objects
(lines, labels), not from pixels, on the synthetic multirun directories of test_compare."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from test_compare import JOBS, make_multirun

from lmlab.analysis import compare_plot, ranking
from lmlab.analysis.run_files import optimizer_steps
from lmlab.analysis.runs import load_runs


def drawn_axes(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str = "val_loss"
) -> tuple[Axes, Axes]:
    """compare.png's two panels (curves, bars) as ``compare`` draws them for ``root``."""
    drawn: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    rows = ranking.aggregate(load_runs(root), metric)
    compare_plot.plot(rows, tmp_path / "compare.png", metric)
    curves, bars = drawn[0].axes
    return curves, bars


def diverge(job: Path, from_step: int) -> None:
    """The run in ``job`` diverged at ``from_step``: its losses nan from there on, in
    metrics.csv and in results.json, as a run with ``guard.mode=off`` leaves them."""
    path = job / "csv" / "metrics.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if float(row["step"]) >= from_step:
            row.update({k: "nan" for k, v in row.items() if k.startswith(("train/", "val/")) and v})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    results = json.loads((job / "results.json").read_text())
    for key in ("val_loss", "best_val_loss", "val_perplexity", "val_bits_per_byte", "train_loss"):
        results[key] = float("nan")
    (job / "results.json").write_text(json.dumps(results))


def test_a_diverged_seed_is_left_out_of_its_variant_s_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 3 of pre/gelu diverges at step 120. Its finite part alone cut the variant's mean
    curve short at step 100 (where the bars show the final value of the other two seeds), and
    the legend said n=3 beside the bar's n=2: the curve is now the mean of the two finite
    seeds over the whole run, and the legend counts them and the one left out."""
    root = make_multirun(tmp_path / "sweep", JOBS[:4])
    diverge(root / "2", from_step=120)
    curves, bars = drawn_axes(root, tmp_path, monkeypatch)
    (line,) = [ln for ln in curves.get_lines() if "activation=gelu" in ln.get_label()]
    (other,) = [ln for ln in curves.get_lines() if "activation=relu" in ln.get_label()]
    assert line.get_label() == "norm_placement=pre, activation=gelu (n=2, 1 non-finite left out)"
    finals = [3.10, 3.12]  # seeds 1 and 2's val/loss at the last step
    assert line.get_xdata()[-1] == other.get_xdata()[-1]  # to the end of the run
    # the mean of two float64 values: within one rounding (2.2e-16) of their exact mean
    assert line.get_ydata()[-1] == pytest.approx(sum(finals) / 2, rel=2.3e-16)
    bar_texts = [t.get_text() for t in bars.texts]
    assert any(t.endswith("(n=2)") for t in bar_texts), bar_texts


def test_a_variant_whose_seeds_all_diverged_keeps_the_steps_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where every seed diverged there is no finite curve to prefer: the mean of their finite
    parts is drawn up to the divergence, over all of them."""
    root = make_multirun(tmp_path / "sweep", JOBS[:4])
    for job in ("0", "1", "2"):
        diverge(root / job, from_step=120)
    curves, _ = drawn_axes(root, tmp_path, monkeypatch)
    (line,) = [ln for ln in curves.get_lines() if "activation=gelu" in ln.get_label()]
    assert line.get_label().endswith("(n=3)")
    assert line.get_xdata()[-1] < 120


def test_the_curves_x_axis_is_optimizer_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The curves were drawn at metrics.csv's ``step``, Lightning's logging step, one less than
    the optimizer steps behind it (a 12-step run's last validation at 11), under an axis
    labelled "step": they are drawn at the optimizer steps, and the axis says so."""
    root = make_multirun(tmp_path / "sweep", JOBS[3:5])
    curves, _ = drawn_axes(root, tmp_path, monkeypatch)
    logged = [step for step, _ in load_runs(root)[0].curve["val/loss"]]
    line = curves.get_lines()[0]
    assert list(line.get_xdata()) == [log + 1 for log in logged]
    assert curves.get_xlabel() == "optimizer steps"


@pytest.mark.parametrize("steps", [1, 12, 300])
def test_optimizer_steps_inverts_the_trainer_s_logging_step(steps: int) -> None:
    """analysis does not import train: the two one-line conversions are held together here."""
    from lmlab.train.loggers import log_step

    assert optimizer_steps(log_step(steps)) == steps
