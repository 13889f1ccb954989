"""Compute-optimal scaling laws from a multirun directory (Chinchilla).

Two of the three estimators of Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models" (arXiv:2203.15556), with the parametric fit done as in the replication of Besiroglu et
al. 2024, "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102):

* Approach 2 (isoFLOP profiles): per compute budget C, a parabola of loss vs log10 N gives
  N_opt(C); power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted in log space.
* Approach 3 (parametric): L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimising the
  Huber loss (delta = 1e-3) of log L with L-BFGS from a grid of initialisations; the
  compute-optimal allocation under C = 6 N D then has a closed form.

Each job of the multirun directory holds a ``results.json`` with ``status``, ``params``,
``non_embedding_params``, ``tokens``, ``flops`` (6 N D), ``val_loss`` and optionally
``budget_flops`` (the nominal isoFLOP budget the sweep assigned the run to).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

REQUIRED_FIELDS = ("params", "non_embedding_params", "tokens", "flops", "val_loss")
N_KEYS = ("params", "non_embedding_params")
HUBER_DELTA = 1e-3
BUDGET_TOLERANCE = 0.10  # runs whose flops differ by less than 10% share an isoFLOP budget
MIN_SIZES_PER_BUDGET = 3
MIN_BUDGETS = 2
MIN_PARAMETRIC_RUNS = 5
# The initialisation grid of Hoffmann et al. 2022 (Appendix D.2), in the (e, a, b) log space.
CHINCHILLA_GRID: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
DEFAULT_MAX_STARTS = 160


class ScalingError(ValueError):
    """The multirun directory or its results cannot support the requested scaling-law fit; the
    one-line message says what was found and what is needed."""


# --------------------------------------------------------------------------- loading runs


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalingError(f"{file}: cannot read results ({exc})") from exc
    if not isinstance(data, dict):
        raise ScalingError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _number(data: dict[str, Any], field: str, file: Path) -> float:
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScalingError(f"{file}: field '{field}' must be a number, got {value!r}")
    return float(value)


def _parse_run(file: Path, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The run as a dict (fields made float, ``results_file`` added) or the reason to skip it."""
    if "status" not in data:
        raise ScalingError(f"{file}: missing required field 'status'")
    if data["status"] != "completed":
        return None, f"status is {data['status']!r}, not 'completed'"
    for field in REQUIRED_FIELDS:
        if field not in data:
            raise ScalingError(f"{file}: missing required field '{field}'")
    run = dict(data)
    for field in REQUIRED_FIELDS:
        run[field] = _number(data, field, file)
        if not math.isfinite(run[field]) or run[field] <= 0:
            return None, f"{field} is {run[field]!r}, not a positive finite number"
    if data.get("budget_flops") is not None:
        run["budget_flops"] = _number(data, "budget_flops", file)
        if not 0 < run["budget_flops"] < math.inf:
            raise ScalingError(
                f"{file}: field 'budget_flops' must be > 0, got {run['budget_flops']}"
            )
    run["results_file"] = str(file)
    return run, None


