"""The benchmark cases. Each takes the run's ``Settings`` and returns ``CaseResult``s.

- ``train_*``: steady-state tokens/s and MFU of the real lmlab stack (``lmlab.train.run.train`` on
  a composed config), MFU against the matmul peak measured in the same benchmark run.
- ``overhead*``: lmlab's Trainer against ``plain_loop.plain_fit`` on the same config, run
  interleaved (plain, lmlab, lmlab, plain, ...) so that drift in machine load cancels.
- ``data``: a cold ``prepare`` of the embedded corpus and the tokenizer's throughput.
- ``generate``: tokens/s of greedy generation with gpt_mini, with and without the KV cache.
- ``memory``: peak memory of a training step with and without activation checkpointing.
- ``moe``: step time of a Mixture-of-Experts model against the dense one with the same active
  parameters, interleaved.
- ``cross_entropy``: the output layer's loss, the full form against the chunked one.
- ``startup``: a fresh process's import of what ``lmlab train`` loads, and its exit, with and
  without ``lmlab.cli.heap``'s collector settings.
- ``profile``: a py-spy profile of lmlab's training loop, Lightning's own share of a step.
- ``shakespeare``: nanoGPT's char-level CPU run raced against nanoGPT's own recipe, then
  Llama's (not in the default set: minutes each).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from bench.gpu_cases import GPU_CASES, GPU_OVERRIDES, STEPS, WARMUP, lmlab_model
from bench.harness import BENCH_OVERRIDES, ROOT, compose, run_lmlab
from bench.nanogpt_loop import tokens_per_second as plain_tokens_per_second
from bench.plain_loop import plain_fit
from bench.profiling import PROFILE_STEPS
from bench.report import CaseResult, Stat
from bench.stack_profile import ORDER, TRAINER, profile_run, py_spy
from lmlab.config import resolve_configs
from lmlab.data.packing import prepare
from lmlab.data.sources import load_documents
from lmlab.model import build_model
from lmlab.train.hardware import measure_cpu_matmul_flops
from lmlab.train.task import decay_groups


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


# --- training throughput -------------------------------------------------------------------


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


# --- lmlab vs a plain loop -----------------------------------------------------------------


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


# --- host time per step, compiled -----------------------------------------------------------

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
    ``--quick``: eager and a few steps, which measures nothing."""
    steps, warm = (6, 2) if s.quick else (HOST_STEPS, HOST_WARMUP)
    overrides = [*host_overrides(), f"compile={'false' if s.quick else 'model'}"]
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


# --- data ----------------------------------------------------------------------------------


def data_case(s: Settings) -> list[CaseResult]:
    """Cold ``prepare`` (read, split, train the BPE, tokenise, pack, save) into a fresh cache,
    then the trained tokenizer's ``encode_batch`` over the whole corpus."""
    from tokenizers import Tokenizer

    cfg = compose([], s.work / "data")
    data_cfg = resolve_configs(cfg)[1]
    if s.quick:
        data_cfg = dataclasses.replace(data_cfg, max_bytes=1_000_000)
    texts = [t for _, t in load_documents(data_cfg)]
    n_bytes = sum(len(t.encode()) for t in texts)
    prep_s, mb_s = [], []
    for _ in range(s.repeats):
        cache = Path(tempfile.mkdtemp(dir=s.work, prefix="cold-cache-"))
        t0 = time.perf_counter()
        blocks = prepare(dataclasses.replace(data_cfg, cache_dir=str(cache)), 257)
        prep_s.append(time.perf_counter() - t0)
        tok = Tokenizer.from_file(str(next(cache.glob("tok-*")) / "tokenizer.json"))
        t0 = time.perf_counter()
        tok.encode_batch(texts)
        mb_s.append(n_bytes / 1e6 / (time.perf_counter() - t0))
        assert (blocks / "meta.json").exists()
        shutil.rmtree(cache, ignore_errors=True)
    stats = [Stat("cold prepare", "s", prep_s), Stat("tokenise", "MB/s", mb_s)]
    note = (
        f"{len(texts)} files, {n_bytes / 1e6:.1f} MB, BPE vocab {data_cfg.vocab_size}, "
        "rows of 257 tokens"
    )
    return [CaseResult("data", "stdlib corpus", stats, note)]


