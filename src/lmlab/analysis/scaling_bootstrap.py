"""How far to trust Approach 2: a bootstrap interval for its exponents and its N_opt, D_opt at
the target budget.

What is random in a sweep is each run's loss at its (budget, N): the seed's initialisation and
data order. The (budget, N) grid is the experimenter's design, not a sample, so whole runs are
not resampled (case resampling): a replicate that drew no run at some size would fit its
parabola to other sizes, or to fewer than 3 and fail, and the interval would describe designs
nobody ran. The design is kept and only the losses are redrawn (Davison & Hinkley 1997,
"Bootstrap Methods and their Application", sec. 6.2.3, fixed-design regression):

* ``seeds``, where every (budget, N) point of the fitted budgets has >= 2 runs: a point's losses
  are its mean plus its own runs' deviations from that mean drawn with replacement, scaled by
  sqrt(k / (k - 1)) for k runs so that their variance is the unbiased one (drawn plainly, 2
  seeds would give half of it). No model of how the loss varies with N enters: the parabola's
  misfit is not taken for noise.
* ``residuals``, otherwise (one run a point, the usual sweep): each budget's fitted parabola plus
  residuals drawn with replacement from the residuals of every budget's parabola, each divided
  by sqrt(1 - h), h its leverage, so its variance is the noise's (Davison & Hinkley alg. 6.3),
  and centred. They are pooled over budgets because one budget's 4 to 7 sizes leave 1 to 4
  residual degrees of freedom, too few to resample alone (none at 3 sizes); this takes the loss
  noise to be alike across budgets. A parabola's misfit counts as noise here, which widens the
  interval.

Each replicate repeats the estimator: every budget's parabola, the same curvature gate (a budget
without a minimum drops out, as it does in the fit), the power law N_opt = k C^a over the
budgets left (>= 2), and its N_opt at the target. The interval is the percentile interval of
the replicates. It measures the losses' noise, not the bias of the parabola form: where the
true profile is skewed in log N, every replicate's vertex shares that bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmlab.analysis.scaling_fit import (
    MIN_BUDGETS,
    MIN_SIZES_PER_BUDGET,
    curvature_evidence,
    curvature_quantile,
    group_by_budget,
    n_of,
)

CONFIDENCE = 0.90  # a central interval: the 5th and 95th percentiles of the replicates
RESAMPLES = 2000  # the 5th and 95th percentiles then vary by ~1.5% of the width between seeds
SEED = 0  # the same runs give the same interval


def _budgets(
    runs: Sequence[dict[str, Any]], n_key: str
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(C, log10 N, loss) of every budget a parabola is fitted to (>= 3 distinct N)."""
    out = []
    for budget, group in group_by_budget(runs):
        x = np.log10([n_of(r, n_key) for r in group])
        if len(np.unique(x)) >= MIN_SIZES_PER_BUDGET:
            out.append((budget, x, np.array([r["val_loss"] for r in group], dtype=float)))
    return out


def _seed_draws(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, b: int) -> np.ndarray:
    """(b, n) losses: each (budget, N) point's mean plus its runs' deviations, redrawn."""
    draws = np.empty((b, len(y)))
    for value in np.unique(x):
        (at,) = np.nonzero(x == value)
        k = len(at)
        deviation = (y[at] - y[at].mean()) * math.sqrt(k / (k - 1))
        draws[:, at] = y[at].mean() + deviation[rng.integers(0, k, size=(b, k))]
    return draws


