"""Fine-tuning (task=classify, task=seq2seq): the head, the init_from key filter, the examples'
labels and batches, the one-line refusals, and end to end on a small separable synthetic set:
accuracy, metrics in every output, exact resume after kill -9."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import random
import re
import signal
import warnings
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from test_resume import logged_steps, saved_step, wait_for

from lmlab.config import (
    SHIPPED_TASKS,
    DataConfig,
    Family,
    ModelConfig,
    TaskConfig,
    TaskKind,
    TaskSource,
    TaskSpec,
    TokenizerKind,
    model_config_dict,
    resolve_configs,
)
from lmlab.config.task import SHIPPED_PAIRS
from lmlab.data.collators import IGNORE
from lmlab.data.examples import COLUMNS, CORPORA, columns, load_splits, read_file
from lmlab.data.finetune import COLLATORS, FinetuneDataModule, report_cut
from lmlab.data.labels import label_ids, label_names
from lmlab.data.split import Split
from lmlab.data.task_collators import (
    ClassifyCollator,
    PairClassifyCollator,
    Seq2SeqCollator,
    longest_first,
)
from lmlab.data.tokenizer import train_char
from lmlab.errors import ConfigError
from lmlab.infer.generation import greedy_seq2seq
from lmlab.infer.pretrained import load
from lmlab.model import TASK_MODELS, build_model, build_task_model
from lmlab.train.checkpoint_check import check_checkpoint_model
from lmlab.train.compose import compose_train
from lmlab.train.finetune import DATAMODULES, TASK_RESULTS
from lmlab.train.init_from import FRESH_PREFIXES, STARTS_FROM, InitFrom, load_weights
from lmlab.train.metrics import METRICS
from lmlab.train.outcome import trained
from lmlab.train.plan import PACKED_TOKEN_FIELDS
from lmlab.train.run import train
from lmlab.train.task import LMTask

FINE_TUNING = [k for k in TaskKind if k != TaskKind.lm]
TINY_BERT = dict(family="bert", d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
TINY_BERT |= dict(norm_placement="post", type_vocab_size=2, vocab_size=120)


@pytest.mark.parametrize(
    "registry", [TASK_MODELS, METRICS, DATAMODULES, TASK_RESULTS, FRESH_PREFIXES, STARTS_FROM]
)
def test_every_task_has_its_entry(registry: dict) -> None:
    assert set(registry) == set(TaskKind)


@pytest.mark.parametrize("registry", [COLLATORS, COLUMNS])
def test_every_fine_tuning_task_has_its_entry(registry: dict) -> None:
    assert set(registry) == set(FINE_TUNING)


@pytest.mark.parametrize(("name", "kind"), SHIPPED_TASKS.items())
def test_shipped_sets_hold_the_task_columns(name: str, kind: TaskKind) -> None:
    """Each shipped set holds its task's columns (a pair set its pair column too), and the
    task=classify ones are balanced over both splits together."""
    labels: list = []
    for split, size in (("train", 2048), ("val", 256)):
        rows = [json.loads(line) for line in (CORPORA / f"{name}.{split}.jsonl").open()]
        columns = [getattr(TaskConfig(), field) for field in COLUMNS[kind]]
        columns += [SHIPPED_PAIRS[name]] if name in SHIPPED_PAIRS else []
        assert len(rows) == size and all(sorted(r) == sorted(columns) for r in rows)
        labels += [r.get(TaskConfig().label_column) for r in rows]
    if kind == TaskKind.classify:
        assert sorted(Counter(labels).values()) == [1152, 1152]


# --------------------------------------------------------------------------- model and init_from


def test_classifier_is_bert_with_another_head() -> None:
    """Same encoder keys as the MLM model, ``head.*`` replaced; logits (B, 1, labels)."""
    cfg = ModelConfig(**TINY_BERT)
    mlm, classifier = build_model(cfg), build_task_model(cfg, TaskSpec("classify", ("a", "b", "c")))
    mlm_keys, cls_keys = set(mlm.state_dict()), set(classifier.state_dict())
    assert mlm_keys - cls_keys == {
        "head.dense.weight",
        "head.dense.bias",
        "head.norm.weight",
        "head.norm.bias",
    }
    assert cls_keys - mlm_keys == {"head.pooler.weight", "head.pooler.bias"}
    assert mlm.head.out.weight is mlm.embed.weight  # tied; the classifier's is its own
    assert classifier.head.out.weight.shape == (3, 32)
    ids = torch.randint(0, 120, (2, 7))
    assert classifier(ids).shape == (2, 1, 3)


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: ModelConfig, **extra: object) -> Path:
    """A checkpoint as ``convert from_hf`` writes one: weights, model config, tokenizer."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    tokenizer = train_char(["abcdefghijkl"]).to_str()
    ckpt = {"state_dict": state, "model_config": model_config_dict(cfg), "tokenizer": tokenizer}
    torch.save(ckpt | extra, path)
    return path


def test_init_from_takes_the_encoder_and_starts_the_head_fresh(tmp_path: Path) -> None:
    """Every encoder tensor comes from the checkpoint; the MLM head is left out (the listed
    keys); the classification head keeps its initialisation; another model is refused."""
    cfg = ModelConfig(**TINY_BERT)
    torch.manual_seed(0)
    mlm = build_model(cfg)
    init = InitFrom(save_checkpoint(tmp_path / "mlm.ckpt", mlm, cfg), cfg, "")
    torch.manual_seed(1)
    classifier = build_task_model(cfg, TaskSpec("classify", ("a", "b")))
    head_before = {k: v.clone() for k, v in classifier.head.state_dict().items()}
    dropped, fresh = load_weights(classifier, init, TaskKind.classify)
    assert dropped == [
        "head.dense.bias",
        "head.dense.weight",
        "head.norm.bias",
        "head.norm.weight",
        "head.out.bias",
        "head.out.weight",
    ]
    assert fresh == ["head.out.bias", "head.out.weight", "head.pooler.bias", "head.pooler.weight"]
    for key, value in mlm.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(classifier.state_dict()[key], value), key
    for key, value in classifier.head.state_dict().items():
        assert torch.equal(value, head_before[key]), key
    # the MLM model itself loads everything, and a model of another depth is refused
    assert load_weights(build_model(cfg), init) == ([], [])
    deeper_cfg = ModelConfig(**TINY_BERT | {"n_layers": 2})
    deeper = build_task_model(deeper_cfg, TaskSpec("classify", ("a", "b")))
    with pytest.raises(ConfigError, match=r"does not fit the task=classify model: blocks\.1\."):
        load_weights(deeper, init, TaskKind.classify)


# --------------------------------------------------------------------------- labels and batches