# The GPU benchmark's shapes per family (bench/gpu_cases.py): batch x sequence length.
COLLATE_SHAPES = {"gpt": (12, 1024), "bert": (32, 512), "t5": (32, 512)}


def main_process_ms(loader: torch.utils.data.DataLoader, batches: int) -> float:
    """The main thread's median time to get a batch from ``loader`` (``next``), with 2 ms of
    sleep between batches standing in for the step, so that workers can keep ahead; after 10
    batches of warm-up. Wall time, not CPU time: torch's idle OpenMP threads spin after each
    parallel op, CPU time that delays nothing."""
    batches_of = iter(loader)
    for _ in range(10):
        next(batches_of)
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        next(batches_of)
        times.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return 1e3 * statistics.median(times)


def collate_case(s: Settings) -> list[CaseResult]:
    """Each family's collator (next token; BERT's masking; T5's span corruption) on one batch
    of the GPU benchmark's shape, in this process, as one DataLoader worker runs it: whether
    ``data.num_workers`` (up to 4 a process on a GPU) keeps ahead of a GPU's step. Then what a
    batch costs the main process through a DataLoader (``Rows``, a random order): collated
    there, or taken from 2 workers through shared memory (the choice ``in_workers`` of each
    collator makes on a GPU)."""
    from torch.utils.data import DataLoader, RandomSampler

    from lmlab.data.collators import COLLATORS
    from lmlab.data.datamodule import Rows
    from lmlab.data.sources import SHAKESPEARE
    from lmlab.data.tokenizer import train_bpe

    tokenizer = train_bpe([SHAKESPEARE.read_text()[: 100_000 if s.quick else None]], 4096)
    results = []
    for family, (batch, seq_len) in COLLATE_SHAPES.items():
        if s.quick:
            batch, seq_len = 2, 64
        collate = COLLATORS[family](tokenizer=tokenizer, seed=0, seq_len=seq_len)
        rows = torch.randint(10, tokenizer.get_vocab_size(), (batch, collate.row_len(seq_len)))
        collate(rows)  # first call: imports, caches
        times = []
        for _ in range(3 if s.quick else 50):
            t0 = time.perf_counter()
            collate(rows)
            times.append(time.perf_counter() - t0)
        stats = [Stat("one batch", "ms", [1e3 * statistics.median(times)])]
        table = torch.randint(10, 4096, (3000, collate.row_len(seq_len)), dtype=torch.int32)
        order = RandomSampler(table, replacement=True, num_samples=10**6)
        batches = 5 if s.quick else 200
        main: dict[int, list[float]] = {0: [], 2: []}
        for _ in range(s.repeats):  # the two alternating, run by run
            for workers, times_ms in main.items():
                loader = DataLoader(
                    Rows(table), batch_size=batch, sampler=order, collate_fn=collate,
                    num_workers=workers, persistent_workers=workers > 0,
                )  # fmt: skip
                times_ms.append(main_process_ms(loader, batches))
        stats.append(Stat("main process, collating", "ms", main[0]))
        stats.append(Stat("main process, 2 workers", "ms", main[2]))
        note = (
            f"{batch} x {seq_len} tokens; one batch: median of {len(times)}, one process; main "
            f"process: median time to get a batch, of {batches}, 2 ms of sleep between"
        )
        results.append(CaseResult("data", f"collate {family}", stats, note))
    return results


# --- generation ----------------------------------------------------------------------------


def generate_case(s: Settings) -> list[CaseResult]:
    """gpt_mini (random weights, context 1024), a 16-token prompt, greedy, B = 1."""
    from lmlab.infer.generation import generate
    from lmlab.model import build_model

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


