"""``generate``: tokens/s of greedy generation with gpt_mini, with and without the KV
cache."""

from __future__ import annotations

import dataclasses
import inspect
import time

import torch

from bench.cases.common import Case, Settings
from bench.harness import compose
from bench.report import CaseResult, Stat
from lmlab.config import resolve_configs
from lmlab.model import build_model


def generate_case(s: Settings) -> list[CaseResult]:
    """gpt_mini (random weights, context 1024), a 16-token prompt, greedy, B = 1."""
    from lmlab.infer.generation import generate

    new_tokens = 64 if s.quick else 512
    cfg = compose(["model=gpt_mini", "model.max_seq_len=1024"], s.work / "gen")
    model_cfg = dataclasses.replace(resolve_configs(cfg)[0], vocab_size=4096)
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    prompt_BT = torch.randint(0, 4096, (1, 16))
    has_cache = "use_cache" in inspect.signature(generate).parameters
    modes = {"no cache": {"use_cache": False} if has_cache else {}}
    if has_cache:
        modes["KV cache"] = {"use_cache": True}
    for kwargs in modes.values():
        generate(model, prompt_BT, 4, temperature=0, **kwargs)  # warm-up
    rates: dict[str, list[float]] = {m: [] for m in modes}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(s.repeats):
        for mode, kwargs in modes.items():  # interleaved: load drift hits both alike
            t0 = time.perf_counter()
            outputs[mode] = generate(model, prompt_BT, new_tokens, temperature=0, **kwargs)
            rates[mode].append(new_tokens / (time.perf_counter() - t0))
    name = f"gpt_mini {new_tokens} tokens"
    results = [
        CaseResult("generate", f"{name}, {m}", [Stat("tokens/s", "tok/s", rates[m])]) for m in modes
    ]
    if not has_cache:
        skipped = "KV cache not available"
        return [*results, CaseResult("generate", f"{name}, KV cache", skipped=skipped)]
    same = torch.equal(outputs["KV cache"], outputs["no cache"])
    speedup = [c / n for c, n in zip(rates["KV cache"], rates["no cache"], strict=True)]
    results[-1].stats.append(Stat("speed-up", "x", speedup))
    results[-1].note = "the same tokens as without it" if same else "tokens DIFFER from no cache"
    return results


CASES = {"generate": Case(generate_case, "generate")}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "generate": (
        "`lmlab.infer.generation.generate(model, prompt, n, temperature=0, use_cache=...)`: "
        "gpt_mini "
        "with random weights, `model.max_seq_len=1024`, a 16-token prompt, batch 1; the two "
        "modes alternate run by run."
    ),
}
