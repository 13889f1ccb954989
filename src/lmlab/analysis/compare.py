"""Compare the jobs of a Hydra multirun: a ranked table, a winner with a noise verdict, a plot.

Reading the runs is :mod:`lmlab.analysis.runs`, their knobs :mod:`lmlab.analysis.multirun`,
grouping and ranking them :mod:`lmlab.analysis.ranking`, the figure
:mod:`lmlab.analysis.compare_plot`; this module renders the table and writes ``compare.json``
(the command line is :mod:`lmlab.cli.compare`). Nothing here prints except through the
Console :func:`compare` is given.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lmlab.analysis.compare_plot import CREATOR, plot
from lmlab.analysis.compute import is_moe
from lmlab.analysis.multirun import MISSING, CompareError, short_names, varying_knobs
from lmlab.analysis.multirun import higher_is_better as default_direction
from lmlab.analysis.outputs import Outputs
from lmlab.analysis.ranking import (
    EXTRA_COLUMNS,
    Row,
    aggregate,
    run_folder,
    summarize,
    unranked_reason,
)
from lmlab.analysis.runs import dry_runs, load_runs, not_runs_note
from lmlab.analysis.stat import fmt_stat, truncate
from lmlab.analysis.sweep_grid import unlaunched_jobs
from lmlab.config.local_paths import source_name
from lmlab.files import write_text

# compare.json's top-level keys (``to_json``): a file holding them all is compare's own.
JSON_KEYS = frozenset({"metric", "higher_is_better", "knobs", "winner", "summary", "rows"})
# a compare.png without compare's mark is a user's, even beside compare's own compare.json
OUTPUTS = Outputs("compare", JSON_KEYS, CREATOR)
# Extra columns left out first when the terminal is narrow.
DROP_ORDER = ("wall_seconds", "train_z_loss", "train_aux_loss", "tokens", "flops", "params")
DROP_ORDER += ("active_params", "val_bits_per_byte", "val_perplexity", "tokens_per_second")
DROP_ORDER += ("val_loss",)
# Extra columns of a Mixture of Experts only: a dense run's active count repeats its params,
# and it has no router losses.
MOE_COLUMNS = frozenset({"active_params", "train_aux_loss", "train_z_loss"})

# --------------------------------------------------------------------------- table


def render_table(
    rows: Sequence[Row],
    knobs: Sequence[str],
    metric: str,
    *,
    higher_is_better: bool = False,
    width: int | None = None,
    root: Path | None = None,
) -> Table:
    """The comparison as a Rich table, rows in the given order, the winner in bold green; a
    row that did not complete names its run's folder, relative to ``root`` (the compared
    folder).

    Given the console ``width``, the least important extra columns (wall s, tokens, ...) are
    left out until the table fits; rank, knobs, metric and n are always shown unwrapped."""
    names = short_names(knobs, taken={"#", metric, "n", "status", *EXTRA_COLUMNS.values()})
    titles = ["#", *(names.get(k, k) for k in knobs or ["variant"]), metric, "n"]
    extras = _fit_extras(rows, knobs, metric, titles, width, root)
    cells = [_cells(row, knobs, metric, extras, root) for row in rows]
    runs = sum(r.n for r in rows)
    direction = "higher" if higher_is_better else "lower"
    # Rich reads a str as markup: "[a,b]" (a list-valued knob) would show as nothing. Names
    # (the metric, knob names) are escaped; cells (labels, knob values, errors) are Text,
    # which also keeps an error's ":x:" from becoming an emoji.
    table = Table(title=escape(f"{metric} ({direction} is better): {runs} runs, {len(rows)} rows"))
    for i, title in enumerate([*titles, *(EXTRA_COLUMNS[k] for k in extras)]):
        left = 0 < i < len(titles) - 2
        min_width = max([len(title), *(len(c[i]) for c in cells)])
        table.add_column(
            escape(title), justify="left" if left else "right", no_wrap=True, min_width=min_width
        )
    table.add_column("status", overflow="fold", min_width=6)
    for row, row_cells in zip(rows, cells, strict=True):
        table.add_row(*map(Text, row_cells), style=_row_style(row))
    return table


def _fit_extras(
    rows: Sequence[Row],
    knobs: Sequence[str],
    metric: str,
    titles: list[str],
    width: int | None,
    root: Path | None = None,
) -> list[str]:
    """The extra columns that fit in ``width`` (the status column may wrap down to 24)."""
    extras = extra_columns(rows, metric)
    while width is not None:
        cells = [_cells(row, knobs, metric, extras, root) for row in rows]
        all_titles = [*titles, *(EXTRA_COLUMNS[k] for k in extras), "status"]
        widths = [max([len(t), *(len(c[i]) for c in cells)]) for i, t in enumerate(all_titles)]
        widths[-1] = min(widths[-1], 24)
        droppable = [k for k in DROP_ORDER if k in extras]
        if sum(w + 3 for w in widths) + 1 <= width or not droppable:
            break
        extras.remove(droppable[0])
    return extras


def extra_columns(rows: Sequence[Row], metric: str) -> list[str]:
    """The EXTRA_COLUMNS beside ``metric``: ``MOE_COLUMNS`` (active parameters, router losses)
    only where some run is a Mixture of Experts (its active parameters differ from its total)."""
    moe = any(is_moe(run.results) for row in rows for run in row.runs)
    return [k for k in EXTRA_COLUMNS if k != metric and (moe or k not in MOE_COLUMNS)]


def _cells(
    row: Row, knobs: Sequence[str], metric: str, extras: list[str], root: Path | None = None
) -> list[str]:
    knob_cells = [row.knobs[k] for k in knobs] if knobs else [row.label]
    if row.status == "failed":
        main = row.runs[0].state.upper()  # FAILED, or RUNNING, KILLED, PREEMPTED, ...
        # which seed's folder: the knobs name the variant only
        status = f"{main} ({run_folder(row.runs[0], root)}): {truncate(row.error or '')}"
    else:
        main = fmt_stat(row.stats[metric], metric)
        status = "ok" if row.rank is not None else unranked_reason(row, metric)
    return [
        str(row.rank) if row.rank is not None else MISSING,
        *knob_cells,
        main,
        str(row.count(metric)),  # the values the mean ± std is over (dropped_notes)
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


# --------------------------------------------------------------------------- output


def none_completed(rows: Sequence[Row], root: Path) -> str | None:
    """One line for a multirun where no run completed (nothing to rank): how many runs ended
    in which state and, where they share it, their error; None when some run completed."""
    if not rows or any(row.status != "failed" for row in rows):
        return None
    states = Counter(row.runs[0].state for row in rows)
    errors = {truncate(row.error or "", 200) for row in rows}
    why = errors.pop() if len(errors) == 1 else "the table above says why"
    tally = ", ".join(f"{n} {state}" for state, n in states.items())
    return f"no completed run under {root} ({tally}: {why})"


def folder_notes(root: Path) -> list[str]:
    """Lines about the compared folder rather than its runs: the folders left out because no
    run wrote their results.json (``runs.not_runs``), and the jobs of a sweep's grid that have
    no folder (``sweep_grid.unlaunched_jobs``: a sweep stopped before it launched them)."""
    note = not_runs_note(root)
    lines = [f"warning: {note}"] if note else []
    for sweep in unlaunched_jobs(root):
        where = "" if sweep.sweep == root else f" in {sweep.sweep.relative_to(root)}"
        known = [m for m in sweep.missing if m != "?"]
        which = f" (job {', '.join(known)})" if known else ""
        if sweep.holder is not None:
            why = f"not started yet: the sweep still runs (pid {sweep.holder})"
        else:
            why = (
                "never started: the sweep stopped before them; python src/train.py -m <same "
                f"overrides> resume=auto hydra.sweep.dir={sweep.sweep} runs them"
            )
        lines.append(
            f"note: {len(sweep.missing)} of the {sweep.jobs} jobs of the sweep{where} (its "
            f"multirun.yaml's grid) have no folder{which}: {why}"
        )
    return lines


def to_json(
    rows: Sequence[Row],
    knobs: Sequence[str],
    metric: str,
    *,
    higher_is_better: bool = False,
    root: Path | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The comparison as JSON-ready data (NaN/inf become null); ``notes``: the lines about
    the folder itself (:func:`folder_notes`), after the summary's. ``multirun_dir``: the
    compared folder by its whole path, which the ``runs`` are named relative to, so a
    compare.json written elsewhere (``--out``) still leads to them."""
    winner = next((r.label for r in rows if r.rank == 1), None)
    return {
        "multirun_dir": source_name(root) if root is not None else None,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "knobs": list(knobs),
        "winner": winner,
        "summary": [*summarize(rows, metric, higher_is_better, root), *notes],
        "rows": [_row_json(row, metric, root) for row in rows],
    }