def memory_case(s: Settings) -> list[CaseResult]:
    """Peak memory of one forward + backward of gpt_mini's training loss (context 1024,
    batch 8): activations stored, with activation checkpointing, and stored with the full
    cross-entropy instead of the chunked one (``model.cross_entropy``), each in a fresh process
    (``bench/memory_probe.py``)."""
    batch, seq = ("2", "256") if s.quick else ("8", "1024")
    modes = {
        "stored": [],
        "activation checkpointing": ["--activation-checkpointing"],
        "stored, full cross-entropy": ["--full-loss"],
    }
    growth: dict[str, list[float]] = {label: [] for label in modes}
    for _ in range(s.repeats):
        for label, flag in modes.items():  # interleaved, a fresh process each
            cmd = [sys.executable, str(ROOT / "bench" / "memory_probe.py"), "gpt_mini", batch, seq]
            out = subprocess.run([*cmd, *flag], capture_output=True, text=True, check=True).stdout
            growth[label].append(json.loads(out.splitlines()[-1])["peak_growth_mib"])
    if min(min(g) for g in growth.values()) <= 0:
        raise RuntimeError(f"no memory growth measured: {growth} (MiB)")
    name = f"gpt_mini {batch}x{seq} forward+backward"
    stored = statistics.median(growth["stored"])
    against = {  # what each other mode's note compares it with: the stored, chunked step
        "activation checkpointing": "storing activations",
        "stored, full cross-entropy": "the chunked cross-entropy",
    }

    def note(label: str) -> str:
        if label not in against:
            return ""
        ratio = statistics.median(growth[label]) / stored  # either way: the note says which
        more = "more" if ratio > 1 else "less"
        return f"{abs(1 - ratio):.0%} {more} than {against[label]} (medians)"

    return [
        CaseResult("memory", f"{name}, {label}", [Stat("peak growth", "MiB", mib)], note(label))
        for label, mib in growth.items()
    ]


# --- AdamW implementations ------------------------------------------------------------------


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


# (label, overrides, vocabulary): the Tiny Shakespeare model and two presets
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


# --- cross-entropy forms -------------------------------------------------------------------

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


# --- start-up and exit --------------------------------------------------------------------

# A child process that imports what ``lmlab train`` imports before it trains, then exits: with
# the collector as Python leaves it, or as ``lmlab.cli.heap`` sets it for every lmlab command.
# It prints when the import ended and when its last statement ran.
STARTUP_CHILD = """
import contextlib, sys, time
sys.path.insert(0, {src!r})
from lmlab.cli.heap import before_exit, long_lived
with long_lived() if {heap} else contextlib.nullcontext():
    import {module}
imported = time.time()
if {heap}:
    before_exit()
print(imported, time.time(), flush=True)
"""
STARTUP_MODES = {"Python's default": False, "lmlab.cli.heap": True}


def startup_case(s: Settings) -> list[CaseResult]:
    """A fresh process imports ``lmlab.train.run`` (torch, Lightning, torchmetrics, Hydra,
    datasets: what ``lmlab train`` loads once the config composed) and exits, the two
    collector settings alternating process by process: seconds from the process's start to
    the import's end, and from its last statement to its exit."""
    module = "lmlab.errors" if s.quick else "lmlab.train.run"  # quick: the plumbing only
    times = {mode: {"import": [], "exit": [], "whole": []} for mode in STARTUP_MODES}
    for i in range(s.repeats + 1):  # round 0 warms the file cache
        for mode in list(STARTUP_MODES) if i % 2 == 0 else list(STARTUP_MODES)[::-1]:
            code = STARTUP_CHILD.format(
                src=str(ROOT / "src"), heap=STARTUP_MODES[mode], module=module
            )
            start = time.time()
            out = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            )
            end = time.time()
            imported, last = map(float, out.stdout.split())
            if i:
                times[mode]["import"].append(imported - start)
                times[mode]["exit"].append(end - last)
                times[mode]["whole"].append(end - start)
    results = []
    for mode, t in times.items():
        stats = [
            Stat(f"import {module}, from the process's start", "s", t["import"]),
            Stat("exit, from the last statement", "s", t["exit"]),
            Stat("whole process", "s", t["whole"]),
        ]
        processes = f"{s.repeats} process" + ("es" if s.repeats != 1 else "")
        results.append(CaseResult("startup", mode, stats, processes))
    return results