def scan_runs(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """All ``results.json`` under ``path`` (any depth): the usable runs and, for the others,
    ``{"file", "reason"}`` (not completed, or a non-finite/non-positive value such as a NaN loss).

    Raises ScalingError if the directory does not exist, holds no results.json, or a completed
    run lacks one of REQUIRED_FIELDS (the message names the file and the field)."""
    root = Path(path)
    if not root.is_dir():
        raise ScalingError(f"multirun directory does not exist: {root}")
    files = sorted(root.rglob("results.json"))
    if not files:
        raise ScalingError(f"no results.json found under {root}")
    runs, skipped = [], []
    for file in files:
        run, reason = _parse_run(file, _read_json(file))
        if run is None:
            skipped.append({"file": str(file), "reason": str(reason)})
        else:
            runs.append(run)
    return runs, skipped


def load_runs(path: str | Path) -> list[dict[str, Any]]:
    """The completed runs of a multirun directory, one dict per ``results.json`` (see
    :func:`scan_runs`, which also returns the skipped ones). Input to the Chinchilla fits of
    Hoffmann et al. 2022 / Besiroglu et al. 2024."""
    return scan_runs(path)[0]


def _n_of(run: dict[str, Any], n_key: str) -> float:
    if n_key not in N_KEYS:
        raise ScalingError(f"n_key must be one of {N_KEYS}, got {n_key!r}")
    return float(run[n_key])


# --------------------------------------------------------------------------- approach 2


def group_by_budget(
    runs: Sequence[dict[str, Any]], tolerance: float = BUDGET_TOLERANCE
) -> list[tuple[float, list[dict[str, Any]]]]:
    """Runs grouped into isoFLOP budgets, ascending: by ``budget_flops`` where a run has it,
    otherwise by clustering ``flops`` (a run joins the current cluster if its flops are within
    ``tolerance`` of the cluster's smallest; the budget is the geometric mean)."""
    groups: dict[float, list[dict[str, Any]]] = {}
    loose = sorted((r for r in runs if r.get("budget_flops") is None), key=lambda r: r["flops"])
    for run in runs:
        if run.get("budget_flops") is not None:
            groups.setdefault(float(run["budget_flops"]), []).append(run)
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
    n = np.array([_n_of(r, n_key) for r in runs])
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
    if coeffs[0] <= 0:
        profile["status"] = "no minimum (parabola not convex)"
        return profile
    vertex = -coeffs[1] / (2.0 * coeffs[0])
    profile["N_opt"] = float(10**vertex)
    profile["D_opt"] = budget / (6.0 * profile["N_opt"])
    profile["loss_min"] = float(np.polyval(coeffs, vertex))
    profile["extrapolated"] = bool(vertex < x.min() or vertex > x.max())
    return profile


def isoflop_profiles(runs: Sequence[dict[str, Any]], n_key: str = "params") -> list[dict[str, Any]]:
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


def fit_isoflop(runs: Sequence[dict[str, Any]], n_key: str = "params") -> dict[str, Any]:
    """Approach 2 of Hoffmann et al. 2022 (isoFLOP profiles), as replicated by Besiroglu et al.
    2024: per budget C a parabola in log10 N gives N_opt(C) and D_opt = C / (6 N_opt); then
    N_opt = k_N C^a and D_opt = k_D C^b (Chinchilla: a ~ b ~ 0.5) and, as a pure power law,
    L_min = k_L C^c through the parabola minima.

    Returns {"budgets", "a", "b", "N_opt_law", "D_opt_law", "loss_law"}; raises ScalingError
    with fewer than 2 budgets having a minimum (each needs >= 3 distinct N)."""
    profiles = isoflop_profiles(runs, n_key)
    good = [p for p in profiles if "N_opt" in p]
    if len(good) < MIN_BUDGETS:
        detail = "; ".join(_budget_summary(profiles))
        raise ScalingError(
            f"approach 2 needs >= {MIN_BUDGETS} compute budgets with an isoFLOP minimum "
            f"(>= {MIN_SIZES_PER_BUDGET} distinct N each); found {len(good)} of "
            f"{len(profiles)} budgets from {len(runs)} runs ({detail})"
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
    }


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


def target_allocation(
    flops: float, iso: dict[str, Any] | None, par: dict[str, Any] | None
) -> dict[str, Any]:
    """N_opt, D_opt, D/N and predicted loss at ``flops`` from each available approach: Approach 2
    extrapolates its power laws (loss: the pure power law through the per-budget minima),
    Approach 3 uses the closed form of Hoffmann et al. 2022 (eq. 4) and L(N_opt, D_opt)."""
    out: dict[str, Any] = {"flops": flops, "approach2": None, "approach3": None}
    if iso is not None:
        n_law, d_law, l_law = iso["N_opt_law"], iso["D_opt_law"], iso["loss_law"]
        out["approach2"] = _allocation_summary(
            n_law["k"] * flops ** n_law["exponent"],
            d_law["k"] * flops ** d_law["exponent"],
            l_law["k"] * flops ** l_law["exponent"] if l_law is not None else None,
        )
    if par is not None and par["alpha"] > 0 and par["beta"] > 0:
        n_opt, d_opt = optimal_allocation(par, flops)
        out["approach3"] = _allocation_summary(n_opt, d_opt, float(predict_loss(par, n_opt, d_opt)))
    return out


def _parametric_summary(par: dict[str, Any], n_key: str) -> dict[str, Any]:
    """The fitted constants plus the implied exponents N_opt ~ C^a, D_opt ~ C^b."""
    summary = dict(par, n_key=n_key, status="ok")
    s = par["alpha"] + par["beta"]
    if par["alpha"] > 0 and par["beta"] > 0:
        summary["a"], summary["b"] = par["beta"] / s, par["alpha"] / s
    return summary


# --------------------------------------------------------------------------- plotting


def _budget_label(flops: float) -> str:
    exponent = math.floor(math.log10(flops))
    mantissa = flops / 10**exponent
    return f"C={mantissa:.3g}e{exponent}" if abs(mantissa - 1) > 1e-3 else f"C=1e{exponent}"


def _plot_optima(ax: Axes, profiles: list[dict[str, Any]], par: dict[str, Any] | None) -> None:
    """The per-budget optima of both approaches, each connected into a frontier."""
    optima = [p for p in profiles if "N_opt" in p]
    if optima:
        n_opt, loss_min = [p["N_opt"] for p in optima], [p["loss_min"] for p in optima]
        ax.plot(n_opt, loss_min, "k*-", ms=11, zorder=4, label="approach 2 optima (frontier)")
    if par is not None and par["alpha"] > 0 and par["beta"] > 0:
        alloc = [optimal_allocation(par, p["flops"]) for p in profiles]
        n_opt, loss_min = [n for n, _ in alloc], [predict_loss(par, n, d) for n, d in alloc]
        ax.plot(n_opt, loss_min, "rD:", ms=5, zorder=4, label="approach 3 optima")


def _plot_profiles(ax: Axes, profiles: list[dict[str, Any]], par: dict[str, Any] | None) -> None:
    """Left panel: loss vs N per budget with the parabola fits (solid), the Approach-3 isoFLOP
    curves (dashed), and the optima of both approaches connected into frontiers."""
    cmap = colormaps["viridis"]
    for i, prof in enumerate(profiles):
        color = cmap(0.9 * i / max(1, len(profiles) - 1))
        n = np.asarray(prof["N"])
        label = _budget_label(prof["flops"]) if len(profiles) <= 10 else None
        ax.scatter(n, prof["loss"], color=color, s=18, zorder=3, label=label)
        xs = 10 ** np.linspace(np.log10(n.min()) - 0.15, np.log10(n.max()) + 0.15, 200)
        if "coeffs" in prof:
            ax.plot(xs, np.polyval(prof["coeffs"], np.log10(xs)), color=color, lw=1.2)
        if par is not None:
            isoflop = predict_loss(par, xs, prof["flops"] / (6 * xs))
            ax.plot(xs, isoflop, color=color, ls="--", lw=1)
    _plot_optima(ax, profiles, par)
    ax.plot([], [], color="gray", lw=1.2, label="parabola in log N (approach 2)")
    if par is not None:
        ax.plot([], [], color="gray", ls="--", lw=1, label="L(N, C/6N) (approach 3)")
    losses = np.concatenate([p["loss"] for p in profiles])
    pad = 0.08 * (losses.max() - losses.min() + 1e-9)
    ax.set_ylim(losses.min() - pad, losses.max() + pad)
    ax.set_xscale("log")
    ax.set(xlabel="parameters N", ylabel="validation loss", title="isoFLOP profiles")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")


def _mark_target(ax: Axes, target: dict[str, Any]) -> None:
    """Vertical line at the target budget and each approach's N_opt there, annotated."""
    ax.axvline(
        target["flops"], color="gray", ls=":", label=f"target {_budget_label(target['flops'])}"
    )
    for key, style, dy in (("approach2", "ko", 8), ("approach3", "rD", -14)):
        if target[key] is not None:
            n_opt = target[key]["N_opt"]
            ax.plot([target["flops"]], [n_opt], style, ms=8, mfc="none", mew=2)
            ax.annotate(
                f"{n_opt:.3g}",
                (target["flops"], n_opt),
                textcoords="offset points",
                xytext=(-8, dy),
                ha="right",
                fontsize=8,
            )


def _plot_frontier(
    ax: Axes,
    profiles: list[dict[str, Any]],
    iso: dict[str, Any] | None,
    par: dict[str, Any] | None,
    target: dict[str, Any],
) -> None:
    """Right panel: N_opt vs C (log-log) with both approaches' power laws and the target."""
    flops = [p["flops"] for p in profiles] + [target["flops"]]
    cs = np.logspace(np.log10(min(flops)) - 0.2, np.log10(max(flops)) + 0.2, 100)
    optima = [p for p in profiles if "N_opt" in p]
    if optima:
        c_opt, n_opt = [p["flops"] for p in optima], [p["N_opt"] for p in optima]
        ax.scatter(
            c_opt, n_opt, marker="*", s=90, color="k", zorder=3, label="approach 2 isoFLOP optima"
        )
    if iso is not None:
        k, a = iso["N_opt_law"]["k"], iso["N_opt_law"]["exponent"]
        ax.plot(cs, k * cs**a, "k-", label=f"approach 2: $N_{{opt}} = {k:.3g}\,C^{{{a:.3f}}}$")
    if par is not None and target["approach3"] is not None:
        n3 = [optimal_allocation(par, c)[0] for c in cs]
        ax.plot(cs, n3, "r--", label=f"approach 3: $N_{{opt}} \\propto C^{{{par['a']:.3f}}}$")
    _mark_target(ax, target)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(
        xlabel="compute C = 6ND (FLOPs)",
        ylabel="compute-optimal parameters $N_{opt}$",
        title="compute-optimal model size",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")


def _plot_title(iso: dict[str, Any] | None, par: dict[str, Any] | None) -> str:
    parts = []
    if par is not None:
        parts.append(
            f"approach 3: L = {par['E']:.3f} + {par['A']:.4g}/N^{par['alpha']:.3f}"
            f" + {par['B']:.4g}/D^{par['beta']:.3f}"
        )
    if iso is not None:
        parts.append(f"approach 2: N_opt ~ C^{iso['a']:.3f}, D_opt ~ C^{iso['b']:.3f}")
    return "Chinchilla scaling fits   " + "   |   ".join(parts)


def plot_scaling(
    file: str | Path,
    profiles: list[dict[str, Any]],
    iso: dict[str, Any] | None,
    par: dict[str, Any] | None,
    target: dict[str, Any],
) -> Path:
    """Write the two-panel figure (isoFLOP profiles; N_opt vs C) with the Agg backend."""
    fig = Figure(figsize=(15, 6.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _plot_profiles(left, profiles, par)
    _plot_frontier(right, profiles, iso, par, target)
    fig.suptitle(_plot_title(iso, par), fontsize=11)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    return Path(file)


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
        [_n_of(r, n_key) for r in runs], [r["tokens"] for r in runs], [r["val_loss"] for r in runs]
    )


def _labels(profiles: list[dict[str, Any]], most: int = 6) -> str:
    labels = [_budget_label(p["flops"]) for p in profiles]
    return ", ".join(labels[:most]) + (
        f", ... ({len(labels)} in all)" if len(labels) > most else ""
    )


def _budget_summary(profiles: list[dict[str, Any]]) -> list[str]:
    """One line per kind of unusable or extrapolated isoFLOP profile, naming the budgets."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for p in profiles:
        if p["status"] != "ok":
            kinds.setdefault(p["status"].split(" (")[0], []).append(p)
        elif p.get("extrapolated"):
            kinds.setdefault("parabola vertex outside the sampled N", []).append(p)
    return [f"{kind}: {_labels(group)}" for kind, group in kinds.items()]


def _notes(profiles: list[dict[str, Any]], par: dict[str, Any] | None) -> list[str]:
    notes = [f"approach 2, {line}" for line in _budget_summary(profiles)]
    if par is not None and not (par["alpha"] > 0 and par["beta"] > 0):
        notes.append("approach 3: alpha or beta <= 0, no compute-optimal allocation")
    return notes


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
    n_key: str = "params",
) -> dict[str, Any]:
    """Fit Approaches 2 and 3 of Hoffmann et al. 2022 (Approach 3 as in Besiroglu et al. 2024)
    to the completed runs under ``path``; write ``scaling.json`` and ``scaling.png`` to ``out``
    (default ``path``) and return the same dict. ``target_flops`` defaults to 10x the largest
    budget. One approach may be skipped (the reason is recorded); raises ScalingError if both
    are impossible."""
    if n_key not in N_KEYS:
        raise ScalingError(f"n_key must be one of {N_KEYS}, got {n_key!r}")
    if target_flops is not None and not 0 < target_flops < math.inf:
        raise ScalingError(f"target_flops must be a positive finite number, got {target_flops}")
    runs, skipped = scan_runs(path)
    iso, iso_reason = _attempt(fit_isoflop, runs, n_key)
    par, par_reason = _attempt(_fit_parametric_runs, runs, n_key)
    if iso is None and par is None:
        raise ScalingError(
            f"no fit possible from {len(runs)} completed runs ({len(skipped)} skipped): "
            f"{iso_reason}; {par_reason}"
        )
    profiles = iso["budgets"] if iso is not None else isoflop_profiles(runs, n_key)
    par_out = _parametric_summary(par, n_key) if par is not None else None
    flops = 10.0 * max(p["flops"] for p in profiles) if target_flops is None else target_flops
    target = target_allocation(float(flops), iso, par_out)
    out_dir = Path(out) if out is not None else Path(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    skip2 = {"status": "skipped", "reason": iso_reason, "budgets": profiles}
    result: dict[str, Any] = {
        "multirun_dir": str(path),
        "n_key": n_key,
        "runs": _run_counts(runs, skipped),
        "approach2": dict(iso, status="ok") if iso is not None else skip2,
        "approach3": par_out or {"status": "skipped", "reason": par_reason},
        "target": target,
        "notes": _notes(profiles, par),
        "outputs": {"json": str(out_dir / "scaling.json"), "png": str(out_dir / "scaling.png")},
    }
    plot_scaling(out_dir / "scaling.png", profiles, iso, par_out, target)
    (out_dir / "scaling.json").write_text(json.dumps(result, indent=2, default=_json_default))
    return result
