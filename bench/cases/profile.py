"""``profile``: a py-spy profile of lmlab's training loop: Lightning's own share of a
step."""

from __future__ import annotations

import shutil
import statistics

from bench.cases.common import SMALL_STEP, Case, Settings
from bench.harness import BENCH_OVERRIDES, ROOT
from bench.report import CaseResult, Stat
from bench.stack_profile import ORDER, TRAINER, profile_run, py_spy


def profile_case(s: Settings) -> list[CaseResult]:
    """``repeats`` py-spy profiles of gpt_tiny at 12x64 (the smallest step here, where
    per-step Python costs weigh most); each part's share of the training loop's samples."""
    if py_spy() is None:
        return [CaseResult("profile", "gpt_tiny 12x64", skipped="py-spy is not installed")]
    shares: dict[str, list[float]] = {part: [] for part in ORDER}
    samples = []
    for i in range(s.repeats):
        out = s.work / f"profile-{i}"
        overrides = [*SMALL_STEP, *BENCH_OVERRIDES, f"trainer.max_steps={s.steps(300)}"]
        parts = profile_run(overrides, out, ROOT)
        samples.append(sum(parts.values()))
        for part in ORDER:
            shares[part].append(parts[part] / samples[-1])
        shutil.rmtree(out, ignore_errors=True)
    # parts under 0.05% in every run (a final empty validation pass) would only read 0.0%
    stats = [Stat(p, "%", v) for p, v in shares.items() if p == TRAINER or max(v) >= 5e-4]
    note = (
        f"{s.steps(300)} steps per run; {statistics.median(samples):,.0f} samples inside the "
        f"training loop per run (median)"
    )
    return [CaseResult("profile", "gpt_tiny 12x64", stats, note)]


CASES = {"profile": Case(profile_case, "profile")}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "profile": (
        "`py-spy record --nonblocking -r 100 -f raw -- python src/train.py data.batch_size=12 "
        "data.seq_len=64 trainer.max_steps=300 logger=none '~callbacks.sample' "
        "trainer.limit_val_batches=0` (`bench/stack_profile.py`). Only samples inside "
        "Lightning's training loop count. A sample with a checkpoint save, data loading or "
        "validation anywhere on its stack belongs to that phase; otherwise the deepest of these "
        "frames decides: `Tensor.backward` (backward), `LMTask.training_step` (forward and "
        "loss), `clip_grad_norm_` (clipping, which also gives the logged norm), `torch/optim/` "
        "(AdamW and the LR schedule), or any of Lightning's (the Trainer). So Lightning's "
        "closure around forward and backward, and `self.log` inside `training_step`, count as "
        "the Trainer's, and so does what no part claims (lmlab's callbacks). The plain loop "
        "saves no checkpoints. py-spy slows the run down; the shares are of the sampled run. "
        "Target (issue #9): the Trainer within 3% of a step."
    ),
}
