"""``moe``: step time of a Mixture-of-Experts model against the dense one with the same
active parameters, interleaved."""

from __future__ import annotations

import shutil

from bench.cases.common import Case, Settings
from bench.harness import BENCH_OVERRIDES, compose, run_lmlab
from bench.report import CaseResult, Stat

# gpt_tiny with Llama's blocks (SwiGLU d_ff 384), and with 8 experts top-2 of half that width:
# the same active parameters (plus a 128 x 8 router per block), 4x the FFN parameters.
MOE_VARIANTS = {
    "dense": ["+experiment=llama"],
    "moe 8 experts top-2": ["+experiment=mixtral", "model.d_ff=192"],
}


def moe_case(s: Settings) -> list[CaseResult]:
    """Dense and MoE runs interleaved (dense, moe, moe, dense, ...), the same batches: the MoE
    step's cost over the dense step's at equal active parameters (routing, sorting, grouped
    matmuls, router losses)."""
    step_ms: dict[str, list[float]] = {name: [] for name in MOE_VARIANTS}
    params: dict[str, str] = {}
    for i in range(s.repeats):
        names = list(MOE_VARIANTS) if i % 2 == 0 else list(MOE_VARIANTS)[::-1]
        for name in names:
            out = s.work / f"moe-{i}-{name.split()[0]}"
            overrides = [*MOE_VARIANTS[name], *BENCH_OVERRIDES, f"trainer.max_steps={s.steps(20)}"]
            log, results = run_lmlab(compose([*overrides, *s.shrink()], out))
            step_ms[name].append(1e3 * log.median_step())
            params[name] = f"{results['active_params']:,} active of {results['params']:,}"
            shutil.rmtree(out, ignore_errors=True)
    ratio = [m / d for m, d in zip(step_ms["moe 8 experts top-2"], step_ms["dense"], strict=True)]
    stats = [
        Stat("MoE / dense step", "x", ratio),
        *(Stat(name, "ms/step", ms) for name, ms in step_ms.items()),
    ]
    note = "; ".join(f"{name}: {p} parameters" for name, p in params.items())
    return [CaseResult("moe", "gpt_tiny llama, equal active parameters", stats, note)]


CASES = {"moe": Case(moe_case, "moe")}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "moe": (
        "`+experiment=llama` (dense, SwiGLU d_ff 384) against `+experiment=mixtral "
        "model.d_ff=192` (8 experts, each token to 2: the same active parameters) on gpt_tiny, "
        "16 x 256 tokens per step, fp32, the runs alternating; step time as in the train "
        "group (median start-to-start, first 2 steps left out)."
    ),
}
