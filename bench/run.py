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
others, so ``--only`` updates part of the file. A run of only some of a group's cases (``--only
train_gpt_tiny_fp32``, or cases ``--budget`` left out) rewrites that group's rows of the cases
it measured and keeps the others, the note of each kept row saying which earlier run measured
it; a group none of whose cases ran keeps its section as it was, and a run that measured
nothing leaves the file alone. Lines that the report does not write (hand-written notes) are
kept: in a section, at its end; outside the sections, after the header. The header describes
the latest run and names the sections it measured; each section's 'Measured' line says
when, where and at which commit. The GPU cases (``--only gpu``: ``make bench-gpu``) are
refused without CUDA unless ``--quick``, which runs them shrunk on the CPU to check that
they work.
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
from collections.abc import Callable
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
    NOT_MEASURED,
    NOT_RUN,
    PENDING,
    CaseResult,
    git_commit,
    handwritten_outside,
    machine_lines,
    machine_summary,
    one_line,
    parse_section,
    render,
    render_section,
    sections_of,
    summary_line,
)


class Refused(ValueError):
    """An argument that cannot work, said in one line before any case runs (exit 2)."""


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
    if only is None:
        return [name for name, case in CASES.items() if case.default]
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    groups = list(dict.fromkeys(c.group for c in CASES.values()))
    choices = f"choose from the groups {', '.join(groups)} or the cases {', '.join(CASES)}"
    if not wanted:
        raise Refused(f"--only {only!r}: names no case or group; {choices}")
    unknown = [w for w in wanted if w not in CASES and w not in groups]
    if unknown:
        raise Refused(f"--only {only}: unknown case or group {', '.join(unknown)}; {choices}")
    # a group selects its default cases, or all of them when none is in the default set (gpu)
    default_groups = {c.group for c in CASES.values() if c.default}
    in_group = lambda c: c.group in wanted and (c.default or c.group not in default_groups)  # noqa: E731
    return [n for n, c in CASES.items() if n in wanted or in_group(c)]


