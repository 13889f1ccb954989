"""Objectives live in the collators: each turns packed token rows into model inputs and
``labels`` (-100 where no loss is taken), so ``task.py`` has one loss path for all families.

Each collator says how long a packed row it needs for a model sequence of ``seq_len``
(``row_len``), and is deterministic given its seed and its rows: each row's random draws are
seeded by the collator's seed and the row alone (``row_seeds``), so a resumed run and every
validation pass see the same corruption, and no batch size, accumulation or device count
changes which tokens a row has masked.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
import torch
from numpy.random import SeedSequence
from tokenizers import Tokenizer

from lmlab.config import IGNORE, MIN_SEQ_LEN, Family
from lmlab.data.tokenizer import Specials
from lmlab.errors import ConfigError

Batch = dict[str, torch.Tensor]


class Numbered(NamedTuple):
    """Training rows, each with its global sample number g (``ResumableSampler``: the g-th row
    the run draws, over all ranks and micro-batches)."""

    rows: torch.Tensor  # (B, R) int32
    samples: list[int]  # (B) g


def rows_of(batch: torch.Tensor | Numbered) -> torch.Tensor:
    return batch.rows if isinstance(batch, Numbered) else batch


def row_seeds(seed: int, batch: torch.Tensor | Numbered) -> list[int]:
    """A seed for each row's draws, of ``seed`` and that row alone, never of the batch around
    it: a row is corrupted alike whichever micro-batch, rank or batch size holds it.
    Numbered rows (training) are seeded by their sample number g, so a row drawn again in a
    later epoch is corrupted anew, as RoBERTa's dynamic masking does. Other rows (validation)
    are seeded by their own tokens (CRC32 of the int32 ids), so every pass scores the same
    targets."""
    if isinstance(batch, Numbered):
        return [int(SeedSequence([seed, g]).generate_state(1, np.uint64)[0]) for g in batch.samples]
    rows = batch.to(torch.int32).contiguous().numpy()
    return [seed * 1_000_003 + zlib.crc32(row.tobytes()) for row in rows]


class CausalLMCollator:
    """Next-token prediction: inputs are rows[:, :-1], labels rows[:, 1:]."""

    # Whether a GPU run collates in DataLoader workers (``data.num_workers=null``): a slice
    # costs the main process less than taking a batch from a worker through shared memory
    # (BENCHMARKS.md, "collate": 0.23 against 0.8 ms a batch of 12 x 1024 on the 2-core CPU).
    in_workers = False
    # Whether every batch of a size holds as many target tokens (every next token here; the
    # same width of spans' targets, one label a row). Where not (BERT's drawn masks, seq2seq's
    # targets of their own lengths), training weighs each target alike over the micro-batches
    # of a step (``LMTask.token_weighted``) rather than averaging their means.
    equal_targets = True

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        seq_len: int = 0,
    ) -> None:
        pass

    @classmethod
    def row_len(cls, seq_len: int) -> int:
        return seq_len + 1

    def __call__(self, batch: torch.Tensor | Numbered) -> Batch:
        rows_BT1 = rows_of(batch).long()
        return {"input_ids": rows_BT1[:, :-1], "labels": rows_BT1[:, 1:]}


class MLMCollator:
    """BERT's masked LM (Devlin et al. 2019, section 3.1): each row becomes [CLS] row [SEP];
    each non-special token is selected with probability 0.15 (one at least per row), and a
    selected token is replaced
    by [MASK] (80%), by a random non-special token (10%) or kept (10%). Labels are the original
    tokens at selected positions, -100 elsewhere. Packed rows hold no padding (documents are
    joined by EOS, which, like every special token, is never selected)."""

    in_workers = True  # the masking runs beside the step (``CausalLMCollator.in_workers``)
    equal_targets = False  # 15% of each row, drawn (``CausalLMCollator.equal_targets``)

    def __init__(
        self,
        tokenizer: Tokenizer,
        seed: int = 0,
        seq_len: int = 0,
        select: float = 0.15,
        mask: float = 0.8,
        random: float = 0.1,
    ) -> None:
        self.seed, self.select, self.mask, self.random = seed, select, mask, random
        specials = Specials.of(tokenizer)
        [self.cls_id], [self.sep_id] = specials.frame(tokenizer, Family.bert, "BERT's masked LM")
        self.mask_id = specials.id(tokenizer, "mask", "BERT's masked LM")
        vocab = tokenizer.get_vocab_size()
        self.is_special = torch.zeros(vocab, dtype=torch.bool)
        self.is_special[specials.all_ids(tokenizer)] = True
        self.regular_ids = (~self.is_special).nonzero().squeeze(1)

    @classmethod
    def row_len(cls, seq_len: int) -> int:
        return seq_len - 2  # room for [CLS] and [SEP]

    def draws(self, seed: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One row's draws: (3, length) uniforms (selection, the fallback's scores, the
        80 / 10 / 10 split) and (length,) random tokens' indices into ``regular_ids``."""
        gen = torch.Generator().manual_seed(seed)
        uniform_3T = torch.rand((3, length), generator=gen)
        return uniform_3T, torch.randint(len(self.regular_ids), (length,), generator=gen)

    def __call__(self, batch: torch.Tensor | Numbered) -> Batch:
        rows_BR = rows_of(batch)
        B = rows_BR.shape[0]
        ids_BT = torch.cat(
            (
                torch.full((B, 1), self.cls_id),
                rows_BR.long(),
                torch.full((B, 1), self.sep_id),
            ),
            dim=1,
        )
        seeds = row_seeds(self.seed, batch)
        rows = [self.draws(seed, ids_BT.shape[1]) for seed in seeds]
        uniform_3BT = torch.stack([uniform_3T for uniform_3T, _ in rows], 1)
        index_BT = torch.stack([index_T for _, index_T in rows])
        regular_BT = ~self.is_special[ids_BT]
        selected_BT = (uniform_3BT[0] < self.select) & regular_BT
        # as in BERT's own data (max(1, round(0.15 n)) per row), a row selects one token at
        # least, so no batch is a mean over no labels (likely only for rows of a few tokens)
        none_B = ~selected_BT.any(1) & regular_BT.any(1)
        if none_B.any():
            score_BT = uniform_3BT[1].masked_fill(~regular_BT, -1.0)
            selected_BT[none_B, score_BT[none_B].argmax(1)] = True
        u_BT = uniform_3BT[2]  # one draw splits 80 / 10 / 10
        to_mask = selected_BT & (u_BT < self.mask)
        to_random = selected_BT & (u_BT >= self.mask) & (u_BT < self.mask + self.random)
        random_BT = self.regular_ids[index_BT]
        inputs_BT = torch.where(to_mask, self.mask_id, torch.where(to_random, random_BT, ids_BT))
        labels_BT = torch.where(selected_BT, ids_BT, IGNORE)
        return {"input_ids": inputs_BT, "labels": labels_BT}