def test_labels_get_ids_deterministically() -> None:
    assert label_names([2, 0, 1, 0], None, "x") == ("0", "1", "2")  # ints are their own ids
    assert label_names([0, 1], 4, "x") == ("0", "1", "2", "3")
    assert label_names(["pos", "neg", "pos"], None, "x") == ("neg", "pos")
    assert label_ids(["pos", "neg"], ("neg", "pos"), "x") == [1, 0]
    with pytest.raises(ConfigError, match=r"example 2 of val.csv has label 'meh', unknown to the"):
        label_ids(["pos", "meh"], ("neg", "pos"), "val.csv")
    with pytest.raises(ConfigError, match=r"task.num_labels=3, but x has 2 labels: neg, pos"):
        label_names(["pos", "neg"], 3, "x")
    with pytest.raises(ConfigError, match=r"has one label only \(pos\)"):
        label_names(["pos", "pos"], None, "x")
    # integer labels all 1: classes 0 and 1, with examples of one (it trained, val_acc 1.0)
    for num_labels in (None, 2):
        with pytest.raises(ConfigError, match=r"x has one label only \(1\)"):
            label_names([1, 1, 1], num_labels, "x")


def test_a_training_part_with_one_label_says_the_rest_was_held_out(tmp_path: Path) -> None:
    """A file with two labels whose held-out part took the only example of one: the error
    said the file had one label only."""
    from lmlab.data.examples import load_splits

    path = tmp_path / "two.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    task = TaskConfig(
        kind=TaskKind.classify, source=TaskSource.files, train=str(path), val_fraction=0.4
    )
    with pytest.raises(
        ConfigError,
        match=rf"task.train={path} \(less the task.val_fraction=0.4 held out\) has one label only",
    ):
        load_splits(task, tmp_path / "cache")


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("empty.jsonl", "", "the file is empty: no examples"),
        ("blank.csv", "\n\n", "the file is empty: no examples"),
        ("header.csv", "text,label\n", "a header row and no examples"),
        ("broken.jsonl", '{"text": "a", "label": 0}\n{"text": "b", \n', "line 2 is not JSON"),
        ("list.jsonl", '{"text": "a", "label": 0}\n["b", 1]\n', "line 2 is not a JSON object"),
        (
            "mixed.jsonl",  # a blank line and labels of two kinds: datasets' "Expected object"
            '{"text": "a", "label": "pos"}\n\n{"text": "b", "label": null}\n'
            '{"text": "c", "label": 1.5}\n{"text": "d", "label": "neg"}\n',
            "line 4's 'label' is a number (1.5), line 1's a string ('pos'): a field holds one",
        ),
        (
            "ragged.csv",
            "text,label\na,x\nb,y,z\n",
            "line 3 has 3 fields, the header 2 (text, label): quote a field that holds a comma",
        ),
        (  # one extra field on every line: pandas took the texts for the index, in silence
            "commas.csv",
            "sentence,label\n" + "".join(f"red green {i},a,web\n" for i in range(6)),
            "line 2 has 3 fields, the header 2 (sentence, label): quote a field",
        ),
        (  # a trailing comma on every line: "example 1 (line 2) has no label"
            "trailing.csv",
            "sentence,label\n" + "".join(f"five one {i},c,\n" for i in range(6)),
            "line 2 has 3 fields, the header 2 (sentence, label): quote a field that holds a "
            'comma ("red, green"), and end no line with one',
        ),
        (  # read by datasets; its first use failed in a traceback
            "latin1.jsonl",
            b'{"sentence": "caf\xe9", "label": "a"}\n{"sentence": "x", "label": "b"}\n',
            "line 1 is not UTF-8 (invalid continuation byte at byte 17 of the line): save",
        ),
    ],
)
def test_a_file_of_examples_datasets_cannot_read_is_named_with_what_is_wrong(
    tmp_path: Path, name: str, text: str | bytes, why: str
) -> None:
    """``datasets``' own errors name its internals (``StopIteration``, "corresponds to no
    data"): the error says what is wrong with the file, and where."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    kind = "json" if name.endswith(".jsonl") else "csv"
    with pytest.raises(
        ConfigError, match=re.escape(f"task.train={path} could not be read as {kind}: {why}")
    ):
        read_file(f"task.train={path}", path, tmp_path / "cache")


def test_examples_that_would_train_silently_wrong_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file of another shape is named by its columns (not "too few to split"); an empty
    seq2seq target, which the model would learn to match for free, is refused; examples the
    collator will cut are counted in a warning."""
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"data": [{"text": "a b", "label": "x"}] * 50}))
    task = TaskConfig(kind=TaskKind.classify, source=TaskSource.files, train=str(nested))
    with pytest.raises(ConfigError, match=r"task.text_column='text' is not a column of .* data\)"):
        load_splits(task, tmp_path / "cache")
    (tmp_path / "x.jsonl").write_text('{"input": "a", "target": "b"}\n')
    seq2seq = TaskConfig(
        kind=TaskKind.seq2seq, source=TaskSource.files, train=str(tmp_path / "x.jsonl")
    )
    pairs = datasets.Dataset.from_dict({"input": ["a b", "c d", "e"], "target": ["a", " ", "e"]})
    with pytest.raises(ConfigError, match=r"'target': example 2 of x.jsonl is empty; allowed: a "):
        columns(seq2seq, Split(pairs, "x.jsonl"))
    rows = [([1] * 6, [2] * 2), ([1] * 7, [2] * 2), ([1] * 5, [2] * 4), ([1] * 9, [2] * 9)]
    with caplog.at_level(logging.WARNING, logger="lmlab.data.finetune"):
        assert report_cut(rows, (6, 3), "task.train=x.jsonl") == 3
        assert report_cut([(r[0][:6], 0) for r in rows], (6, None), "task.val=v") == 0
    assert caplog.messages == [
        "3 of 4 examples of task.train=x.jsonl are cut: 2 inputs past 6 tokens (data.seq_len), "
        "2 targets past 3 (task.max_target_len)"
    ]


def test_a_text_column_taken_for_the_labels_gives_a_short_error() -> None:
    labels = [
        f"sentence number {i} of a long text column, far longer than a label" for i in range(50)
    ]
    names = label_names(labels, None, "x")
    with pytest.raises(ConfigError) as info:
        label_ids(
            ["an unseen sentence, as long as the ones the column holds, or longer"], names, "v"
        )
    assert "its 50 labels: " in str(info.value) and len(str(info.value)) < 1200, str(info.value)


def test_collators_frame_pad_and_mask() -> None:
    tok = train_char(["abc"])
    cls_, sep, pad, eos = (tok.token_to_id(t) for t in ("<cls>", "<sep>", "<pad>", "<|endoftext|>"))
    batch = ClassifyCollator(tok, seq_len=4)([([7, 8, 9], 1), ([7], 0)])
    assert batch["input_ids"].tolist() == [[cls_, 7, 8, sep], [cls_, 7, sep, pad]]  # cut to 4
    assert batch["attention_mask"].tolist() == [[True] * 4, [True, True, True, False]]
    assert batch["labels"].tolist() == [[1], [0]]
    batch = Seq2SeqCollator(tok, seq_len=8, max_target_len=3)([([7], [8, 9, 7]), ([7, 8], [9])])
    assert batch["input_ids"].tolist() == [[7, eos, pad], [7, 8, eos]]
    assert batch["labels"].tolist() == [[8, 9, eos], [9, eos, IGNORE]]  # target cut to 3
    assert batch["decoder_input_ids"].tolist() == [[pad, 8, 9], [pad, 9, eos]]


