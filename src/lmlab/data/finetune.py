"""Fine-tuning examples (``task=classify``, ``task=seq2seq``) in the data module: read,
split and labelled by ``lmlab.data.examples``, then tokenised here and batched by the same
resumable sampler as pre-training. Class labels travel with the checkpoint, plan.json and
results.json, and the examples' digest with plan.json (a resume checks it). The tokenizer is
the checkpoint's (``data.tokenizer=checkpoint``) or one trained on the training texts and
cached like a corpus's. Examples are small: they are held in memory as token-id lists, and
each batch is padded to its longest row (``lmlab.data.collators``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer

from lmlab.config import (
    DataConfig,
    Family,
    TaskConfig,
    TaskKind,
    TaskSpec,
)
from lmlab.data.datamodule import LMDataModule
from lmlab.data.examples import columns, input_texts, load_splits, text_fields
from lmlab.data.labels import label_ids, label_names, majority
from lmlab.data.packing import cache_root, cached_tokenizer, text_digest, tokenizer_dir
from lmlab.data.split import Split, example
from lmlab.data.task_collators import ClassifyCollator, PairClassifyCollator, Seq2SeqCollator
from lmlab.data.tokenizer import encode_ordinary, unknown_pieces, unknown_record, warn_unknown

log = logging.getLogger(__name__)


def texts_key(texts: list[str]) -> str:
    """An identity of the tokenizer's training text, for its cache key."""
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]


