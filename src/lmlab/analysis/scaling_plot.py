"""``scaling.png``: the isoFLOP profiles with their parabolas (left) and N_opt against compute
with both approaches' frontiers and the target budget (right), drawn with the Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmlab.analysis.scaling_fit import MIN_BUDGETS, budget_label
from lmlab.analysis.scaling_parametric import optimal_allocation, predict_loss
from lmlab.files import save_figure

CREATOR = "lmlab scaling"  # scaling.png's mark: a file without it is not replaced
# a budget's parabola, solid where it has a minimum (an optimum of approach 2's law), dotted
# and faint where the curvature gate found none (``fit_isoflop`` leaves the budget out)
PARABOLA: dict[str, Any] = {"ls": "-", "lw": 1.2}
NO_MINIMUM: dict[str, Any] = {"ls": ":", "lw": 1.0, "alpha": 0.6}


def _plot_optima(ax: Axes, profiles: list[dict[str, Any]], par: dict[str, Any] | None) -> None:
    """The per-budget optima of both approaches, each connected into a frontier."""
    optima = [p for p in profiles if "N_opt" in p]
    if optima:
        n_opt, loss_min = [p["N_opt"] for p in optima], [p["loss_min"] for p in optima]
        ax.plot(n_opt, loss_min, "k*-", ms=11, zorder=4, label="approach 2 optima (frontier)")
        _mark_extrapolated(ax, optima, "loss_min", ms=11)
    if par is not None and par["alpha"] > 0 and par["beta"] > 0:
        alloc = [optimal_allocation(par, p["flops"]) for p in profiles]
        n_opt, loss_min = [n for n, _ in alloc], [predict_loss(par, n, d) for n, d in alloc]
        ax.plot(n_opt, loss_min, "rD:", ms=5, zorder=4, label="approach 3 optima")


def _mark_extrapolated(
    ax: Axes, optima: list[dict[str, Any]], y: str, ms: float, x: str = "N_opt"
) -> None:
    """Hollow stars over the optima whose parabola vertex lies outside the sampled N (the
    fit's ``extrapolated``): read off a curve beyond its data, not found among the runs."""
    outside = [p for p in optima if p.get("extrapolated")]
    if outside:
        ax.plot(
            [p[x] for p in outside],
            [p[y] for p in outside],
            "*",
            ms=ms,
            mfc="white",
            mec="k",
            zorder=5,
            label="vertex outside the sampled N (extrapolated)",
        )


def _plot_profiles(ax: Axes, profiles: list[dict[str, Any]], par: dict[str, Any] | None) -> None:
    """Left panel: loss vs N per budget with the parabola fits (solid; dotted where the
    curvature gate found no minimum and approach 2 leaves the budget out), the Approach-3
    isoFLOP curves (dashed), and the optima of both approaches connected into frontiers."""
    cmap = colormaps["viridis"]
    for i, prof in enumerate(profiles):
        color = cmap(0.9 * i / max(1, len(profiles) - 1))
        n = np.asarray(prof["N"])
        label = budget_label(prof["flops"]) if len(profiles) <= 10 else None
        ax.scatter(n, prof["loss"], color=color, s=18, zorder=3, label=label)
        xs = 10 ** np.linspace(np.log10(n.min()) - 0.15, np.log10(n.max()) + 0.15, 200)
        if "coeffs" in prof:
            style = PARABOLA if "N_opt" in prof else NO_MINIMUM
            ax.plot(xs, np.polyval(prof["coeffs"], np.log10(xs)), color=color, **style)
        if par is not None:
            isoflop = predict_loss(par, xs, prof["flops"] / (6 * xs))
            ax.plot(xs, isoflop, color=color, ls="--", lw=1)
    _plot_optima(ax, profiles, par)
    ax.plot([], [], color="gray", **PARABOLA, label="parabola in log N (approach 2)")
    if any("coeffs" in p and "N_opt" not in p for p in profiles):
        ax.plot([], [], color="gray", **NO_MINIMUM, label="parabola, no minimum (not fitted)")
    if par is not None:
        ax.plot([], [], color="gray", ls="--", lw=1, label="L(N, C/6N) (approach 3)")
    losses = np.concatenate([p["loss"] for p in profiles])
    pad = 0.08 * (losses.max() - losses.min() + 1e-9)
    ax.set_ylim(losses.min() - pad, losses.max() + pad)
    ax.set_xscale("log")
    ax.set(xlabel="parameters N", ylabel="validation loss", title="isoFLOP profiles")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")


def _mark_target(ax: Axes, target: dict[str, Any], confidence: float | None) -> None:
    """Vertical line at the target budget and each approach's N_opt there, annotated; approach
    2's with its bootstrap interval (``N_opt_interval``) as a capped bar where it has one."""
    ax.axvline(
        target["flops"], color="gray", ls=":", label=f"target {budget_label(target['flops'])}"
    )
    for key, style, dy in (("approach2", "ko", 8), ("approach3", "rD", -14)):
        if target[key] is not None:
            n_opt = target[key]["N_opt"]
            ax.plot([target["flops"]], [n_opt], style, ms=8, mfc="none", mew=2)
            interval = target[key].get("N_opt_interval")
            text = f"{n_opt:.3g}"
            if interval is not None:
                ax.plot(
                    [target["flops"]] * 2,
                    interval,
                    "k-",
                    marker="_",
                    ms=12,
                    lw=1.5,
                    label=f"approach 2 at target: {confidence:.0%} bootstrap interval",
                )
                text += f" [{interval[0]:.3g}, {interval[1]:.3g}]"
            ax.annotate(
                text,
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
    draw_target: bool = True,
) -> None:
    """Right panel: N_opt vs C (log-log) with both approaches' power laws and the target, with
    approach 2's bootstrap intervals (its exponent a in the legend, N_opt at the target as a
    bar) where it has them; a target too far from the data (``draw_target`` False) is named
    in the legend only, the axes spanning the fitted budgets."""
    flops = [p["flops"] for p in profiles] + [target["flops"]] * draw_target
    cs = np.logspace(np.log10(min(flops)) - 0.2, np.log10(max(flops)) + 0.2, 100)
    optima = [p for p in profiles if "N_opt" in p]
    if optima:
        c_opt, n_opt = [p["flops"] for p in optima], [p["N_opt"] for p in optima]
        ax.scatter(
            c_opt, n_opt, marker="*", s=90, color="k", zorder=3, label="approach 2 isoFLOP optima"
        )
        _mark_extrapolated(ax, optima, "N_opt", ms=9.5, x="flops")
    interval = (iso or {}).get("interval") or {}
    if iso is not None:
        k, a = iso["N_opt_law"]["k"], iso["N_opt_law"]["exponent"]
        label = f"approach 2: $N_{{opt}} = {k:.3g}\\,C^{{{a:.3f}}}$"
        if interval.get("a") is not None:
            low, high = interval["a"]
            label += f", a in [{low:.3f}, {high:.3f}] ({interval['confidence']:.0%})"
        ax.plot(cs, k * cs**a, "k-", label=label)
    if par is not None and target["approach3"] is not None:
        n3 = [optimal_allocation(par, c)[0] for c in cs]
        ax.plot(cs, n3, "r--", label=f"approach 3: $N_{{opt}} \\propto C^{{{par['a']:.3f}}}$")
    if draw_target:
        _mark_target(ax, target, interval.get("confidence"))
    else:
        ax.plot([], [], " ", label=f"target {budget_label(target['flops'])}: off the axes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(
        xlabel="compute C = 6ND (FLOPs)",
        ylabel="compute-optimal parameters $N_{opt}$",
        title="compute-optimal model size",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")


def _plot_title(
    iso: dict[str, Any] | None, par: dict[str, Any] | None, profiles: list[dict[str, Any]]
) -> str:
    """Each approach's law, or, for approach 2 fitted to fewer than ``MIN_BUDGETS`` budgets
    with a minimum, that it was skipped and why (the figure still draws its profiles)."""
    parts = []
    if par is not None:
        parts.append(
            f"approach 3: L = {par['E']:.3f} + {par['A']:.4g}/N^{par['alpha']:.3f}"
            f" + {par['B']:.4g}/D^{par['beta']:.3f}"
        )
    if iso is not None:
        parts.append(f"approach 2: N_opt ~ C^{iso['a']:.3f}, D_opt ~ C^{iso['b']:.3f}")
    elif profiles:
        minima = sum("N_opt" in p for p in profiles)
        parts.append(
            f"approach 2: skipped, {minima} of {len(profiles)} budgets with a minimum "
            f"(needs {MIN_BUDGETS})"
        )
    return "Chinchilla scaling fits   " + "   |   ".join(parts)


def plot_scaling(
    file: str | Path,
    profiles: list[dict[str, Any]],
    iso: dict[str, Any] | None,
    par: dict[str, Any] | None,
    target: dict[str, Any],
    draw_target: bool = True,
) -> Path:
    """Write the two-panel figure (isoFLOP profiles; N_opt vs C) with the Agg backend; the
    target is marked on the frontier panel if ``draw_target``, else only named there."""
    fig = Figure(figsize=(15, 6.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _plot_profiles(left, profiles, par)
    _plot_frontier(right, profiles, iso, par, target, draw_target)
    fig.suptitle(_plot_title(iso, par, profiles), fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(file), dpi=110, metadata={"Creator": CREATOR})  # scaling's own
