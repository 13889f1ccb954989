"""Rank the variants of a multirun: runs differing only in seed become one :class:`Row` (mean,
sample std, n), rows are ranked by a metric, and the winner's lead gets a noise verdict.
Also how the numbers print (``fmt``, ``fmt_stat``), shared by the table, the plot and the
summary lines."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import stdtrit

from lmlab.analysis.comparable import (
    eval_notes,
    example_notes,
    item_notes,
    objective_differences,
    tokenizer_notes,
    validation_notes,
)
from lmlab.analysis.compute import compute_notes
from lmlab.analysis.multirun import (
    MISSING,
    CompareError,
    Run,
    check_metric,
    knob_value,
    result_key,
    run_value,
    variant_label,
    varying_knobs,
)
from lmlab.analysis.runs import KILLED, RUNNING, STOPPED

# Columns shown next to the chosen metric (results.json keys), with their table titles.
EXTRA_COLUMNS: dict[str, str] = {
    "val_loss": "val_loss",
    "val_perplexity": "val ppl",
    "val_bits_per_byte": "val bpb",
    "params": "params",
    "active_params": "active",  # shown only where a run's differ from params (a MoE)
    "tokens": "tokens",
    "flops": "flops",  # 6 N D trained, N as budget.params counts
    "tokens_per_second": "tok/s",
    "wall_seconds": "wall s",
}
# Shown with k/M/B suffixes.
SIZE_KEYS = frozenset({"params", "active_params", "non_embedding_params", "tokens", "flops"})
HUMAN_KEYS = SIZE_KEYS | {"tokens_per_second"}
# Fixed by the config, not by the seed: no std shown.
NO_STD_KEYS = SIZE_KEYS
ERROR_WIDTH = 60
SIGNIFICANCE = 0.05  # two-sided level of the noise verdict's t test
STDERR = "_stderr"  # lm-eval's standard error of a metric, logged as eval/<task>/<metric>_stderr


@dataclass
class Stat:
    """Mean, sample standard deviation (None for n < 2) and count of the finite values."""

    mean: float | None
    std: float | None
    n: int


@dataclass
class Row:
    """One variant (a group of runs differing only in seed), or one run that did not complete
    (failed, or not finished: ``Run.state``)."""

    label: str
    knobs: dict[str, str]
    runs: list[Run]
    stats: dict[str, Stat]
    status: str  # "completed" | "failed"
    error: str | None = None
    rank: int | None = None
    copies: list[Run] = field(default_factory=list)
    """Runs of this variant with a seed already in ``runs`` (copied or repeated folders):
    one seed is one replicate, so they are left out of the statistics."""

    @property
    def n(self) -> int:
        """Number of runs (seeds) in this row."""
        return len(self.runs)

    def count(self, metric: str) -> int:
        """The number of values ``metric``'s mean ± std is over: the row's runs with a finite
        value (:func:`dropped_notes` names the others); a failed row's one run."""
        if self.status == "failed":
            return self.n
        stat = self.stats.get(metric)
        return 0 if stat is None else stat.n

    def value(self, metric: str) -> float | None:
        """The mean of ``metric`` over the row's runs, None when unknown."""
        stat = self.stats.get(metric)
        return None if stat is None else stat.mean


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
    if not all(run.failed for run in runs):  # runs that did not complete left no metrics
        check_metric(runs, metric)
    knobs = list(varying_knobs(runs) if knobs is None else knobs)
    # an eval metric's standard error over its items, where the runs logged it (noise_verdict)
    keys = list(dict.fromkeys([metric, f"{metric}{STDERR}", *EXTRA_COLUMNS]))
    # variant -> seed -> its first run: a seed counts once (copies would fake a tight spread)
    groups: dict[tuple[str, ...], dict[str, Run]] = {}
    copies: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        if not run.failed:
            # a run without a config (a results.json alone, as docs/isoflop ships them) names
            # no knob: its variant is unknown, so it is a row of its own, never another's copy
            unknown = (str(run.dir),) if unknown_variant(run) else ()
            variant = tuple(knob_value(run, k) for k in knobs) + unknown
            first = groups.setdefault(variant, {}).setdefault(repr(run.seed), run)
            if first is not run:
                copies.setdefault(variant, []).append(run)
    # a run of unknown variant is named by its folder below what every run shares (``a/0``
    # and ``b/0`` where two sweeps' folders are compared), not by its own name alone
    root = Path(os.path.commonpath([run.dir for run in runs])) if len(runs) > 1 else None
    rows = [
        _row(list(group.values()), knobs, keys, copies=copies.get(variant, []), root=root)
        for variant, group in groups.items()
    ]
    seeds_vary = len({repr(run.seed) for run in runs}) > 1
    rows += [_row([run], knobs, keys, seeds_vary, root=root) for run in runs if run.failed]
    # losses of different objectives are listed in order, unranked (summarize says why)
    return _rank(rows, metric, higher_is_better, rank=not objective_differences(runs, metric))