# --- Mixture of Experts ------------------------------------------------------------------

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


# --- profile --------------------------------------------------------------------------------


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


# --- Tiny Shakespeare ----------------------------------------------------------------------

NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, the CPU run at iter 2000
RECIPES = {"gpt2": "shakespeare_char_cpu", "llama": "[shakespeare_char_cpu,llama]"}


# Lightning's line when training ends (max_steps reached), in the run's train.log
FIT_STOPPED = re.compile(r"^\[([\d-]+ [\d:]+),(\d+)\].*`Trainer.fit` stopped", re.M)
# lmlab's kernel report, logged when training starts (on_train_start), just before step 1
TRAIN_STARTS = re.compile(r"^\[([\d-]+ [\d:]+),(\d+)\].*attention kernel: ", re.M)


def log_time(pattern: re.Pattern, log: str) -> float:
    """``time.time()`` of the last train.log line that ``pattern`` matches (its timestamp is
    local time, to the millisecond)."""
    stamp, ms = pattern.findall(log)[-1]
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1e3


def lmlab_process(experiment: str, out: Path, quick: bool) -> tuple[float, float, float, dict]:
    """``python src/train.py +experiment=...`` as a user runs it: seconds from the process's
    start to its exit, to the start of training (train.log's kernel report, just before the
    first step) and to the end of training (train.log's line when ``Trainer.fit`` stops:
    after the last step's validation and checkpoint, before the whole-split score, the
    sample and the exit), and its results.json."""
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), f"+experiment={experiment}"]
    cmd += ["logger=csv", f"hydra.run.dir={out}"]
    if quick:
        cmd += ["trainer.max_steps=20", "trainer.val_check_interval=10"]
    start = time.time()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    wall = time.time() - start
    log = (out / "train.log").read_text()
    began, trained = log_time(TRAIN_STARTS, log) - start, log_time(FIT_STOPPED, log) - start
    return wall, began, trained, json.loads((out / "results.json").read_text())


def nanogpt_process(seed: int, out: Path, quick: bool) -> tuple[float, float, dict]:
    """``bench/nanogpt_shakespeare.py``: seconds from the process's start to the end of its
    last iteration (its whole-split score after that is not timed) and to the start of its
    training loop, and what it printed."""
    cmd = [sys.executable, str(ROOT / "bench" / "nanogpt_shakespeare.py"), f"--seed={seed}"]
    cmd += [f"--out={out}"] + (["--max-iters=20"] if quick else [])
    start = time.time()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["done_at"] - start, result["loop_at"] - start, result


