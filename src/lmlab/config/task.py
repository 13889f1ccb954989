"""``task=lm|classify|seq2seq``: what a run trains for (TaskConfig), and a task once its
examples are read (TaskSpec)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmlab.config.data import Source
from lmlab.config.knobs import Choice, Family
from lmlab.config.model import ModelConfig
from lmlab.config.run import BudgetKind
from lmlab.config.schema import to_schema
from lmlab.errors import ConfigError


class TaskKind(Choice):
    lm = "lm"  # pre-training: the family's own objective on the corpus of data=
    classify = "classify"  # text -> label: BERT with a classification head on [CLS]
    seq2seq = "seq2seq"  # input text -> target text: T5, teacher-forced


# The family each fine-tuning task trains (task=lm trains any).
TASK_FAMILIES = {TaskKind.classify: Family.bert, TaskKind.seq2seq: Family.t5}


class TaskSource(Choice):
    shipped = "shipped"  # an example set shipped with lmlab, named by task.name (no download)
    files = "files"  # task.train (and task.val): local JSONL or CSV files
    hf = "hf"  # task.name (and task.subset): a Hugging Face `datasets` name (online users)


# The example sets shipped in src/lmlab/data/corpora/<name>.{train,val}.jsonl (written by
# scripts/make_finetune_data.py), with the task each is for.
SHIPPED_TASKS = {
    "code_or_play": TaskKind.classify,
    "def_name": TaskKind.seq2seq,
    "next_line": TaskKind.classify,
}
# The shipped sets of text pairs, with their second text's column (task.text_pair_column).
SHIPPED_PAIRS = {"next_line": "text_pair"}
# File suffix -> the `datasets` loader that reads it.
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
# What each example source needs, and the fields it would ignore (set: refused).
SOURCE_NEEDS = {TaskSource.files: "train", TaskSource.hf: "name"}
SOURCE_IGNORES = {
    TaskSource.shipped: ("train", "val", "subset"),
    TaskSource.files: ("name", "subset"),
    TaskSource.hf: ("train", "val"),
}


@dataclass
class TaskConfig:
    """What a run trains for (``task=lm|classify|seq2seq``, fields ``task.<field>=...``).

    ``lm`` (the default) pre-trains on ``data=``. ``classify`` and ``seq2seq`` fine-tune on
    examples (``lmlab.data.examples``, ``lmlab.data.finetune``): ``data.*`` then sets only
    the tokenizer and the batches (``data.tokenizer``, ``data.vocab_size``, ``data.seq_len``,
    ``data.batch_size``); the corpus fields are ``task=lm``'s.
    """

    kind: TaskKind = TaskKind.lm
    source: TaskSource = TaskSource.shipped
    """Where the examples come from: shipped, files or hf."""
    name: str | None = None
    """source=shipped: code_or_play or next_line (classify; next_line is pairs: with
    ``task.text_pair_column=text_pair``) or def_name (seq2seq), null: the task's first;
    source=hf: a hub name."""
    subset: str | None = None
    """source=hf: the dataset's configuration (``task.name=glue task.subset=sst2``)."""
    train: str | None = None
    """source=files: the training examples, ``.jsonl`` (a JSON object a line) or ``.csv``."""
    val: str | None = None
    """source=files: the validation examples (null: ``val_fraction`` of ``train``)."""
    train_split: str = "train"
    """source=hf: the training split."""
    val_split: str | None = "validation"
    """source=hf: the validation split (null: ``val_fraction`` of ``train_split``)."""
    val_fraction: float = 0.1
    """Examples held out for validation when there is no validation file or split: a fixed
    shuffle (seed 0, whatever the run's seed), so every run of a sweep sees the same ones."""
    text_column: str = "text"
    label_column: str = "label"
    """classify: the columns of the text and of its label."""
    text_pair_column: str | None = None
    """classify: the column of a second text (null: none). Each example is then a pair, as
    in GLUE's MRPC or MNLI, framed ``[CLS] a [SEP] b [SEP]`` with segment (token type) 0 over
    ``[CLS] a [SEP]`` and 1 over ``b [SEP]``; a pair longer than ``data.seq_len`` loses tokens
    one at a time from the longer text (Hugging Face's ``longest_first``). Needs a model with
    two segments (``model.type_vocab_size=2``, as the bert presets have)."""
    input_column: str = "input"
    target_column: str = "target"
    """seq2seq: the columns of the input text and of the target text."""
    num_labels: int | None = None
    """classify: the number of classes (null: as many as the training split has). Integer
    labels are the class ids 0 .. num_labels - 1; other labels take ids in sorted order."""
    max_target_len: int | None = None
    """seq2seq: target tokens kept per example, EOS included (null: the sequence length)."""
    decode_rows: int = 128
    """seq2seq: validation rows decoded greedily for ``val/exact_match`` (0: none)."""

    def unused_fields(self) -> dict[str, str]:
        """{field: the setting it has no effect under} (``ModelConfig.unused_fields``'s
        counterpart; fields whose default is null are refused instead, in ``__post_init__``):
        another task's columns and settings, the hub's splits outside task.source=hf, and
        ``val_fraction`` where a validation file or split is given."""
        unused: dict[str, str] = {}
        kind = f"task={self.kind.value}"
        others = {
            TaskKind.lm: [f.name for f in fields(self) if f.name != "kind"],
            TaskKind.classify: ["input_column", "target_column", "max_target_len", "decode_rows"],
            TaskKind.seq2seq: ["text_column", "label_column", "num_labels"],
        }
        unused.update(dict.fromkeys(others[self.kind], kind))
        if self.kind == TaskKind.lm:
            return unused
        if self.source != TaskSource.hf:
            splits = ("train_split", "val_split")
            unused.update(dict.fromkeys(splits, f"task.source={self.source.value}"))
        held_out = {
            TaskSource.shipped: "task.source=shipped (its sets have their own validation file)",
            TaskSource.files: f"task.val={self.val}" if self.val is not None else None,
            TaskSource.hf: f"task.val_split={self.val_split}" if self.val_split else None,
        }[self.source]
        if held_out is not None:
            unused["val_fraction"] = held_out
        return unused

    def __post_init__(self) -> None:
        if self.text_pair_column is not None and self.kind != TaskKind.classify:
            raise ConfigError(
                f"task.text_pair_column={self.text_pair_column} is set but task="
                f"{self.kind.value} ignores it (allowed with task=classify only: sentence "
                "pairs for BERT's two segments)"
            )
        if self.kind == TaskKind.lm:
            given = [f for f in ("name", "train", "val") if getattr(self, f) is not None]
            if given:
                raise ConfigError(
                    f"task.{given[0]}={getattr(self, given[0])} is set but task=lm pre-trains on "
                    "data= (fine-tuning: task=classify or task=seq2seq)"
                )
            return
        needed = SOURCE_NEEDS.get(self.source)
        if needed and getattr(self, needed) is None:
            raise ConfigError(f"task.source={self.source.value} needs task.{needed}=<...>")
        for name in SOURCE_IGNORES[self.source]:
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"task.{name}={getattr(self, name)} is set but task.source="
                    f"{self.source.value} ignores it (task.train/val: task.source=files; "
                    "task.name/subset: task.source=hf or shipped)"
                )
        if self.source == TaskSource.shipped:
            self.check_shipped()
        if self.source == TaskSource.files:
            for name in ("train", "val"):
                check_example_file(f"task.{name}", getattr(self, name))
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"task.val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.num_labels is not None and self.num_labels < 2:
            raise ConfigError(f"task.num_labels={self.num_labels} must be >= 2 (or null)")
        if self.max_target_len is not None and self.max_target_len < 2:
            raise ConfigError(f"task.max_target_len={self.max_target_len} must be >= 2")
        if self.decode_rows < 0:
            raise ConfigError(f"task.decode_rows={self.decode_rows} must be >= 0")

    def check_shipped(self) -> None:
        """The shipped set exists and is one for this task (null: the task's own)."""
        if self.name is None:
            self.name = next(n for n, k in SHIPPED_TASKS.items() if k == self.kind)
        if SHIPPED_TASKS.get(self.name) != self.kind:
            ours = [n for n, k in SHIPPED_TASKS.items() if k == self.kind]
            raise ConfigError(
                f"task.name={self.name}: no shipped set for task={self.kind.value} by that name; "
                f"allowed: {', '.join(ours)} (other examples: task.source=files or hf)"
            )
        pair = SHIPPED_PAIRS.get(self.name)
        if pair is not None and self.text_pair_column is None:
            raise ConfigError(
                f"task.name={self.name} is a set of text pairs: add "
                f"task.text_pair_column={pair} (task.text_pair_column=null reads the first "
                "texts alone, and the label depends on both)"
            )
        if self.text_pair_column is not None and self.text_pair_column != pair:
            where = (
                f"its second texts are in column {pair}"
                if pair
                else "it holds single texts, not pairs"
            )
            pairs = ", ".join(
                f"task.name={n} task.text_pair_column={c}" for n, c in SHIPPED_PAIRS.items()
            )
            raise ConfigError(
                f"task.text_pair_column={self.text_pair_column}: the shipped set "
                f"task.name={self.name} has no such column ({where}); shipped pairs: {pairs}"
            )


