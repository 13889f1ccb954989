"""``memory``: peak memory of a training step with and without activation checkpointing,
and with the full cross-entropy."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench.cases.common import Case, Settings
from bench.harness import ROOT
from bench.report import CaseResult, Stat


def memory_case(s: Settings) -> list[CaseResult]:
    """Peak memory of one forward + backward of gpt_mini's training loss (context 1024,
    batch 8): activations stored, with activation checkpointing, and stored with the full
    cross-entropy instead of the chunked one (``model.cross_entropy``), each in a fresh process
    (``bench/memory_probe.py``)."""
    batch, seq = ("2", "256") if s.quick else ("8", "1024")
    modes = {
        "stored": [],
        "activation checkpointing": ["--activation-checkpointing"],
        "stored, full cross-entropy": ["--full-loss"],
    }
    growth: dict[str, list[float]] = {label: [] for label in modes}
    for _ in range(s.repeats):
        for label, flag in modes.items():  # interleaved, a fresh process each
            cmd = [sys.executable, str(ROOT / "bench" / "memory_probe.py"), "gpt_mini", batch, seq]
            out = subprocess.run([*cmd, *flag], capture_output=True, text=True, check=True).stdout
            growth[label].append(json.loads(out.splitlines()[-1])["peak_growth_mib"])
    if min(min(g) for g in growth.values()) <= 0:
        raise RuntimeError(f"no memory growth measured: {growth} (MiB)")
    name = f"gpt_mini {batch}x{seq} forward+backward"
    stored = statistics.median(growth["stored"])
    against = {  # what each other mode's note compares it with: the stored, chunked step
        "activation checkpointing": "storing activations",
        "stored, full cross-entropy": "the chunked cross-entropy",
    }

    def note(label: str) -> str:
        if label not in against:
            return ""
        ratio = statistics.median(growth[label]) / stored  # either way: the note says which
        more = "more" if ratio > 1 else "less"
        return f"{abs(1 - ratio):.0%} {more} than {against[label]} (medians)"

    return [
        CaseResult("memory", f"{name}, {label}", [Stat("peak growth", "MiB", mib)], note(label))
        for label, mib in growth.items()
    ]


CASES = {"memory": Case(memory_case, "memory")}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "memory": (
        "Growth of the process's peak resident memory (`VmHWM`, reset just before the step "
        "through `/proc/self/clear_refs`) over its resident size before one forward and "
        "backward, measured in a fresh process for each run, the modes alternating: activations "
        "stored, or recomputed per block (`model.activation_checkpointing=true`, "
        "`lmlab.train.parallel.layout`), and stored with the full cross-entropy "
        "(`model.cross_entropy=full`: the whole fp32 logits and their gradient) instead of the "
        "chunked one the default takes here. The step is the training loss of random tokens "
        "over a 4096-token vocabulary. CPU memory stands in for GPU memory where no GPU is lent."
    ),
}
