"""``make bench-gpu``: lmlab on one GPU against a plain loop written like nanoGPT's
(``bench/nanogpt_loop.py``), at nanoGPT's ``bench.py`` shapes (12 x 1024 tokens, vocab 50304,
no biases, dropout 0, bf16, whole-model compile), run interleaved (then the plain loop once
around lmlab's own model: how much of a gap is the model's graph, how much the training
loop); then every family's MFU,
a Mixture of Experts (Mixtral's recipe on gpt_medium: MFU from the active parameters),
FSDP on one GPU and KV-cache generation. Nothing is installed or downloaded: the data is the
embedded corpus, the weights random.

``--quick`` shrinks every case to a tiny model on whatever device there is (a CPU in CI),
without compilation: it checks that the cases run, and measures nothing.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import sys
import time
import traceback
from unittest import mock

import torch

from bench.harness import BENCH_OVERRIDES, compose, run_lmlab
from bench.nanogpt_loop import tokens_per_second as plain_tokens_per_second
from bench.profiling import AUDIT_STEPS, device_ms_per_step, quiet_syncs
from bench.report import CaseResult, Stat, one_line
from lmlab.config import AttentionKernel, Family, ModelConfig, Positional, resolve_configs
from lmlab.data.collators import decoder_tokens
from lmlab.model import build_model, flops_per_token
from lmlab.model.context import build_context
from lmlab.model.positional import make_positional
from lmlab.train.hardware import peak_flops

WARMUP = 15  # compilation and allocator warm-up: left out of every timing
STEPS = 60


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


QUICK_SHAPE = (2, 64)  # batch x sequence length of every --quick run


def batch_shape(s, batch: int, seq: int) -> tuple[int, int]:
    """The batch and sequence length a case runs at: its own, or quick's."""
    return QUICK_SHAPE if s.quick else (batch, seq)


def shapes(s, preset: str, batch: int, seq: int) -> list[str]:
    """nanoGPT's bench.py shapes on ``preset``; quick: a tiny model on the device there is."""
    batch, seq = batch_shape(s, batch, seq)
    model = preset.split("_")[0] + "_tiny" if s.quick else preset
    small = ["data.max_bytes=1000000"] if s.quick else []
    return [f"model={model}", f"data.batch_size={batch}", f"data.seq_len={seq}", *small]


# What a GPU bench run leaves out besides BENCH_OVERRIDES': the checkpoint, weights and AdamW
# state written after the last step (1.5 GB for gpt_small, 4 GB for gpt_medium), which the
# plain loop does not write either.
GPU_OVERRIDES = [*BENCH_OVERRIDES, "~callbacks.checkpoint"]


@dataclasses.dataclass
class Run:
    """One lmlab run of a GPU case."""

    tokens_per_s: float
    busy: float | None  # the GPU's kernel time over the step time (profiled runs)
    syncs: tuple[float, list[str]] | None  # per quiet step, and where (``quiet_syncs``)


