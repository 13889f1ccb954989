"""Compute-optimal scaling laws (Chinchilla), Approach 3: the parametric fit.

L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, "Training Compute-Optimal Large
Language Models", arXiv:2203.15556), fitted as in the replication of Besiroglu et al. 2024,
"Chinchilla Scaling: A replication attempt" (arXiv:2404.10102): minimising the Huber loss
(delta = 1e-3) of log L with L-BFGS from a grid of initialisations; the compute-optimal
allocation under C = 6 N D then has a closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from lmlab.analysis.scaling_fit import (
    BUDGET_TOLERANCE,
    MIN_BUDGETS,
    ScalingError,
    group_by_budget,
)

HUBER_DELTA = 1e-3
MIN_PARAMETRIC_RUNS = 5
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
        # where it sits is the optimizer's last step, not the data's: 5.8e-193 on one CPU's
        # kernels, 0 on another's; below a millionth of the loss it prints as the bound
        shown = par["E"] if par["E"] >= 1e-6 * loss.min() else 0.0
        warnings.append(
            f"E={shown:.3g} sits at its bound 0 (below the Huber delta {HUBER_DELTA:g} times "
            f"the smallest loss {loss.min():.4g}): the data do not determine the irreducible "
            "loss, and A and alpha, which trade off against it, do not transfer"
        )
    return warnings