def checked(args: argparse.Namespace, out_file: Path | None) -> list[str]:
    """The cases to run, once every argument is known to work: a case's numbers must not be
    lost at the end, nor a GPU case's full shapes run on a CPU and reported as a GPU's."""
    if out_file is not None and (out_file.is_dir() or not out_file.parent.is_dir()):
        raise Refused(f"--out {args.out}: a file in an existing folder")
    if args.profile is not None and args.profile.exists() and not args.profile.is_dir():
        # else each GPU case fails at its first table, after its timed runs, losing them
        raise Refused(f"--profile {args.profile}: a folder (made if missing), not a file")
    for flag, value in (("--repeats", args.repeats), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise Refused(f"{flag} {value}: allowed an int >= 1")
    if args.budget is not None and not args.budget > 0:  # 0 is a budget spent, not no budget
        raise Refused(f"--budget {args.budget:g}: allowed a number of seconds > 0")
    names = select(args.only)
    gpu = [n for n in names if CASES[n].group == "gpu"]
    if gpu and not args.quick and not torch.cuda.is_available():
        raise Refused(
            f"--only {args.only}: the gpu cases need CUDA, which this machine lacks "
            "(torch.cuda.is_available() is False); allowed without it: --quick (the cases "
            "shrunk to a smoke check) or the other groups"
        )
    return names


def not_run(name: str, why: str = NOT_RUN) -> CaseResult:
    return CaseResult(CASES[name].group, name, skipped=why, case=name)


def run_cases(
    names: list[str],
    s: Settings,
    done: Callable[[list[CaseResult], str], None] = lambda results, name: None,
) -> list[CaseResult]:
    """Every case in turn; a case that fails is reported as such and the suite goes on.
    ``done`` is given the results so far, the cases still to run as not run, and the name of
    the case that ended, after each case:
    a report written there keeps every case measured when the process is killed (a time
    limit). A SIGTERM (``timeout``'s) stops the case that ran, and the suite."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    results: list[CaseResult] = []
    for i, name in enumerate(names):
        case, t0, load = CASES[name], time.time(), os.getloadavg()[0]
        if not s.time_left():
            results.append(not_run(name))
            print(summary_line(results[-1]), flush=True)
            continue
        stopped = False
        try:
            out = case.fn(s)
        except (Exception, SIGTERMException) as err:  # one broken case must not lose the others'
            traceback.print_exc()
            stopped = isinstance(err, SIGTERMException)
            why = "stopped by SIGTERM (a time limit)" if stopped else one_line(err)
            out = [CaseResult(case.group, name, skipped=f"failed: {why}")]
        for r in out:
            r.case = name
            r.note = "; ".join(x for x in (r.note, f"load average {load:.1f} at the start") if x)
            print(summary_line(r), flush=True)
        print(f"  ({name}: {time.time() - t0:.0f} s)", flush=True)
        results += out
        if stopped:
            return results + [not_run(n, PENDING) for n in names[i + 1 :]]
        done(results + [not_run(n, PENDING) for n in names[i + 1 :]], name)
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
    try:
        names = checked(args, out_file)
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    profile = args.profile.resolve() if args.profile else None  # before the chdir below
    os.chdir(ROOT)  # the configs' relative paths (the Shakespeare text) start here
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="lmlab-bench-"))
    started = time.time()
    deadline = started + args.budget if args.budget is not None else math.inf
    s = Settings(work=work, repeats=repeats, quick=args.quick, profile=profile, deadline=deadline)
    header = machine_lines(ROOT)
    measured = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} at commit {git_commit(ROOT)} on "
        f"{machine_summary()} with {torch.get_num_threads()} torch thread(s)"
        + (" (`--quick`: smoke numbers, not benchmarks)." if args.quick else ".")
    )
    header.append(f"- this run: `python bench/run.py {' '.join(argv or sys.argv[1:])}`".rstrip())
    previous = out_file.read_text() if out_file is not None and out_file.exists() else ""

    def report(results: list[CaseResult], last: str = "") -> None:
        """The report of ``results``; ``last``: the case after which it is written while
        the run goes on."""
        if out_file is None or all(r.skipped in NOT_MEASURED for r in results):
            return
        wall = f"- wall time of this run: {time.time() - started:,.0f} s"
        if last:
            wall += f", written after case {last} while the run went on"
        write_report(out_file, results, measured, [*header, wall], previous, final=not last)

    try:
        results = run_cases(names, s, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out_file is None:
        print("--quick: no report written (--out FILE writes one)")
    elif all(r.skipped in NOT_MEASURED for r in results):
        print(f"no case was measured (--budget): {out_file} left as it was")
    else:
        report(results)
    return _exit_code(results)


def write_report(
    out_file: Path,
    results: list[CaseResult],
    measured: str,
    header: list[str],
    previous: str,
    final: bool = True,
) -> None:
    """Rewrite ``out_file`` from ``previous``, its text before this run: the sections of the
    groups this run measured (whole, or the rows of the cases it measured beside the others'
    earlier rows), the other sections as they were. ``final``: the run's last write, which
    says what it kept."""
    old = sections_of(previous)
    done = {r.case for r in results if r.skipped not in NOT_MEASURED}
    sections, labels = {}, []
    for group in dict.fromkeys(r.group for r in results):
        ours = [r for r in results if r.group == group]
        whole = set(select(group)) <= done
        sections[group] = render_section(
            group, ours, measured, INTROS.get(group, ""), old.get(group, ""), whole
        )
        if sections[group] == old.get(group):
            continue  # none of its cases ran: the section stays as it was
        fresh = ", ".join(dict.fromkeys(r.name for r in ours if r.skipped not in NOT_MEASURED))
        labels.append(group if whole else f"{group} ({fresh} only)")
        if final and group in old and (kept := parse_section(old[group]).handwritten):
            print(f"kept {len(kept)} hand-written line(s) in section {group}: do they still hold?")
    header = [*header, f"- sections this run measured: {'; '.join(labels)}"]
    if final and (notes := handwritten_outside(previous)):
        print(f"kept {len(notes)} hand-written line(s) outside the sections, after the header")
    tmp = out_file.with_name(f".{out_file.name}.tmp")  # a kill mid-write leaves the last whole
    tmp.write_text(render(header, sections, previous))
    os.replace(tmp, out_file)
    print(f"wrote {out_file}", flush=True)


def _exit_code(results: list[CaseResult]) -> int:
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
