"""Compute-optimal scaling laws (Chinchilla): the estimators.

Two of the three estimators of Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models" (arXiv:2203.15556), with the parametric fit done as in the replication of Besiroglu et
al. 2024, "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102):

* Approach 2 (isoFLOP profiles): per compute budget C, a parabola of loss vs log10 N gives
  N_opt(C); power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted in log space.
* Approach 3 (parametric): L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimising the
  Huber loss (delta = 1e-3) of log L with L-BFGS from a grid of initialisations; the
  compute-optimal allocation under C = 6 N D then has a closed form.

Runs are dicts with ``params``, ``non_embedding_params``, ``tokens``, ``flops`` and
``val_loss`` (see :func:`lmlab.analysis.scaling.scan_runs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from lmlab.errors import ConfigError

# The results.json field used as N. ``active_params`` (the default) is the N of 6·N·D in
# ``flops`` under the default ``budget.params=active``: a Mixture of Experts' top_k experts
# per token, all parameters for a dense model (and for runs that predate the field).
N_KEYS = ("active_params", "params", "non_embedding_params")
HUBER_DELTA = 1e-3
BUDGET_TOLERANCE = 0.10  # runs whose flops differ by less than 10% share an isoFLOP budget
MIN_SIZES_PER_BUDGET = 3
# An isoFLOP parabola is flat (no minimum to read) unless its curvature is told apart from
# zero twice over. (1) By the losses' precision: results.json's val_loss is a float32 metric
# (relative resolution 1.2e-7), so a rise of the parabola above its chord across the sampled
# log10 N below LOSS_PRECISION (8 float32 steps, room for the rounding of several points)
# times the largest loss is rounding. (2) By the losses' scatter, where a profile has more
# runs than the parabola's 3 coefficients: the quadratic coefficient must lie at least
# MIN_CURVATURE_SE of its standard errors (least squares, residual variance on n - 3 degrees
# of freedom) above zero, the usual two-sigma rule.
LOSS_PRECISION = 1e-6
MIN_CURVATURE_SE = 2.0
MIN_BUDGETS = 2
MIN_PARAMETRIC_RUNS = 5
# A target budget more than this many times beyond the fitted ones (above the largest or
# below the smallest) is a note: the allocation there extrapolates the fits that far (Hoffmann
# et al. 2022 went ~200x, from their 3e21 isoFLOPs to Gopher's 5.76e23), and the figure's
# frontier panel keeps to the data rather than stretching its axes to it.
FAR_TARGET = 1e3
# Approach 3 separates A / N^alpha from B / D^beta only if the runs' (log N, log D) points do
# not lie on one line: one compute budget (log N + log D = log(C/6)) or one tokens-per-
# parameter ratio (log D = log N + const). It needs >= MIN_BUDGETS budgets, and a spread
# across the best line through the points of at least this fraction of the spread along it
# (the ratio of the two singular values).
MIN_PARAMETRIC_SPREAD = 0.05
# The initialisation grid of Hoffmann et al. 2022 (Appendix D.2), in the (e, a, b) log space.
CHINCHILLA_GRID: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
DEFAULT_MAX_STARTS = 160


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


def _flatness(x: np.ndarray, y: np.ndarray, coeffs: np.ndarray) -> str | None:
    """Why the parabola ``coeffs`` through (x, y) has no curvature to read, or None: its rise
    above its chord across the sampled x (c2 (x_max - x_min)^2 / 4) within LOSS_PRECISION of
    the losses, or, with more points than coefficients, c2 within MIN_CURVATURE_SE standard
    errors of zero."""
    rise = abs(coeffs[0]) * (x.max() - x.min()) ** 2 / 4.0
    precision = LOSS_PRECISION * float(np.abs(y).max())
    if rise <= precision:
        return f"rise {rise:.2g} across the sampled N, within the losses' precision {precision:.2g}"
    dof = len(x) - 3
    if dof < 1:
        return None
    design = np.vander(x, 3)
    residual = y - design @ coeffs
    variance = float(residual @ residual) / dof
    se = math.sqrt(variance * np.linalg.inv(design.T @ design)[0, 0])
    if abs(coeffs[0]) < MIN_CURVATURE_SE * se:
        t = abs(coeffs[0]) / se
        return f"curvature {t:.2g} standard errors from 0, < {MIN_CURVATURE_SE:g}: the scatter's"
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


# --------------------------------------------------------------------------- approach 3


def _design(log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """(3n, 5) matrix M with z = (M @ theta).reshape(3, n) the three logsumexp terms
    (a - alpha log N, b - beta log D, e) for theta = (a, b, e, alpha, beta)."""
    n = len(log_n)
    design = np.zeros((3, n, 5))
    design[0, :, 0], design[0, :, 3] = 1.0, -log_n
    design[1, :, 1], design[1, :, 4] = 1.0, -log_d
    design[2, :, 2] = 1.0
    return design.reshape(3 * n, 5)


def _huber_objective(
    theta: np.ndarray, design: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber(log L_pred - log L_obs) and its gradient in theta = (a, b, e, alpha, beta),
    with log L_pred = logsumexp(a - alpha log N, b - beta log D, e) (see :func:`_design`)."""
    z = (design @ theta).reshape(3, -1)
    top = z.max(axis=0)
    w = np.exp(z - top)
    total = w.sum(axis=0)
    r = top + np.log(total) - log_l
    abs_r = np.abs(r)
    loss = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum()
    dr = np.minimum(np.maximum(r, -delta), delta) / total  # Huber' times 1/sum for the softmax
    return float(loss), (w * dr).ravel() @ design