def test_collators_round_each_batch_width_up_to_a_multiple() -> None:
    """``data.pad_to_multiple_of`` (the collator's ``multiple``): a batch's width is its longest
    row rounded up, never past the longest row the collator makes (``data.seq_len``: the
    model's positions end there; ``task.max_target_len`` for targets); the positions added
    are padding, masked in attention and left out of the loss as any other."""
    tok = train_char(["abc"])
    cls_, sep, pad, eos = (tok.token_to_id(t) for t in ("<cls>", "<sep>", "<pad>", "<|endoftext|>"))
    classify = ClassifyCollator(tok, seq_len=12)
    examples = [([7, 8, 9], 1), ([7], 0)]  # 5 and 3 ids framed
    widths = {}
    for multiple in (1, 4, 5, 64):
        classify.multiple = multiple
        batch = classify(examples)
        widths[multiple] = batch["input_ids"].shape[1]
        assert batch["input_ids"][0, :5].tolist() == [cls_, 7, 8, 9, sep]
        assert (batch["input_ids"][:, 5:] == pad).all()
        assert batch["attention_mask"].sum(1).tolist() == [5, 3]
        assert batch["labels"].tolist() == [[1], [0]]
    assert widths == {1: 5, 4: 8, 5: 5, 64: 12}  # 64: no wider than data.seq_len
    pairs = PairClassifyCollator(tok, seq_len=16)
    pairs.multiple = 8
    batch = pairs([(([7, 8], [9]), 1)])  # [CLS] a a [SEP] b [SEP]: 6 ids
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == (1, 8)
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0]]  # padding: segment 0
    seq2seq = Seq2SeqCollator(tok, seq_len=8, max_target_len=6)
    seq2seq.multiple = 4
    batch = seq2seq([([7], [8, 9, 7]), ([7, 8], [9])])
    assert batch["input_ids"].tolist() == [[7, eos, pad, pad], [7, 8, eos, pad]]
    assert batch["labels"].tolist() == [[8, 9, 7, eos], [9, eos, IGNORE, IGNORE]]
    assert batch["decoder_input_ids"].tolist() == [[pad, 8, 9, 7], [pad, 9, eos, pad]]
    seq2seq.multiple = 64  # targets no wider than task.max_target_len, inputs than seq_len
    batch = seq2seq([([7], [8, 9, 7])])
    assert batch["input_ids"].shape == (1, 8) and batch["labels"].shape == (1, 6)


@pytest.mark.parametrize(
    ("setting", "device", "multiple"),
    [(None, "cpu", 1), (None, "cuda", 64), (8, "cpu", 8), (8, "cuda", 8)],
)
def test_fine_tuning_loaders_round_widths_as_the_device_wants(
    cache_dir: Path, setting: int | None, device: str, multiple: int
) -> None:
    """``data.pad_to_multiple_of=null``: 64 on a GPU (``GPU_PAD_MULTIPLE``), where each new
    shape costs once, and no rounding on a CPU, where padding costs compute; a number as
    asked. The loaders' collator takes it (a worker, a copy of it)."""
    from types import SimpleNamespace

    task = TaskConfig(kind=TaskKind.classify, name="code_or_play")
    data = DataConfig(
        tokenizer=TokenizerKind.char,
        cache_dir=str(cache_dir),
        batch_size=4,
        num_workers=0,
        pad_to_multiple_of=setting,
    )
    dm = FinetuneDataModule(data, task, Family.bert, 256, 0)
    dm.setup()
    gpu = SimpleNamespace(root_device=torch.device(device))
    dm.trainer = SimpleNamespace(strategy=gpu, num_devices=1, global_rank=0, world_size=1)
    dm.num_train_samples = 4
    with warnings.catch_warnings():  # pinned memory asked, and no CUDA here to pin it
        warnings.simplefilter("ignore")
        batch = next(iter(dm.train_dataloader()))
    assert dm.collate.multiple == multiple and batch["input_ids"].shape[1] % multiple == 0
    with pytest.raises(ConfigError, match=r"data.pad_to_multiple_of=0 must be >= 1 \(or null\)"):
        DataConfig(pad_to_multiple_of=0)


@pytest.mark.parametrize("kind", FINE_TUNING)
def test_a_batch_rounded_to_a_multiple_has_the_loss_of_its_longest_width(
    cache_dir: Path, kind: TaskKind
) -> None:
    """The positions ``data.pad_to_multiple_of`` adds change a batch's shape, not its loss: they
    are keys no query attends to (an exact 0 in each softmax) and targets the loss skips. In
    float64 the two widths' losses agree to rounding (the softmax sums a longer row of keys,
    in another order: about 1e-16 relative), far inside 1e-9."""
    task = TaskConfig(kind=kind, name="code_or_play" if kind == TaskKind.classify else "def_name")
    data = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(cache_dir))
    family = Family.bert if kind == TaskKind.classify else Family.t5
    dm = FinetuneDataModule(data, task, family, 256, 0)
    dm.setup()
    torch.manual_seed(0)
    tiny = TINY_BERT if kind == TaskKind.classify else dict(TINY_BERT, family="t5")
    tiny = {k: v for k, v in tiny.items() if family == Family.bert or k != "type_vocab_size"}
    cfg = ModelConfig(**tiny | {"vocab_size": dm.vocab_size, "max_seq_len": 256})
    module = LMTask(cfg, None, None, task=dm.spec).double().eval()
    rows = dm.train_rows[:8]
    losses, widths = [], []
    for multiple in (1, 64):
        dm.collate.multiple = multiple
        batch = dm.collate(rows)
        widths.append(batch["input_ids"].shape[1])
        with torch.no_grad():
            losses.append(module.loss(batch)[0].item())
    assert widths[1] % 64 == 0 and widths[1] > widths[0], widths  # wider, the same loss
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)