def _row_json(row: Row, metric: str, root: Path | None) -> dict[str, Any]:
    return {
        "rank": row.rank,
        "label": row.label,
        "knobs": row.knobs,
        "status": row.status,
        "error": row.error,
        "n": row.count(metric),  # as the table's n: the values of the metric, not the runs
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
    higher_is_better: bool | None = None,
    console: Console | None = None,
) -> list[Row]:
    """Load a multirun, rank its variants by ``metric``, write ``compare.png`` and
    ``compare.json`` into ``out`` (default: the multirun dir) and, given a Console, print the
    table and the winner summary. Returns the rows, best first, failed runs last.
    ``higher_is_better=None`` takes the metric's default direction (higher for eval
    accuracies and throughput, lower otherwise: ``multirun.higher_is_better``)."""
    if higher_is_better is None:
        higher_is_better = default_direction(metric)
    root = Path(path)
    runs = load_runs(root)
    out_dir = Path(out) if out is not None else root
    OUTPUTS.check(out_dir, CompareError)  # a user's compare.json or .png: refused, kept
    knobs = varying_knobs(runs)
    rows = aggregate(runs, metric, higher_is_better=higher_is_better, knobs=knobs)
    notes = folder_notes(root)
    if console is not None:
        table = render_table(
            rows, knobs, metric, higher_is_better=higher_is_better, width=console.width, root=root
        )
        console.print(table)
        for line in summarize(rows, metric, higher_is_better, root):
            console.print(Text(line, style="bold green" if line.startswith("winner") else ""))
        for line in notes:
            console.print(Text(line))
        planned = [str(d.relative_to(root)) for d in dry_runs(root)]
        if planned:
            console.print(
                Text(
                    f"left out {len(planned)} dry run(s) ({truncate(', '.join(planned))}): "
                    "dry_run=true writes the plan and trains nothing",
                    style="dim",
                )
            )
    data = to_json(rows, knobs, metric, higher_is_better=higher_is_better, root=root, notes=notes)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot(rows, out_dir / "compare.png", metric, higher_is_better=higher_is_better)
        write_text(out_dir / "compare.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise CompareError(f"cannot write to {out_dir}: {exc.strerror or exc}") from exc
    if console is not None:
        console.print(Text(f"wrote {png} and {out_dir / 'compare.json'}", style="dim"))
    return rows