class FinetuneDataModule(LMDataModule):
    """Fine-tuning examples in place of packed rows; batching, the resumable sampler (the data
    position is one integer) and the loaders are pre-training's. ``spec`` (the task's kind,
    labels and sizes) is known after ``setup``."""

    def __init__(
        self,
        cfg: DataConfig,
        task: TaskConfig,
        family: Family,
        seq_len: int,
        seed: int,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__(cfg, family, seq_len, seed, tokenizer)
        self.task_cfg = task
        self.spec = TaskSpec(task.kind)

    def prepare_data(self) -> None:
        """Nothing shared to prepare on disk first: ``setup`` reads the examples."""

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_rows"):
            return
        task = self.task_cfg
        cache = cache_root(self.cfg)  # a file or unwritable folder: named, not a traceback
        train, val = load_splits(task, cache / "datasets")
        (x_train, y_train), (x_val, y_val) = columns(task, train), columns(task, val)
        for x, split in ((x_train, train), (x_val, val)):
            report_empty(x, split, text_fields(task)[: 2 if task.text_pair_column else 1])
        labels: tuple[str, ...] = ()
        val_counts: tuple[int, ...] = ()
        if task.kind == TaskKind.classify:  # labels become ids; seq2seq targets are texts
            labels = label_names(y_train, task.num_labels, train.origin)
            y_train = label_ids(y_train, labels, train.origin)
            y_val = label_ids(y_val, labels, val.origin)
            val_counts, said = majority(y_val, labels, val.origin)
            if said:
                log.info(said)
        # a trained tokenizer learns what it will read: the inputs (both texts of a pair), and
        # seq2seq's targets
        texts = input_texts(x_train) + (y_train if task.kind == TaskKind.seq2seq else [])
        tok_dir = tokenizer_dir(
            cache, ["finetune", texts_key(texts)], self.cfg, self.given_tokenizer
        )
        self.tokenizer = cached_tokenizer(tok_dir, self.cfg, texts, self.given_tokenizer)
        self.train_rows = self.tokenized(x_train, y_train, train.origin)
        self.val_rows = self.tokenized(x_val, y_val, val.origin)
        self.collate = COLLATORS[task.kind](self.tokenizer, self.seq_len, task)
        self.val_collate = self.collate  # fine-tuning's collators draw nothing
        for rows, split in ((self.train_rows, train), (self.val_rows, val)):
            report_cut(rows, self.collate.room, split.origin, self.collate.input_len)
        # each example one JSON text, in order: its input (a pair's two texts), its target or
        # label id
        examples = [("train", x_train, y_train), ("val", x_val, y_val)]
        digest = text_digest(
            [(name, json.dumps(row)) for name, x, y in examples for row in zip(x, y, strict=True)]
        )
        held_out = val.origin.startswith(train.origin)  # val_fraction of the training examples
        self.spec = TaskSpec(
            task.kind,
            labels,
            len(self.train_rows),
            len(self.val_rows),
            task.decode_rows,
            task.text_pair_column,
            examples_sha256=digest,
            origin=train.origin if held_out else f"{train.origin} and {val.origin}",
            val_label_counts=val_counts,
        )

    def tokenized(self, x: list[Any], y: list[Any], origin: str) -> list[tuple[Any, Any]]:
        """(input ids, target) per example: the target's ids for a text, else the label id;
        a pair of texts gives a pair of id lists. A plain list is the dataset: the DataLoader
        hands the collator lists of these. The texts are read as ordinary text
        (``encode_ordinary``): a "<mask>" or "[SEP]" in an example is its characters, and the
        collator's framing ids are its only control tokens. Text the tokenizer has no token
        for (in either text of a pair) is counted in a warning (``warn_unknown``)."""
        found: Counter = Counter()
        n_tokens = 0

        def ids(texts: list[str]) -> list[list[int]]:
            nonlocal n_tokens
            encoded = encode_ordinary(self.tokenizer, texts)  # a "[SEP]" in the text is text
            found.update(p for ps in unknown_pieces(self.tokenizer, texts, encoded) for p in ps)
            n_tokens += sum(len(e.ids) for e in encoded)
            return [e.ids for e in encoded]

        targets = ids(y) if y and isinstance(y[0], str) else y
        if x and isinstance(x[0], tuple):  # pairs: each text of the pair on its own
            firsts, seconds = (list(texts) for texts in zip(*x, strict=True))
            inputs = list(zip(ids(firsts), ids(seconds), strict=True))
        else:
            inputs = ids(x)
        rows = list(zip(inputs, targets, strict=True))
        warn_unknown(unknown_record(found), n_tokens, origin)
        return rows

    @property
    def val_bytes_per_token(self) -> None:
        """Bits per byte is a language-model measure: none here."""
        return None

    def probe_batch(self) -> dict[str, torch.Tensor]:
        """The first training example as a batch, with the padding mask every fine-tuning batch
        sends (``LMDataModule.probe_batch``)."""
        return self.collate(self.train_rows[:1])


def report_cut(
    rows: list[tuple[Any, Any]],
    room: tuple[int, int | None],
    origin: str,
    input_len: Callable[[Any], int] = len,
) -> int:
    """A warning counting the examples of ``origin`` the collator will cut: inputs past
    ``room[0]`` ids (``data.seq_len``; a pair's two texts together, ``input_len``), targets
    past ``room[1]`` (``task.max_target_len``). Returns the count."""
    inputs = [input_len(x) > room[0] for x, _ in rows]
    targets = [room[1] is not None and len(y) > room[1] for _, y in rows]
    cut = sum(map(any, zip(inputs, targets, strict=True)))
    if cut:
        parts = [f"{sum(inputs)} inputs past {room[0]} tokens (data.seq_len)"]
        if room[1] is not None:
            parts.append(f"{sum(targets)} targets past {room[1]} (task.max_target_len)")
        log.warning("%d of %d examples of %s are cut: %s", cut, len(rows), origin, ", ".join(parts))
    return cut


def report_empty(inputs: list[Any], split: Split, fields: tuple[str, ...]) -> int:
    """A warning counting the examples of ``split`` whose input (either text of a pair) is
    empty or whitespace only, as a JSON Lines file's ``""`` is: the model reads its framing
    alone ([CLS] [SEP], or EOS) and is taught the label or target from nothing. (A CSV's
    empty text field is a missing value, refused by ``columns``.) Returns the count."""
    texts = [x if isinstance(x, tuple) else (x,) for x in inputs]
    empty = [r for r, pair in enumerate(texts) if not all(t.strip() for t in pair)]
    if empty:
        named = ", ".join(f"task.{f}" for f in fields)
        log.warning(
            "%d of %d examples of %s have an empty input text (%s; whitespace only counts), "
            "the first is %s: the model reads its framing alone for them; leave them out or "
            "fill them in",
            len(empty),
            len(inputs),
            split.origin,
            named,
            example(empty[0], split),
        )
    return len(empty)


# How each task's examples are batched.
COLLATORS: dict[TaskKind, Callable[[Tokenizer, int, TaskConfig], Callable]] = {
    TaskKind.classify: lambda tok, seq_len, task: (
        ClassifyCollator if task.text_pair_column is None else PairClassifyCollator
    )(tok, seq_len),
    TaskKind.seq2seq: lambda tok, seq_len, task: Seq2SeqCollator(
        tok, seq_len, task.max_target_len or seq_len
    ),
}