def _grid_losses(
    grid: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> np.ndarray:
    """The Huber objective at every row (a, b, e, alpha, beta) of ``grid`` at once."""
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    z1, z2 = a - alpha * log_n, b - beta * log_d
    pred = np.logaddexp(np.logaddexp(z1, z2), np.broadcast_to(e, z1.shape))
    abs_r = np.abs(pred - log_l)
    return np.where(abs_r <= delta, 0.5 * abs_r**2, delta * (abs_r - 0.5 * delta)).sum(axis=1)


def _initialisations(losses: np.ndarray, max_starts: int) -> np.ndarray:
    """Deterministic subsample of the grid: the best half of ``max_starts`` by objective value,
    the other half evenly spaced over the remaining grid points (all points if few enough)."""
    if len(losses) <= max_starts:
        return np.arange(len(losses))
    order = np.argsort(losses, kind="stable")
    n_best = max_starts // 2
    rest = np.sort(order[n_best:])
    spread = rest[np.linspace(0, len(rest) - 1, max_starts - n_best).round().astype(int)]
    return np.concatenate([order[:n_best], spread])


def _check_points(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> None:
    if not (n.shape == d.shape == loss.shape and n.ndim == 1):
        raise ScalingError(
            f"N, D, L must be 1-d of equal length, got {n.shape}, {d.shape}, {loss.shape}"
        )
    if not (
        np.all(np.isfinite([n, d, loss])) and np.all(n > 0) and np.all(d > 0) and np.all(loss > 0)
    ):
        raise ScalingError("N, D and L must be positive and finite")
    n_distinct, d_distinct = len(np.unique(n)), len(np.unique(d))
    if len(n) < MIN_PARAMETRIC_RUNS or n_distinct < 2 or d_distinct < 2:
        raise ScalingError(
            f"approach 3 needs >= {MIN_PARAMETRIC_RUNS} runs with >= 2 distinct N and >= 2 "
            f"distinct D; found {len(n)} runs, {n_distinct} distinct N, {d_distinct} distinct D"
        )
    budgets = group_by_budget([{"flops": 6.0 * x * y} for x, y in zip(n, d, strict=True)])
    if len(budgets) < MIN_BUDGETS:
        raise ScalingError(
            f"approach 3 cannot separate N from D: the {len(n)} runs share one compute budget "
            f"(6ND within {BUDGET_TOLERANCE:.0%}), along which A / N^alpha and B / D^beta trade "
            f"off; it needs runs at >= {MIN_BUDGETS} compute budgets"
        )
    points = np.column_stack([np.log(n), np.log(d)])
    along, across = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if across < MIN_PARAMETRIC_SPREAD * along:
        raise ScalingError(
            f"approach 3 cannot separate N from D: the {len(n)} runs lie on one line in "
            f"(log N, log D) (spread across it {across / along:.2g} of that along it, "
            f"< {MIN_PARAMETRIC_SPREAD}), as runs of one tokens-per-parameter ratio do; it "
            "needs runs off that line"
        )


def _lbfgs(theta0: np.ndarray, args: tuple[Any, ...], tight: bool) -> Any:
    options = {"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12} if tight else {"maxiter": 500}
    return minimize(
        _huber_objective, theta0, args=args, jac=True, method="L-BFGS-B", options=options
    )


def _multistart(starts: np.ndarray, args: tuple[Any, ...], n_polish: int = 4) -> Any:
    """L-BFGS-B from every start with scipy's default tolerances, then the best ``n_polish``
    end points refined with tight ones (the Huber sum is ~1e-5, far below the default ftol
    scale of 1); the best refined result."""
    ends = [_lbfgs(theta0, args, tight=False) for theta0 in starts]
    ends = sorted((r for r in ends if np.isfinite(r.fun)), key=lambda r: r.fun)[:n_polish]
    polished = [_lbfgs(r.x, args, tight=True) for r in ends]
    polished = [r for r in polished if np.isfinite(r.fun)]
    if not polished:
        raise ScalingError("approach 3: L-BFGS diverged from every initialisation")
    return min(polished, key=lambda r: r.fun)


def fit_parametric(
    N: Sequence[float] | np.ndarray,
    D: Sequence[float] | np.ndarray,
    L: Sequence[float] | np.ndarray,
    *,
    delta: float = HUBER_DELTA,
    max_starts: int = DEFAULT_MAX_STARTS,
) -> dict[str, Any]:
    """Approach 3 of Hoffmann et al. 2022: L(N, D) = E + A / N^alpha + B / D^beta, fitted as in
    Besiroglu et al. 2024: E, A, B = exp(e, a, b); minimise sum Huber_delta(logsumexp(a - alpha
    log N, b - beta log D, e) - log L) with L-BFGS-B (analytic gradient) from the Chinchilla
    grid of initialisations, keeping the best. The 4500-point grid is scored at once and the
    optimiser started from a deterministic subsample of ``max_starts`` points of it.

    Returns {E, A, B, alpha, beta, huber_loss, e, a, b, n_points, n_starts}; raises
    ScalingError with fewer than 5 points or fewer than 2 distinct N or D."""
    n, d, loss = (np.asarray(v, dtype=float).ravel() for v in (N, D, L))
    _check_points(n, d, loss)
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    grid = np.array(list(product(*(CHINCHILLA_GRID[k] for k in ("a", "b", "e", "alpha", "beta")))))
    starts = grid[_initialisations(_grid_losses(grid, log_n, log_d, log_l, delta), max_starts)]
    # L-BFGS-B calls BLAS on tiny matrices; on a busy machine OpenBLAS worker threads make
    # every iteration ~10x slower, so the fit runs BLAS on one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        best = _multistart(starts, (_design(log_n, log_d), log_l, delta))
    a, b, e, alpha, beta = (float(v) for v in best.x)
    return {
        "E": math.exp(e),
        "A": math.exp(a),
        "B": math.exp(b),
        "alpha": alpha,
        "beta": beta,
        "huber_loss": float(best.fun),
        "e": e,
        "a": a,
        "b": b,
        "n_points": int(len(n)),
        "n_starts": int(len(starts)),
    }


def predict_loss(params: dict[str, float], n: float | np.ndarray, d: float | np.ndarray) -> Any:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""
    return (
        params["E"]
        + params["A"] / np.power(n, params["alpha"])
        + params["B"] / np.power(d, params["beta"])
    )


def optimal_allocation(params: dict[str, float], flops: float) -> tuple[float, float]:
    """Compute-optimal (N_opt, D_opt) under C = 6 N D for the parametric law (Hoffmann et al.
    2022, eq. 4): G = (alpha A / (beta B))^(1/(alpha+beta)), N_opt = G (C/6)^(beta/(alpha+beta)),
    D_opt = G^-1 (C/6)^(alpha/(alpha+beta))."""
    alpha, beta = params["alpha"], params["beta"]
    if alpha <= 0 or beta <= 0:
        raise ScalingError(
            f"no compute-optimal allocation for alpha={alpha:.3g}, "
            f"beta={beta:.3g} (both must be > 0)"
        )
    s = alpha + beta
    g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / s)
    c6 = flops / 6.0
    return float(g * c6 ** (beta / s)), float(c6 ** (alpha / s) / g)


# --------------------------------------------------------------------------- target budget


def _allocation_summary(n_opt: float, d_opt: float, loss: float | None) -> dict[str, Any]:
    return {
        "N_opt": n_opt,
        "D_opt": d_opt,
        "tokens_per_param": d_opt / n_opt,
        "predicted_loss": loss,
    }


def _law_reach(law: dict[str, float]) -> tuple[float, float]:
    """The range of log10 C over which k C^exponent is a positive finite float (a margin of a
    factor 10 inside the float64 range)."""
    lo, hi = math.log10(np.finfo(float).tiny) + 1, math.log10(np.finfo(float).max) - 1
    if law["exponent"] == 0:
        return -math.inf, math.inf
    bounds = sorted((edge - math.log10(law["k"])) / law["exponent"] for edge in (lo, hi))
    return bounds[0], bounds[1]


def _power(law: dict[str, float], flops: float) -> float:
    return float(10 ** (math.log10(law["k"]) + law["exponent"] * math.log10(flops)))


def target_allocation(
    flops: float, iso: dict[str, Any] | None, par: dict[str, Any] | None
) -> dict[str, Any]:
    """N_opt, D_opt, D/N and predicted loss at ``flops`` from each available approach: Approach 2
    extrapolates its power laws (loss: the pure power law through the per-budget minima),
    Approach 3 uses the closed form of Hoffmann et al. 2022 (eq. 4) and L(N_opt, D_opt).

    Raises ScalingError where an approach's allocation is not a positive finite number there
    (a power law overflowing, or underflowing to 0), naming the budgets it allows."""
    out: dict[str, Any] = {"flops": flops, "approach2": None, "approach3": None}
    if iso is not None:
        laws = [iso["N_opt_law"], iso["D_opt_law"]] + [iso["loss_law"]] * bool(iso["loss_law"])
        lo = max(_law_reach(law)[0] for law in laws)
        hi = min(_law_reach(law)[1] for law in laws)
        if not lo <= math.log10(flops) <= hi:
            raise ScalingError(
                f"target_flops={flops:.3g} is beyond approach 2's power laws (N_opt = "
                f"{iso['N_opt_law']['k']:.3g} C^{iso['a']:.3g}, D_opt = "
                f"{iso['D_opt_law']['k']:.3g} C^{iso['b']:.3g}): there N_opt, D_opt or L_min is "
                f"not a finite positive number; allowed: 10^{lo:.4g} <= C <= 10^{hi:.4g}"
            )
        l_law = iso["loss_law"]
        out["approach2"] = _allocation_summary(
            _power(iso["N_opt_law"], flops),
            _power(iso["D_opt_law"], flops),
            _power(l_law, flops) if l_law is not None else None,
        )
    if par is not None and par["alpha"] > 0 and par["beta"] > 0:
        try:
            n_opt, d_opt = optimal_allocation(par, flops)
            loss = float(predict_loss(par, n_opt, d_opt))
        except OverflowError:
            n_opt = d_opt = loss = math.inf
        if not all(0 < v < math.inf for v in (n_opt, d_opt, loss)):
            raise ScalingError(
                f"target_flops={flops:.3g}: approach 3's allocation there is not finite "
                f"(N_opt={n_opt:.3g}, D_opt={d_opt:.3g}, loss={loss:.3g}); allowed: a budget "
                "at which N_opt, D_opt and the loss are finite positive numbers"
            )
        out["approach3"] = _allocation_summary(n_opt, d_opt, loss)
    return out


def target_reach(flops: float, budgets: Sequence[float]) -> float:
    """How many times beyond the fitted budgets ``flops`` lies: target / largest above them,
    smallest / target below them, 1 within."""
    return max(flops / max(budgets), min(budgets) / flops, 1.0)


def parametric_summary(
    par: dict[str, Any], n_key: str, losses: Sequence[float] | np.ndarray
) -> dict[str, Any]:
    """The fitted constants plus the implied exponents N_opt ~ C^a, D_opt ~ C^b and the
    ``warnings`` of :func:`parametric_warnings` for the ``losses`` fitted."""
    summary = dict(par, n_key=n_key, status="ok", warnings=parametric_warnings(par, losses))
    s = par["alpha"] + par["beta"]
    if par["alpha"] > 0 and par["beta"] > 0:
        summary["a"], summary["b"] = par["beta"] / s, par["alpha"] / s
    return summary


def parametric_warnings(par: dict[str, Any], losses: Sequence[float] | np.ndarray) -> list[str]:
    """Why Approach 3's constants do not transfer, if they do not. The fit measures losses in
    log L to the Huber delta (HUBER_DELTA): losses spanning less than that (log max/min) are
    fitted by the constant E alone, leaving A, B, alpha, beta undetermined; an E below delta
    times the smallest loss changes no fitted log L by delta, so E sits at its bound 0,
    undetermined, and A, alpha trade off against it."""
    loss = np.asarray(losses, dtype=float)
    warnings = []
    spread = float(np.log(loss.max() / loss.min()))
    if spread < HUBER_DELTA:
        warnings.append(
            f"the {len(loss)} losses span {loss.min():.6g} to {loss.max():.6g} (log max/min "
            f"{spread:.2g} < the Huber delta {HUBER_DELTA:g}): a constant fits them, so A, B, "
            "alpha and beta are not determined by the data"
        )
    if par["E"] < HUBER_DELTA * loss.min():
        warnings.append(
            f"E={par['E']:.3g} sits at its bound 0 (below the Huber delta {HUBER_DELTA:g} times "
            f"the smallest loss {loss.min():.4g}): the data do not determine the irreducible "
            "loss, and A and alpha, which trade off against it, do not transfer"
        )
    return warnings


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