def _row(
    runs: list[Run],
    knobs: list[str],
    keys: list[str],
    seeds_vary: bool = False,
    copies: list[Run] | None = None,
    root: Path | None = None,
) -> Row:
    values = {k: knob_value(runs[0], k) for k in knobs}
    failed = runs[0].failed
    label = run_folder(runs[0], root) if unknown_variant(runs[0]) else variant_label(values)
    if failed and seeds_vary:
        label += f" (seed={runs[0].seed})"
    return Row(
        label=label,
        knobs=values,
        runs=runs,
        stats={key: stat(run_value(run, key) for run in runs) for key in keys},
        status="failed" if failed else "completed",
        error=runs[0].error if failed else None,
        copies=copies or [],
    )


def _rank(rows: list[Row], metric: str, higher_is_better: bool, rank: bool = True) -> list[Row]:
    ranked = [r for r in rows if r.status == "completed" and r.value(metric) is not None]
    sign = -1.0 if higher_is_better else 1.0
    ranked.sort(key=lambda r: (sign * (r.value(metric) or 0.0), r.label))
    for i, row in enumerate(ranked if rank else [], start=1):  # a tie shares its rank: 1, 1, 3
        tied = i > 1 and ranked[i - 2].value(metric) == row.value(metric)
        row.rank = ranked[i - 2].rank if tied else i
    unranked = [r for r in rows if r.status == "completed" and r.value(metric) is None]
    return ranked + unranked + [r for r in rows if r.status == "failed"]


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


