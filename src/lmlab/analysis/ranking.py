"""Rank the variants of a multirun: runs differing only in seed become one :class:`Row` (mean,
sample std, n: ``lmlab.analysis.stat``), rows are ranked by a metric, and the summary names
the winner, the runner-up and the noise verdict on the lead (``lmlab.analysis.noise``)."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.analysis.comparable import (
    eval_notes,
    example_notes,
    item_notes,
    objective_differences,
    precision_notes,
    tokenizer_notes,
    validation_notes,
)
from lmlab.analysis.compute import compute_notes
from lmlab.analysis.job_state import KILLED, RUNNING, STOPPED
from lmlab.analysis.multirun import (
    CompareError,
    Run,
    check_metric,
    knob_value,
    run_value,
    variant_label,
    varying_knobs,
)
from lmlab.analysis.noise import STDERR, noise_verdict
from lmlab.analysis.stat import Stat, fmt, fmt_stat, stat

# Columns shown next to the chosen metric (results.json keys), with their table titles.
EXTRA_COLUMNS: dict[str, str] = {
    "val_loss": "val_loss",
    "val_perplexity": "val ppl",
    "val_bits_per_byte": "val bpb",
    "params": "params",
    "active_params": "active",  # these three only where a run's differ from params (a MoE)
    "train_aux_loss": "aux loss",  # the router losses at the last step (unweighted)
    "train_z_loss": "z loss",
    "tokens": "tokens",
    "flops": "flops",  # 6 N D trained, N as budget.params counts
    "tokens_per_second": "tok/s",
    "wall_seconds": "wall s",
}


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
        lines.append(noise_verdict(best, second, metric, failed))
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
    # a run folded in as a copy may differ in how it was evaluated (a sweep over eval.limit or
    # eval.apply_chat_template: eval settings are no knobs): its items, shots and format count
    scored = [(row.label, run) for row in rows for run in (*row.runs, *row.copies)]
    lines += item_notes(scored, metric)
    lines += validation_notes([(row.label, run) for row in rows for run in row.runs], metric)
    lines += precision_notes([(row.label, run) for row in rows for run in row.runs], metric)
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
