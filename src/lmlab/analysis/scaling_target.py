"""The compute-optimal allocation at a target budget C from the fitted laws: Approach 2's
power laws extrapolated, Approach 3's closed form (Hoffmann et al. 2022, eq. 4)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmlab.analysis.scaling_fit import ScalingError
from lmlab.analysis.scaling_parametric import optimal_allocation, predict_loss

# A target budget more than this many times beyond the fitted ones (above the largest or
# below the smallest) is a note: the allocation there extrapolates the fits that far (Hoffmann
# et al. 2022 went ~200x, from their 3e21 isoFLOPs to Gopher's 5.76e23), and the figure's
# frontier panel keeps to the data rather than stretching its axes to it.
FAR_TARGET = 1e3


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