def noise_verdict(best: Row, second: Row, metric: str) -> str:
    """Whether the winner's lead is real at the two-sided 5% level: beyond the t critical value
    times the standard error of the difference of the seed means (:func:`seed_noise`: Welch's
    test) and, for an eval metric, beyond 2 x the standard error of the difference from the
    items' sampling (:func:`items_stderr`)."""
    a, b = best.stats[metric], second.stats[metric]
    diff = abs((a.mean or 0.0) - (b.mean or 0.0))
    seeds = seed_noise(a, b, metric)
    items = items_stderr(best, second, metric)
    if seeds is None and items is None:
        return (
            "no seed replicates (n=1 for both), so the noise is unknown: "
            "rerun the top variants with more seeds" + left_out(best, second, metric)
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
    return text + left_out(best, second, metric)


def left_out(best: Row, second: Row, metric: str) -> str:
    """What the verdict does not weigh: runs of the two rows whose ``metric`` is missing or
    not finite (a diverged seed's nan), left out of their means, so a variant that diverges
    on some seeds is judged by the seeds that did not; empty when there are none."""
    lost = [
        f"{row.n - row.count(metric)} of the {row.n} runs of {row.label}"
        for row in (best, second)
        if row.count(metric) < row.n
    ]
    if not lost:
        return ""
    return (
        f"; left out for a missing or non-finite {metric} (a diverged seed's nan, say): "
        f"{' and '.join(lost)}: the verdict is over the other runs and says nothing of how "
        "often a variant diverges"
    )


def summarize(
    rows: Sequence[Row], metric: str, higher_is_better: bool = False, root: Path | None = None
) -> list[str]:
    """Winner, runner-up with the gap, and the noise verdict, as lines of text; run folders
    named relative to ``root`` (the compared folder), else by their own names."""
    ranked = [r for r in rows if r.rank is not None]
    failed = [r for r in rows if r.status == "failed"]
    lines: list[str] = []
    differ = objective_differences([run for row in rows for run in row.runs], metric)
    if differ:
        lines.append(
            f"no winner: the runs differ in {'; '.join(differ)}, so their {metric} measures "
            "different objectives (next-token, masked-token, span-corruption or task loss) and "
            "does not rank them; compare runs of one objective, or rank by a downstream eval "
            "(--metric eval/<task>/<metric>)"
        )
    elif not ranked:
        lines.append(f"no winner: no completed run has a value for {metric}")
    elif len(top := [r for r in ranked if r.rank == 1]) > 1:
        lines.append(
            f"no winner: {len(top)} variants tie at {metric} = "
            f"{fmt_stat(top[0].stats[metric], metric)}: {', '.join(r.label for r in top)}"
        )
    else:
        best = ranked[0]
        lines.append(f"winner: {best.label} ({metric} = {fmt_stat(best.stats[metric], metric)})")
    if len(ranked) == 1:
        lines.append("no runner-up: only one variant has a value")
    elif len(ranked) > 1 and ranked[1].rank != 1:
        best, second = ranked[0], ranked[1]
        gap = abs((best.value(metric) or 0.0) - (second.value(metric) or 0.0))
        # two significant digits: a gap of 0.044% is not "0.0%"
        share = 100 * gap / abs(best.value(metric) or 1.0)
        rel = f" ({share:.2g}%)" if best.value(metric) else ""
        lines.append(
            f"runner-up: {second.label} ({metric} = {fmt_stat(second.stats[metric], metric)}); "
            f"gap {fmt(gap, metric)}{rel}, {'higher' if higher_is_better else 'lower'} is better"
        )
        lines.append(noise_verdict(best, second, metric))
    total = sum(r.n for r in rows)
    states = Counter(unfinished_state(r.runs[0]) for r in failed)
    for state, what in [
        ("failed", "failed (bottom of the table)"),
        (
            STOPPED[0],
            "stopped before their end, preempted or interrupted (bottom of the table): "
            "resume=true (resume=auto for a sweep) finishes them",
        ),
        (RUNNING, "still running (bottom of the table): compare again when they end"),
        (
            KILLED,
            "killed before their end, no live process holds their lock (bottom of the table): "
            "resume=auto continues them",
        ),
        (
            AFRESH,
            "stopped or killed before their first checkpoint (bottom of the table): there is "
            "nothing to continue, resume=auto starts them again",
        ),
    ]:
        if states[state]:
            lines.append(f"{states[state]} of {total} runs {what}")
    for row in rows:
        if row.copies:
            lines.append(
                f"note: {row.label}: {len(row.copies)} more run(s) with a seed already counted "
                f"({', '.join(run_folder(r, root) for r in row.copies)}): copies or repeats of one "
                "run are not seed replicates, so each seed counts once"
            )
    lines += tokenizer_notes([run for row in rows for run in row.runs], metric)
    lines += example_notes([run for row in rows for run in row.runs], metric)
    lines += item_notes([(row.label, run) for row in rows for run in row.runs], metric)
    lines += validation_notes([(row.label, run) for row in rows for run in row.runs], metric)
    lines += dropped_notes(rows, metric, root)
    lines += eval_notes([run for row in rows for run in row.runs], metric)
    lines += compute_notes([(row.label, run) for row in rows for run in row.runs])
    return lines


# a run stopped or killed before its first checkpoint: a resume starts it again
AFRESH = "afresh"


def unfinished_state(run: Run) -> str:
    """How ``summarize`` counts a run that did not complete: its state (a stop's as
    ``preempted``), or ``AFRESH`` for one stopped or killed with no checkpoint to continue."""
    state = STOPPED[0] if run.stopped else run.state
    return AFRESH if state in (STOPPED[0], KILLED) and not run.checkpointed else state


def unknown_variant(run: Run) -> bool:
    """Whether nothing names what the run trained: no config, no overrides."""
    return not (run.config or run.overrides)


def run_folder(run: Run, root: Path | None = None) -> str:
    """A run's folder as the user names it: relative to the compared folder ``root`` (``a/0``
    when a parent of several sweeps is compared), else its own name."""
    if root is not None and root in run.dir.parents:
        return str(run.dir.relative_to(root))
    return run.dir.name


def unranked_reason(row: Row, metric: str) -> str:
    """Why a completed row has no rank: it has no value of ``metric``, or its runs' objective
    is not the other rows' (another objective: :func:`comparable.objective_differences`)."""
    if row.value(metric) is None:
        return f"no {metric}"
    return "unranked: objectives differ"


def dropped_notes(rows: Sequence[Row], metric: str, root: Path | None = None) -> list[str]:
    """A note for each completed row where some run's ``metric`` is missing or not finite (a
    diverged run's nan, say), naming the runs: the row's mean ± std and n are over the others,
    or the row has no value. A row where every run lacks the metric (another objective's, or
    an eval its runs did not run) gets none: the table says ``no <metric>``."""
    lines = []
    for row in rows:
        if row.status != "completed":
            continue
        values = [(run, run_value(run, metric)) for run in row.runs]
        dropped = [(run, v) for run, v in values if v is None or not math.isfinite(v)]
        kept = len(values) - len(dropped)
        if not dropped or (not kept and all(v is None for _, v in dropped)):
            continue
        which = ", ".join(
            f"{run_folder(run, root)}: {'missing' if v is None else v}" for run, v in dropped
        )
        over = f"over the other {kept}" if kept else f"none: the row has no {metric}"
        lines.append(
            f"note: {row.label}: {metric} of {len(dropped)} of its {len(values)} runs is missing "
            f"or not finite ({which}), left out of its mean ± std and n, which are {over}"
        )
    return lines


# --------------------------------------------------------------------------- table


def fmt(value: float | None, key: str = "", like: float | None = None) -> str:
    """A number for the table: k/M/B for sizes and throughput, FLOPs as 1.40e11, wall time
    to a tenth of a second, else 4 decimals below 10 and 2 above, and 3 significant digits
    below 0.001 (a learning rate of 3e-05 read 0.0000); ``like`` formats a std with the
    decimals of its mean."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    key = result_key(key)  # perf/tokens_per_second as tokens_per_second
    ref = abs(value if like is None else like)
    if key == "flops":  # 1.40e11, not 140B (which reads as bytes)
        return f"{value:.3g}".replace("e+", "e")
    if key in HUMAN_KEYS or ref >= 1e4:
        return _human(value)
    if key == "wall_seconds":  # seconds to a tenth: 3.0, not 2.9951
        return f"{value:.1f}"
    if 0 < ref < 1e-3:  # 4 decimals would leave one significant digit or none
        return f"{value:.3g}"
    return f"{value:.4f}" if ref < 10 else f"{value:.2f}"


def _human(value: float) -> str:
    if abs(value) >= 1e15:  # past the units: a diverged run's perplexity, say
        return f"{value:.3g}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def fmt_stat(s: Stat, key: str = "") -> str:
    """``mean ± std`` (just the mean when n < 2 or for sizes); ``-`` when unknown."""
    if s.mean is None:
        return MISSING
    if s.std is None or result_key(key) in NO_STD_KEYS:
        return fmt(s.mean, key)
    return f"{fmt(s.mean, key)} ± {fmt(s.std, key, like=s.mean)}"


def truncate(text: str, width: int = ERROR_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