@pytest.mark.parametrize("kind", FINE_TUNING)
def test_the_kernel_report_probes_a_batch_of_the_tasks_own(
    cache_dir: Path, kind: TaskKind, caplog: pytest.LogCaptureFixture
) -> None:
    """The attention-kernel report ran a language model's inputs, with no padding mask, where
    every fine-tuning batch sends one: on a GPU, where a mask rules out the flash kernel, it
    would name flash for a step that runs another. It probes the datamodule's first training
    example, batched by the task's collator, and its note names the padding mask."""
    from types import SimpleNamespace

    from lmlab.train.callbacks import SDPAKernelReport

    task = TaskConfig(kind=kind, name="code_or_play" if kind == TaskKind.classify else "def_name")
    data = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(cache_dir))
    family = Family.bert if kind == TaskKind.classify else Family.t5
    dm = FinetuneDataModule(data, task, family, 64, 0)
    dm.setup()
    probed = dm.probe_batch()
    assert probed["attention_mask"].shape == probed["input_ids"].shape
    assert probed["input_ids"].shape[0] == 1
    tiny = TINY_BERT if kind == TaskKind.classify else dict(TINY_BERT, family="t5")
    tiny = {k: v for k, v in tiny.items() if family == Family.bert or k != "type_vocab_size"}
    cfg = ModelConfig(**tiny | {"vocab_size": dm.vocab_size, "max_seq_len": 64})
    module = LMTask(cfg, None, None, task=dm.spec)
    trainer = SimpleNamespace(
        datamodule=dm,
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
        is_global_zero=True,
    )
    with caplog.at_level(logging.INFO, logger="lmlab.train.callbacks.kernels"):
        SDPAKernelReport().report(trainer, module)
    assert module.sdpa_kernels and all("scaled_dot_product" in k for k in module.sdpa_kernels)
    said = [r.getMessage() for r in caplog.records if r.name == "lmlab.train.callbacks.kernels"]
    assert said[0] == (
        f"attention kernel: {', '.join(module.sdpa_kernels)} (a padding mask: no flash kernel "
        "on a GPU)"
    )


def test_exact_match_decodes_the_longest_target_however_wide_the_batch(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seq2seq's ``exact_match`` decodes as many steps as the decoded rows' longest target: a
    batch rounded up (``data.pad_to_multiple_of``) decodes no step more, and a decode that
    gives each row its target scores 1 at either width."""
    import lmlab.train.metrics as metrics

    task = TaskConfig(kind=TaskKind.seq2seq, name="def_name", decode_rows=8)
    data = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(cache_dir))
    dm = FinetuneDataModule(data, task, Family.t5, 128, 0)
    dm.setup()
    torch.manual_seed(0)
    tiny = {k: v for k, v in TINY_BERT.items() if k != "type_vocab_size"}
    cfg = ModelConfig(**tiny | {"family": "t5", "vocab_size": dm.vocab_size, "max_seq_len": 128})
    module = LMTask(cfg, None, None, task=dm.spec).eval()
    steps, targets = [], {}

    def decode(model, input_ids, mask, start, n_steps):  # each row's target, then padding
        steps.append(n_steps)
        return targets["rows"][:, :n_steps].clamp(min=0)

    monkeypatch.setattr(metrics, "greedy_seq2seq", decode)
    scores, longest = [], []
    for multiple in (1, 64):
        dm.collate.multiple = multiple
        batch = dm.collate(dm.val_rows[:12])  # 8 of them decoded
        targets["rows"] = batch["labels"][:8]
        longest.append(int((batch["labels"][:8] != IGNORE).sum(1).max()))
        scored = METRICS[TaskKind.seq2seq](cfg, dm.spec)
        with torch.no_grad():
            scored.update(batch, module.loss(batch)[1], module.model)
        scores.append(float(scored.compute()["exact_match"]))
    assert steps == longest and longest[0] == longest[1] and scores == [1.0, 1.0]
    # task.decode_rows=0 decodes none: no exact match (it was 0.0, over no rows, and ranked)
    none = METRICS[TaskKind.seq2seq](cfg, dataclasses.replace(dm.spec, decode_rows=0))
    with torch.no_grad():
        none.update(batch, module.loss(batch)[1], module.model)
    assert "exact_match" not in none.compute() and steps == longest


def test_pair_collator_frames_two_segments_and_cuts_the_longer_text_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """[CLS] a [SEP] b [SEP]: segment 0 over [CLS] a [SEP] and the padding, 1 over b [SEP]; a
    pair past seq_len - 3 ids loses them one at a time from the longer text. The cut warning
    counts a pair by both texts."""
    tok = train_char(["abc"])
    cls_, sep, pad = (tok.token_to_id(t) for t in ("<cls>", "<sep>", "<pad>"))
    examples = [
        (([7, 8], [9]), 1),  # 3 ids of the 7 (seq_len 10 - 3): kept whole
        (([7, 8, 9, 10, 11], [12, 13, 14, 15]), 0),  # 9: a to 4 (as long as b), then b to 3
        (([7], [8, 9, 10, 11, 12, 13, 14, 15]), 1),  # 9: b to 6
        (([7, 8, 9, 10], [11, 12, 13, 14]), 0),  # 8, as long from the start: a to 3
    ]
    batch = PairClassifyCollator(tok, seq_len=10)(examples)
    assert batch["input_ids"].tolist() == [
        [cls_, 7, 8, sep, 9, sep, pad, pad, pad, pad],
        [cls_, 7, 8, 9, 10, sep, 12, 13, 14, sep],
        [cls_, 7, sep, 8, 9, 10, 11, 12, 13, sep],
        [cls_, 7, 8, 9, sep, 11, 12, 13, 14, sep],
    ]
    assert batch["token_type_ids"].tolist() == [
        [0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [6, 10, 10, 10]
    assert batch["labels"].tolist() == [[1], [0], [1], [0]]
    assert "token_type_ids" not in ClassifyCollator(tok, seq_len=9)([([7], 0)])  # as before
    with caplog.at_level(logging.WARNING, logger="lmlab.data.finetune"):
        assert report_cut(examples, (7, None), "v", PairClassifyCollator.input_len) == 3
    assert caplog.messages == [
        "3 of 4 examples of v are cut: 3 inputs past 7 tokens (data.seq_len)"
    ]


def test_longest_first_cuts_a_pair_as_hugging_face_tokenizers_does() -> None:
    """Every pair of lengths up to 12 and room up to 25, against ``tokenizers``' own
    ``longest_first`` truncation (what ``tokenizer(a, b, truncation=True)`` runs)."""
    tok = train_char(["ab"])
    for room in range(1, 26):
        tok.enable_truncation(max_length=room, strategy="longest_first")
        for n_a in range(13):
            for n_b in range(13):
                a, b = longest_first(list(range(n_a)), list(range(n_b)), room)
                types = tok.encode("a" * n_a, "b" * n_b, add_special_tokens=False).type_ids
                assert (len(a), len(b)) == (types.count(0), types.count(1)), (n_a, n_b, room)
                assert a == list(range(len(a))) and b == list(range(len(b)))  # ends cut


def test_both_texts_of_a_pair_are_read_tokenized_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tokenizer trained on the training texts has the second texts' characters too, and
    the cut warning counts a pair by both texts; with a checkpoint's tokenizer, characters it
    lacks in either text are counted in the unknown-token warning."""
    rows = [{"text": "abc", "text_pair": "xyz", "label": "x"}] * 5
    rows += [{"text": "cba", "text_pair": "zyé", "label": "y"}] * 5
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskConfig(
        kind=TaskKind.classify,
        source=TaskSource.files,
        train=str(train_file),
        val=str(train_file),
        text_pair_column="text_pair",
    )
    char = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(tmp_path / "cache"))
    dm = FinetuneDataModule(char, task, Family.bert, 8, 0)  # room for 5 of a pair's 6 ids
    with caplog.at_level(logging.WARNING, logger="lmlab.data.finetune"):
        dm.setup()
    assert caplog.messages[0] == (
        f"10 of 10 examples of task.train={train_file} are cut: 10 inputs past 5 tokens "
        "(data.seq_len)"
    )
    caplog.clear()
    assert all(dm.tokenizer.token_to_id(c) is not None for c in "xyzé")
    x, z = dm.tokenizer.token_to_id("x"), dm.tokenizer.token_to_id("z")
    assert dm.train_rows[0][0][1][0] == x and dm.train_rows[9][0][1][0] == z
    data = DataConfig(tokenizer=TokenizerKind.checkpoint, cache_dir=str(tmp_path / "cache"))
    dm = FinetuneDataModule(data, task, Family.bert, 16, 0, train_char(["abcxyz"]).to_str())
    with caplog.at_level(logging.WARNING, logger="lmlab.data.tokenizer"):
        dm.setup()
    assert caplog.messages[0].startswith(
        f"5 of the 60 tokens of task.train={train_file} (8.33%) are the tokenizer's unknown "
        "token, standing for text it has no token for ('é' x5)"
    )


