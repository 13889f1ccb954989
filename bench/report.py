"""Benchmark results and how they are shown: one plain line per case on stdout, and
``BENCHMARKS.md`` (machine, commit, matmul peaks, then one markdown table per case group).

A case is measured ``n`` times; every metric keeps all its values and reports the median
with the min and max, so a before/after comparison can tell a change from the noise.

A section is rewritten only from what a run measured. A run of some of a group's cases (``--only
train_gpt_tiny_fp32``, or cases ``--budget`` left out) keeps the group's other rows, each note
then saying which earlier run measured it (as asv keeps a result per benchmark and commit);
a group none of whose cases ran keeps its section as it was. Lines the report does not write
(hand-written notes) are kept under the table.
"""

from __future__ import annotations

import datetime
import json
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
    "points": lambda v: f"{100 * v:.1f}",  # a difference of two shares (MFU): percentage points
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
    case: str = ""  # the bench.cases.CASES key that gave it (run_cases sets it)


# A case --budget left out: it measured nothing, so its earlier rows stay in BENCHMARKS.md.
NOT_RUN = "not run: --budget spent"
# A case still to run when the report was written after an earlier one (``run_cases``): what a
# run killed there (a time limit) leaves in the file; like NOT_RUN, it keeps earlier rows.
PENDING = "not run: the run was stopped before it (its report is written after each case)"
NOT_MEASURED = (NOT_RUN, PENDING)


