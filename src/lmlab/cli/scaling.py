"""``lmlab scaling`` (= ``python src/scaling.py``): Chinchilla scaling-law analysis of a
multirun directory (Hoffmann et al. 2022, Approaches 2 and 3; Besiroglu et al. 2024). Writes
scaling.json and scaling.png, prints a summary.

    python src/scaling.py MULTIRUN_DIR [--target-flops 1e21] [--out DIR] [--n-key active_params]
        [--mixed-experts]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from lmlab.analysis.scaling import N_KEYS, analyze
from lmlab.analysis.scaling_fit import budget_summary
from lmlab.cli.args import ArgumentParser, user_path
from lmlab.config.outpath import check_folder_out


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def build_parser() -> ArgumentParser:
    """The command-line interface."""
    parser = ArgumentParser(
        prog="lmlab scaling",
        description="Fit Chinchilla scaling laws (isoFLOP profiles and the parametric loss "
        "L = E + A/N^alpha + B/D^beta) to the results.json files of a multirun directory.",
    )
    parser.add_argument("multirun_dir", type=user_path, help="directory searched for results.json")
    parser.add_argument(
        "--target-flops",
        type=_positive_float,
        default=None,
        help="compute budget to allocate (default: 10x the largest budget in the data)",
    )
    parser.add_argument(
        "--out", type=user_path, default=None, help="output directory (default: MULTIRUN_DIR)"
    )
    parser.add_argument(
        "--n-key",
        choices=N_KEYS,
        default="active_params",
        help="results.json field used as N (default: the active parameters, the N of 6·N·D in "
        "flops; all parameters for a dense model; params for runs with budget.params=total: "
        "a Mixture of Experts' runs are refused unless it is their budget.params' N)",
    )
    parser.add_argument(
        "--mixed-experts",
        action="store_true",
        help="fit dense runs and Mixture-of-Experts runs (or MoE runs of different expert "
        "counts) into one law; refused by default, as a law in N and D holds for one of them",
    )
    return parser


def _fmt(value: Any, spec: str = ".4g") -> str:
    """``value`` to significant figures (a D/N of 0.024 is not 0.0, nor 1e24 25 digits)."""
    return "-" if value is None else format(value, spec)


def _range(interval: list[float] | None, spec: str = ".3g") -> str:
    """A bootstrap interval as ``[low, high]``, ``-`` where there is none."""
    return "-" if interval is None else f"[{interval[0]:{spec}}, {interval[1]:{spec}}]"


def _status(fit: dict[str, Any]) -> str:
    """An approach's status, and that notes qualify it (``ok, see notes``): its warnings, or
    for approach 2 a note on its interval, or a budget's profile with no minimum or with its
    vertex outside the sampled N (the power laws then rest on an extrapolated N_opt or on fewer
    budgets)."""
    qualified = (
        fit.get("warnings")
        or fit.get("interval", {}).get("warnings")
        or budget_summary(fit.get("budgets", []))
    )
    return fit["status"] + (", see notes" if qualified else "")


def _budget_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"Approach 2: isoFLOP profiles ({_status(result['approach2'])})")
    for column in ("budget C", "runs", "N_opt", "D_opt", "D/N", "min loss", "status"):
        table.add_column(column, justify="left" if column == "status" else "right")
    for p in result["approach2"]["budgets"]:
        n_opt, d_opt = p.get("N_opt"), p.get("D_opt")
        ratio = d_opt / n_opt if n_opt else None
        status = p["status"] + (" (extrapolated)" if p.get("extrapolated") else "")
        table.add_row(
            _fmt(p["flops"], ".3g"),
            str(p["n_runs"]),
            _fmt(n_opt, ".3g"),
            _fmt(d_opt, ".3g"),
            _fmt(ratio, ".3g"),
            _fmt(p.get("loss_min")),
            status,
        )
    return table


def _constants_table(result: dict[str, Any]) -> Table:
    table = Table(title="Fitted constants")
    table.add_column("approach")
    table.add_column("constants")
    a2, a3 = result["approach2"], result["approach3"]
    if a3["status"] == "ok":
        table.add_row(
            f"3: L = E + A/N^alpha + B/D^beta ({_status(a3)})",
            f"E={a3['E']:.4g}  A={a3['A']:.4g}  B={a3['B']:.4g}  alpha={a3['alpha']:.4f}  "
            f"beta={a3['beta']:.4f}  (Huber {a3['huber_loss']:.3g})",
        )
    else:
        table.add_row("3 (skipped)", a3["reason"])
    if a2["status"] == "ok":
        interval = a2["interval"]
        table.add_row(
            f"2: N_opt = k_N C^a, D_opt = k_D C^b ({_status(a2)})",
            f"a={a2['a']:.4f} {_range(interval['a'], '.3f')}  "
            f"b={a2['b']:.4f} {_range(interval['b'], '.3f')}  "
            f"k_N={a2['N_opt_law']['k']:.4g}  k_D={a2['D_opt_law']['k']:.4g}  "
            f"({interval['confidence']:.0%} bootstrap intervals, {interval['resamples']} "
            f"resamples of the {interval['method']})",
        )
    else:
        table.add_row("2 (skipped)", a2["reason"])
    return table


def _target_table(result: dict[str, Any]) -> Table:
    """N_opt, D_opt, D/N and the predicted loss of each approach at the target, with approach
    2's bootstrap intervals where it was fitted (approach 3 has none: ``-``)."""
    target = result["target"]
    table = Table(title=f"Compute-optimal allocation at C = {target['flops']:.3g} FLOPs")
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("N_opt", lambda row: _fmt(row["N_opt"], ".3g")),
        ("D_opt", lambda row: _fmt(row["D_opt"], ".3g")),
    ]
    if target["approach2"] is not None:
        level = f"{result['approach2']['interval']['confidence']:.0%}"
        columns.insert(1, (f"N_opt {level}", lambda row: _range(row.get("N_opt_interval"))))
        columns.append((f"D_opt {level}", lambda row: _range(row.get("D_opt_interval"))))
    columns += [
        ("D/N", lambda row: _fmt(row["tokens_per_param"], ".3g")),
        ("predicted loss", lambda row: _fmt(row["predicted_loss"])),
    ]
    table.add_column("approach", justify="right")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for key in ("approach2", "approach3"):
        row = target[key]
        if row is not None:
            table.add_row(key[-1], *(cell(row) for _, cell in columns))
    return table


def print_summary(console: Console, result: dict[str, Any]) -> None:
    """Runs used/skipped, the per-budget optima, the fitted constants and the target."""
    runs = result["runs"]
    console.print(
        f"{runs['used']} runs used, {runs['skipped']} skipped (N = {result['n_key']})",
        highlight=False,
    )
    for skip in runs["skipped_runs"]:
        console.print(f"  skipped {skip['file']}: {skip['reason']}", markup=False, soft_wrap=True)
    console.print(_budget_table(result))
    console.print(_constants_table(result))
    console.print(_target_table(result))
    for note in result["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    outputs = result["outputs"]
    console.print(f"wrote {outputs['json']} and {outputs['png']}", markup=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run :func:`lmlab.analysis.scaling.analyze`, print (a ``ScalingError``
    is bad input: exit 2)."""
    args = build_parser().parse_args(argv)
    if args.out is not None:
        check_folder_out(args.out, "--out")  # before the fit: a file there is refused
    result = analyze(
        args.multirun_dir,
        args.target_flops,
        args.out,
        n_key=args.n_key,
        mixed_experts=args.mixed_experts,
    )
    print_summary(Console(), result)
    return 0