def test_greedy_seq2seq_takes_the_argmax_of_each_step() -> None:
    """The cached greedy decode equals decoding by hand: the argmax of a full forward."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="t5", d_model=32, n_layers=1, n_heads=2, vocab_size=50))
    model.eval()
    ids, mask = torch.randint(2, 50, (3, 6)), torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    start = torch.ones(3, 1, dtype=torch.long)
    out = greedy_seq2seq(model, ids, mask, start, 5)
    dec = start
    for _ in range(5):
        dec = torch.cat((dec, model(ids, dec, mask)[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(out, dec[:, 1:])


def test_exact_match_decodes_eagerly_under_compiled_blocks() -> None:
    """``compile=blocks``: validation's greedy decode runs the blocks eagerly, as the sample
    does. Compiled, T5's decoder block recompiled for each KV-cache layer index and length: a
    4-layer t5_tiny hit dynamo's recompile limit (8) in its first validation."""
    from torch._dynamo.testing import CompileCounter

    from lmlab.train.parallel import block_slots

    torch.manual_seed(0)
    model = build_model(ModelConfig(family="t5", d_model=32, n_layers=2, n_heads=2, vocab_size=50))
    model.eval()
    compiles = CompileCounter()  # counts the frames dynamo compiles, runs them as traced
    for _, _, block in block_slots(model):
        block.compile(backend=compiles)
    ids, mask = torch.randint(2, 50, (3, 6)), torch.ones(3, 6, dtype=torch.bool)
    labels = torch.randint(2, 50, (3, 4))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    batch["decoder_input_ids"] = torch.cat((torch.ones(3, 1, dtype=torch.long), labels), 1)[:, :4]
    scored = METRICS[TaskKind.seq2seq](model.cfg, TaskSpec(TaskKind.seq2seq, decode_rows=3))
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            scored.update(batch, torch.zeros(3, 4, 50), model)
    finally:
        torch._dynamo.reset()
    assert compiles.frame_count == 0
    assert 0.0 <= float(scored.compute()["exact_match"]) <= 1.0


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=classify"], r"task=classify fine-tunes a bert model; the model has model\.fam"),
        (["task=classify", "model=t5_tiny"], r"the model has model\.family=t5"),
        (["task=seq2seq", "model=bert_tiny"], r"task=seq2seq fine-tunes a t5 model"),
        (["task=seq2seq", "model=t5_tiny", "task.name=code_or_play"], r"task.name=code_or_play:"),
        (["task=classify", "model=bert_tiny", "task.train=a.jsonl"], r"task.train=a.jsonl is se"),
        (["task=classify", "model=bert_tiny", "task.source=files"], r"needs task.train=<"),
        (["task=classify", "model=bert_tiny", "task.source=files", "task.train=a.txt"], r"\.csv"),
        (["task=classify", "model=bert_tiny", "task.source=files", "task.train=a.csv"], "no such"),
        (["task=classify", "model=bert_tiny", "budget=chinchilla"], r"use budget=steps"),
        (["task=classify", "model=bert_tiny", "data=shakespeare"], r"data.source=shakespeare is"),
        (["task=classify", "model=bert_tiny", "dry_run=true"], r"dry_run=true plans task=lm"),
        (["task.train=a.jsonl"], r"task.train=a.jsonl is set but task=lm pre-trains on data="),
    ],
)
def test_bad_task_settings_are_refused_before_any_work(overrides: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_configs(compose_train(overrides))


# --------------------------------------------------------------------------- end to end

COLOURS = {"red": "abcd", "green": "efgh", "blue": "ijkl"}


def synthetic(path: Path, n: int, seed: int, fmt: str) -> Path:
    """Texts of 4 to 12 letters, each class drawing from its own four letters: separable."""
    rng = random.Random(seed)
    rows = [
        {"text": "".join(rng.choices(COLOURS[c], k=rng.randint(4, 12))), "label": c}
        for c in rng.choices(list(COLOURS), k=n)
    ]
    with path.open("w", newline="") as f:
        if fmt == "csv":
            writer = csv.DictWriter(f, ["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("examples")
    return synthetic(root / "train.jsonl", 480, 0, "jsonl"), synthetic(
        root / "val.csv", 96, 1, "csv"
    )


def classify_run(examples: tuple[Path, Path]) -> list[str]:
    """bert_tiny cut to two 32-wide layers, char tokens, 100 steps (the check asks for 90%
    within 200); a checkpoint and a validation every 25 steps."""
    train_file, val_file = examples
    return [
        "task=classify",
        "task.source=files",
        f"task.train={train_file}",
        f"task.val={val_file}",
        "model=bert_tiny",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.max_seq_len=32",
        "model.dropout=0.1",
        "data.tokenizer=char",
        "trainer.max_steps=100",
        "trainer.val_check_interval=25",
        "checkpoint.every_n_steps=25",
        "scheduler.warmup_steps=10",
        "logger=csv",
    ]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def classified(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, examples: tuple[Path, Path]
) -> Path:
    run_dir = tmp_path_factory.mktemp("classify")
    train(compose_train(classify_run(examples), run_dir, cache_dir))
    return run_dir


def test_classify_reaches_90_percent_within_200_steps(classified: Path) -> None:
    """Chance is 1/3; the metrics reach results.json, metrics.csv, plan.json and the
    checkpoint, with the labels' ids (sorted names)."""
    r = results(classified)
    assert r["status"] == "completed" and r["global_step"] == 100
    assert r["val_acc"] >= 0.9 and r["val_f1"] >= 0.9, r
    digest = r["task"]["examples_sha256"]  # what a resume checks the examples by
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert r["task"] == {
        "kind": "classify",
        "labels": ["blue", "green", "red"],
        "examples_sha256": digest,
        "train_examples": 480,
        "val_examples": 96,
        "val_labels": {"blue": 34, "green": 33, "red": 29},  # always "blue": val_acc 0.354
    }
    assert r["examples"] == 100 * 16 and r["tokens"] is None and r["flops"] is None
    with (classified / "csv" / "metrics.csv").open() as f:
        accuracy = [float(row["val/acc"]) for row in csv.DictReader(f) if row["val/acc"]]
    assert len(accuracy) == 4 and accuracy[-1] == pytest.approx(r["val_acc"])
    plan = json.loads((classified / "plan.json").read_text())
    assert plan["task"] == r["task"] and plan["params"] == r["params"]
    # the budget counts steps only: the padded batches' tokens are not 100 x 16 x seq_len
    assert plan["budget"] == r["budget"] and plan["budget"]["steps"] == 100
    assert {k: plan["budget"][k] for k in PACKED_TOKEN_FIELDS} == dict.fromkeys(PACKED_TOKEN_FIELDS)
    # a stop's record (preempted, interrupted, failed) counts none either
    assert trained(r, 40) == {"tokens": None, "flops": None, "global_step": 40}
    ckpt = torch.load(classified / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["task"] == {
        "kind": "classify",
        "labels": ["blue", "green", "red"],
        "examples_sha256": digest,
    }
    with pytest.raises(ConfigError, match=r"is a task=classify model .* not a language model"):
        load(classified / "checkpoints" / "last.ckpt")  # generate, probe, convert
    with pytest.raises(ConfigError, match=r"^to_hf=.* is a task=classify model"):
        load(classified / "checkpoints" / "last.ckpt", key="to_hf")  # named as convert's


@pytest.mark.e2e
def test_classify_resumes_exactly_after_kill_9(
    tmp_path: Path, start_train, cache_dir: Path, examples: tuple[Path, Path], classified: Path
) -> None:
    """Killed with -9 as soon as a checkpoint appears, resumed: the same losses and accuracy
    as the uninterrupted run (the same examples in the same order from the same position,
    the same dropout stream), and metrics.csv holds every validation once: a checkpoint
    whose step is validated is saved after that validation's row is written."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = start_train(*classify_run(examples), f"hydra.run.dir={tmp_path}")
    wait_for(last, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = saved_step(last)
    assert step < 100, "the kill came after training ended"
    train(compose_train([*classify_run(examples), "resume=true"], tmp_path, cache_dir))
    resumed, reference = results(tmp_path), results(classified)
    assert resumed["resumed_from"] == str(last.parent / f"step{step:06d}.ckpt")  # last.ckpt's
    assert resumed["resumed_step"] == step
    for key in ("train_loss", "val_loss", "val_acc", "val_f1"):
        assert resumed[key] == reference[key], key
    assert logged_steps(tmp_path, "val/acc") == [24, 49, 74, 99]


PAIRS = ["task=classify", "task.name=next_line", "task.text_pair_column=text_pair"]
TINY_BERT_RUN = ["model=bert_tiny", "model.d_model=32", "model.n_layers=1", "model.n_heads=2"]
TINY_BERT_RUN += ["model.max_seq_len=64", "data.tokenizer=char"]


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A few steps on the shipped pair set (next_line), offline."""
    run_dir = tmp_path_factory.mktemp("pairs")
    overrides = [*PAIRS, *TINY_BERT_RUN, "trainer.max_steps=4", "logger=none"]
    train(compose_train(overrides, run_dir, cache_dir))
    return run_dir


def test_a_pair_run_records_its_pair_column(paired: Path) -> None:
    """results.json, plan.json and the checkpoint name the pair column, so a resume with
    another (or none) is refused as another task."""
    r = results(paired)
    assert r["status"] == "completed" and r["global_step"] == 4 and r["val_acc"] is not None
    digest = r["task"]["examples_sha256"]
    assert r["task"] == {
        "kind": "classify",
        "labels": ["next", "random"],
        "text_pair_column": "text_pair",
        "examples_sha256": digest,
        "train_examples": 2048,
        "val_examples": 256,
        "val_labels": {"next": 135, "random": 121},
    }
    assert json.loads((paired / "plan.json").read_text())["task"] == r["task"]
    path = paired / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["task"] == {
        "kind": "classify",
        "labels": ["next", "random"],
        "text_pair_column": "text_pair",
        "examples_sha256": digest,
    }
    cfg = ModelConfig(**ckpt["model_config"])
    for column in (None, "text"):
        now = TaskSpec(TaskKind.classify, ("next", "random"), text_pair_column=column)
        with pytest.raises(
            ConfigError, match=rf"task.text_pair_column: 'text_pair' \(saved\) vs {column!r} \(now"
        ):
            check_checkpoint_model(ckpt, path, cfg, now)


@pytest.mark.parametrize("pair", [True, False])
def test_the_model_sees_the_second_segment_in_training_and_validation(
    cache_dir: Path, pair: bool
) -> None:
    """A pair batch's token_type_ids reach the model through the LightningModule's training
    loss (segment 1's embedding gets a gradient) and its validation forward (the logits
    depend on them); a single-text batch leaves segment 1 untouched (its gradient is 0)."""
    task = TaskConfig(
        kind=TaskKind.classify,
        name="next_line" if pair else "code_or_play",
        text_pair_column="text_pair" if pair else None,
    )
    data = DataConfig(tokenizer=TokenizerKind.char, cache_dir=str(cache_dir))
    dm = FinetuneDataModule(data, task, Family.bert, 32, 0)
    dm.setup()
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_BERT | {"vocab_size": dm.vocab_size})
    module = LMTask(cfg, None, None, task=dm.spec)  # optimizer and schedule: unused here
    batch = dm.collate(dm.train_rows[:8])
    assert ("token_type_ids" in batch) == pair
    module.objective(batch)[0].backward()
    segment_grad = module.model.segment.weight.grad
    assert segment_grad[0].abs().sum() > 0
    assert (segment_grad[1].abs().sum() > 0) == pair
    module.eval()
    with torch.no_grad():
        logits = module.loss(batch)[1]
        unsegmented = module.loss({k: v for k, v in batch.items() if k != "token_type_ids"})[1]
    assert torch.equal(logits, unsegmented) != pair


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task=seq2seq", "model=t5_tiny", "task.text_pair_column=text_pair"],
            r"task.text_pair_column=text_pair is set but task=seq2seq ignores it \(allowed with "
            r"task=classify only",
        ),
        (["task.text_pair_column=text_pair"], r"is set but task=lm ignores it"),
        (
            [*PAIRS, "model=bert_tiny", "model.type_vocab_size=1"],
            r"task.text_pair_column=text_pair gives the second text segment 1, but the model "
            r"has model.type_vocab_size=1: no segment 1 \(allowed: 2 or more; set "
            r"model.type_vocab_size=2",
        ),
        (
            [*PAIRS, "init_from={segmentless}", "data.tokenizer=checkpoint"],
            r"gives the second text segment 1, but init_from=.*segmentless.ckpt holds "
            r"model.type_vocab_size=0",
        ),
        (
            ["task=classify", "model=bert_tiny", "task.name=next_line"],
            r"task.name=next_line is a set of text pairs: add task.text_pair_column=text_pair",
        ),
        (
            ["task=classify", "model=bert_tiny", "task.text_pair_column=text_pair"],
            r"task.text_pair_column=text_pair: the shipped set task.name=code_or_play has no "
            r"such column \(it holds single texts, not pairs\); shipped pairs: "
            r"task.name=next_line task.text_pair_column=text_pair",
        ),
        (
            ["task=classify", "model=bert_tiny", "task.source=files", "task.train={pairs}"]
            + ["task.text_pair_column=sentence2"],
            r"task.text_pair_column='sentence2' is not a column of task.train=.*pairs.jsonl "
            r"\(its columns: text, text_pair, label\)",
        ),
        (
            ["task=classify", "model=bert_tiny", "task.source=files", "task.train={pairs}"]
            + ["task.text_pair_column=text_pair"],
            r"task.text_pair_column='text_pair': example 3 of task.train=.*pairs.jsonl holds 7, "
            r"not a text",
        ),
    ],
)
def test_bad_pair_settings_are_one_line_errors(
    tmp_path: Path, cache_dir: Path, overrides: list[str], message: str
) -> None:
    """The pair column with another task, on a model without segment 1 (its own or
    init_from's), missing from the shipped pair set's run or from the data, and a second
    text that is not a text (named by its line, though the split is shuffled)."""
    rows = [{"text": "abc", "text_pair": "cab", "label": i % 2} for i in range(10)]
    rows[2]["text_pair"] = 7
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ModelConfig(**TINY_BERT | {"type_vocab_size": 0})
    segmentless = save_checkpoint(tmp_path / "segmentless.ckpt", build_model(cfg), cfg)
    overrides = [o.format(pairs=pairs, segmentless=segmentless) for o in overrides]
    with pytest.raises(ConfigError, match=message) as info:
        train(compose_train([*overrides, "logger=none"], tmp_path / "run", cache_dir))
    assert "\n" not in str(info.value)


