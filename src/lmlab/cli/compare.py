"""``lmlab compare MULTIRUN_DIR [--metric val_loss] [--out DIR] [--higher-is-better]``
(= ``python src/compare.py ...``): rank the jobs of a Hydra multirun, name the winner and
whether its margin exceeds seed noise, write compare.png and compare.json."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from lmlab.analysis.compare import compare, none_completed
from lmlab.cli.args import ArgumentParser, user_path


def build_parser() -> ArgumentParser:
    """The arguments of ``lmlab compare`` / ``src/compare.py``."""
    parser = ArgumentParser(
        prog="lmlab compare",
        description="Rank the jobs of a Hydra multirun; write compare.png and compare.json.",
    )
    parser.add_argument(
        "multirun_dir",
        metavar="MULTIRUN_DIR",
        type=user_path,
        help="e.g. multirun/2024-06-01/12-00-00",
    )
    parser.add_argument(
        "--metric",
        default="val_loss",
        help="results.json key or metrics.csv column to rank by (default: val_loss)",
    )
    parser.add_argument(
        "--out", type=user_path, default=None, help="output dir (default: MULTIRUN_DIR)"
    )
    parser.add_argument(
        "--higher-is-better",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rank descending (--no-higher-is-better: ascending); default: higher for "
        "throughput (tokens_per_second, mfu), a fine-tuned task's val_acc, val_f1, "
        "val_accuracy, val_exact_match and the accuracy-like evals (eval/<task>/acc, "
        "acc_norm, exact_match, f1, ...), by their results.json or metrics.csv names; lower "
        "for everything else (losses, perplexity, bits per byte, time)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success, 1 when no run completed (the table lists them; one line says how many
    failed and why); bad input raises ``CompareError`` (exit 2)."""
    args = build_parser().parse_args(argv)
    console, errors = Console(), Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200  # piped into a log: do not squeeze the table to 80 columns
    rows = compare(
        args.multirun_dir,
        args.metric,
        args.out,
        higher_is_better=args.higher_is_better,
        console=console,
    )
    nothing = none_completed(rows, Path(args.multirun_dir))
    if nothing is not None:  # the table lists them, as it lists a sweep's failed runs
        errors.print(f"error: {nothing}", markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0
