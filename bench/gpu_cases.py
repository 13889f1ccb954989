"""``make bench-gpu``: lmlab on one GPU against a plain loop written like nanoGPT's
(``bench/nanogpt_loop.py``), at nanoGPT's ``bench.py`` shapes (12 x 1024 tokens, vocab 50304,
no biases, dropout 0, bf16, whole-model compile), run interleaved (then the plain loop once
around lmlab's own model: how much of a gap is the model's graph, how much the training
loop); then every family's MFU,
a Mixture of Experts (Mixtral's recipe on gpt_medium: MFU from the active parameters)
and FSDP on one GPU (the operations timed alone are in ``bench/gpu_ops.py``; the order the
cases run in, in ``bench/cases/gpu.py``). Nothing is installed or downloaded: the data is the
embedded corpus, the weights random.

``--quick`` shrinks every case to a tiny model on whatever device there is (a CPU in CI),
without compilation: it checks that the cases run, and measures nothing.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys

import torch

from bench.harness import BENCH_OVERRIDES, compose, run_lmlab
from bench.nanogpt_loop import tokens_per_second as plain_tokens_per_second
from bench.profiling import AUDIT_STEPS, device_ms_per_step, quiet_syncs
from bench.report import CaseResult, Stat
from lmlab.config import Family, ModelConfig, resolve_configs
from lmlab.data.collators import decoder_tokens
from lmlab.model import build_model, flops_per_token
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