def noise_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a row of ``length``, as T5's ``random_spans_noise_mask``
    rounds them: both depend on the length only, so every row corrupts to the same lengths."""
    n_noise = min(max(int(np.round(length * density)), 1), length - 1)
    n_spans = max(int(np.round(min(n_noise, length - n_noise) / mean_span)), 1)
    return n_noise, n_spans


def random_spans_noise_mask(
    length: int, density: float, mean_span: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask (Raffel et al. 2020, section 3.1.4; HF's ``run_t5_mlm_flax.py``): split
    the noise and the non-noise tokens each into ``n_spans`` random non-empty segments, and
    interleave them, non-noise first. Returns a bool (length,) array, True = noise."""
    n_noise, n_spans = noise_counts(length, density, mean_span)

    def segment_lengths(n_items: int) -> np.ndarray:
        first = rng.permutation(np.arange(n_items - 1) < n_spans - 1)  # span starts, shuffled
        segment_id = np.cumsum(np.concatenate(([False], first)))
        return np.bincount(segment_id, minlength=n_spans)

    interleaved = np.stack(
        (segment_lengths(length - n_noise), segment_lengths(n_noise)), axis=1
    ).reshape(-1)
    starts = np.zeros(length, dtype=np.int64)
    starts[np.cumsum(interleaved)[:-1]] = 1
    return np.cumsum(starts) % 2 == 1


def corrupt_spans(
    ids: np.ndarray, noise: np.ndarray, sentinels: np.ndarray, eos: int
) -> tuple[np.ndarray, np.ndarray]:
    """inputs: the row with noise span k replaced by sentinel k; targets: sentinel k followed by
    span k, for every span. Both end with EOS."""
    starts = noise & ~np.concatenate(([False], noise[:-1]))
    span = np.cumsum(starts) - 1
    inputs = np.where(starts, sentinels[span], ids)[~noise | starts]
    first_in_targets = np.cumsum(noise)[starts] - 1  # index of each span's first token
    targets = np.insert(ids[noise], first_in_targets, sentinels[: starts.sum()])
    return np.append(inputs, eos), np.append(targets, eos)


