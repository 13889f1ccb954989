"""What every benchmark case shares: the run's ``Settings``, the ``Case`` record, gpt_tiny's
smallest step, and the alternating timer of the one-operation cases."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.profiling import PROFILE_STEPS
from bench.report import CaseResult
from lmlab.train.hardware import measure_cpu_matmul_flops


@dataclass
class Settings:
    """How hard to measure: ``repeats`` runs per case; ``quick`` cuts steps for a smoke run."""

    work: Path
    repeats: int = 3
    quick: bool = False
    profile: Path | None = None  # --profile DIR: the GPU cases' profiler tables go there
    deadline: float = math.inf  # --budget: time.time() after which no case or run starts

    def time_left(self) -> bool:
        return time.time() < self.deadline

    peaks: dict[str, float] = dataclasses.field(default_factory=dict)

    def steps(self, full: int) -> int:
        return 4 if self.quick else full

    def profile_steps(self) -> int:
        """Steps per ``--profile`` table: quick mode's tables only show that profiling works
        (a profiled step of the quick GPT cost about 0.7 s on the 2-core CPU)."""
        return 2 if self.quick else PROFILE_STEPS

    def shrink(self) -> list[str]:
        """Quick mode's overrides: a small batch, so that even bf16 on a CPU without native
        bf16 takes seconds (the numbers are for smoke checking only)."""
        return ["data.batch_size=2"] if self.quick else []

    def peak(self, precision: str) -> float:
        """The fp32 or bf16 matmul peak, measured once per benchmark run."""
        dtype = "bf16" if "bf16" in precision else "fp32"
        if dtype not in self.peaks:
            torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
            self.peaks[dtype] = measure_cpu_matmul_flops(torch_dtype)
        return self.peaks[dtype]


CaseFn = Callable[[Settings], list[CaseResult]]


@dataclass(frozen=True)
class Case:
    fn: CaseFn
    group: str
    default: bool = True  # in the default ``make bench`` set


# gpt_tiny's smallest step measured here (nanoGPT's CPU batch), where per-step Python costs
# weigh most: the overhead and profile cases use it.
SMALL_STEP = ["data.batch_size=12", "data.seq_len=64"]


def alternate(calls: dict[str, Callable[[], object]], steps: int, rounds: int) -> dict:
    """ms per call of each of ``calls``, ``steps`` calls a round, the calls alternating round
    by round (a, b, then b, a) after one warm-up round: {name: [ms per round]}."""
    ms: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(rounds + 1):  # round 0 warms up
        for name in list(calls) if i % 2 == 0 else list(calls)[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                calls[name]()
            if i:
                ms[name].append(1e3 * (time.perf_counter() - start) / steps)
    return ms