def check_example_file(field_name: str, path: str | None) -> None:
    """An example file exists and is JSONL or CSV."""
    if path is None:
        return
    if Path(path).suffix.lower() not in FILE_FORMATS:
        raise ConfigError(
            f"{field_name}={path}: allowed file types {', '.join(FILE_FORMATS)} "
            "(one JSON object a line, or a CSV with a header row)"
        )
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{field_name}={path}: no such file")


# The key of a task record (``TaskSpec.record``) that holds the examples' digest: records
# written before it have none.
EXAMPLES_DIGEST = "examples_sha256"
# The key of a task summary (``TaskSpec.summary``) that counts a classifier's validation
# examples per label: summaries written before it have none (the digest covers them).
VAL_LABELS = "val_labels"


@dataclass(frozen=True)
class TaskSpec:
    """A run's task once its examples are read: what the model's head, the validation
    metrics, the checkpoint and ``plan.json`` need. The default is pre-training (task=lm)."""

    kind: TaskKind = TaskKind.lm
    labels: tuple[str, ...] = ()
    """classify: the class names, in id order."""
    train_examples: int = 0
    val_examples: int = 0
    decode_rows: int = 0
    """seq2seq: validation rows decoded greedily for exact match."""
    text_pair_column: str | None = None
    """classify: the column of each example's second text (null: single texts)."""
    examples_sha256: str | None = None
    """A digest of the examples trained and validated on, in order (``packing.text_digest``
    of each split's inputs, second texts, and targets or label ids): a resume refuses other
    examples of the same counts and labels (``plan.task_change``). None: not read (a sweep's
    checks, pre-training)."""
    origin: str = field(default="", compare=False)
    """Where the examples were read, for messages: ``task.train=a.jsonl and task.val=b.csv``."""
    val_label_counts: tuple[int, ...] = field(default=(), compare=False)
    """classify: the validation examples of each label, in id order (the digest covers them)."""

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def record(self) -> dict[str, Any]:
        """Plain types, for checkpoints, plan.json and results.json."""
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.labels:
            out["labels"] = list(self.labels)
        if self.text_pair_column is not None:  # a single-text run's record stays as it was
            out["text_pair_column"] = self.text_pair_column
        if self.examples_sha256 is not None:
            out[EXAMPLES_DIGEST] = self.examples_sha256
        return out

    def summary(self) -> dict[str, Any]:
        """``record`` with the example counts, and a classifier's validation examples per
        label (``VAL_LABELS``: what always answering the most frequent one scores): what
        plan.json and results.json say of the task."""
        out = self.record() | {
            "train_examples": self.train_examples,
            "val_examples": self.val_examples,
        }
        if self.val_label_counts:
            out[VAL_LABELS] = dict(zip(self.labels, self.val_label_counts, strict=True))
        return out


