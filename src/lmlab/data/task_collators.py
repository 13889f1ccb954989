"""The fine-tuning tasks' batches (``lmlab.data.finetune``): classification's [CLS] text
[SEP] (or a pair of texts, cut together as ``tokenizers`` cuts a pair) with one label a row,
and seq2seq's inputs and targets, each padded per batch (``pad_rows``). The pre-training
objectives are in ``lmlab.data.collators``."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from lmlab.config import IGNORE, Family
from lmlab.data.collators import Batch
from lmlab.data.tokenizer import Specials
from lmlab.errors import ConfigError

# Fine-tuning examples are token-id lists of any length (``lmlab.data.finetune``), padded per
# batch to its longest row, rounded up to a multiple of ``multiple`` (``data.pad_to_multiple_of``,
# set by the datamodule for the device): every row's padding is masked in attention and left
# out of the loss, so the rounding changes the shapes a step sees, not what it computes.


def pad_rows(
    rows: list[list[int]], pad_id: int, multiple: int = 1, widest: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W) ids, ``pad_id`` after each row's end, and the (B, W) mask of real tokens. W is
    the longest row rounded up to a multiple of ``multiple``, but never past ``widest`` (the
    longest row the collator makes: the model's positions end there) nor short of the
    longest row."""
    lengths = torch.tensor([len(row) for row in rows])
    longest = int(lengths.max())
    width = -(-longest // multiple) * multiple  # rounded up
    if widest is not None:
        width = min(width, max(widest, longest))
    ids_BT = torch.full((len(rows), width), pad_id)
    for b, row in enumerate(rows):
        ids_BT[b, : len(row)] = torch.tensor(row)
    return ids_BT, torch.arange(width) < lengths[:, None]


class ClassifyCollator:
    """Sequence classification: each text framed as BERT was pre-trained, [CLS] text [SEP]
    (cut to ``seq_len``); ``labels`` (B, 1) are the class ids, one prediction per sequence
    (``lmlab.model.bert.ClassificationHead``)."""

    def __init__(self, tokenizer: Tokenizer, seq_len: int) -> None:
        specials, use = Specials.of(tokenizer), "task=classify"
        [self.cls_id], [self.sep_id] = specials.frame(tokenizer, Family.bert, use)
        self.pad_id = specials.id(tokenizer, "pad", use)
        self.seq_len = seq_len
        # the most ids of an example kept: (input ids, target ids; None: a label)
        self.room: tuple[int, int | None] = (seq_len - 2, None)
        self.multiple = 1  # widths rounded up to a multiple of it (``pad_rows``)

    @staticmethod
    def input_len(ids: list[int]) -> int:
        """An example's input ids, counted against ``room[0]``."""
        return len(ids)

    def __call__(self, examples: list[tuple[list[int], int]]) -> Batch:
        rows = [[self.cls_id, *ids[: self.room[0]], self.sep_id] for ids, _ in examples]
        input_ids, real_BT = pad_rows(rows, self.pad_id, self.multiple, self.seq_len)
        labels_B1 = torch.tensor([[label] for _, label in examples])
        return {"input_ids": input_ids, "attention_mask": real_BT, "labels": labels_B1}


def longest_first(a: list[int], b: list[int], room: int) -> tuple[list[int], list[int]]:
    """``a`` and ``b`` cut to ``room`` ids together, one id at a time from the end of the
    longer, as Hugging Face tokenizers' default ``truncation="longest_first"`` cuts a pair. Once
    they are as long, the one that was shorter (``a`` if neither) loses the next id: an odd
    ``room`` leaves the extra id to the text that was longer, as ``tokenizers`` does."""
    n_a, n_b = len(a), len(b)
    a_first = n_a <= n_b
    while n_a + n_b > room:
        if n_a > n_b or (n_a == n_b and a_first):
            n_a -= 1
        else:
            n_b -= 1
    return a[:n_a], b[:n_b]


class PairClassifyCollator(ClassifyCollator):
    """Text-pair classification (``task.text_pair_column``), framed as BERT's next-sentence
    pre-training and Hugging Face's ``tokenizer(a, b)``: [CLS] a [SEP] b [SEP], cut to
    ``seq_len`` by ``longest_first``; ``token_type_ids`` are 0 over [CLS] a [SEP] (and the
    padding), 1 over b [SEP]: the model's segment embeddings tell the two texts apart."""

    def __init__(self, tokenizer: Tokenizer, seq_len: int) -> None:
        super().__init__(tokenizer, seq_len)
        if seq_len < 5:
            raise ConfigError(
                f"data.seq_len={seq_len} leaves no token for one text of a pair ([CLS] a [SEP] "
                "b [SEP]): at least 5"
            )
        self.room = (seq_len - 3, None)

    @staticmethod
    def input_len(ids: tuple[list[int], list[int]]) -> int:
        return len(ids[0]) + len(ids[1])

    def __call__(self, examples: list[tuple[tuple[list[int], list[int]], int]]) -> Batch:
        rows, types = [], []
        for (a, b), _ in examples:
            a, b = longest_first(a, b, self.room[0])
            rows.append([self.cls_id, *a, self.sep_id, *b, self.sep_id])
            types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        input_ids, real_BT = pad_rows(rows, self.pad_id, self.multiple, self.seq_len)
        token_type_ids, _ = pad_rows(types, 0, self.multiple, self.seq_len)
        labels_B1 = torch.tensor([[label] for _, label in examples])
        return {
            "input_ids": input_ids,
            "attention_mask": real_BT,
            "token_type_ids": token_type_ids,
            "labels": labels_B1,
        }


class Seq2SeqCollator:
    """Input -> target text: the input ends with EOS (cut to ``seq_len``), the target too (cut
    to ``max_target_len``); ``decoder_input_ids`` are the targets shifted right behind PAD,
    T5's decoder start token, as in span corruption."""

    equal_targets = False  # targets of their own lengths (``CausalLMCollator.equal_targets``)

    def __init__(self, tokenizer: Tokenizer, seq_len: int, max_target_len: int) -> None:
        specials, use = Specials.of(tokenizer), "task=seq2seq"
        _, [self.eos] = specials.frame(tokenizer, Family.t5, use)  # the input's; targets' too
        self.pad = specials.id(tokenizer, "pad", use)
        self.seq_len, self.max_target_len = seq_len, max_target_len
        self.room: tuple[int, int | None] = (seq_len - 1, max_target_len - 1)  # EOS each
        self.multiple = 1  # widths rounded up to a multiple of it (``pad_rows``)

    @staticmethod
    def input_len(ids: list[int]) -> int:
        """An example's input ids, counted against ``room[0]``."""
        return len(ids)

    def __call__(self, examples: list[tuple[list[int], list[int]]]) -> Batch:
        inputs = [[*ids[: self.room[0]], self.eos] for ids, _ in examples]
        targets = [[*ids[: self.max_target_len - 1], self.eos] for _, ids in examples]
        input_ids, real_BT = pad_rows(inputs, self.pad, self.multiple, self.seq_len)
        targets_BS, real_BS = pad_rows(targets, self.pad, self.multiple, self.max_target_len)
        start_B1 = torch.full((len(examples), 1), self.pad)
        return {
            "input_ids": input_ids,
            "attention_mask": real_BT,
            "decoder_input_ids": torch.cat((start_B1, targets_BS[:, :-1]), dim=1),
            "labels": targets_BS.masked_fill(~real_BS, IGNORE),
        }