def test_bad_examples_are_one_line_errors_naming_the_field(
    tmp_path: Path, cache_dir: Path, examples: tuple[Path, Path]
) -> None:
    run = classify_run(examples)
    with pytest.raises(ConfigError, match=r"task.label_column='class' is not a column of task.t"):
        train(compose_train([*run, "task.label_column=class"], tmp_path / "a", cache_dir))
    odd = synthetic(tmp_path / "odd.jsonl", 20, 2, "jsonl")
    odd.write_text(odd.read_text().replace('"red"', '"purple"'))
    with pytest.raises(
        ConfigError, match=r"example \d+ of task.val=.*odd.jsonl has label 'purple'"
    ):
        train(compose_train([*run, f"task.val={odd}"], tmp_path / "b", cache_dir))
    # without task.val the examples are shuffled into two splits; a bad example is still named
    # by its place in the file, counted from 1 as its lines are
    no_val = [o for o in run if not o.startswith(("task.train=", "task.val="))]
    rows = [json.loads(line) for line in odd.read_text().splitlines()]
    for row, change, message in [
        (14, lambda r: r.pop("label"), r"task.label_column='label': example 15 of .* has no label"),
        (
            17,
            lambda r: r.update(text=None),
            r"task.text_column='text': example 18 of .* holds None",
        ),
    ]:
        bad = [dict(r) for r in rows]
        change(bad[row])
        path = tmp_path / f"bad{row}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in bad))
        with pytest.raises(ConfigError, match=message):
            overrides = [*no_val, f"task.train={path}"]
            train(compose_train(overrides, tmp_path / f"c{row}", cache_dir))


