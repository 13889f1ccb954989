"""Compute-optimal scaling laws from a multirun directory (Chinchilla).

Reads the ``results.json`` of every job under a multirun directory, fits Approaches 2 and 3 of
Hoffmann et al. 2022 (:mod:`lmlab.analysis.scaling_fit`), and writes ``scaling.json`` and
``scaling.png`` (:mod:`lmlab.analysis.scaling_plot`).

Each job of the multirun directory holds a ``results.json`` with ``status``, ``params``,
``non_embedding_params``, ``tokens``, ``flops`` (6 N D), ``val_loss`` and optionally
``budget_flops`` (the nominal isoFLOP budget the sweep assigned the run to).

The runs are read by :mod:`lmlab.analysis.scaling_runs`. One law is fitted to runs of one
loss (``check_one_loss`` there) and one feed-forward, dense or one shape of Mixture of Experts
(:func:`check_one_feed_forward`), with the N their flops count (:func:`check_n_key`); anything
else is refused in one line saying what differs. Runs without a config (``results.json``
alone) cannot be checked for their loss: a note counts them.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.analysis.compute import PARAM_KEYS, is_moe
from lmlab.analysis.outputs import Outputs
from lmlab.analysis.scaling_bootstrap import bootstrap_isoflop
from lmlab.analysis.scaling_fit import (
    BUDGET_TOLERANCE,
    N_KEYS,
    ScalingError,
    budget_summary,
    fit_isoflop,
    isoflop_profiles,
    n_of,
)
from lmlab.analysis.scaling_parametric import fit_parametric, parametric_summary
from lmlab.analysis.scaling_plot import CREATOR, plot_scaling
from lmlab.analysis.scaling_runs import scan_runs
from lmlab.analysis.scaling_target import FAR_TARGET, target_allocation, target_reach
from lmlab.files import write_text

# scaling.json's top-level keys (``analyze``; ``feed_forward`` came later): a file holding
# them all is scaling's own.
JSON_KEYS = frozenset(
    {"multirun_dir", "n_key", "runs", "approach2", "approach3", "target", "notes", "outputs"}
)
OUTPUTS = Outputs("scaling", JSON_KEYS, CREATOR)


def off_budget_notes(runs: list[dict[str, Any]], path: str | Path) -> list[str]:
    """A note naming the runs whose ``flops`` lie more than BUDGET_TOLERANCE from the
    ``budget_flops`` their sweep gave them: grouped by that label, each sits on an isoFLOP
    profile it did not train (a run that stopped short or ran out of data)."""
    off = [
        r
        for r in runs
        if r.get("budget_flops") is not None
        and abs(r["flops"] - r["budget_flops"]) > BUDGET_TOLERANCE * r["budget_flops"]
    ]
    if not off:
        return []
    listing = ", ".join(
        f"{os.path.relpath(Path(r['results_file']).parent, path)} "
        f"({r['flops']:.3g} of C={r['budget_flops']:.3g})"
        for r in off[:5]
    ) + (f", and {len(off) - 5} more" if len(off) > 5 else "")
    return [
        f"{len(off)} of the {len(runs)} runs trained FLOPs more than {BUDGET_TOLERANCE:.0%} "
        f"from the budget_flops their sweep gave them, yet approach 2 fits them on that "
        f"budget's isoFLOP profile: {listing}; a run that stopped short or ran out of data is "
        "on no isoFLOP curve: rerun it or move it out of the folder"
    ]


def check_n_key(runs: list[dict[str, Any]], n_key: str) -> list[str]:
    """The fit's N must be the N of the runs' C = 6 N D (``budget.params``), or D_opt = C / (6
    N_opt) is not the tokens the runs trained and the allocation is not theirs: refused for a
    Mixture of Experts, whose active and total counts differ (a dense model's are one number).
    ``non_embedding_params`` is never that N (Kaplan et al. 2020's convention): a note."""
    if n_key == "non_embedding_params":
        return [
            "N = non_embedding_params, but the runs' flops count the embeddings too (6 N D, N "
            "as budget.params), so D_opt = C / (6 N_opt) is not the tokens they trained"
        ]
    moe = [run for run in runs if is_moe(run)]
    counts = Counter(run["budget_params"] for run in moe if run["budget_params"] is not None)
    if all(PARAM_KEYS[kind] == n_key for kind in counts):
        return []
    listing = ", ".join(f"{kind} ({n})" for kind, n in sorted(counts.items()))
    if len(counts) > 1:
        raise ScalingError(
            f"the {len(moe)} Mixture-of-Experts runs differ in budget.params: {listing}, so their "
            "flops (6 N D) count different N and no --n-key is the N of all of them; fit the "
            "runs of one budget.params (move the others out)"
        )
    (kind,) = counts
    raise ScalingError(
        f"--n-key {n_key} is not the N of the runs' flops: {len(moe)} Mixture-of-Experts runs "
        f"trained with budget.params={kind} (C = 6 N D with N = {PARAM_KEYS[kind]}), so D_opt = "
        f"C / (6 N) would not be their tokens; pass --n-key {PARAM_KEYS[kind]}"
    )


def check_one_feed_forward(
    runs: list[dict[str, Any]], path: str | Path, mixed: bool = False
) -> list[str]:
    """One law is of one architecture: Chinchilla's L(N, D) is fitted to dense models, and a
    Mixture of Experts' loss also depends on its expert count (Clark et al. 2022, "Unified
    Scaling Laws for Routed Language Models", arXiv:2202.01169, fit L(N, E)), so dense runs
    and MoE runs of other expert counts are refused together unless ``mixed`` (a note then)."""
    counts = Counter(run["feed_forward"] for run in runs)
    if len(counts) < 2:
        return []
    listing = ", ".join(f"{kind} ({n})" for kind, n in sorted(counts.items()))
    if not mixed:
        raise ScalingError(
            f"the runs under {path} differ in their feed-forward: {listing}; a law in N and D "
            "holds for one architecture (Chinchilla's are dense; a Mixture of Experts' loss "
            "depends on its expert count too, Clark et al. 2022), so fit each one's runs "
            "separately (move the others out), or pass --mixed-experts to fit them as one"
        )
    moe = sum(n for kind, n in counts.items() if kind != "dense")
    return [
        f"{moe} of the {len(runs)} runs are Mixtures of Experts ({listing}), fitted into one "
        "law with the others (--mixed-experts): its constants average over architectures "
        "whose laws differ (Clark et al. 2022)"
    ]


# --------------------------------------------------------------------------- analysis


def _attempt(
    fit: Callable[..., dict[str, Any]], *args: Any
) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return fit(*args), None
    except ScalingError as exc:
        return None, str(exc)


def _fit_parametric_runs(runs: list[dict[str, Any]], n_key: str) -> dict[str, Any]:
    return fit_parametric(
        [n_of(r, n_key) for r in runs], [r["tokens"] for r in runs], [r["val_loss"] for r in runs]
    )


def _notes(
    profiles: list[dict[str, Any]],
    iso: dict[str, Any] | None,
    par: dict[str, Any] | None,
    target: dict[str, Any],
) -> list[str]:
    """What the fits' numbers do not say: unusable or extrapolated profiles, approach 2's
    exponents and an interval it cannot give, approach 3's undetermined constants, a target
    far beyond the data."""
    notes = [f"approach 2, {line}" for line in budget_summary(profiles)]
    notes += [f"approach 2: {line}" for line in (iso or {}).get("warnings", [])]
    interval = (iso or {}).get("interval", {})
    notes += [f"approach 2's interval: {line}" for line in interval.get("warnings", [])]
    notes += [f"approach 3: {line}" for line in (par or {}).get("warnings", [])]
    if par is not None and not (par["alpha"] > 0 and par["beta"] > 0):
        notes.append("approach 3: alpha or beta <= 0, no compute-optimal allocation")
    budgets = [p["flops"] for p in profiles]
    notes += loss_law_notes(target, max(budgets), par)
    reach = target_reach(target["flops"], budgets)
    if reach > FAR_TARGET:
        side, edge = (
            ("above the largest", max(budgets))
            if target["flops"] > max(budgets)
            else ("below the smallest", min(budgets))
        )
        notes.append(
            f"target C={target['flops']:.3g} is {reach:.3g} times {side} fitted budget "
            f"({edge:.3g}), beyond the {FAR_TARGET:g}x the fits may be extrapolated: its "
            "allocation is a guess, and the figure's frontier panel is drawn without it"
        )
    return notes


def loss_law_notes(target: dict[str, Any], largest: float, par: dict[str, Any] | None) -> list[str]:
    """A note where approach 2's predicted loss at the target extends its loss law beyond the
    largest fitted budget: L_min = k C^c has no irreducible term (Kaplan et al. 2020's form),
    so it falls toward 0 as C grows and reads low there, below approach 3's E in time."""
    row = target["approach2"]
    if row is None or row["predicted_loss"] is None or target["flops"] <= largest:
        return []
    loss = row["predicted_loss"]
    below = (
        f", here below approach 3's irreducible loss E={par['E']:.4g}"
        if par and loss < par["E"]
        else ""
    )
    return [
        f"approach 2's predicted loss at C={target['flops']:.3g} ({loss:.4g}) extends its "
        f"L_min = k C^c through the parabola minima beyond the largest budget ({largest:.3g}): "
        "a power law without an irreducible term falls toward 0 as C grows, so it reads low "
        f"there{below}" + ("; approach 3's prediction includes E" if par else "")
    ]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _run_counts(runs: list[dict[str, Any]], skipped: list[dict[str, str]]) -> dict[str, Any]:
    found = len(runs) + len(skipped)
    return {"found": found, "used": len(runs), "skipped": len(skipped), "skipped_runs": skipped}


def analyze(
    path: str | Path,
    target_flops: float | None = None,
    out: str | Path | None = None,
    n_key: str = "active_params",
    mixed_experts: bool = False,
) -> dict[str, Any]:
    """Fit Approaches 2 and 3 of Hoffmann et al. 2022 (Approach 3 as in Besiroglu et al. 2024)
    to the completed runs under ``path``; write ``scaling.json`` and ``scaling.png`` to ``out``
    (default ``path``) and return the same dict. ``target_flops`` defaults to 10x the largest
    budget. Approach 2 carries a bootstrap ``interval`` of its exponents, and the target's
    approach 2 row ``N_opt_interval`` and ``D_opt_interval``
    (:func:`lmlab.analysis.scaling_bootstrap.bootstrap_isoflop`). One approach may be skipped
    (the reason is recorded); raises ScalingError if both are impossible, if ``n_key`` is not
    the N of a Mixture of Experts' flops (:func:`check_n_key`), or if the runs mix
    feed-forwards and not ``mixed_experts`` (:func:`check_one_feed_forward`)."""
    if n_key not in N_KEYS:
        raise ScalingError(f"n_key must be one of {N_KEYS}, got {n_key!r}")
    if target_flops is not None and not 0 < target_flops < math.inf:
        raise ScalingError(f"target_flops must be a positive finite number, got {target_flops}")
    runs, skipped, unchecked = scan_runs(path)
    out_dir = Path(out) if out is not None else Path(path)
    OUTPUTS.check(out_dir, ScalingError)  # before the fits: a user's scaling.json is kept
    warnings = unchecked + check_one_feed_forward(runs, path, mixed_experts)
    warnings += check_n_key(runs, n_key)
    warnings += off_budget_notes(runs, path)
    iso, iso_reason = _attempt(fit_isoflop, runs, n_key)
    par, par_reason = _attempt(_fit_parametric_runs, runs, n_key)
    if iso is None and par is None:
        why = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise ScalingError(
            f"no fit possible from {len(runs)} completed runs ({len(skipped)} skipped"
            f"{f': {why}{more}' if skipped else ''}): {iso_reason}; {par_reason}"
        )
    profiles = iso["budgets"] if iso is not None else isoflop_profiles(runs, n_key)
    losses = [r["val_loss"] for r in runs]
    par_out = parametric_summary(par, n_key, losses) if par is not None else None
    flops = 10.0 * max(p["flops"] for p in profiles) if target_flops is None else target_flops
    target = target_allocation(float(flops), iso, par_out)
    if iso is not None:
        iso["interval"] = bootstrap_isoflop(runs, n_key, target["flops"])
        target["approach2"]["N_opt_interval"] = iso["interval"]["N_opt"]
        target["approach2"]["D_opt_interval"] = iso["interval"]["D_opt"]
    out_dir.mkdir(parents=True, exist_ok=True)
    skip2 = {"status": "skipped", "reason": iso_reason, "budgets": profiles}
    result: dict[str, Any] = {
        "multirun_dir": str(path),
        "n_key": n_key,
        "runs": _run_counts(runs, skipped),
        "feed_forward": dict(Counter(run["feed_forward"] for run in runs)),
        "approach2": dict(iso, status="ok") if iso is not None else skip2,
        "approach3": par_out or {"status": "skipped", "reason": par_reason},
        "target": target,
        "notes": warnings + _notes(profiles, iso, par_out, target),
        "outputs": {"json": str(out_dir / "scaling.json"), "png": str(out_dir / "scaling.png")},
    }
    far = target_reach(target["flops"], [p["flops"] for p in profiles]) > FAR_TARGET
    plot_scaling(out_dir / "scaling.png", profiles, iso, par_out, target, draw_target=not far)
    write_text(out_dir / "scaling.json", json.dumps(result, indent=2, default=_json_default))
    return result