def _hat(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parabola's design in centred x (for conditioning) and its pseudo-inverse."""
    design = np.vander(x - x.mean(), 3)
    return design, np.linalg.pinv(design)


def _residual_draws(
    budgets: list[tuple[float, np.ndarray, np.ndarray]], rng: np.random.Generator, b: int
) -> list[np.ndarray] | None:
    """(b, n) losses per budget: its parabola plus pooled leverage-scaled residuals; None
    where no budget has a residual degree of freedom (all at 3 sizes)."""
    fitted, pool = [], []
    for _, x, y in budgets:
        design, pinv = _hat(x)
        fitted.append(design @ (pinv @ y))
        leverage = np.einsum("ij,ji->i", design, pinv)
        if len(x) > 3:
            pool.append((y - fitted[-1]) / np.sqrt(np.clip(1.0 - leverage, 1e-12, None)))
    if not pool:
        return None
    residuals = np.concatenate(pool)
    residuals -= residuals.mean()
    return [f + residuals[rng.integers(0, len(residuals), size=(b, len(f)))] for f in fitted]


def _vertices(x: np.ndarray, y_Bn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each replicate's log10 N_opt on one budget and whether it has a minimum (the fit's
    curvature gate: :func:`lmlab.analysis.scaling_fit.curvature_evidence`)."""
    design, pinv = _hat(x)
    coeffs = y_Bn @ pinv.T  # (B, 3): c2, c1, c0 in x - mean(x)
    residual = y_Bn - coeffs @ design.T
    rise, precision, t = curvature_evidence(x, y_Bn, coeffs[:, 0], residual)
    ok = (rise > precision) & (coeffs[:, 0] > 0)
    if t is not None:
        ok &= t >= curvature_quantile(len(x) - 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = x.mean() - coeffs[:, 1] / (2.0 * coeffs[:, 0])
    return np.where(ok, vertex, 0.0), ok


def _power_laws(log_c: np.ndarray, log_n: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per replicate (row), least squares of log10 N_opt on log10 C over its budgets with a
    minimum: slope, intercept and whether >= MIN_BUDGETS budgets were left."""
    w = ok.astype(float)
    count = w.sum(axis=1)
    valid = count >= MIN_BUDGETS
    count = np.where(valid, count, 1.0)
    c_mean = (w * log_c).sum(axis=1) / count
    n_mean = (w * log_n).sum(axis=1) / count
    dc = (log_c - c_mean[:, None]) * w
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (dc * (log_n - n_mean[:, None])).sum(axis=1) / (dc * dc).sum(axis=1)
    return slope, n_mean - slope * c_mean, valid


def _interval(values: np.ndarray) -> list[float]:
    tail = (1.0 - CONFIDENCE) / 2.0
    return [float(q) for q in np.quantile(values, [tail, 1.0 - tail])]


def _power_of_ten(interval: list[float]) -> list[float] | None:
    """10^interval, or None where a bound leaves the float range."""
    if not all(-307 < v < 308 for v in interval):
        return None
    return [10.0**v for v in interval]


def bootstrap_isoflop(
    runs: Sequence[dict[str, Any]], n_key: str, target_flops: float, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """CONFIDENCE bootstrap intervals of Approach 2's exponents a, b and of N_opt, D_opt at
    ``target_flops`` (see the module's docstring for the resampling and why). Returns
    {confidence, method, resamples, failed, a, b, N_opt, D_opt, warnings}: each interval
    [low, high], or None where it cannot be given (``warnings`` says why)."""
    budgets = _budgets(runs, n_key)
    rng = np.random.default_rng(SEED)
    seeds = all(np.unique(x, return_counts=True)[1].min() >= 2 for _, x, _ in budgets)
    method = "seeds" if seeds else "residuals"
    draws = (
        [_seed_draws(x, y, rng, resamples) for _, x, y in budgets]
        if seeds
        else _residual_draws(budgets, rng, resamples)
    )
    out: dict[str, Any] = {"confidence": CONFIDENCE, "method": method, "resamples": resamples}
    out.update(failed=None, a=None, b=None, N_opt=None, D_opt=None, warnings=[])
    if draws is None:
        out["warnings"].append(
            "no interval: every budget has 3 sizes and 1 run each, so the parabolas pass "
            "through their points and leave nothing to measure the losses' noise by; add a "
            "size per budget or a second seed per point"
        )
        return out
    if seeds and all(np.ptp(d, axis=0).max() == 0 for d in draws):
        out["warnings"].append(
            "no interval: the runs at each (budget, N) point have one loss between them (the "
            "same seed run again?), so nothing measures the losses' noise; vary the seed"
        )
        return out
    fits = [_vertices(x, y_Bn) for (_, x, _), y_Bn in zip(budgets, draws, strict=True)]
    log_n = np.stack([vertex for vertex, _ in fits], axis=1)
    ok = np.stack([has_minimum for _, has_minimum in fits], axis=1)
    log_c = np.log10([budget for budget, _, _ in budgets])
    slope, intercept, valid = _power_laws(log_c, log_n, ok)
    out["failed"] = int((~valid).sum())
    if out["failed"] > (1.0 - CONFIDENCE) * resamples:
        out["warnings"].append(
            f"no interval: {out['failed']} of {resamples} resamples of the losses found fewer "
            f"than {MIN_BUDGETS} budgets with a minimum, more than the {1 - CONFIDENCE:.0%} a "
            f"{CONFIDENCE:.0%} interval may leave out: the fitted law itself hangs on the noise"
        )
        return out
    if out["failed"]:
        out["warnings"].append(
            f"{out['failed']} of {resamples} resamples of the losses found fewer than "
            f"{MIN_BUDGETS} budgets with a minimum; the interval is over the others, so it "
            "reads somewhat narrow"
        )
    a = _interval(slope[valid])
    log_n_target = _interval(intercept[valid] + slope[valid] * math.log10(target_flops))
    out["a"], out["b"] = a, [1.0 - a[1], 1.0 - a[0]]  # D_opt = C / (6 N_opt): b = 1 - a
    out["N_opt"] = _power_of_ten(log_n_target)
    log_d = [math.log10(target_flops / 6.0) - v for v in reversed(log_n_target)]
    out["D_opt"] = _power_of_ten(log_d)
    return out