def test_classify_fine_tunes_a_bert_checkpoint(
    tmp_path: Path, cache_dir: Path, examples: tuple[Path, Path]
) -> None:
    """init_from a masked-LM checkpoint with its tokenizer: at a vanishing learning rate the
    encoder is still the checkpoint's after two steps, and the head is a classifier's."""
    cfg = ModelConfig(**TINY_BERT)
    mlm = build_model(cfg)
    ckpt = save_checkpoint(tmp_path / "mlm.ckpt", mlm, cfg)
    train_file, val_file = examples
    overrides = ["task=classify", "task.source=files", f"task.train={train_file}"]
    overrides += [f"task.val={val_file}", f"init_from={ckpt}", "data.tokenizer=checkpoint"]
    overrides += ["trainer.max_steps=2", "optim.lr=1e-12", "scheduler.warmup_steps=0"]
    train(compose_train([*overrides, "logger=none"], tmp_path / "run", cache_dir))
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["init_from"] == str(ckpt)
    tuned = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    tuned = {k.removeprefix("model."): v for k, v in tuned["state_dict"].items()}
    for key, value in mlm.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(tuned[key], value, rtol=0, atol=1e-6)
    assert tuned["head.out.weight"].shape == (3, 32) and "head.pooler.weight" in tuned


def test_text_a_checkpoint_tokenizer_cannot_read_is_counted_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A character checkpoint fine-tuned on text with characters it never saw reads each as
    its unknown token: the warning counts them, per split, and names the most common."""
    train_file = tmp_path / "train.jsonl"
    rows = [{"text": "abcé", "label": "x"}, {"text": "défi", "label": "y"}] * 5
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    val_file = tmp_path / "val.jsonl"
    val_file.write_text(json.dumps({"text": "abc", "label": "x"}) + "\n")
    task = TaskConfig(
        kind=TaskKind.classify, source=TaskSource.files, train=str(train_file), val=str(val_file)
    )
    data = DataConfig(tokenizer=TokenizerKind.checkpoint, cache_dir=str(tmp_path / "cache"))
    dm = FinetuneDataModule(data, task, Family.bert, 16, 0, train_char(["abcdef"]).to_str())
    with caplog.at_level(logging.WARNING, logger="lmlab.data.tokenizer"):
        dm.setup()
    assert caplog.messages == [
        f"15 of the 40 tokens of task.train={train_file} (37.50%) are the tokenizer's unknown "
        "token, standing for text it has no token for ('é' x10, 'i' x5): the model reads all "
        "of it as one token. A byte-level BPE tokenizer (data.tokenizer=bpe) has a token for "
        "every input"
    ]


def test_a_cache_dir_that_is_a_file_is_refused_for_fine_tuning(
    tmp_path: Path, examples: tuple[Path, Path]
) -> None:
    """Was a FileExistsError traceback, once the model was built (pre-training's is named)."""
    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    task = TaskConfig(kind=TaskKind.classify, source=TaskSource.files, train=str(examples[0]))
    dm = FinetuneDataModule(DataConfig(cache_dir=str(a_file)), task, Family.bert, 16, 0)
    with pytest.raises(ConfigError, match=re.escape(f"data.cache_dir='{a_file}' is not a writ")):
        dm.setup()


def test_a_hub_dataset_offline_is_a_one_line_error(
    tmp_path: Path, cache_dir: Path, hf_offline: None
) -> None:
    overrides = ["task=classify", "model=bert_tiny", "task.source=hf", "task.name=no-such/set"]
    with pytest.raises(ConfigError, match=r"task.name='no-such/set' .* could not be loaded") as e:
        train(compose_train([*overrides, "task.subset=sst2"], tmp_path, cache_dir))
    assert "\n" not in str(e.value)


def test_init_from_a_gpt_checkpoint_is_refused_for_classify(tmp_path: Path) -> None:
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=120)
    ckpt = save_checkpoint(tmp_path / "gpt.ckpt", build_model(cfg), cfg)
    overrides = ["task=classify", f"init_from={ckpt}", "data.tokenizer=checkpoint"]
    with pytest.raises(
        ConfigError, match=rf"task=classify fine-tunes a bert model; init_from={ckpt} holds model"
    ):
        train(compose_train(overrides, tmp_path / "run"))
    assert results(tmp_path / "run")["status"] == "failed"