PRETRAINING = TaskSpec()  # task=lm: the family's own head and objective


def check_task_model(task: TaskConfig, model_cfg: ModelConfig, where: str) -> None:
    """A fine-tuning task trains its own family; ``where`` says what gave the model ("the
    model has", "init_from=<path> holds")."""
    family = TASK_FAMILIES.get(task.kind)
    if family is not None and model_cfg.family != family:
        raise ConfigError(
            f"task={task.kind.value} fine-tunes a {family.value} model; {where} "
            f"model.family={model_cfg.family.value} (allowed: model={family.value}_tiny or "
            f"another {family.value} preset, or init_from=<a {family.value} checkpoint>)"
        )
    if task.text_pair_column is not None and model_cfg.type_vocab_size < 2:
        raise ConfigError(
            f"task.text_pair_column={task.text_pair_column} gives the second text segment 1, "
            f"but {where} model.type_vocab_size={model_cfg.type_vocab_size}: no segment 1 "
            "(allowed: 2 or more; set model.type_vocab_size=2, as the bert presets have, or "
            "init_from a model with two segments)"
        )
    if (task.max_target_len or 0) > model_cfg.max_seq_len:
        raise ConfigError(
            f"task.max_target_len={task.max_target_len} is above the decoder's "
            f"model.max_seq_len={model_cfg.max_seq_len}"
        )


def resolve_task(cfg: DictConfig, model_cfg: ModelConfig) -> TaskConfig:
    """The ``task`` group, checked against the rest of the run before any work: the model's
    family (unless ``init_from`` brings the model: ``lmlab.train.init_from`` checks that),
    and the settings a fine-tuning run cannot honour."""
    node = cfg.get("task")
    task = TaskConfig() if node is None else to_schema(TaskConfig, node, "task.")
    if task.kind == TaskKind.lm:
        return task
    if not cfg.get("init_from"):
        check_task_model(task, model_cfg, "the model has")
    kind = task.kind.value
    source = Source(cfg.data.get("source", Source.stdlib))
    if source != Source.stdlib:
        raise ConfigError(
            f"data.source={source.value} is a corpus for task=lm; task={kind} reads its "
            "examples from task.source (shipped, files, hf): drop the data= override"
        )
    budget = BudgetKind(cfg.budget.get("kind", BudgetKind.steps))
    if budget != BudgetKind.steps:
        raise ConfigError(
            f"budget={budget.value} counts the tokens of packed rows; task={kind} trains on "
            "padded examples: use budget=steps (trainer.max_steps)"
        )
    if cfg.get("dry_run"):
        raise ConfigError(f"dry_run=true plans task=lm runs; task={kind} has no dry run")
    return task
