"""Compute-optimal scaling laws (Chinchilla): Approach 2, and what the estimators share.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556):

* Approach 2 (isoFLOP profiles), here: per compute budget C, a parabola of loss vs log10 N
  gives N_opt(C); power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted in log space.
* Approach 3 (parametric): :mod:`lmlab.analysis.scaling_parametric`.
* The allocation at a target budget from either: :mod:`lmlab.analysis.scaling_target`.

Runs are dicts with ``params``, ``non_embedding_params``, ``tokens``, ``flops`` and
``val_loss`` (see :func:`lmlab.analysis.scaling_runs.scan_runs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from lmlab.errors import ConfigError

# The results.json field used as N. ``active_params`` (the default) is the N of 6·N·D in
# ``flops`` under the default ``budget.params=active``: a Mixture of Experts' top_k experts
# per token, all parameters for a dense model (and for runs that predate the field).
N_KEYS = ("active_params", "params", "non_embedding_params")
BUDGET_TOLERANCE = 0.10  # runs whose flops differ by less than 10% share an isoFLOP budget
MIN_SIZES_PER_BUDGET = 3
# An isoFLOP parabola is flat (no minimum to read) unless its curvature is told apart from
# zero twice over. (1) By the losses' precision: results.json's val_loss is a float32 metric
# (relative resolution 1.2e-7), so a rise of the parabola above its chord across the sampled
# log10 N below LOSS_PRECISION (8 float32 steps, room for the rounding of several points)
# times the largest loss is rounding. (2) By the losses' scatter, where a profile has more
# runs than the parabola's 3 coefficients: the quadratic coefficient over its standard error
# (least squares, residual variance on n - 3 degrees of freedom) follows Student's t on n - 3
# degrees of freedom where the true curvature is 0, so it must exceed that t's two-sided
# CURVATURE_CONFIDENCE quantile (4.30 for 5 sizes, 2.78 for 7, 1.96 only as n grows without
# bound): a fixed 2 would call 18% of flat 5-size profiles curved, 30% of 4-size ones.
LOSS_PRECISION = 1e-6
CURVATURE_CONFIDENCE = 0.95
MIN_BUDGETS = 2


class ScalingError(ConfigError):
    """The multirun directory or its results cannot support the requested scaling-law fit; the
    one-line message says what was found and what is needed."""


def n_of(run: dict[str, Any], n_key: str) -> float:
    if n_key not in N_KEYS:
        raise ScalingError(f"n_key must be one of {N_KEYS}, got {n_key!r}")
    if n_key == "active_params" and run.get(n_key) is None:
        return float(run["params"])  # a run from before MoE: dense, all of them active
    return float(run[n_key])


# --------------------------------------------------------------------------- approach 2


def group_by_budget(
    runs: Sequence[dict[str, Any]], tolerance: float = BUDGET_TOLERANCE
) -> list[tuple[float, list[dict[str, Any]]]]:
    """Runs grouped into isoFLOP budgets, ascending: by ``budget_flops`` where a run has it; a
    run without it joins the nearest of those budgets its ``flops`` lie within ``tolerance``
    of (a ``budget=tokens`` or ``steps`` run beside a sweep's ``budget=flops`` runs); the rest
    are clustered by ``flops`` (a run joins the current cluster if its flops are within
    ``tolerance`` of the cluster's smallest; the budget is the geometric mean)."""
    groups: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("budget_flops") is not None:
            groups.setdefault(float(run["budget_flops"]), []).append(run)
    labelled = sorted(groups)
    loose = []
    for run in sorted((r for r in runs if r.get("budget_flops") is None), key=lambda r: r["flops"]):
        near = [c for c in labelled if abs(run["flops"] - c) <= tolerance * c]
        if near:
            groups[min(near, key=lambda c: abs(math.log(run["flops"] / c)))].append(run)
        else:
            loose.append(run)
    clusters: list[list[dict[str, Any]]] = []
    for run in loose:
        if clusters and run["flops"] <= clusters[-1][0]["flops"] * (1.0 + tolerance):
            clusters[-1].append(run)
        else:
            clusters.append([run])
    for cluster in clusters:
        budget = float(np.exp(np.mean(np.log([r["flops"] for r in cluster]))))
        groups.setdefault(budget, []).extend(cluster)
    return sorted(groups.items())


def _fit_profile(budget: float, runs: list[dict[str, Any]], n_key: str) -> dict[str, Any]:
    """One isoFLOP profile: a parabola of loss vs log10 N and its vertex (Hoffmann et al.
    2022, Approach 2)."""
    n = np.array([n_of(r, n_key) for r in runs])
    x = np.log10(n)
    y = np.array([r["val_loss"] for r in runs])
    order = np.argsort(x)
    profile: dict[str, Any] = {
        "flops": budget,
        "n_runs": len(runs),
        "n_distinct": int(len(np.unique(x))),
        "N": [float(v) for v in n[order]],
        "loss": [float(v) for v in y[order]],
        "status": "ok",
    }
    if profile["n_distinct"] < MIN_SIZES_PER_BUDGET:
        profile["status"] = f"too few sizes ({profile['n_distinct']} < {MIN_SIZES_PER_BUDGET})"
        return profile
    coeffs = np.polyfit(x, y, 2)
    profile["coeffs"] = [float(c) for c in coeffs]
    flat = _flatness(x, y, coeffs)
    if flat is not None:
        profile["status"] = f"flat, no minimum ({flat})"
        return profile
    if coeffs[0] < 0:
        profile["status"] = "no minimum (parabola not convex)"
        return profile
    vertex = -coeffs[1] / (2.0 * coeffs[0])
    profile["N_opt"] = float(10**vertex)
    profile["D_opt"] = budget / (6.0 * profile["N_opt"])
    profile["loss_min"] = float(np.polyval(coeffs, vertex))
    profile["extrapolated"] = bool(vertex < x.min() or vertex > x.max())
    return profile


def curvature_quantile(dof: int) -> float:
    """How many standard errors from 0 a parabola's quadratic coefficient must lie, fitted with
    ``dof`` residual degrees of freedom: Student's t two-sided CURVATURE_CONFIDENCE quantile."""
    return float(student_t.ppf(0.5 + CURVATURE_CONFIDENCE / 2.0, dof))


def curvature_evidence(
    x: np.ndarray, y_Bn: np.ndarray, c2_B: np.ndarray, residual_Bn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """For B parabolas fitted through the same sampled x (losses ``y_Bn``, quadratic
    coefficients ``c2_B``, residuals ``residual_Bn``): the rise above the chord across the
    sampled x (c2 (x_max - x_min)^2 / 4), the losses' precision (LOSS_PRECISION times the
    largest), and |c2| in standard errors (None without residual degrees of freedom)."""
    rise = np.abs(c2_B) * (x.max() - x.min()) ** 2 / 4.0
    precision = LOSS_PRECISION * np.abs(y_Bn).max(axis=1)
    dof = len(x) - 3
    if dof < 1:
        return rise, precision, None
    design = np.vander(x, 3)
    variance = (residual_Bn**2).sum(axis=1) / dof
    se = np.sqrt(variance * np.linalg.inv(design.T @ design)[0, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(c2_B) / se, np.inf)
    return rise, precision, t


def _flatness(x: np.ndarray, y: np.ndarray, coeffs: np.ndarray) -> str | None:
    """Why the parabola ``coeffs`` through (x, y) has no curvature to read, or None: its rise
    above its chord within LOSS_PRECISION of the losses, or, with more points than
    coefficients, c2 within :func:`curvature_quantile` standard errors of zero."""
    residual = y - np.polyval(coeffs, x)
    rise, precision, t = (
        v if v is None else float(v[0])
        for v in curvature_evidence(x, y[None], np.array([coeffs[0]]), residual[None])
    )
    if rise <= precision:
        return f"rise {rise:.2g} across the sampled N, within the losses' precision {precision:.2g}"
    needed = curvature_quantile(len(x) - 3) if t is not None else 0.0
    if t is not None and t < needed:
        return (
            f"curvature {t:.2g} standard errors from 0, within the scatter: below {needed:.3g}, "
            f"Student's t {CURVATURE_CONFIDENCE:.0%} two-sided quantile on {len(x) - 3} degrees "
            "of freedom"
        )
    return None


def isoflop_profiles(
    runs: Sequence[dict[str, Any]], n_key: str = "active_params"
) -> list[dict[str, Any]]:
    """Per-budget isoFLOP profiles (Hoffmann et al. 2022, Approach 2), without the power-law
    fit: each has flops, N, loss, status and, if the parabola has a minimum, N_opt, D_opt,
    loss_min and whether the vertex lies outside the sampled N (``extrapolated``)."""
    return [_fit_profile(budget, group, n_key) for budget, group in group_by_budget(runs)]


def _power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """y = k x^exponent by least squares on log10 y vs log10 x."""
    slope, intercept = np.polyfit(np.log10(x), np.log10(y), 1)
    return {"k": float(10**intercept), "exponent": float(slope)}


def _loss_law(budgets: list[float], losses: list[float]) -> dict[str, Any] | None:
    """Pure power law L_min = k C^c through the parabola minima (Kaplan et al. 2020 form, no
    irreducible term: extrapolated, it predicts too low a loss). None if a minimum is <= 0."""
    if min(losses) <= 0:
        return None
    law: dict[str, Any] = dict(_power_law(budgets, losses))
    law["model"] = "L_min = k * C^exponent through the parabola minima (no irreducible term)"
    return law


def fit_isoflop(runs: Sequence[dict[str, Any]], n_key: str = "active_params") -> dict[str, Any]:
    """Approach 2 of Hoffmann et al. 2022 (isoFLOP profiles), as replicated by Besiroglu et al.
    2024: per budget C a parabola in log10 N gives N_opt(C) and D_opt = C / (6 N_opt); then
    N_opt = k_N C^a and D_opt = k_D C^b (Chinchilla: a ~ b ~ 0.5) and, as a pure power law,
    L_min = k_L C^c through the parabola minima.

    Returns {"budgets", "a", "b", "N_opt_law", "D_opt_law", "loss_law"}; raises ScalingError
    with fewer than 2 budgets having a minimum (each needs >= 3 distinct N)."""
    profiles = isoflop_profiles(runs, n_key)
    good = [p for p in profiles if "N_opt" in p]
    if len(good) < MIN_BUDGETS:
        detail = "; ".join(budget_summary(profiles))
        raise ScalingError(
            f"approach 2 needs >= {MIN_BUDGETS} compute budgets with an isoFLOP minimum "
            f"(>= {MIN_SIZES_PER_BUDGET} distinct N each); found {len(good)} of "
            f"{len(profiles)} budgets from {len(runs)} runs" + (f" ({detail})" if detail else "")
        )
    budgets = [p["flops"] for p in good]
    n_law = _power_law(budgets, [p["N_opt"] for p in good])
    d_law = _power_law(budgets, [p["D_opt"] for p in good])
    return {
        "budgets": profiles,
        "a": n_law["exponent"],
        "b": d_law["exponent"],
        "N_opt_law": n_law,
        "D_opt_law": d_law,
        "loss_law": _loss_law(budgets, [p["loss_min"] for p in good]),
        "n_key": n_key,
        "warnings": isoflop_warnings(n_law["exponent"], d_law["exponent"]),
    }


def isoflop_warnings(a: float, b: float) -> list[str]:
    """Why Approach 2's power laws describe no compute-optimal frontier, if they do not: with
    D_opt = C / (6 N_opt), a + b = 1, and both N_opt and D_opt grow with C only for a and b in
    (0, 1); outside it one of them shrinks as compute grows."""
    if 0 < a < 1 and 0 < b < 1:
        return []
    shrinks = "D_opt" if b <= 0 else "N_opt"
    return [
        f"a={a:.3g}, b={b:.3g}: an exponent outside (0, 1), so {shrinks} shrinks as compute "
        "grows, which no compute-optimal frontier does; these power laws do not transfer"
    ]


# --------------------------------------------------------------------------- labels


def budget_label(flops: float) -> str:
    """A compute budget as a short label: ``C=6e12``, ``C=1e21``."""
    exponent = math.floor(math.log10(flops))
    mantissa = flops / 10**exponent
    return f"C={mantissa:.3g}e{exponent}" if abs(mantissa - 1) > 1e-3 else f"C=1e{exponent}"


def _labels(profiles: list[dict[str, Any]], most: int = 6) -> str:
    labels = [budget_label(p["flops"]) for p in profiles]
    return ", ".join(labels[:most]) + (
        f", ... ({len(labels)} in all)" if len(labels) > most else ""
    )


def budget_summary(profiles: list[dict[str, Any]]) -> list[str]:
    """One line per kind of unusable or extrapolated isoFLOP profile, naming the budgets."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for p in profiles:
        if p["status"] != "ok":
            kinds.setdefault(p["status"].split(" (")[0], []).append(p)
        elif p.get("extrapolated"):
            kinds.setdefault("parabola vertex outside the sampled N", []).append(p)
    return [f"{kind}: {_labels(group)}" for kind, group in kinds.items()]
