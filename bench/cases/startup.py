"""``startup``: a fresh process's import of what ``lmlab train`` loads, and its exit, with
and without ``lmlab.cli.heap``'s collector settings."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.cases.common import Case, Settings
from bench.harness import ROOT
from bench.report import CaseResult, Stat

# A child process that imports what ``lmlab train`` imports before it trains, then exits: with
# the collector as Python leaves it, or as ``lmlab.cli.heap`` sets it for every lmlab command.
# It prints when the import ended and when its last statement ran.
STARTUP_CHILD = """
import contextlib, sys, time
sys.path.insert(0, {src!r})
from lmlab.cli.heap import before_exit, long_lived
with long_lived() if {heap} else contextlib.nullcontext():
    import {module}
imported = time.time()
if {heap}:
    before_exit()
print(imported, time.time(), flush=True)
"""
STARTUP_MODES = {"Python's default": False, "lmlab.cli.heap": True}


def startup_case(s: Settings) -> list[CaseResult]:
    """A fresh process imports ``lmlab.train.run`` (torch, Lightning, torchmetrics, Hydra,
    datasets: what ``lmlab train`` loads once the config composed) and exits, the two
    collector settings alternating process by process: seconds from the process's start to
    the import's end, and from its last statement to its exit."""
    module = "lmlab.errors" if s.quick else "lmlab.train.run"  # quick: the plumbing only
    times = {mode: {"import": [], "exit": [], "whole": []} for mode in STARTUP_MODES}
    for i in range(s.repeats + 1):  # round 0 warms the file cache
        for mode in list(STARTUP_MODES) if i % 2 == 0 else list(STARTUP_MODES)[::-1]:
            code = STARTUP_CHILD.format(
                src=str(ROOT / "src"), heap=STARTUP_MODES[mode], module=module
            )
            start = time.time()
            out = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            )
            end = time.time()
            imported, last = map(float, out.stdout.split())
            if i:
                times[mode]["import"].append(imported - start)
                times[mode]["exit"].append(end - last)
                times[mode]["whole"].append(end - start)
    results = []
    for mode, t in times.items():
        stats = [
            Stat(f"import {module}, from the process's start", "s", t["import"]),
            Stat("exit, from the last statement", "s", t["exit"]),
            Stat("whole process", "s", t["whole"]),
        ]
        processes = f"{s.repeats} process" + ("es" if s.repeats != 1 else "")
        results.append(CaseResult("startup", mode, stats, processes))
    return results


CASES = {"startup": Case(startup_case, "startup")}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "startup": (
        "A fresh `python -c` process imports `lmlab.train.run` (what `lmlab train` loads once "
        "its config composed: torch, Lightning with torchmetrics, Hydra, datasets) and exits. "
        "'Python's default' leaves the cyclic garbage collector as it is; 'lmlab.cli.heap' is "
        "what every lmlab command does: the import with the collector paused and its objects "
        "frozen (`long_lived`), then `before_exit` (one collection, then freeze) before the "
        "exit. The two alternate process by process after a warm-up pair. 'exit' is the time "
        "from the child's last statement to the parent seeing it end: the interpreter's "
        "shutdown."
    ),
}
