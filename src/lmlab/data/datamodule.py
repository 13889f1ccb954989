"""The LightningDataModule: one corpus pipeline feeding every family's objective."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmlab.config import DataConfig, Family
from lmlab.data.collators import COLLATORS, Numbered
from lmlab.data.packing import UnusableEntry, discard, prepare, read_entry, writing
from lmlab.data.sampler import ResumableSampler
from lmlab.data.tokenizer import warn_unknown
from lmlab.errors import ConfigError

log = logging.getLogger(__name__)

# The seed of the validation split's corruption (BERT's masks, T5's spans), whatever the run's
# seed: every run scores the same target tokens, as every GPT run does, so runs of other seeds
# compare on one validation set. Drawn with the run's seed, the masks alone moved a bert_tiny
# checkpoint's loss on a 15-row validation split by up to 0.14 nats across seeds 0 to 4.
VAL_SEED = 0


class Rows(Dataset):
    """Windows of the packed token rows, held in memory as one int32 tensor. Window i starts
    at token ``i * stride`` of the rows laid end to end; ``stride`` = the row length (the
    default) gives the rows themselves. A window may join the end of one row to the start of
    the next: rows are consecutive cuts of the token stream. ``__getitems__`` gives the
    DataLoader a whole batch as one indexing op instead of B small tensors; given (window, g)
    pairs (a numbered ``ResumableSampler``), the windows with their sample numbers."""

    def __init__(self, rows: torch.Tensor, stride: int | None = None) -> None:
        self.rows, self.row_len = rows, rows.shape[1]
        self.stride = stride or self.row_len
        self.stream = rows.reshape(-1)
        self.offsets = torch.arange(self.row_len)

    def __len__(self) -> int:
        return (self.stream.numel() - self.row_len) // self.stride + 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int] | list[tuple[int, int]]) -> torch.Tensor | Numbered:
        if indices and isinstance(indices[0], tuple):
            windows, samples = zip(*indices, strict=True)
            return Numbered(self.__getitems__(list(windows)), list(samples))
        if self.stride == self.row_len:
            return self.rows[indices]
        starts = torch.as_tensor(indices) * self.stride
        return self.stream[starts[:, None] + self.offsets]


def _load_rows(path: Path, writer: str | None) -> torch.Tensor:
    """The packed rows as one (n_rows, row_len) int32 tensor, read from the Arrow column in
    one piece (converting row by row through ``datasets``' numpy format is far slower). Rows
    that this ``datasets`` cannot read (ones written by another version can fail deep inside
    ``datasets.features``) raise UnusableEntry, naming the version that wrote them
    (``writer``, from the entry's record)."""
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise UnusableEntry(
            f"the packed rows cached in {path} cannot be read by datasets "
            f"{datasets.__version__} ({type(err).__name__}: {err}); they were written by "
            f"datasets {writer or '(version not recorded)'}"
        ) from err
    column = ds.data.column("input_ids").combine_chunks()  # list<int32>, one row per item
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(flat.astype(np.int32).reshape(len(ds), -1))


MAX_GPU_WORKERS = 4


def loader_settings(
    num_workers: int | None,
    device: torch.device,
    local_processes: int = 1,
    in_workers: bool = True,
) -> tuple[int, bool]:
    """(workers, pin_memory) for ``data.num_workers`` (null: chosen here) on ``device``. On a GPU
    each process gets up to 4 workers for a collator ``in_workers`` (BERT's masking, T5's span
    corruption, fine-tuning's padding), so collation runs beside the step instead of before
    it, and pinned host memory, so Lightning's copy to the device (``non_blocking=True``) does
    not wait. Next-token rows are a slice, which the main process makes in less time than it
    takes to receive a batch from a worker (``CausalLMCollator.in_workers``). On a CPU the
    main process collates: workers would take the cores the step runs on."""
    gpu = device.type == "cuda"
    if num_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        num_workers = min(MAX_GPU_WORKERS, max(1, (cores or 1) // local_processes))
        num_workers = num_workers if gpu and in_workers else 0
    return num_workers, gpu


# Fine-tuning widths on a GPU (``data.pad_to_multiple_of=null``): a batch padded to its longest
# example rounded up to a multiple of 64 has one of ceil(seq_len / 64) widths (8 at 512; a
# seq2seq batch's targets, one of ceil(task.max_target_len / 64) more).
GPU_PAD_MULTIPLE = 64


def pad_multiple(setting: int | None, device: torch.device) -> int:
    """What a fine-tuning batch's width is rounded up to (``data.pad_to_multiple_of``; null:
    chosen here). On a GPU, 64: there each new shape costs once (cuDNN's attention, which
    PyTorch prefers on Hopper, builds an execution plan per shape; ``cuda_graphs`` records a
    graph per width) and tensor cores take widths in multiples of 8, so a handful of widths
    serve a whole run, for at most 63 padded positions a row. On a CPU, 1: the longest
    example's width, since padding costs compute there and a new shape nothing."""
    if setting is not None:
        return setting
    return GPU_PAD_MULTIPLE if device.type == "cuda" else 1


class LMDataModule(L.LightningDataModule):
    """``setup`` loads cached rows; ``train_dataloader`` draws ``num_train_samples`` rows in a
    seeded order starting at ``start_sample`` (set on resume)."""

    def __init__(
        self,
        cfg: DataConfig,
        family: Family,
        seq_len: int,
        seed: int,
        tokenizer: str | None = None,
    ) -> None:
        """``tokenizer``: the JSON of the tokenizer ``data.tokenizer=checkpoint`` uses."""
        super().__init__()
        self.cfg, self.family, self.seq_len, self.seed = cfg, family, seq_len, seed
        self.given_tokenizer = tokenizer
        # Each objective packs its own row length: seq_len + 1 for next-token pairs, seq_len - 2
        # for BERT's [CLS] .. [SEP], and for T5 the raw span that corrupts to seq_len.
        self.row_len = COLLATORS[family].row_len(seq_len)
        self.num_train_samples = 0
        self.start_sample = 0
        self.blocks_dir: Path | None = None

    def prepare_data(self) -> None:
        if self.blocks_dir is None:  # train() prepares before the Trainer calls this again
            self.blocks_dir = prepare(self.cfg, self.row_len, self.given_tokenizer)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        if hasattr(self, "train_rows"):
            return
        try:
            train, val = self._load()
        except UnusableEntry as err:  # a cache, rebuilt from the corpus
            log.warning("%s: building them again from the corpus", err)
            with writing(self.cfg):  # a read-only cache is refused, naming data.cache_dir
                discard(self.blocks_dir)
            self.blocks_dir = None
            self.prepare_data()
            try:
                train, val = self._load()
            except UnusableEntry as again:
                raise ConfigError(f"{again}, just after writing them") from again
        for split, record in self.meta.get("unknown", {}).items():  # entries before it: none
            where = f"the {split} split of data.source={self.cfg.source.value}"
            warn_unknown(record, self.meta[split]["tokens"], where)
        self.train_rows, self.val_rows = Rows(train, self.cfg.stride), Rows(val)
        # training draws each row's corruption with the run's seed and the row's sample
        # number, validation with a seed of its own and the row's tokens (``row_seeds``)
        self.collate, self.val_collate = (
            COLLATORS[self.family](tokenizer=self.tokenizer, seed=seed, seq_len=self.seq_len)
            for seed in (self.seed, VAL_SEED)
        )

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached rows of both splits, and the tokenizer and counts beside them."""
        self.meta, self.tokenizer = read_entry(self.blocks_dir)
        writer = self.meta.get("datasets")
        train, val = (_load_rows(self.blocks_dir / split, writer) for split in ("train", "val"))
        return train, val

    def probe_batch(self) -> dict[str, torch.Tensor]:
        """The first training row as the training collator batches it: what a probe of the
        training step's kernels runs (``SDPAKernelReport``)."""
        return self.collate(self.train_rows.__getitems__([0]))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def val_bytes_per_token(self) -> float:
        return self.meta["val"]["bytes"] / self.meta["val"]["tokens"]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = ResumableSampler(
            len(self.train_rows),
            self.num_train_samples,
            self.seed,
            self.start_sample,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            numbered=isinstance(self.train_rows, Rows),  # fine-tuning's examples: a list
        )
        return self._loader(self.train_rows, sampler)

    def val_dataloader(self) -> DataLoader:
        # every rank evaluates the same rows (torchmetrics syncs the sums): the validation set
        # does not depend on the device count
        batch_size = self.cfg.val_batch_size or self.cfg.batch_size
        return self._loader(self.val_rows, None, batch_size, self.val_collate)

    def _loader(
        self,
        rows: Rows,
        sampler: ResumableSampler | None,
        batch_size: int | None = None,
        collate: Callable[..., Any] | None = None,
    ) -> DataLoader:
        """A loader of ``rows`` through ``collate`` (None: the training collator)."""
        collate = self.collate if collate is None else collate
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        local_processes = trainer.num_devices if trainer else 1
        in_workers = getattr(collate, "in_workers", True)
        workers, pin = loader_settings(self.cfg.num_workers, device, local_processes, in_workers)
        if hasattr(collate, "multiple"):  # fine-tuning's padded batches
            collate.multiple = pad_multiple(self.cfg.pad_to_multiple_of, device)
        return DataLoader(
            rows,
            batch_size=batch_size or self.cfg.batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin,
            # its own generator: creating an iterator then draws no seed from the global RNG,
            # which dropout uses (exact resume, validation in between or not)
            generator=torch.Generator().manual_seed(self.seed),
        )