def lmlab_run(s, name: str, overrides: list[str], profile: bool = False) -> Run:
    """tokens/s of one lmlab run over its steady steps (mean start-to-start time, the two
    ends of the window after a wait for the GPU, as the plain loop times its steps). Then, the
    timed steps unchanged: with ``profile`` (and ``--profile DIR``) ``s.profile_steps()``
    steps under the profiler, their table in ``DIR/<name>.txt`` and the share of the timed
    steps the GPU was busy; and ``AUDIT_STEPS`` steps under ``SyncAudit``."""
    gpu = device().type == "cuda"
    trainer = ["trainer=gpu"] if gpu else ["trainer.precision=32-true"]
    if any(o.startswith("trainer=") for o in overrides):  # FSDP: its own trainer, block compile
        trainer = ["compile=blocks"] if gpu else []
    elif gpu:
        trainer.append("compile=model")
    steps = 6 if s.quick else STEPS
    table = s.profile / f"{name}.txt" if profile and s.profile else None
    audit_start = steps + (s.profile_steps() if table else 0)
    total = audit_start + (2 if s.quick else AUDIT_STEPS)
    out = s.work / name
    cfg = compose([*overrides, *trainer, *GPU_OVERRIDES, f"trainer.max_steps={total}"], out)
    # Every run compiles LMTask.objective afresh: in one process, the same code compiled for
    # another model counts as a recompile, and past dynamo's limit (8) runs go eager unsaid.
    torch._dynamo.reset()
    warm = 2 if s.quick else WARMUP
    try:
        log, _ = run_lmlab(
            cfg,
            profile=table,
            profile_start=steps,
            profile_steps=s.profile_steps(),
            sync_at=[warm, steps - 1],
            audit_start=audit_start,
        )
    except BaseException:  # the run's own lines say why; its folder is removed with the rest
        console = out / "console.log"
        lines = console.read_text(errors="replace").splitlines() if console.exists() else []
        print(f"{name}: the end of its console output", *lines[-40:], sep="\n", file=sys.stderr)
        raise
    starts = log.starts[:steps]  # the profiled and audited steps come after
    step_s = (starts[-1] - starts[warm]) / (len(starts) - 1 - warm)
    syncs = quiet_syncs(out / "sync_audit.json") if gpu else None  # a CPU never waits
    shutil.rmtree(out, ignore_errors=True)
    kernels_ms = device_ms_per_step(table)
    busy = kernels_ms / (1e3 * step_s) if kernels_ms else None
    return Run(log.tokens_per_step / step_s, busy, syncs)


def run_stats(runs: list[Run], who: str = "") -> list[Stat]:
    """The GPU's busy share (profiled runs) and the synchronising calls per quiet step of
    ``runs``, where measured."""
    prefix = f"{who} " if who else ""
    stats = []
    if busy := [r.busy for r in runs if r.busy is not None]:
        stats.append(Stat(f"{prefix}GPU busy", "%", busy))
    if syncs := [r.syncs[0] for r in runs if r.syncs is not None]:
        stats.append(Stat(f"{prefix}syncs per quiet step", "calls", syncs))
    return stats


def sync_note(runs: list[Run]) -> str:
    """Where the first run that synchronised in a quiet step did (its 3 most frequent sites)."""
    sites = next((r.syncs[1] for r in runs if r.syncs is not None and r.syncs[1]), [])
    return f"; quiet-step syncs at {'; '.join(sites[:3])}" if sites else ""


def model_config(overrides: list[str], s) -> tuple[ModelConfig, int]:
    """The model config ``overrides`` describe (a vocabulary left to the tokenizer: the
    embedded corpus's 4096) and the sequence length."""
    model_cfg, _, seq_len = resolve_configs(compose(overrides, s.work / "model"))
    return dataclasses.replace(model_cfg, vocab_size=model_cfg.vocab_size or 4096), seq_len


def lmlab_model(overrides: list[str], s) -> torch.nn.Module:
    """lmlab's model for ``overrides``, random weights (the plain loop's seed)."""
    torch.manual_seed(1337)
    return build_model(model_config(overrides, s)[0])


def mfu(tokens_per_s: float, overrides: list[str], s) -> float:
    """MFU of ``tokens_per_s`` for the model ``overrides`` describe, against the device's
    dense peak (bf16 on a GPU); NaN on a GPU whose peak neither lmlab's table nor
    Lightning's knows, whose case keeps its other figures."""
    model_cfg, seq_len = model_config(overrides, s)
    with torch.device("meta"):
        model = build_model(model_cfg)
    fpt = flops_per_token(model, seq_len, decoder_tokens(model_cfg.family, seq_len))
    precision = "bf16-mixed" if device().type == "cuda" else "32-true"
    peak = peak_flops(device(), precision, s.work)
    return tokens_per_s * fpt / peak if peak else math.nan


GPT2_SHAPES = ["+experiment=gpt2", "model.bias=false", "model.vocab_size=50304"]
SIZES = {"gpt_small": (12, 12, 768), "gpt_medium": (24, 16, 1024)}  # layers, heads, d_model


