"""The GPU cases that time one operation alone (``make bench-gpu``): KV-cache generation,
attention per positional scheme (SDPA with lmlab's dense mask against FlexAttention), and the
output layer's loss (full against chunked). ``--quick`` runs each small, on any device."""

from __future__ import annotations

import dataclasses
import statistics
import time
import traceback
from unittest import mock

import torch

from bench.gpu_cases import device, shapes
from bench.harness import compose
from bench.report import CaseResult, Stat, one_line
from lmlab.config import AttentionKernel, ModelConfig, Positional, resolve_configs
from lmlab.model import build_model
from lmlab.model.context import build_context
from lmlab.model.positional import make_positional


def generate_case(s) -> list[CaseResult]:
    """KV-cache greedy generation with gpt_small in bf16 (random weights), batch 1. Then 64
    tokens with cuDNN's attention kernel allowed, as it was before ``varying_shapes``: the
    first H200 run gave 15 tokens/s, which that kernel's plan per new shape would explain."""
    from torch.nn.attention import SDPBackend

    from lmlab.infer.generation import generate
    from lmlab.model import context

    cfg = compose(shapes(s, "gpt_small", 1, 1024), s.work / "gen")
    model_cfg = dataclasses.replace(resolve_configs(cfg)[0], vocab_size=50304)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device().type == "cuda" else torch.float32
    model = build_model(model_cfg).to(device(), dtype).eval()
    prompt = torch.randint(50304, (1, 16), device=device())
    new = 16 if s.quick else 512

    def rate(tokens: int) -> float:
        if device().type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(model, prompt, tokens, temperature=0, use_cache=True)
        if device().type == "cuda":
            torch.cuda.synchronize()
        return tokens / (time.perf_counter() - t0)

    rates = [rate(new) for _ in range(s.repeats)]
    everything = [SDPBackend.CUDNN_ATTENTION, *context.VARYING_SHAPE_BACKENDS]
    with mock.patch.object(context, "VARYING_SHAPE_BACKENDS", everything):
        cudnn = [rate(min(new, 64))]
    stats = [Stat("KV cache", "tok/s", rates), Stat("cuDNN attention allowed", "tok/s", cudnn)]
    return [CaseResult("gpu", "generate gpt_small", stats, f"{new} new tokens, batch 1, {dtype}")]


ATTENTION_SCHEMES = {  # what each positional or window sweep adds to causal attention
    "ALiBi": {"positional": Positional.alibi},
    "T5 relative": {"positional": Positional.relative},
    "window T/4": {"attention_window": 4},  # the sequence length over 4
}


