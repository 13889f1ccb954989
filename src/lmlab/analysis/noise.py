"""The noise verdict on a winner's lead over the runner-up (``noise_verdict``): beyond the
seeds' noise (Welch's t over the two variants' seed means, ``seed_noise``) and, for an eval
metric, beyond the noise of the task's items (``items_stderr``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scipy.special import stdtrit

from lmlab.analysis.stat import Stat, fmt

if TYPE_CHECKING:
    from lmlab.analysis.ranking import Row

SIGNIFICANCE = 0.05  # two-sided level of the noise verdict's t test
STDERR = "_stderr"  # lm-eval's standard error of a metric, logged as eval/<task>/<metric>_stderr


@dataclass
class SeedNoise:
    """The seed noise of the difference of two variants' means: its standard error, the
    degrees of freedom of the t test that weighs it, and how it was found (for the verdict)."""

    stderr: float
    dof: float
    how: str


def seed_noise(a: Stat, b: Stat, metric: str) -> SeedNoise | None:
    """Welch's two-sample t where both variants have seed replicates: the standard error
    sqrt(s_a^2/n_a + s_b^2/n_b) on the Welch-Satterthwaite degrees of freedom, each variant
    with its own std. Student's pooled std assumed one spread for both, and a variant that
    diverges more across seeds broke it: at 2 seeds with four times the std against 5 seeds it
    called 27% of ties 'likely real' at the 5% level (Welch's 11%; equal spreads 5% and 6%).
    Where one variant ran one seed its spread is unknown, so the other's std stands for both
    (Student's t, n_a + n_b - 2 df). None when neither has seed replicates."""
    if a.n < 2 and b.n < 2:
        return None
    level = f"two-sided {100 * SIGNIFICANCE:g}%"
    if min(a.n, b.n) < 2:
        std = (a.std if a.n > 1 else b.std) or 0.0
        dof = a.n + b.n - 2
        how = f"Student's t, {dof} df, {level}; pooled std {fmt(std, metric)}, n={a.n} and {b.n}"
        return SeedNoise(std * math.sqrt(1.0 / a.n + 1.0 / b.n), dof, how)
    var_a, var_b = (a.std or 0.0) ** 2 / a.n, (b.std or 0.0) ** 2 / b.n
    tails = var_a**2 / (a.n - 1) + var_b**2 / (b.n - 1)
    # no spread on either side (tails 0): any lead is beyond it, whatever the df
    dof = (var_a + var_b) ** 2 / tails if tails > 0 else float(a.n + b.n - 2)
    stds = f"std {fmt(a.std, metric)} and {fmt(b.std, metric)}"
    how = f"Welch's t, {dof:.3g} df, {level}; {stds}, n={a.n} and {b.n}"
    return SeedNoise(math.sqrt(var_a + var_b), dof, how)


def items_stderr(best: Row, second: Row, metric: str) -> float | None:
    """The standard error of the two rows' difference in an eval metric from the sampling of
    the task's items: sqrt(se_a^2 + se_b^2), each the mean over the row's runs of
    ``<metric>_stderr``. Seeds score the same items, so averaging them does not shrink it.
    None when the runs did not log it (any metric other than an eval's)."""
    se = [row.stats.get(f"{metric}{STDERR}") for row in (best, second)]
    if any(s is None or s.mean is None for s in se):
        return None
    return math.hypot(*(s.mean for s in se))


def noise_verdict(best: Row, second: Row, metric: str, unfinished: Sequence[Row] = ()) -> str:
    """Whether the winner's lead is real at the two-sided 5% level: beyond the t critical value
    times the standard error of the difference of the seed means (:func:`seed_noise`: Welch's
    test) and, for an eval metric, beyond 2 x the standard error of the difference from the
    items' sampling (:func:`items_stderr`). ``unfinished``: the rows of runs that did not
    complete, which :func:`left_out` names where they are seeds of the two variants."""
    a, b = best.stats[metric], second.stats[metric]
    diff = abs((a.mean or 0.0) - (b.mean or 0.0))
    seeds = seed_noise(a, b, metric)
    items = items_stderr(best, second, metric)
    if seeds is None and items is None:
        return (
            "no seed replicates (n=1 for both), so the noise is unknown: "
            "rerun the top variants with more seeds" + left_out(best, second, metric, unfinished)
        )
    checks = []  # (critical value, standard error, what it is, how it was found)
    if seeds is not None:
        critical = float(stdtrit(seeds.dof, 1.0 - SIGNIFICANCE / 2))
        checks.append((critical, seeds.stderr, "its standard error over seeds", f" ({seeds.how})"))
    if items is not None:
        checks.append((2.0, items, f"the items' standard error ({metric}{STDERR})", ""))
    real = all(diff > k * noise for k, noise, _, _ in checks)
    text = f"difference {fmt(diff, metric)} " + ", ".join(
        f"{'>' if diff > k * noise else '<='} {k:.3g} x {name} {fmt(noise, metric)}{how}"
        for k, noise, name, how in checks
    )
    text += f": {'likely real' if real else 'within noise'}"
    if seeds is None:
        text += " (no seed replicates: the seed noise is unknown)"
    elif min(a.n, b.n) < 2:
        text += " (std from the variant with seed replicates only)"
    return text + left_out(best, second, metric, unfinished)


def left_out(best: Row, second: Row, metric: str, unfinished: Sequence[Row] = ()) -> str:
    """What the verdict does not weigh: runs of the two rows whose ``metric`` is missing or
    not finite (a diverged seed's nan), left out of their means, and the runs of their
    variants that did not complete (``unfinished``: the rows at the bottom of the table; a
    seed that the guard stopped at a nan loss is one), so a variant that diverges or fails
    on some seeds is judged by the seeds that did not; empty when there are none."""
    totals = {
        row.label: row.n + sum(other.n for other in _same_variant(row, unfinished))
        for row in (best, second)
    }
    lost = [
        f"{row.n - row.count(metric)} of the {totals[row.label]} runs of {row.label}"
        for row in (best, second)
        if row.count(metric) < row.n
    ]
    stopped = [
        f"{count} of the {totals[row.label]} runs of {row.label}"
        for row in (best, second)
        if (count := sum(other.n for other in _same_variant(row, unfinished)))
    ]
    text = ""
    if lost:
        text += (
            f"; left out for a missing or non-finite {metric} (a diverged seed's nan, say): "
            f"{' and '.join(lost)}: the verdict is over the other runs and says nothing of how "
            "often a variant diverges"
        )
    if stopped:
        text += (
            f"; left out as not completed (the bottom of the table): {' and '.join(stopped)}: "
            "the verdict is over the runs that completed and says nothing of how often a "
            "variant fails"
        )
    return text


def _same_variant(row: Row, others: Sequence[Row]) -> list[Row]:
    """The rows of ``others`` with ``row``'s knob values (none where no knob names them)."""
    return [other for other in others if row.knobs and other.knobs == row.knobs]