def versus_plain(preset: str, lmlab_first: bool = False) -> callable:
    """lmlab against the nanoGPT-style loop at the same shapes, interleaved run by run, the
    first pair's order ``lmlab_first`` (then alternating): with one run each (``REPEATS=1``,
    as ``gpu_check.sh all`` runs), gpt_small's pair starts with the plain loop and
    gpt_medium's with lmlab, so neither side always runs first."""

    def run(s) -> list[CaseResult]:
        overrides = [*shapes(s, preset, 12, 1024), *GPT2_SHAPES, "model.dropout=0.0"]
        n_layer, n_head, d = SIZES["gpt_small" if s.quick else preset]
        if s.quick:
            n_layer, n_head, d = 4, 4, 128
        batch, seq = batch_shape(s, 12, 1024)
        steps, warm = (6, 2) if s.quick else (STEPS, WARMUP)
        plain_audit = s.work / f"{preset}-plain-syncs.json"  # the first plain run's

        def plain_run(i: int | None, model: torch.nn.Module | None = None) -> float:
            """The plain loop (run ``i`` of the pairs; its first profiled), or once around
            ``model``."""
            table = s.profile / f"{preset}-plain.txt" if s.profile and i == 0 else None
            shape = (n_layer, n_head, d, 50304, batch, seq, steps, warm, device())
            return plain_tokens_per_second(
                *shape,
                compile=not s.quick,
                profile=table,
                profile_steps=s.profile_steps(),
                model=model,
                audit=plain_audit if i == 0 else None,
            )

        runs, plain = [], []
        for i in range(s.repeats):
            if i and not s.time_left():  # --budget: the pairs measured so far
                break
            order = ("plain", "lmlab") if (i + lmlab_first) % 2 == 0 else ("lmlab", "plain")
            for which in order:
                if which == "lmlab":
                    runs.append(lmlab_run(s, f"{preset}-{i}", overrides, profile=i == 0))
                else:
                    plain.append(plain_run(i))
        lm = [r.tokens_per_s for r in runs]
        ratio = [a / b for a, b in zip(lm, plain, strict=True)]
        stats = [
            Stat("lmlab / plain", "x", ratio),
            Stat("lmlab", "tok/s", lm),
            Stat("plain loop", "tok/s", plain),
            Stat("lmlab MFU", "%", [mfu(t, overrides, s) for t in lm]),
            Stat("plain MFU", "%", [mfu(t, overrides, s) for t in plain]),
            *run_stats(runs, "lmlab"),
        ]
        plain_kernels = device_ms_per_step(s.profile / f"{preset}-plain.txt" if s.profile else None)
        if plain_kernels:  # the first pair's plain run was profiled
            plain_step_ms = 1e3 * batch * seq / plain[0]
            stats.append(Stat("plain GPU busy", "%", [plain_kernels / plain_step_ms]))
        if device().type == "cuda" and (syncs := quiet_syncs(plain_audit)):  # the control
            stats.append(Stat("plain syncs per step", "calls", [syncs[0]]))
        if s.time_left():  # once: the plain loop around lmlab's model (the gap's split)
            split = plain_run(None, lmlab_model(overrides, s))
            stats.append(Stat("plain loop, lmlab's model", "tok/s", [split]))
        note = f"{batch} x {seq} tokens per step, {device()}; target 1.05x{sync_note(runs)}"
        return [CaseResult("gpu", f"{preset} vs plain", stats, note)]

    return run


def gpt_at_size(overrides: list[str], s) -> list[str]:
    """GPT with the size and the knobs of the model ``overrides`` describe (width, heads,
    feed-forward, norm and its placement, activation, positions, bias, vocabulary), its
    encoder's and decoder's layers as one stack, at the same tokens per step: #17's yardstick
    for every family ("MFU within 10 points of GPT's at a similar size"), which tells what the
    family's own structure costs (bidirectional attention, the MLM head, an encoder-decoder's
    two stacks and cross-attention) apart from its size and recipe."""
    model_cfg, _ = model_config(overrides, s)
    layers = model_cfg.n_layers + (model_cfg.decoder_layers if model_cfg.family == Family.t5 else 0)
    return [
        *overrides,
        "model.family=gpt",
        f"model.n_layers={layers}",
        "model.n_decoder_layers=null",
        "model.type_vocab_size=0",
    ]