def attention_seconds(step: callable, iters: int) -> float:
    """Median seconds of ``step`` over ``iters`` calls after 3 warm-up calls (compilation)."""
    for _ in range(3):
        step()
    times = []
    for _ in range(iters):
        if device().type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device().type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def attention_case(s) -> list[CaseResult]:
    """Attention alone at GPT-2 small's shape (12 x 1024 tokens, 12 heads of 64, causal),
    forward and backward in bf16, compiled: SDPA with lmlab's dense mask against FlexAttention
    (``model.attention_kernel=sdpa|flex``, with the tiles ``flex_kernel_options`` picks; a
    scheme whose kernel fails is a failed row), per scheme that needs a mask or a bias, and both
    against plain causal SDPA (no mask: the flash kernels), the bound. Each step builds the
    context (mask, block mask) as a forward does once for all its layers. ``--quick`` (or a
    CPU): forward only, uncompiled (FlexAttention has no CPU backward)."""
    dev, quick = device(), s.quick or device().type != "cuda"
    B, T, H, hd = (2, 64, 4, 16) if quick else (12, 1024, 12, 64)
    dtype = torch.float32 if quick else torch.bfloat16
    pos = torch.arange(T, device=dev)
    qkv = [torch.randn(B, H, T, hd, device=dev, dtype=dtype) for _ in range(3)]
    for t in qkv:
        t.requires_grad_(not quick)

    def seconds(knobs: dict, kernel: AttentionKernel) -> float:
        cfg = ModelConfig(d_model=H * hd, n_heads=H, max_seq_len=T, vocab_size=64, **knobs)
        positional = make_positional(cfg).to(dev)

        def attend() -> torch.Tensor:
            window = cfg.attention_window
            ctx = build_context(positional, pos, pos, causal=True, window=window, kernel=kernel)
            return ctx.attend(*qkv, 0.0, False)

        torch._dynamo.reset()  # each configuration its own compile, not a recompile
        fn = attend if quick else torch.compile(attend)
        if quick:
            with torch.no_grad():
                return attention_seconds(fn, 5)
        return attention_seconds(lambda: fn().sum().backward(), 50)

    flash = seconds({}, AttentionKernel.sdpa)
    results = []
    for label, knobs in ATTENTION_SCHEMES.items():
        if "attention_window" in knobs:
            knobs = {"attention_window": T // knobs["attention_window"]}
        try:
            sdpa = seconds(knobs, AttentionKernel.sdpa)
            flex = seconds(knobs, AttentionKernel.flex)
        except Exception as err:  # a kernel that fails to compile: the other schemes still run
            traceback.print_exc()
            results.append(
                CaseResult("gpu", f"attention {label}", skipped=f"failed: {one_line(err)}")
            )
            continue
        stats = [
            Stat("flex / sdpa speed", "x", [sdpa / flex]),
            Stat("sdpa, dense mask", "ms", [1e3 * sdpa]),
            Stat("flex", "ms", [1e3 * flex]),
            Stat("causal, no mask", "ms", [1e3 * flash]),
        ]
        passes = "forward" if quick else "forward + backward"
        note = f"{B} x {T} tokens, {H} heads of {hd}, {dtype}, {passes}"
        results.append(CaseResult("gpu", f"attention {label}", stats, note))
    return results


def cross_entropy_case(s) -> list[CaseResult]:
    """The output layer's loss alone at GPT-2 small's head (12 x 1024 tokens, d 768, vocab
    50304), forward and backward under bf16 autocast: the full form (bf16 logits, their fp32
    copy, cross-entropy) against torch's chunked ``linear_cross_entropy``
    (``model.cross_entropy=full|chunked``, ``lmlab.model.loss.output``): time and the peak
    memory the step adds. ``--quick`` (or a CPU): a small shape in fp32, time only."""
    from lmlab.model.loss import CHUNKED_AVAILABLE, Chunking, output

    dev, quick = device(), s.quick or device().type != "cuda"
    if not CHUNKED_AVAILABLE:
        note = f"not run: torch {torch.__version__} has no linear_cross_entropy"
        return [CaseResult("gpu", "cross-entropy", [], note)]
    N, D, V = (256, 32, 1024) if quick else (12 * 1024, 768, 50304)
    torch.manual_seed(0)
    layer = torch.nn.Linear(D, V, bias=False, device=dev)
    x = torch.randn(N, D, device=dev, requires_grad=True)
    labels = torch.randint(0, V, (N,), device=dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not quick)

    def step(chunking: Chunking) -> None:
        with autocast:
            loss = output(layer, x, labels, chunking)
        loss.backward()
        layer.weight.grad = x.grad = None

    def measure(chunking: Chunking) -> tuple[float, float]:
        seconds = attention_seconds(lambda: step(chunking), 3 if quick else 30)
        if dev.type != "cuda":
            return seconds, float("nan")
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(chunking)
        return seconds, (torch.cuda.max_memory_allocated() - base) / 2**20

    (full_s, full_mib), (chunk_s, chunk_mib) = measure(Chunking.never), measure(Chunking.always)
    stats = [
        Stat("chunked / full speed", "x", [full_s / chunk_s]),
        Stat("full", "ms", [1e3 * full_s]),
        Stat("chunked", "ms", [1e3 * chunk_s]),
    ]
    if dev.type == "cuda":
        stats += [Stat("full, peak added", "MiB", [full_mib])]
        stats += [Stat("chunked, peak added", "MiB", [chunk_mib])]
    precision = "fp32" if quick else "bf16 autocast"
    note = f"{N} tokens, d {D}, vocab {V}, {precision}, forward + backward"
    return [CaseResult("gpu", "cross-entropy", stats, note)]
