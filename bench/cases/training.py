"""Throughput of the real lmlab stack: ``train_*`` (tokens/s and MFU against the matmul
peak measured in the same benchmark run) and ``overhead*`` (lmlab's Trainer against
``plain_loop.plain_fit`` on the same config, interleaved so that drift in load cancels)."""

from __future__ import annotations

import shutil

from bench.cases.common import SMALL_STEP, Case, CaseFn, Settings
from bench.harness import BENCH_OVERRIDES, compose, run_lmlab
from bench.plain_loop import plain_fit
from bench.report import CaseResult, Stat


def train_case(model: str, precision: str, steps: int) -> CaseFn:
    """``repeats`` runs of ``steps`` steps; tokens/s from the median start-to-start step time."""
    label = "bf16" if "bf16" in precision else "fp32"

    def run(s: Settings) -> list[CaseResult]:
        peak = s.peak(precision)
        tps, mfu, callback_tps, step_ms = [], [], [], []
        for i in range(s.repeats):
            out = s.work / f"train-{model}-{label}-{i}"
            overrides = [f"model={model}", f"trainer.precision={precision}", *BENCH_OVERRIDES]
            overrides += [f"trainer.max_steps={s.steps(steps)}", *s.shrink()]
            cfg = compose(overrides, out)
            log, results = run_lmlab(cfg)
            tps.append(log.tokens_per_second())
            mfu.append(tps[-1] * log.flops_per_token / peak)
            step_ms.append(1e3 * log.median_step())
            callback_tps.append(results["tokens_per_second"] or float("nan"))
            shutil.rmtree(out, ignore_errors=True)
        stats = [
            Stat("tokens/s", "tok/s", tps),
            Stat("MFU", "%", mfu),
            Stat("step", "ms/step", step_ms),
            Stat("Throughput callback", "tok/s", callback_tps),
        ]
        # the row's own peak: a run of some train cases keeps the other rows, measured against
        # another run's peak
        note = f"{s.steps(steps)} steps x {log.tokens_per_step:,} tokens per run; MFU against "
        note += f"the {label} matmul peak measured in the same run, {peak / 1e9:,.1f} GFLOP/s"
        return [CaseResult("train", f"{model} {label}", stats, note)]

    return run


def overhead_case(overrides: list[str], name: str, steps: int) -> CaseFn:
    """Plain loop and lmlab on one config, interleaved (plain, lmlab, lmlab, plain, ...);
    the overhead is per pair of runs."""

    def run(s: Settings) -> list[CaseResult]:
        plain_ms, lmlab_ms, overhead, cpu_overhead = [], [], [], []
        cfg_overrides = [*overrides, *BENCH_OVERRIDES, f"trainer.max_steps={s.steps(steps)}"]
        cfg_overrides += s.shrink()
        for i in range(s.repeats):
            out = s.work / f"overhead-{i}"
            if i % 2:  # alternate which goes first: plain, lmlab, lmlab, plain, ...
                lmlab, _ = run_lmlab(compose(cfg_overrides, out))
            plain = plain_fit(compose(cfg_overrides, s.work / f"plain-{i}"))
            if not i % 2:
                lmlab, _ = run_lmlab(compose(cfg_overrides, out))
            shutil.rmtree(out, ignore_errors=True)
            plain_ms.append(1e3 * plain.median_step())
            lmlab_ms.append(1e3 * lmlab.median_step())
            overhead.append(lmlab_ms[-1] / plain_ms[-1] - 1.0)
            cpu_overhead.append(lmlab.median_step(cpu=True) / plain.median_step(cpu=True) - 1.0)
        same = plain.losses == lmlab.losses
        note = f"{s.steps(steps)} steps x {plain.tokens_per_step:,} tokens per run; losses " + (
            "identical step for step" if same else "DIFFER: the comparison is not fair"
        )
        stats = [
            Stat("overhead", "%", overhead),
            Stat("lmlab", "ms/step", lmlab_ms),
            Stat("plain", "ms/step", plain_ms),
            Stat("overhead in CPU time", "%", cpu_overhead),
        ]
        return [CaseResult("overhead", name, stats, note)]

    return run


CASES = {
    "train_gpt_tiny_fp32": Case(train_case("gpt_tiny", "32-true", 20), "train"),
    "train_gpt_tiny_bf16": Case(train_case("gpt_tiny", "bf16-mixed", 6), "train"),
    "train_gpt_mini_fp32": Case(train_case("gpt_mini", "32-true", 12), "train"),
    "train_gpt_mini_bf16": Case(train_case("gpt_mini", "bf16-mixed", 5), "train"),
    "train_bert_tiny_fp32": Case(train_case("bert_tiny", "32-true", 15), "train"),
    "train_t5_tiny_fp32": Case(train_case("t5_tiny", "32-true", 10), "train"),
    "overhead": Case(overhead_case([], "gpt_tiny 16x256", 20), "overhead"),
    "overhead_small": Case(overhead_case(SMALL_STEP, "gpt_tiny 12x64", 60), "overhead"),
}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "train": (
        "`lmlab.train.run.train` on the composed config with `logger=none`, no validation and no "
        "end-of-run sample. tokens/s = tokens per step / the median start-to-start step time "
        "(everything a step costs: data, forward, backward, clipping, AdamW, hooks, logging, "
        "progress bar), the first 2 steps left out. MFU = tokens/s x FLOPs per token "
        "(`lmlab.model.flops_per_token`) / the matmul peak that "
        "`lmlab.train.hardware.measure_cpu_matmul_flops` measured in the same benchmark run "
        "(n = 1024, `x @ w.T`, the layout `F.linear` uses, fp32 or bf16 as the row), which "
        "each row's note gives. 'Throughput callback' is "
        "results.json's `tokens_per_second` (the batches timed end to end, each from the "
        "last one's end, validations and checkpoint saves left out)."
    ),
    "overhead": (
        "Both loops train the same config from the same seed: `build_model`, AdamW over "
        "`decay_groups`, the warmup-cosine schedule, clipping at 1.0, the `LMDataModule`'s "
        "DataLoader, `zero_grad(set_to_none=True)`; the plain loop is `bench/plain_loop.py`. "
        "Step time is the median start-to-start time from step 3 on; overhead = lmlab / plain "
        "- 1 for each interleaved pair of runs. 'overhead in CPU time' compares the process's "
        "CPU seconds per step instead: less sensitive to other jobs on the machine, most of "
        "all with `--threads 1`. Target (issue #9): within 3%."
    ),
}