def family_case(
    preset: str, extra: list[str], batch: int, seq: int, label: str, against_gpt: bool = False
) -> callable:
    """One lmlab configuration's tokens/s and MFU (``repeats`` runs). ``against_gpt``: then
    GPT at its size (``gpt_at_size``) once, and the points of MFU between the two."""

    def run(s) -> list[CaseResult]:
        overrides = [*shapes(s, preset, batch, seq), *extra]
        name = label.replace(" ", "_")
        runs = [
            lmlab_run(s, f"{name}-{i}", overrides, i == 0)
            for i in range(s.repeats)
            if i == 0 or s.time_left()  # --budget: the runs measured so far
        ]
        tps = [r.tokens_per_s for r in runs]
        mfus = [mfu(t, overrides, s) for t in tps]
        stats = [Stat("tokens/s", "tok/s", tps), Stat("MFU", "%", mfus), *run_stats(runs)]
        note = "{} x {} tokens per step".format(*batch_shape(s, batch, seq))
        if against_gpt and s.time_left():
            gpt_overrides = gpt_at_size(overrides, s)
            gpt = lmlab_run(s, f"{name}-gpt", gpt_overrides, profile=True)
            gpt_mfu = mfu(gpt.tokens_per_s, gpt_overrides, s)
            stats += [
                Stat("GPT at its size, MFU", "%", [gpt_mfu]),
                Stat("MFU below GPT at its size", "points", [gpt_mfu - m for m in mfus]),
                *run_stats([gpt], "GPT at its size"),
            ]
            note += "; GPT at its size: the same knobs and tokens, its layers in one stack"
            note += ", target within 10 points"
        return [CaseResult("gpu", label, stats, note + sync_note(runs))]

    return run


def cuda_graphs_case(s) -> list[CaseResult]:
    """The race's lmlab run at GPT-2 small (its shapes, no dropout) with ``cuda_graphs=true``:
    the step's kernels launched as CUDA graphs, against the host-bound gap the first H200 run
    found. CUDA only: the option is refused elsewhere."""
    label = "gpt_small cuda graphs"
    if device().type != "cuda":
        return [CaseResult("gpu", label, skipped="needs a CUDA GPU (cuda_graphs=true)")]
    extra = [*GPT2_SHAPES, "model.dropout=0.0", "cuda_graphs=true"]
    return family_case("gpt_small", extra, 12, 1024, label)(s)


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


# In the order they run: the cheap cases first, then the races against the plain loop (the
# issue's targets; at GPT-2 small also lmlab with CUDA graphs), attention's kernels, the other
# families, FSDP and the Mixture of Experts.
# A device call has a time limit: the cases it leaves out are named and can run in another.
GPU_CASES = {
    "gpu_cross_entropy": cross_entropy_case,
    "gpu_generate": generate_case,
    "gpu_gpt_small": versus_plain("gpt_small"),
    "gpu_gpt_small_graphs": cuda_graphs_case,
    "gpu_attention": attention_case,
    "gpu_gpt_medium": versus_plain("gpt_medium", lmlab_first=True),
    "gpu_bert_base": family_case("bert_base", [], 32, 512, "bert_base", against_gpt=True),
    "gpu_t5_small": family_case("t5_small", [], 32, 512, "t5_small", against_gpt=True),
    "gpu_gpt_medium_llama": family_case(
        "gpt_medium", ["+experiment=llama", "model.vocab_size=50304"], 12, 1024, "gpt_medium llama"
    ),
    "gpu_fsdp": family_case(
        "gpt_small", [*GPT2_SHAPES, "trainer=fsdp", "trainer.devices=1"], 12, 1024, "gpt_small fsdp"
    ),
    "gpu_moe": family_case(
        "gpt_medium",
        ["+experiment=mixtral", "model.vocab_size=50304"],
        12,
        1024,
        "gpt_medium mixtral 8 experts top-2",
    ),
}