def one_line(err: BaseException) -> str:
    """An error as one table cell: its type and first line (Inductor's run to ten, with blank
    lines that would end the table), without the ``|`` that would split the cell."""
    first = next((line for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}".replace("|", "/")


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


TABLE_HEAD = ["| case | metric | median | min | max | runs |", "|---|---|---:|---:|---:|---:|"]


def table_rows(r: CaseResult) -> list[str]:
    """A case's rows: one per metric with median, min, max and the number of runs; one saying
    why where it has none (its note, if any, says more). A case needs a row for its note to be
    read back as its own (``parse_section``) and replaced when it runs again."""
    rows = [f"| {r.name} | skipped: {r.skipped} | | | | |"] if r.skipped else []
    if not r.skipped and not r.stats:
        rows.append(f"| {r.name} | no measurements | | | | |")
    for s in r.stats:
        cells = [r.name, f"{s.name} ({s.unit})"]
        cells += [fmt(v, s.unit) for v in (s.median, s.min, s.max)] + [str(len(s.values))]
        rows.append(f"| {' | '.join(cells)} |")
    return rows


def markdown_table(results: list[CaseResult]) -> str:
    """One row per case and metric, then each case's note."""
    lines = TABLE_HEAD + [row for r in results for row in table_rows(r)]
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


def machine_summary() -> str:
    """Where a section's numbers were taken, for its 'Measured' line."""
    cpu = f"{cpu_name()} ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()})"
    gpu = f" and {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}{gpu}, torch {torch.__version__}"


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
    "host": "Host time per step: a compiled step with almost no arithmetic (CPU)",
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
CASE_MAP = re.compile(r"<!-- cases: (\{.*\}) -->")  # which rows each case wrote
EARLIER = "from an earlier run"  # a kept row's note: the run that measured it follows


@dataclass
class Section:
    """A section of BENCHMARKS.md read back: what a run of only some of its cases keeps."""

    measured: str = ""  # its 'Measured' sentence without "Measured " and the full stop
    rows: list[tuple[str, str]] = field(default_factory=list)  # (case name, table line)
    notes: dict[str, str] = field(default_factory=dict)  # case name -> its note line
    cases: dict[str, list[str]] = field(default_factory=dict)  # CASES key -> its row names
    handwritten: list[str] = field(default_factory=list)  # lines the report does not write


def parse_section(text: str) -> Section:
    """``render_section``'s output read back: the title, the 'Measured' paragraph and the one
    after it (the intro), the table, its notes and case map; every other line is hand-written."""
    out, lines = Section(), text.splitlines()[1:-1]  # inside the markers
    table = [i for i, line in enumerate(lines) if line.startswith("|")] or [len(lines)]
    paragraphs = [p for p in "\n".join(lines[: table[0]]).split("\n\n") if p.strip()]
    at = next((i for i, p in enumerate(paragraphs) if p.startswith("Measured")), None)
    if at is not None:
        out.measured = re.sub(r"^Measured |\.$", "", paragraphs[at].splitlines()[0])
    written = {0, 1} if at is None else {0, at, at + 1}  # the title, 'Measured', the intro
    for paragraph in (p for i, p in enumerate(paragraphs) if i not in written):
        out.handwritten += ([""] if out.handwritten else []) + paragraph.splitlines()
    out.rows = [(line.split("|")[1].strip(), line) for line in lines[table[0] + 2 : table[-1] + 1]]
    names = {name for name, _ in out.rows}
    for line in lines[table[-1] + 1 :]:
        name = next((n for n in names if line.startswith(f"- {n}: ")), None)
        if (found := CASE_MAP.fullmatch(line)) is not None:
            out.cases = json.loads(found.group(1))
        elif name is not None and name not in out.notes:
            out.notes[name] = line
        elif line.strip() or out.handwritten:  # blank lines only between hand-written ones
            out.handwritten.append(line)
    while out.handwritten and not out.handwritten[-1].strip():
        out.handwritten.pop()
    return out


def earlier(note: str | None, name: str, measured: str) -> str:
    """A kept row's note, saying which run measured it (a row kept again keeps its first tag)."""
    tag = f"{EARLIER}: measured {measured}" if measured else EARLIER
    if note is None:
        return f"- {name}: {tag}"
    return note if EARLIER in note else f"{note}; {tag}"


def table_order(
    old: Section, done: list[CaseResult], new: list[CaseResult], keep: bool
) -> list[tuple[bool, str]]:
    """The section's rows in order: ``(True, case)`` for a case of this run, in the place of
    its earlier rows (known from the case map, or by name); ``(False, name)`` for an earlier
    row kept (``keep``: this run did not measure the whole group)."""
    replaces = {n: r.case for r in done for n in [r.name, *old.cases.get(r.case, [])]}
    order: list[tuple[bool, str]] = []
    for name, _ in old.rows if keep else []:
        item = (True, replaces[name]) if name in replaces else (False, name)
        order += [] if item in order else [item]
    return order + [(True, c) for c in dict.fromkeys(r.case for r in new) if (True, c) not in order]


def case_map(new: list[CaseResult], old: Section, kept: list[str]) -> dict[str, list[str]]:
    """Which rows each case wrote (this run's, and the earlier rows kept): the next run of some
    of the group's cases replaces a case's rows by it even where their names changed."""
    cases: dict[str, list[str]] = {}
    for r in (r for r in new if r.case):
        cases[r.case] = list(dict.fromkeys([*cases.get(r.case, []), r.name]))
    for case, names in old.cases.items():
        if case not in cases and (left := [n for n in names if n in kept]):
            cases[case] = left
    return cases


def render_section(
    group: str,
    results: list[CaseResult],
    measured: str,
    intro: str,
    previous: str = "",
    whole: bool = True,
) -> str:
    """One group's section, between markers so that a later run replaces it. From
    ``previous`` (the section an earlier run wrote) it keeps the hand-written lines and, when
    this run did not measure the ``whole`` group, the rows of the cases it did not measure,
    each note saying which run measured it. A group none of whose cases ran (``--budget``)
    keeps ``previous`` as it was."""
    old = parse_section(previous) if previous else Section()
    done = [r for r in results if r.skipped not in NOT_MEASURED]
    if previous and not done:
        return previous
    # a case left out with no earlier rows says so in a row of its own
    new = [r for r in results if r.skipped not in NOT_MEASURED or r.case not in old.cases]
    rows, notes = [], []
    for fresh, key in (order := table_order(old, done, new, keep=bool(previous) and not whole)):
        ours = [r for r in new if r.case == key] if fresh else []
        rows += [row for r in ours for row in table_rows(r)]
        notes += [f"- {r.name}: {r.note}" for r in ours if r.note]
        if not fresh:
            rows += [line for name, line in old.rows if name == key]
            notes.append(earlier(old.notes.get(key), key, old.measured))
    kept = [key for fresh, key in order if not fresh]
    cases = case_map(new, old, kept)
    head = [measured]
    if kept:
        this_run = ", ".join(dict.fromkeys(r.name for r in done))
        head.append(
            f"Rows from this run: {this_run}; the note of each other row says which earlier "
            "run measured it."
        )
    body = [f"## {GROUP_TITLES.get(group, group)}", "", *head, "", *([intro, ""] if intro else [])]
    body += [*TABLE_HEAD, *rows, "", *notes]
    if old.handwritten:  # a paragraph right after a list would read as its last item's
        body += [""] if notes and not old.handwritten[0].startswith("- ") else []
        body += old.handwritten
    body += [f"<!-- cases: {json.dumps(cases)} -->"] if cases else []
    return f"<!-- section:{group} -->\n" + "\n".join([*body, ""]) + "<!-- /section -->\n"


def sections_of(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in SECTION.finditer(text)}


TITLE = "# Benchmarks"
PREAMBLE = (
    "Written by `make bench` (`python bench/run.py`). Each number is the median of the "
    "runs, with min and max; compare before and after a change on the same machine. The "
    "lines below describe the latest run; each section's 'Measured' line says when, where "
    "and at which commit its numbers were taken."
)


def handwritten_outside(previous: str) -> list[str]:
    """The lines of ``previous`` that no run wrote and no section holds: a note typed between
    the header and the sections, or after them. The report's own are the title, its
    'Written by' paragraph and the header's list of ``- `` lines right after it."""
    kept: list[str] = []
    state = "top"  # top -> header (its list) -> notes (everything else)
    for line in SECTION.sub("", previous).splitlines():
        if state != "notes" and (line == TITLE or line.startswith("Written by `make bench`")):
            continue
        if state != "notes" and (line.startswith("- ") or not line.strip()):
            state = "header" if line.startswith("- ") else state
            continue
        state = "notes"
        if line.strip() or (kept and kept[-1].strip()):  # one blank line between paragraphs
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def render(header: list[str], sections: dict[str, str], previous: str = "") -> str:
    """BENCHMARKS.md: the header (the latest run), the hand-written lines ``previous`` held
    outside its sections (``handwritten_outside``), then every group's section; groups not
    measured in this run keep their section from ``previous`` (each says when it was measured)."""
    merged = {**sections_of(previous), **sections}
    order = [g for g in GROUP_ORDER if g in merged] + [g for g in merged if g not in GROUP_ORDER]
    notes = handwritten_outside(previous)
    out = [TITLE, "", PREAMBLE, "", *header, "", *([*notes, ""] if notes else [])]
    return "\n".join(out) + "\n" + "\n".join(merged[g] for g in order)