class SpanCorruptionCollator:
    """T5's span corruption: noise density 0.15, mean span length 3. Rows are as long as makes
    the encoder input exactly ``seq_len`` (HF's ``compute_input_and_target_lengths``); targets
    are ``n_noise + n_spans + 1`` tokens. ``decoder_input_ids`` are the targets shifted right
    behind the pad id (T5's decoder start token); padding is masked in the loss, and in
    attention where an input is shorter than ``seq_len`` (none is: no mask is sent then)."""

    density, mean_span = 0.15, 3.0
    in_workers = True  # the corruption runs beside the step (``CausalLMCollator.in_workers``)

    def __init__(self, tokenizer: Tokenizer, seed: int = 0, seq_len: int = 256) -> None:
        self.seed, self.input_len = seed, seq_len
        specials = Specials.of(tokenizer)
        self.check_spans(seq_len, len(specials.sentinels))
        self.target_len = self.decoder_len(seq_len)
        self.sentinels = np.array([tokenizer.token_to_id(s) for s in specials.sentinels])
        self.eos = specials.id(tokenizer, "eos", "T5's span corruption")
        self.pad = specials.id(tokenizer, "pad", "T5's span corruption")

    @classmethod
    def check_spans(cls, seq_len: int, n_sentinels: int) -> None:
        """Each noise span of a row takes a sentinel of its own: a row with more spans than
        the tokenizer has sentinels cannot be corrupted (arithmetic only: checked before the
        data is prepared too)."""
        n_spans = noise_counts(cls.row_len(seq_len), cls.density, cls.mean_span)[1]
        if n_spans > n_sentinels:
            raise ConfigError(
                f"data.seq_len={seq_len} makes {n_spans} noise spans per row, more than the "
                f"tokenizer's {n_sentinels} sentinels: use a shorter sequence"
            )

    @classmethod
    def row_len(cls, seq_len: int) -> int:
        """The longest raw row whose corrupted input (with EOS) fits in ``seq_len``: longer
        than ``seq_len`` from 10 on (the noise leaves more tokens than its sentinels add),
        shorter below it; none below 3 (``MIN_SEQ_LEN``)."""

        def fits(length: int) -> bool:
            n_noise, n_spans = noise_counts(length, cls.density, cls.mean_span)
            return length - n_noise + n_spans + 1 <= seq_len

        length = seq_len
        while length > 2 and not fits(length):
            length -= 1
        if not fits(length):
            raise ConfigError(
                f"data.seq_len={seq_len} is too short for T5's span corruption (2 tokens become "
                f"a kept token, a sentinel and EOS): at least {MIN_SEQ_LEN[Family.t5]}"
            )
        while fits(length + 1):
            length += 1
        return length

    @classmethod
    def decoder_len(cls, seq_len: int) -> int:
        """Target tokens per row: each noise token, one sentinel per span, and EOS."""
        n_noise, n_spans = noise_counts(cls.row_len(seq_len), cls.density, cls.mean_span)
        return n_noise + n_spans + 1

    def __call__(self, batch: torch.Tensor | Numbered) -> Batch:
        rows_BR = rows_of(batch)
        B, R = rows_BR.shape
        inputs_BT = np.full((B, self.input_len), self.pad)
        targets_BS = np.full((B, self.target_len), self.pad)
        input_lens, target_lens = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)
        seeds = row_seeds(self.seed, batch)
        for b, ids in enumerate(rows_BR.numpy().astype(np.int64)):
            rng = np.random.default_rng(seeds[b])
            noise = random_spans_noise_mask(R, self.density, self.mean_span, rng)
            inputs, targets = corrupt_spans(ids, noise, self.sentinels, self.eos)
            inputs_BT[b, : len(inputs)], input_lens[b] = inputs, len(inputs)
            targets_BS[b, : len(targets)], target_lens[b] = targets, len(targets)
        targets = torch.from_numpy(targets_BS)
        real_BS = torch.arange(self.target_len) < torch.from_numpy(target_lens)[:, None]
        start_B1 = torch.full((B, 1), self.pad)
        batch = {
            "input_ids": torch.from_numpy(inputs_BT),
            "decoder_input_ids": torch.cat((start_B1, targets[:, :-1]), dim=1),
            "labels": targets.masked_fill(~real_BS, IGNORE),
        }
        # row_len makes every corrupted input exactly seq_len long (checked for every seq_len
        # up to 3000): a mask of all True would only cost attention its mask-free kernels
        if (input_lens < self.input_len).any():
            real_BT = torch.arange(self.input_len) < torch.from_numpy(input_lens)[:, None]
            batch["attention_mask"] = real_BT
        return batch


COLLATORS: dict[Family, type] = {
    Family.gpt: CausalLMCollator,
    Family.bert: MLMCollator,
    Family.t5: SpanCorruptionCollator,
}


def decoder_tokens(family: Family, seq_len: int) -> int | None:
    """Decoder tokens per row when the encoder gets ``seq_len`` (span corruption's targets, for
    ``flops_per_token``); None for a family without a decoder."""
    collator = COLLATORS[Family(family)]
    return collator.decoder_len(seq_len) if hasattr(collator, "decoder_len") else None


# --------------------------------------------------------------------------- fine-tuning
