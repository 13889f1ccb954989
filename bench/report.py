"""Benchmark results and how they are shown: one plain line per case on stdout, and
``BENCHMARKS.md`` (machine, commit, matmul peaks, then one markdown table per case group).

A case is measured ``n`` times; every metric keeps all its values and reports the median
with the min and max, so a before/after comparison can tell a change from the noise.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# How each unit is printed (MFU is stored as a fraction).
FORMATS: dict[str, Callable[[float], str]] = {
    "tok/s": lambda v: f"{v:,.0f}",
    "ms/step": lambda v: f"{v:,.1f}",
    "%": lambda v: f"{100 * v:.1f}%",
    "s": lambda v: f"{v:,.2f}",
    "MB/s": lambda v: f"{v:,.2f}",
    "nats": lambda v: f"{v:.3f}",
    "x": lambda v: f"{v:.2f}x",
}


def fmt(value: float, unit: str) -> str:
    return FORMATS.get(unit, lambda v: f"{v:,.4g}")(value)


@dataclass
class Stat:
    """One metric of one case over its runs."""

    name: str
    unit: str
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def show(self, value: float) -> str:
        text = fmt(value, self.unit)
        return text if self.unit in ("%", "x") else f"{text} {self.unit}"


@dataclass
class CaseResult:
    """A case's metrics, headline first; ``skipped`` says why a case has none."""

    group: str
    name: str
    stats: list[Stat] = field(default_factory=list)
    note: str = ""
    skipped: str | None = None


def summary_line(result: CaseResult) -> str:
    """``train gpt_tiny fp32: 6,745 tok/s (min 6,600 max 6,800) MFU 43.1%``: the headline
    metric with its spread, then the medians of the others."""
    head = f"{result.group} {result.name}:"
    if result.skipped:
        return f"{head} skipped: {result.skipped}"
    if not result.stats:
        return f"{head} no measurements"
    first, *rest = result.stats
    parts = [first.show(first.median)]
    if first.unit in ("%", "x"):  # a bare share or ratio: say what it is
        parts.insert(0, first.name)
    if len(first.values) > 1:
        parts.append(f"(min {fmt(first.min, first.unit)} max {fmt(first.max, first.unit)})")
    parts += [f"{s.name} {s.show(s.median)}" for s in rest]
    return f"{head} {' '.join(parts)}"


def markdown_table(results: list[CaseResult]) -> str:
    """One row per case and metric: median, min, max and the number of runs."""
    lines = ["| case | metric | median | min | max | runs |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.name} | skipped: {r.skipped} | | | | |")
        for s in r.stats:
            cells = [r.name, f"{s.name} ({s.unit})"]
            cells += [fmt(v, s.unit) for v in (s.median, s.min, s.max)] + [str(len(s.values))]
            lines.append(f"| {' | '.join(cells)} |")
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path) -> str:
    """``git rev-parse --short HEAD``, with ``+dirty`` when the working tree has changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain") else "")


def machine_lines(root: Path) -> list[str]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, "
        f"torch.get_num_threads() = {torch.get_num_threads()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}",
        f"- commit: {git_commit(root)}",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- load average at the start: {load:.2f}",
    ]


GROUP_TITLES = {
    "train": "Training throughput (steady state, warm-up steps excluded)",
    "overhead": "lmlab's Trainer against a plain PyTorch loop (interleaved runs)",
    "profile": "Where a step's time goes inside lmlab's Trainer (py-spy)",
    "data": "Data preparation (embedded corpus, cold cache)",
    "generate": "Generation (greedy, batch 1)",
    "memory": (
        "Memory: activation checkpointing and the cross-entropy "
        "(peak resident memory of a training step)"
    ),
    "moe": "Mixture of Experts: step time against dense at equal active parameters",
    "adamw": "AdamW on the CPU: foreach against fused",
    "cross_entropy": "Cross-entropy on the CPU: full logits against chunked",
    "startup": "Start-up and exit: the garbage collector around heavy imports",
    "shakespeare": "Tiny Shakespeare, character level (nanoGPT's CPU run)",
    "gpu": "One GPU: lmlab against a nanoGPT-style loop, every family, FSDP, generation",
}
GROUP_ORDER = list(GROUP_TITLES)
SECTION = re.compile(r"<!-- section:(\w+) -->\n(.*?)<!-- /section -->\n", re.S)


def render_section(group: str, results: list[CaseResult], measured: str, intro: str) -> str:
    """One group's section, between markers so that a later ``--only`` run replaces it."""
    body = [f"## {GROUP_TITLES.get(group, group)}", "", measured, ""]
    body += [intro, ""] if intro else []
    body += [markdown_table(results), ""]
    return f"<!-- section:{group} -->\n" + "\n".join(body) + "<!-- /section -->\n"


def sections_of(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in SECTION.finditer(text)}


def render(header: list[str], sections: dict[str, str], previous: str = "") -> str:
    """BENCHMARKS.md: the header, then every group's section; groups not measured in this run
    keep their section from ``previous`` (each section says when it was measured)."""
    merged = {**sections_of(previous), **sections}
    order = [g for g in GROUP_ORDER if g in merged] + [g for g in merged if g not in GROUP_ORDER]
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python bench/run.py`). Each number is the median of the "
        "runs, with min and max; compare before and after a change on the same machine.",
        "",
        *header,
        "",
    ]
    return "\n".join(out) + "\n" + "\n".join(merged[g] for g in order)
