"""``data``: a cold ``prepare`` of the embedded corpus and the tokenizer's throughput;
``collate``: each family's collator at the GPU benchmark's shapes, alone and through a
DataLoader."""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.cases.common import Case, Settings
from bench.harness import compose
from bench.report import CaseResult, Stat
from lmlab.config import resolve_configs
from lmlab.data.packing import prepare
from lmlab.data.sources import load_documents


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


CASES = {"data": Case(data_case, "data"), "collate": Case(collate_case, "data")}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
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
}
