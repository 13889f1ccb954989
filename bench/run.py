"""``make bench``: run lmlab's benchmark suite, print one line per case, rewrite BENCHMARKS.md.

    python bench/run.py                        # the default set (est. 15-20 min, idle 2 cores)
    python bench/run.py --threads 1            # steadier where other jobs share the CPU
    python bench/run.py --quick                # smoke check: 1 run per case, a few steps;
                                               # writes no report unless --out names a file
    python bench/run.py --only overhead,data   # chosen cases (or groups: train, overhead, ...)
    python bench/run.py --only shakespeare     # nanoGPT's char-level CPU run (minutes)
    python bench/run.py --list                 # the cases

Each case runs ``--repeats`` times and reports the median with min and max. BENCHMARKS.md has
one section per group; a run replaces the sections of the groups it measured and keeps the
others, so ``--only`` updates part of the file.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "src", ROOT):  # bench/ and lmlab importable from a plain checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402

from bench.cases import CASES, INTROS, Settings  # noqa: E402
from bench.report import (  # noqa: E402
    CaseResult,
    git_commit,
    machine_lines,
    render,
    render_section,
    summary_line,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run per case, a few steps: smoke only")
    p.add_argument("--only", help="comma-separated cases or groups (see --list)")
    p.add_argument("--repeats", type=int, help="runs per case (default 3, or 1 with --quick)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    p.add_argument(
        "--out",
        type=Path,
        help="the file to rewrite (default: BENCHMARKS.md; none for --quick, whose smoke "
        "numbers are not benchmarks)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="GPU cases: a torch.profiler table of each case's first lmlab run (and plain "
        "loop) into DIR, of 5 steps after the timed ones",
    )
    p.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="start no case, and no further run of a case, after SECONDS (those left are "
        "reported as not run): bounds make bench-gpu on a machine lent for minutes",
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p.parse_args(argv)


def select(only: str | None) -> list[str]:
    """Case names in run order: the default set, or the named cases and groups."""
    if not only:
        return [name for name, case in CASES.items() if case.default]
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in CASES and w not in {c.group for c in CASES.values()}]
    if unknown:
        choices = ", ".join(CASES)
        raise SystemExit(f"error: unknown case {', '.join(unknown)}; choose from {choices}")
    # a group selects its default cases, or all of them when none is in the default set (gpu)
    default_groups = {c.group for c in CASES.values() if c.default}
    in_group = lambda c: c.group in wanted and (c.default or c.group not in default_groups)  # noqa: E731
    return [n for n, c in CASES.items() if n in wanted or in_group(c)]


def gflops(flops: float) -> str:
    return f"{flops / 1e9:,.1f} GFLOP/s"


def intro(group: str, s: Settings) -> str:
    if group != "train":
        return INTROS.get(group, "")
    return INTROS["train"].format(
        fp32=gflops(s.peak("32-true")),
        bf16=gflops(s.peak("bf16-mixed")),
    )


def run_cases(names: list[str], s: Settings) -> list[CaseResult]:
    """Every case in turn; a case that fails is reported as such and the suite goes on."""
    results = []
    for name in names:
        case, t0, load = CASES[name], time.time(), os.getloadavg()[0]
        if not s.time_left():
            results.append(CaseResult(case.group, name, skipped="not run: --budget spent"))
            print(summary_line(results[-1]), flush=True)
            continue
        try:
            out = case.fn(s)
        except Exception as err:  # one broken case must not lose the others' numbers
            traceback.print_exc()
            out = [CaseResult(case.group, name, skipped=f"failed: {type(err).__name__}: {err}")]
        for r in out:
            r.note = "; ".join(x for x in (r.note, f"load average {load:.1f} at the start") if x)
            print(summary_line(r), flush=True)
        print(f"  ({name}: {time.time() - t0:.0f} s)", flush=True)
        results += out
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, case in CASES.items():
            print(f"{name:24s} {case.group:12s} {'default' if case.default else '--only'}")
        return 0
    if args.out is None and not args.quick:
        args.out = ROOT / "BENCHMARKS.md"
    out_file = args.out.resolve() if args.out is not None else None
    if out_file is not None and (out_file.is_dir() or not out_file.parent.is_dir()):
        print(f"error: --out {args.out}: a file in an existing folder", file=sys.stderr)
        return 2  # before any case runs: its numbers would have nowhere to go
    for flag, value in (("--repeats", args.repeats), ("--threads", args.threads)):
        if value is not None and value < 1:
            print(f"error: {flag} {value}: allowed an int >= 1", file=sys.stderr)
            return 2
    profile = args.profile.resolve() if args.profile else None  # before the chdir below
    os.chdir(ROOT)  # the configs' relative paths (the Shakespeare text) start here
    if args.threads:
        torch.set_num_threads(args.threads)
    names = select(args.only)
    repeats = args.repeats or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="lmlab-bench-"))
    started = time.time()
    deadline = started + args.budget if args.budget else math.inf
    s = Settings(work=work, repeats=repeats, quick=args.quick, profile=profile, deadline=deadline)
    header = machine_lines(ROOT)
    try:
        results = run_cases(names, s)
        measured = (
            f"Measured {time.strftime('%Y-%m-%d %H:%M')} at commit {git_commit(ROOT)} with "
            f"{torch.get_num_threads()} torch thread(s)"
            + (" (`--quick`: smoke numbers, not benchmarks)." if args.quick else ".")
        )
        groups = list(dict.fromkeys(r.group for r in results))
        sections = {
            g: render_section(g, [r for r in results if r.group == g], measured, intro(g, s))
            for g in groups
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out_file is None:
        print("--quick: no report written (--out FILE writes one)")
        return _exit_code(results)
    previous = out_file.read_text() if out_file.exists() else ""
    header.append(f"- this run: `python bench/run.py {' '.join(argv or sys.argv[1:])}`".rstrip())
    header.append(f"- wall time of this run: {time.time() - started:,.0f} s")
    out_file.write_text(render(header, sections, previous))
    print(f"wrote {out_file}")
    return _exit_code(results)


def _exit_code(results: list[CaseResult]) -> int:
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
