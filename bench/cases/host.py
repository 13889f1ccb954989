"""``host``: lmlab's host time per step, compiled, on a step with almost no arithmetic,
against the GPU race's plain loop around lmlab's model and around nanoGPT's."""

from __future__ import annotations

import shutil

import torch

from bench.cases.common import Case, Settings
from bench.gpu_cases import GPU_OVERRIDES, lmlab_model
from bench.harness import compose, run_lmlab
from bench.nanogpt_loop import tokens_per_second as plain_tokens_per_second
from bench.report import CaseResult, Stat

# A GPT whose step has almost no arithmetic (12 layers of width 32, 1 x 16 tokens), compiled
# whole in fp32: its step time on a CPU is nearly all host work (Python, dispatch, the compiled
# graph's calls, the optimizer), what bound lmlab at gpt_small on an H200 (BENCHMARKS.md's GPU
# section), measured without a GPU.
HOST_SHAPE = {"n_layer": 12, "n_head": 4, "d": 32, "vocab": 4096, "batch": 1, "seq": 16}
HOST_STEPS, HOST_WARMUP = 200, 30


def host_overrides() -> list[str]:
    h = HOST_SHAPE
    return [
        "model=gpt_tiny",
        "+experiment=gpt2",
        "model.bias=false",
        "model.dropout=0.0",
        f"model.n_layers={h['n_layer']}",
        f"model.n_heads={h['n_head']}",
        f"model.d_model={h['d']}",
        f"model.vocab_size={h['vocab']}",
        f"data.batch_size={h['batch']}",
        f"data.seq_len={h['seq']}",
        "trainer.precision=32-true",
    ]


def host_case(s: Settings) -> list[CaseResult]:
    """lmlab's compiled step (``compile=model``) against the plain loop (``bench/
    nanogpt_loop.py``, compiled, fused AdamW, no clipping) around lmlab's own model and around
    nanoGPT's, interleaved round by round; microseconds per step over the steps after the
    warm-up. The differences split lmlab's extra host time into its training loop's (lmlab
    against the plain loop around its model) and its model's (the plain loop around the two
    models).
    ``--quick``: eager, a few steps and a 1 MB slice of the corpus (as the GPU cases' quick
    runs), which measures nothing: the whole corpus's tokenizer took most of its time."""
    steps, warm = (6, 2) if s.quick else (HOST_STEPS, HOST_WARMUP)
    quick = ["compile=false", "data.max_bytes=1000000"] if s.quick else ["compile=model"]
    overrides = [*host_overrides(), *quick]
    h, cpu = HOST_SHAPE, torch.device("cpu")
    shape = (h["n_layer"], h["n_head"], h["d"], h["vocab"], h["batch"], h["seq"], steps, warm)

    def lmlab(i: int) -> float:
        out = s.work / f"host-{i}"
        cfg = compose([*overrides, *GPU_OVERRIDES, f"trainer.max_steps={steps + warm}"], out)
        torch._dynamo.reset()
        log, _ = run_lmlab(cfg)
        shutil.rmtree(out, ignore_errors=True)
        return 1e6 * (log.starts[-1] - log.starts[warm]) / (len(log.starts) - 1 - warm)

    def plain(model: torch.nn.Module | None) -> float:
        tokens_per_s = plain_tokens_per_second(*shape, cpu, compile=not s.quick, model=model)
        return 1e6 * h["batch"] * h["seq"] / tokens_per_s

    runs: dict[str, list[float]] = {"lmlab": [], "lmlab's model": [], "nanoGPT's model": []}
    calls = {
        "lmlab": lmlab,
        "lmlab's model": lambda i: plain(lmlab_model(overrides, s)),
        "nanoGPT's model": lambda i: plain(None),
    }
    for i in range(s.repeats):
        order = list(calls) if i % 2 == 0 else list(reversed(calls))
        for name in order:
            runs[name].append(calls[name](i))
    loop = [a - b for a, b in zip(runs["lmlab"], runs["lmlab's model"], strict=True)]
    model = [a - b for a, b in zip(runs["lmlab's model"], runs["nanoGPT's model"], strict=True)]
    stats = [
        Stat("lmlab", "us/step", runs["lmlab"]),
        Stat("plain loop, lmlab's model", "us/step", runs["lmlab's model"]),
        Stat("plain loop, nanoGPT's model", "us/step", runs["nanoGPT's model"]),
        Stat("lmlab's training loop (lmlab - plain, lmlab's model)", "us/step", loop),
        Stat("lmlab's model (plain loops: lmlab's - nanoGPT's)", "us/step", model),
    ]
    note = (
        f"{h['n_layer']} layers of width {h['d']}, {h['batch']} x {h['seq']} tokens, vocabulary "
        f"{h['vocab']}, fp32, {'eager' if s.quick else 'compiled whole'}; {steps} timed steps "
        f"after {warm} per run"
    )
    return [CaseResult("host", "gpt 12 x 32, 1 x 16 tokens", stats, note)]


CASES = {"host": Case(host_case, "host")}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "host": (
        "A step with almost no arithmetic, compiled whole (`compile=model`, fp32), timed on the "
        "CPU, where such a step is nearly all host work: what bound lmlab on the H200 at "
        "gpt_small (the GPU section). lmlab's Trainer (`bench.harness.run_lmlab`, clipping at "
        "1.0 as every run does) against the plain loop of the GPU race (`bench/nanogpt_loop.py`: "
        "whole-model compile, fused AdamW, no clipping, the same tokens every step) around "
        "lmlab's own model and around nanoGPT's; the three alternate round by round. us/step = "
        "the mean start-to-start time of the timed steps. The last two rows are differences "
        "of one round's runs: lmlab's training loop around its model, and lmlab's model "
        "against nanoGPT's in the same loop. A CPU has no kernel launches: what a GPU adds to "
        "the host's work a step, and any synchronisation, is not here."
    ),
}