def test_a_classifier_checkpoint_cannot_continue_pre_training(tmp_path: Path) -> None:
    cfg = ModelConfig(**TINY_BERT)
    model = build_task_model(cfg, TaskSpec("classify", ("a", "b")))
    ckpt = save_checkpoint(tmp_path / "c.ckpt", model, cfg, task={"kind": "classify"})
    with pytest.raises(ConfigError, match=r"holds a task=classify model; task=lm starts from lm"):
        train(compose_train([f"init_from={ckpt}", "data.tokenizer=checkpoint"], tmp_path / "r"))


def colour_pairs(path: Path, n: int, seed: int) -> Path:
    """Input: a synthetic text of one class; target: the class's name (red, green, blue)."""
    rng = random.Random(seed)
    rows = [
        {"input": "".join(rng.choices(COLOURS[c], k=rng.randint(4, 12))), "target": c}
        for c in rng.choices(list(COLOURS), k=n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seq2seq_learns_and_reports_exact_match(tmp_path: Path, cache_dir: Path) -> None:
    """A tiny T5 learns to name the class of a synthetic text: its greedy decodes (exact
    match) and teacher-forced tokens are scored, a held-out tenth of the file validates."""
    train_file = colour_pairs(tmp_path / "pairs.jsonl", 400, 0)
    overrides = [
        "task=seq2seq",
        "task.source=files",
        f"task.train={train_file}",
        "task.decode_rows=32",
        "model=t5_tiny",
        "model.d_model=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "model.max_seq_len=32",
        "data.tokenizer=char",
        "trainer.max_steps=100",
        "trainer.val_check_interval=50",
        "scheduler.warmup_steps=5",
        "optim.lr=1e-2",
        "logger=csv",
    ]
    train(compose_train(overrides, tmp_path / "run", cache_dir))
    r = results(tmp_path / "run")
    digest = r["task"]["examples_sha256"]
    assert r["task"] == {
        "kind": "seq2seq",
        "examples_sha256": digest,
        "train_examples": 360,
        "val_examples": 40,
    }
    assert r["val_exact_match"] >= 0.3 and r["val_accuracy"] > 0.5


class ValidationRows:
    """A data module's validation loader alone: ``n`` examples in batches of 16."""

    def __init__(self, n: int) -> None:
        self.n = n

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(list(range(self.n)), batch_size=16)


@pytest.fixture(scope="module")
def classify_config() -> DictConfig:
    """``task=classify model=bert_tiny`` as the command line composes it, once."""
    return compose_train(["task=classify", "model=bert_tiny"])


@pytest.mark.parametrize(
    ("settings", "val_examples", "warned"),
    [
        ({}, 1000, "the first 320 of the 1000 validation examples"),
        ({"trainer.limit_val_batches": 0.5}, 1000, "the first 496 of the 1000 validation"),
        ({"final_val_batches": 1.0}, 1000, None),
        ({"trainer.limit_val_batches": 1.0}, 1000, None),
        ({}, 320, None),
    ],
)
def test_a_fine_tuning_run_scoring_part_of_its_validation_file_says_so(
    classify_config: DictConfig,
    settings: dict,
    val_examples: int,
    warned: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The default ``trainer.limit_val_batches=20`` scores 320 examples: val/acc and
    results.json's val_acc were over the first 320 rows of a 1000-example validation file
    (0.0 where the file was sorted by label), with plan.json saying 1000 and no word of it."""
    from lmlab.train.build import warn_partial_validation

    cfg = classify_config.copy()
    for key, value in settings.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    spec = TaskSpec(TaskKind.classify, ("a", "b"), 200, val_examples, origin="task.val=v.csv")
    with caplog.at_level(logging.WARNING, logger="lmlab.train.build"):
        said = warn_partial_validation(cfg, ValidationRows(val_examples), spec)
    assert said == (warned is not None)
    if warned is not None:
        assert warned in caplog.text and "final_val_batches=1.0 scores all 1000" in caplog.text
    assert not warn_partial_validation(cfg, ValidationRows(val_examples), TaskSpec())


def test_a_seq2seq_checkpoint_answers_its_input_as_validation_decodes_it(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """generate on a ``task=seq2seq`` T5 refused every input without a sentinel ("has no
    sentinel <extra_id_0> to fill"): a fine-tuned model could not be used. It answers the
    text now, framed and decoded as validation's exact match decodes it (greedy, from the
    collator's input ending in EOS and PAD as the decoder's start); a "<mask>" in the text is
    its characters, as in training."""
    from lmlab.data.tokenizer import encode_ordinary
    from lmlab.infer.fill import answer

    tok = train_char(["def add(a, b): <mask> xyz"])
    cfg = ModelConfig(family="t5", d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    cfg = dataclasses.replace(cfg, vocab_size=tok.get_vocab_size())
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ckpt = save_checkpoint(tmp_path / "s.ckpt", model, cfg, task={"kind": "seq2seq"})
    torch.save(torch.load(ckpt, weights_only=False) | {"tokenizer": tok.to_str()}, ckpt)
    pre = load(ckpt)
    collate = Seq2SeqCollator(tok, cfg.max_seq_len, 12)
    for text in ("def add(a, b):", "x <mask> y"):
        batch = collate([(encode_ordinary(tok, [text])[0].ids, [collate.eos])])
        start_11 = batch["decoder_input_ids"][:, :1]
        ids_1S = greedy_seq2seq(model, batch["input_ids"], batch["attention_mask"], start_11, 12)
        written = tok.decode(ids_1S[0].tolist(), skip_special_tokens=False)
        expected = written.split(pre.specials.eos)[0]
        assert expected and answer(pre, text, 12, 0.0) == expected
    capsys.readouterr()
    argv = (f"ckpt={ckpt}", "text=def add(a, b):", "temperature=0", "max_new_tokens=12")
    assert run_command("generate", *argv) == 0
    assert capsys.readouterr().out.rstrip("\n") == answer(pre, "def add(a, b):", 12, 0.0)
