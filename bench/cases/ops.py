"""One operation timed alone, its two implementations alternating round by round:
``adamw`` (torch's AdamW, foreach against fused) and ``cross_entropy`` (the output layer's
loss, full against chunked)."""

from __future__ import annotations

import dataclasses
from functools import partial

import torch

from bench.cases.common import Case, Settings, alternate
from bench.harness import compose
from bench.report import CaseResult, Stat
from lmlab.config import resolve_configs
from lmlab.model import build_model
from lmlab.train.optimizer import decay_groups

ADAMW_MODELS = [
    ("shakespeare char (d 128, 4 layers)", ["+experiment=shakespeare_char_cpu"], 171),
    ("gpt_tiny", ["model=gpt_tiny"], 4096),
    ("gpt_mini", ["model=gpt_mini"], 4096),
]


def adamw_case(s: Settings) -> list[CaseResult]:
    """``optimizer.step()`` of torch's AdamW over lmlab's parameter groups with random
    gradients, ``foreach`` against ``fused`` (what ``optim.fused=auto`` picks on CPU), the two
    alternating round by round in one process: the step alone, without the model."""
    results = []
    for label, overrides, vocab in ADAMW_MODELS:
        cfg = compose([*overrides, "logger=none"], s.work / "adamw")
        model_cfg = dataclasses.replace(resolve_configs(cfg)[0], vocab_size=vocab)
        torch.manual_seed(0)
        model = build_model(model_cfg)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opts = {
            impl: torch.optim.AdamW(decay_groups(model, 0.1), lr=1e-6, **{impl: True})
            for impl in ("foreach", "fused")
        }
        steps = s.steps(20)
        ms = alternate({impl: opt.step for impl, opt in opts.items()}, steps, s.repeats)
        speedup = [a / b for a, b in zip(ms["foreach"], ms["fused"], strict=True)]
        stats = [Stat(f"AdamW {impl}", "ms/step", v) for impl, v in ms.items()]
        stats.append(Stat("fused speed-up (foreach / fused)", "x", speedup))
        n = sum(p.numel() for p in model.parameters())
        results.append(
            CaseResult("adamw", label, stats, f"{n:,} parameters; {steps} steps a round")
        )
    return results


# (label, tokens per micro-batch, d_model, vocabulary): the shapes of lmlab's CPU runs and of
# GPT-2 small's head at a short context
CE_SHAPES = [
    ("Tiny Shakespeare 12x64, d 128, vocab 171", 768, 128, 171),
    ("gpt_tiny 16x256 (make train), d 128, vocab 4096", 4096, 128, 4096),
    ("gpt_mini 16x256, d 256, vocab 4096", 4096, 256, 4096),
    ("GPT-2 small head 4x512, d 768, vocab 50304", 2048, 768, 50304),
]


def cross_entropy_case(s: Settings) -> list[CaseResult]:
    """The output layer's loss alone, forward and backward in fp32: ``full`` (logits, then
    cross-entropy) against ``chunked`` (torch's ``linear_cross_entropy``), as the families call
    them (``lmlab.model.loss.output``), alternating round by round in one process."""
    from lmlab.model.loss import CHUNKED_AVAILABLE, Chunking, output

    if not CHUNKED_AVAILABLE:
        return []
    results = []
    forms = {"full": Chunking.never, "chunked": Chunking.always}
    shapes = CE_SHAPES[:2] if s.quick else CE_SHAPES
    for label, n, d, vocab in shapes:
        torch.manual_seed(0)
        layer = torch.nn.Linear(d, vocab, bias=False)
        x = torch.randn(n, d, requires_grad=True)
        labels = torch.randint(0, vocab, (n,))
        steps = s.steps(5)
        calls = {
            form: partial(lambda *args: output(*args).backward(), layer, x, labels, chunking)
            for form, chunking in forms.items()
        }
        ms = alternate(calls, steps, s.repeats)
        speedup = [a / b for a, b in zip(ms["full"], ms["chunked"], strict=True)]
        stats = [Stat(f"{form}", "ms/step", v) for form, v in ms.items()]
        stats.append(Stat("chunked speed-up (full / chunked)", "x", speedup))
        logits_mib = n * vocab * 4 / 2**20
        note = f"{steps} steps a round; the full form's fp32 logits: {logits_mib:,.0f} MiB"
        results.append(CaseResult("cross_entropy", label, stats, note))
    return results


CASES = {
    "adamw": Case(adamw_case, "adamw"),
    "cross_entropy": Case(cross_entropy_case, "cross_entropy"),
}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "adamw": (
        "torch's AdamW (`decay_groups`, weight decay 0.1) over each model's parameters with "
        "random gradients: `foreach=True` against `fused=True`, which `optim.fused=auto` "
        "picks on CPU and CUDA (`lmlab.train.optimizer.build_optimizer`). One process, the two "
        "alternating round by round after a warm-up round; ms per `optimizer.step()`."
    ),
    "cross_entropy": (
        "The output layer's loss alone (`lmlab.model.loss.output`), forward and backward in "
        "fp32 on random activations: `full` (the whole logits, then `F.cross_entropy`) "
        "against `chunked` (torch's `F.linear_cross_entropy`, 1024 rows per chunk on the "
        "CPU), which `model.cross_entropy=auto` takes for fp32 runs once the vocabulary is at "
        "least 8 times `d_model`. One process, the two alternating round by round after a "
        "warm-up round; ms per forward and backward."
    ),
}
