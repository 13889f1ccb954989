"""What compute a run trained, and what its budget promised, for the analysis tools.

``results.json``'s ``flops`` is 6 N D with D the tokens trained and N the parameter count
``budget.params`` names: ``active`` (what a token runs through) or ``total`` (every expert of a
Mixture of Experts; a dense model's two counts are equal). :func:`budget_params` says which N
a run's flops count, :func:`feed_forward` what kind of feed-forward it trained (the expert
count is a variable of a MoE's scaling law, Clark et al. 2022), and :func:`compute_notes` warns
when runs that ``budget=flops`` (or ``budget=chinchilla`` at one N) promised equal compute
trained unequal FLOPs, and when runs no budget promised one compute trained unequal tokens.

Rounding (:mod:`lmlab.train.budget`): steps = ceil(D / tokens_per_step), so a run trains its
promised C plus less than one global batch, 6 N x tokens_per_step = C / steps. Two runs of
at least 100 steps each are within 1% of C of each other; :data:`FLOPS_TOLERANCE` is that 1%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmlab.analysis.runs import Run

# Runs promised one C may differ by this fraction of C: whole steps add less than C / steps to
# each, under 1% when every run takes 100 steps or more. Beyond it the budget is too small
# for the global batch (one step is a large part of C), or a run did not train its budget.
FLOPS_TOLERANCE = 0.01
MIN_STEPS = round(1 / FLOPS_TOLERANCE)
# What a run's budget.params names, as results.json keys.
PARAM_KEYS = {"active": "active_params", "total": "params"}
_REL = 1e-6  # float noise in flops = 6 N D and in C / (6 N)


def number(value: Any) -> float | None:
    """``value`` as a finite float; None for anything else (null, text, bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def is_moe(results: dict[str, Any]) -> bool:
    """True when the run's active parameters differ from its total (a Mixture of Experts)."""
    active, total = number(results.get("active_params")), number(results.get("params"))
    return active is not None and total is not None and active != total


def budget_params(run: Run) -> str | None:
    """Which N the run's ``flops`` count, ``active`` or ``total``: as results.json's budget
    records it, else the config's ``budget.params``, else the count that 6 N tokens equals
    (runs from before the field); None when unknown."""
    budget = run.results.get("budget")
    recorded = budget.get("params") if isinstance(budget, dict) else None
    recorded = recorded or run.flat_config.get("budget.params")
    if recorded in PARAM_KEYS:
        return str(recorded)
    flops, tokens = number(run.results.get("flops")), number(run.results.get("tokens"))
    if flops is None or not tokens:
        return None
    for name, key in PARAM_KEYS.items():
        n = number(run.results.get(key))
        if n and math.isclose(flops, 6.0 * n * tokens, rel_tol=_REL):
            return name
    return None


def feed_forward(run: Run) -> str:
    """``dense``, or the run's experts (``8 experts top-2``) from its config; ``MoE`` for a
    Mixture of Experts without a config (results.json alone)."""
    experts = number(run.flat_config.get("model.moe.num_experts"))
    if experts is None:
        return "MoE" if is_moe(run.results) else "dense"
    if experts == 0:
        return "dense"
    label = f"{experts:g} experts top-{run.flat_config.get('model.moe.top_k')}"
    every = run.flat_config.get("model.moe.every_n_layers", 1)
    return label if every == 1 else f"{label} every {every} layers"


def promised_flops(run: Run) -> tuple[str, float] | None:
    """The budget's kind and the C = 6 N D it promised the run before rounding to whole steps,
    for ``flops`` (C = budget.flops) and ``chinchilla`` (D = tokens_per_param x N, so equal C
    only at equal N); None for the other kinds, which promise steps or tokens."""
    budget = run.results.get("budget")
    if not isinstance(budget, dict) or budget.get("kind") not in ("flops", "chinchilla"):
        return None
    if budget["kind"] == "flops":
        c = number(budget.get("nominal_flops")) or number(run.results.get("budget_flops"))
        return None if c is None else ("flops", c)
    flops, tokens = number(run.results.get("flops")), number(run.results.get("tokens"))
    target = number(budget.get("target_tokens"))
    if flops is None or not tokens or target is None:
        return None
    return "chinchilla", flops / tokens * target  # 6 N x D asked for


def step_flops(run: Run) -> float | None:
    """The FLOPs of one of the run's optimizer steps, 6 N x tokens_per_step."""
    budget = run.results.get("budget")
    per_step = number(budget.get("tokens_per_step")) if isinstance(budget, dict) else None
    flops, tokens = number(run.results.get("flops")), number(run.results.get("tokens"))
    if per_step is None or flops is None or not tokens:
        return None
    return flops / tokens * per_step


def sci(value: float) -> str:
    """``1.402e11``: FLOPs to four significant digits."""
    return f"{value:.4g}".replace("e+", "e")


def compute_notes(labelled: Sequence[tuple[str, Run]]) -> list[str]:
    """Lines about the compute of completed runs, each given with its row's label: a warning
    per group of runs promised one C (:func:`promised_flops`) whose trained flops differ by more
    than :data:`FLOPS_TOLERANCE` of C, saying whether whole steps explain it; one when runs
    that no budget promised one compute trained unequal tokens (:func:`_unequal_tokens`); and a
    note when the flops of Mixture-of-Experts runs count every expert (``budget.params=total``)."""
    done = [(label, run) for label, run in labelled if not run.failed]
    groups: dict[tuple[str, str], list[tuple[str, Run, float]]] = {}
    for label, run in done:
        promise, flops = promised_flops(run), number(run.results.get("flops"))
        if promise is not None and flops is not None:
            kind, c = promise
            groups.setdefault((kind, f"{c:.6g}"), []).append((label, run, flops))
    lines = [_unequal(kind, float(c), group) for (kind, c), group in groups.items()]
    lines.append(
        _unequal_tokens([(label, run) for label, run in done if promised_flops(run) is None])
    )
    total = [label for label, run in done if is_moe(run.results) and budget_params(run) == "total"]
    if total:
        lines.append(
            f"note: the flops of {len(total)} Mixture-of-Experts run(s) count every expert "
            f"(budget.params=total: 6 x params x tokens), more than a token runs through; their "
            f"compute is 6 x active_params x tokens ({'; '.join(dict.fromkeys(total))})"
        )
    return [line for line in lines if line]


def _unequal_tokens(labelled: list[tuple[str, Run]]) -> str:
    """A warning where runs that no budget promised one compute (``budget=steps`` or
    ``tokens``, or none recorded) trained numbers of tokens more than
    :data:`FLOPS_TOLERANCE` apart: a sweep over the batch or the sequence length at fixed
    steps, where a variant may lead by its extra data alone."""
    trained = [(label, t) for label, run in labelled if (t := number(run.results.get("tokens")))]
    if len(trained) < 2:
        return ""
    low, high = min(t for _, t in trained), max(t for _, t in trained)
    if (high - low) / high <= FLOPS_TOLERANCE:
        return ""

    def named(tokens: float) -> str:
        return "; ".join(dict.fromkeys(label for label, t in trained if t == tokens))

    return (
        f"warning: unequal data: the runs trained {low:,.0f} ({named(low)}) to {high:,.0f} "
        f"tokens ({named(high)}), {high / low:.2f}x, and a variant may lead by its extra tokens "
        "alone; budget=tokens (or budget=flops) trains each the same"
    )


def _unequal(kind: str, c: float, group: list[tuple[str, Run, float]]) -> str:
    low, high = min(group, key=lambda m: m[2]), max(group, key=lambda m: m[2])
    spread = (high[2] - low[2]) / c
    if spread <= FLOPS_TOLERANCE:
        return ""
    text = (
        f"warning: unequal compute: budget={kind} promised {len(group)} runs C = {sci(c)} "
        f"FLOPs each, but they trained {sci(low[2])} ({low[0]}) to {sci(high[2])} "
        f"({high[0]}), {spread:.1%} of C apart; "
    )
    steps = [(label, flops, step_flops(run)) for label, run, flops in group]
    outside = [
        (label, flops)
        for label, flops, step in steps
        if flops < c * (1 - _REL) or (step is not None and flops >= (c + step) * (1 + _REL))
    ]
    if outside:
        label, flops = outside[0]
        why = "run out of data or stop early" if flops < c else "train another budget or batch"
        return text + (
            "more than whole steps explain (a run trains C plus less than one step): "
            f"{label} trained {flops / c:.1%} of C; did it {why}?"
        )
    known = [step for _, _, step in steps if step is not None]
    knob = "budget.flops" if kind == "flops" else "budget.tokens_per_param"
    largest = f" and one step is up to {max(known) / c:.1%} of C here" if known else ""
    return text + (
        f"steps are whole global batches{largest}, so raise the budget ({knob}) or shrink "
        f"the global batch until every run takes {MIN_STEPS}+ steps (then they differ by "
        f"under {FLOPS_TOLERANCE:.0%})"
    )