def shakespeare_case(s: Settings) -> list[CaseResult]:
    """nanoGPT's CPU run, raced: nanoGPT's own ``train.py`` recipe
    (``bench/nanogpt_shakespeare.py``) and lmlab's ``+experiment=shakespeare_char_cpu``
    alternate (nanoGPT, lmlab, lmlab, nanoGPT, ...), each a fresh process timed from its start,
    ``repeats`` runs each; then one run of lmlab with Llama's recipe. lmlab's outputs are kept
    under outputs/bench/shakespeare/."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    root = ROOT / "outputs" / "bench" / "shakespeare" / stamp
    nano: dict[str, list[float]] = {"wall": [], "began": [], "estimate": [], "whole": []}
    lm: dict[str, list[float]] = {"wall": [], "began": [], "trained": [], "whole": [], "tps": []}
    for i in range(s.repeats):
        for who in ("nanogpt", "lmlab") if i % 2 == 0 else ("lmlab", "nanogpt"):
            if who == "nanogpt":
                wall, began, r = nanogpt_process(1337, s.work / f"nanogpt-{i}", s.quick)
                nano["wall"].append(wall)
                nano["began"].append(began)
                nano["estimate"].append(r["val_loss_estimate"])
                nano["whole"].append(r["val_loss_whole_split"])
            else:
                wall, began, trained, r = lmlab_process(
                    RECIPES["gpt2"], root / f"gpt2-{i}", s.quick
                )
                lm["wall"].append(wall)
                lm["began"].append(began)
                lm["trained"].append(trained)
                lm["whole"].append(r["val_loss"])
                lm["tps"].append(r["tokens_per_second"])

    def speed(lmlab_seconds: list[float]) -> list[float]:  # nanoGPT's wall / lmlab's, by pair
        return [n / m for n, m in zip(nano["wall"], lmlab_seconds, strict=True)]

    # the training loop alone, first step to the end of training: validation and checkpoints
    # inside it, start-up and what follows it outside
    nano_loop = [w - b for w, b in zip(nano["wall"], nano["began"], strict=True)]
    lm_loop = [t - b for t, b in zip(lm["trained"], lm["began"], strict=True)]
    loop_speed = [n / m for n, m in zip(nano_loop, lm_loop, strict=True)]

    results = [
        CaseResult(
            "shakespeare",
            "nanoGPT train.py",
            [
                Stat("whole process, start to last iteration", "s", nano["wall"]),
                Stat("start-up, start to the first iteration", "s", nano["began"]),
                Stat("training loop, first iteration to last", "s", nano_loop),
                Stat("val loss, whole split", "nats", nano["whole"]),
                Stat("val loss, its 20-batch estimate", "nats", nano["estimate"]),
            ],
            "seed 1337 (its default); the whole-split score is computed after the timed part",
        ),
        CaseResult(
            "shakespeare",
            "lmlab gpt2 char",
            [
                Stat("whole process, start to exit", "s", lm["wall"]),
                Stat("speed against nanoGPT (its wall / lmlab's)", "x", speed(lm["wall"])),
                Stat("start to the end of training (nanoGPT's measure)", "s", lm["trained"]),
                Stat(
                    "speed to the end of training (its wall / lmlab's)",
                    "x",
                    speed(lm["trained"]),
                ),
                Stat("start-up, start to the first step", "s", lm["began"]),
                Stat("training loop, first step to the end of training", "s", lm_loop),
                Stat("loop speed against nanoGPT (its loop / lmlab's)", "x", loop_speed),
                Stat("val loss, whole split", "nats", lm["whole"]),
                Stat("tokens/s (training steps)", "tok/s", lm["tps"]),
            ],
            f"seed 1337 (the default); outputs in {root.relative_to(ROOT)}",
        ),
    ]
    wall, _, _, r = lmlab_process(RECIPES["llama"], root / "llama", s.quick)
    stats = [Stat("whole process, start to exit", "s", [wall])]
    stats += [Stat("val loss, whole split", "nats", [r["val_loss"]])]
    results.append(CaseResult("shakespeare", "lmlab llama char", stats, "one run"))
    return results


CASES: dict[str, Case] = {
    "train_gpt_tiny_fp32": Case(train_case("gpt_tiny", "32-true", 20), "train"),
    "train_gpt_tiny_bf16": Case(train_case("gpt_tiny", "bf16-mixed", 6), "train"),
    "train_gpt_mini_fp32": Case(train_case("gpt_mini", "32-true", 12), "train"),
    "train_gpt_mini_bf16": Case(train_case("gpt_mini", "bf16-mixed", 5), "train"),
    "train_bert_tiny_fp32": Case(train_case("bert_tiny", "32-true", 15), "train"),
    "train_t5_tiny_fp32": Case(train_case("t5_tiny", "32-true", 10), "train"),
    "overhead": Case(overhead_case([], "gpt_tiny 16x256", 20), "overhead"),
    "overhead_small": Case(overhead_case(SMALL_STEP, "gpt_tiny 12x64", 60), "overhead"),
    "host": Case(host_case, "host"),
    "data": Case(data_case, "data"),
    "collate": Case(collate_case, "data"),
    "generate": Case(generate_case, "generate"),
    "memory": Case(memory_case, "memory"),
    "moe": Case(moe_case, "moe"),
    "adamw": Case(adamw_case, "adamw"),
    "cross_entropy": Case(cross_entropy_case, "cross_entropy"),
    "startup": Case(startup_case, "startup"),
    "profile": Case(profile_case, "profile"),
    "shakespeare": Case(shakespeare_case, "shakespeare", default=False),
    **{name: Case(fn, "gpu", default=False) for name, fn in GPU_CASES.items()},
}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "gpu": (
        "`make bench-gpu` (`python bench/run.py --only gpu`) on one GPU. lmlab runs "
        "`trainer=gpu compile=model` (bf16-mixed, the loss in the compiled graph, fused AdamW) "
        "on the embedded corpus with `logger=none`, no validation and no sample; tokens/s over "
        f"steps {WARMUP} to {STEPS - 1} (the mean start-to-start time of the "
        f"{STEPS - 1 - WARMUP} steps between them), clipping the gradients at "
        "`trainer.gradient_clip_val` (1.0) as every lmlab run does. The plain loop "
        f"(`bench/nanogpt_loop.py`, the mean of {STEPS} steps after {WARMUP} warm-up steps) is "
        "written like nanoGPT's `bench.py`: its own GPT-2, whole-model `torch.compile`, fused "
        "AdamW, bf16 autocast, random tokens and no clipping, the baseline #17 set; the two "
        "alternate run by run, gpt_small's first pair starting with the plain loop and "
        "gpt_medium's with lmlab. 'plain loop, lmlab's model' is that loop once around lmlab's "
        "own model (its loss from `labels`): near the plain loop's figure, a gap is lmlab's "
        "training loop; near lmlab's, its model's graph. "
        "MFU = tokens/s x `flops_per_token` / the dense bf16 peak "
        "(`lmlab.train.hardware.gpu_peak_flops`). The attention rows time attention alone at "
        "GPT-2 small's shape (forward and backward, bf16, compiled): SDPA with lmlab's dense "
        "mask against FlexAttention (`model.attention_kernel=sdpa|flex`), per scheme that needs "
        "a mask or a bias, with plain causal SDPA as the bound. `--profile DIR` writes a "
        "torch.profiler table of each case's first run there, and 'GPU busy' is that run's "
        "kernel time per step (the profiled steps) over its step time (the timed ones). "
        "'syncs per quiet step': the synchronising CUDA calls of each lmlab run's steps that "
        "log nothing, 5 steps after the timed ones under "
        '`torch.cuda.set_sync_debug_mode("warn")` (`bench.profiling.SyncAudit`), the '
        "sites in the note; a GPU waits idle for the host after each. 'plain syncs per step': "
        "the same audit of the plain loop's steps, the control. `--budget` reports the "
        "cases it left out as not run."
    ),
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
    "data": (
        "cold prepare = `lmlab.data.packing.prepare` into an empty cache folder: read the "
        "files, split, train the byte-level BPE, tokenise, pack and save the rows. tokenise = "
        "`Tokenizer.encode_batch` of the trained BPE over the whole corpus (all threads). "
        "collate = each family's collator on one batch of the GPU benchmark's shape, in one "
        "process as one DataLoader worker runs it (a GPU run has up to 4 workers a process). "
        "main process = the main thread's median time to get such a batch from a DataLoader "
        "over `Rows` in a random order, with 2 ms of sleep between batches for the step: "
        "collated there, or handed over by 2 workers through shared memory. "
        "`data.num_workers=null` on a GPU takes workers where they cost the main process "
        "less (`in_workers` of each collator: BERT's masking and T5's span corruption, not "
        "GPT's slice of the rows)."
    ),
    "generate": (
        "`lmlab.infer.generation.generate(model, prompt, n, temperature=0, use_cache=...)`: "
        "gpt_mini "
        "with random weights, `model.max_seq_len=1024`, a 16-token prompt, batch 1; the two "
        "modes alternate run by run."
    ),
    "memory": (
        "Growth of the process's peak resident memory (`VmHWM`, reset just before the step "
        "through `/proc/self/clear_refs`) over its resident size before one forward and "
        "backward, measured in a fresh process for each run, the modes alternating: activations "
        "stored, or recomputed per block (`model.activation_checkpointing=true`, "
        "`lmlab.train.parallel.layout`), and stored with the full cross-entropy "
        "(`model.cross_entropy=full`: the whole fp32 logits and their gradient) instead of the "
        "chunked one the default takes here. The step is the training loss of random tokens "
        "over a 4096-token vocabulary. CPU memory stands in for GPU memory where no GPU is lent."
    ),
    "moe": (
        "`+experiment=llama` (dense, SwiGLU d_ff 384) against `+experiment=mixtral "
        "model.d_ff=192` (8 experts, each token to 2: the same active parameters) on gpt_tiny, "
        "16 x 256 tokens per step, fp32, the runs alternating; step time as in the train "
        "group (median start-to-start, first 2 steps left out)."
    ),
    "adamw": (
        "torch's AdamW (`decay_groups`, weight decay 0.1) over each model's parameters with "
        "random gradients: `foreach=True` against `fused=True`, which `optim.fused=auto` "
        "picks on CPU and CUDA (`lmlab.train.task.build_optimizer`). One process, the two "
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
    "startup": (
        "A fresh `python -c` process imports `lmlab.train.run` (what `lmlab train` loads once "
        "its config composed: torch, Lightning with torchmetrics, Hydra, datasets) and exits. "
        "'Python's default' leaves the cyclic garbage collector as it is; 'lmlab.cli.heap' is "
        "what every lmlab command does: the import with the collector paused and its objects "
        "frozen (`long_lived`), then `before_exit` (one collection, then freeze) before the "
        "exit. The two alternate process by process after a warm-up pair. 'exit' is the time "
        "from the child's last statement to the parent seeing it end: the interpreter's "
        "shutdown."
    ),
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
    "shakespeare": (
        "nanoGPT's documented CPU run of Tiny Shakespeare, raced on this machine: "
        "`bench/nanogpt_shakespeare.py` (nanoGPT's `train.py` recipe for that command: "
        "eval_interval 250 with 20-batch estimates of both splits, a checkpoint when the "
        "estimate improves, no compile) against `python src/train.py "
        "+experiment=shakespeare_char_cpu logger=csv` (the same first 20 batches of the "
        "held-out split at every validation, the whole held-out 10% after the last step, "
        "fused AdamW, a checkpoint at steps 1000 and 2000, the end-of-run sample), the two "
        "alternating, each a fresh process timed from its start: nanoGPT to the end of its "
        "last iteration (its whole-split score follows, not timed), lmlab to its exit and, "
        "the same measure as nanoGPT's, to the end of training (train.log's '`Trainer.fit` "
        "stopped': after the last step's validation and checkpoint; the whole-split score, "
        "the sample and the exit follow). 'val loss, whole split' is "
        "the same measure for both: non-overlapping 65-character rows of the last 10%. "
        "Start-up ends at the first training step (nanoGPT: its loop begins; lmlab: "
        "train.log's attention-kernel report, logged when training starts); the training "
        "loop runs from there to the end of training, its validations and checkpoints "
        "included (nanoGPT: 9 estimates of 40 batches; lmlab: 8 of 20). "
        f"nanoGPT's README reports {NANOGPT_VAL_LOSS}, one draw of its 20-batch estimate. "
        "Then lmlab once more with `'+experiment=[shakespeare_char_cpu,llama]'`."
    ),
}
