"""Whether the runs a comparison ranks measured one thing: the same objective (a loss of
another family or task is not comparable), the same text and tokenizer (a per-token loss of
another tokenizer, or any loss of another corpus slice or validation split, is not), the
same validation rows, the same numeric precision, the same fine-tuning examples and eval
items. Each check is a note or warning line for compare's summary (``ranking.summarize``);
scaling refuses what ``OBJECTIVE_KEYS`` and ``TOKENIZER_KEYS`` tell apart."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from lmlab.analysis.multirun import (
    Run,
    eval_failures,
    eval_format,
    eval_items,
    eval_shots,
    eval_task,
    result_key,
    run_value,
)
from lmlab.config import flatten
from lmlab.config.data import DataConfig
from lmlab.config.schema import to_schema
from lmlab.errors import ConfigError

# Validation metrics (results.json names): each averages over the validation rows the run
# scored, whose target tokens results.json's ``val_tokens`` counts.
VALIDATION_METRICS = frozenset({"val_loss", "best_val_loss", "val_perplexity", "val_bits_per_byte"})


def validation_notes(runs: Sequence[tuple[str, Run]], metric: str) -> list[str]:
    """A warning when ``metric`` is a validation loss and the completed runs with a value were
    validated on different numbers of target tokens (``val_tokens``: another micro-batch times
    ``trainer.limit_val_batches`` scores other rows): the ranking then compares validation sets
    as much as variants. Runs of another tokenizer or corpus are not compared so (their
    tokens differ anyway: :func:`tokenizer_notes` warns). BERT's masks and T5's spans in
    validation are drawn with a seed of validation's own, whatever the run's, so runs of
    other seeds on the same rows score the same targets. ``runs``: (row label, run)."""
    if result_key(metric) not in VALIDATION_METRICS:
        return []
    done = [(label, run) for label, run in runs if not run.failed]
    if tokenizer_notes([run for _, run in done], "val_loss"):
        return []
    groups: dict[tuple[str, str], dict[int, list[str]]] = {}
    for label, run in done:
        tokens = run.results.get("val_tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            continue
        if run_value(run, metric) is None:
            continue
        family = str(run.flat_config.get("model.family"))
        kind = str(run.flat_config.get("task.kind", "lm"))
        labels = groups.setdefault((family, kind), {}).setdefault(tokens, [])
        if label not in labels:
            labels.append(label)
    differ = [counts for counts in groups.values() if len(counts) > 1]
    if not differ:
        return []
    which = "; ".join(
        f"{n}: {', '.join(labels)}" for counts in differ for n, labels in sorted(counts.items())
    )
    return [
        f"warning: the runs were validated on different numbers of target tokens (val_tokens "
        f"{which}), so {metric} compares different validation rows as much as the variants; "
        "validate every run on the same rows (the same data.batch_size x "
        "trainer.limit_val_batches, or final_val_batches=1.0 for the whole held-out split)"
    ]


# What a loss is the loss of: the family's objective (next-token, masked-token, span
# corruption) and the task (pre-training, or a fine-tuning task's own loss).
OBJECTIVE_KEYS = (("model.family", None), ("task.kind", "lm"))


def objective_differences(runs: Sequence[Run], metric: str) -> list[str]:
    """``key: values`` for each objective key the completed runs differ in, when ``metric``
    is a loss, by its results.json or metrics.csv name (their values then measure different
    things); else none."""
    if result_key(metric) not in PER_TOKEN | {"val_bits_per_byte"}:
        return []
    done = [run for run in runs if not run.failed]
    differ = []
    for key, default in OBJECTIVE_KEYS:
        values = sorted({str(run.flat_config.get(key, default)) for run in done})
        if len(values) > 1:
            differ.append(f"{key}: {', '.join(values)}")
    return differ


# What fixes the text a validation loss is measured on: the corpus, the slice of it kept
# (``max_bytes``) and the validation split (its own, ``val_split`` or ``val_path``, or the
# documents held out, ``val_fraction``); the tokenizer is trained on the rest of that text, so
# these change the tokens too.
TEXT_KEYS = tuple(
    f"data.{name}"
    for name in (
        "source",
        "path",
        "val_path",
        "name",
        "subset",
        "split",
        "val_split",
        "text_column",
        "max_bytes",
        "val_fraction",
    )
)
# What fixes the tokens a per-token loss is averaged over: that text and how it is split.
# Each key with DataConfig's default, which a run whose config lacks the key (an older run)
# trained with, so the two compare equal.
_DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)}
TOKENIZER_KEYS: tuple[tuple[str, object], ...] = tuple(
    (key, _DATA_DEFAULTS[key.removeprefix("data.")])
    for key in (*TEXT_KEYS, "data.tokenizer", "data.vocab_size")
)
PER_TOKEN = frozenset({"val_loss", "best_val_loss", "val_perplexity", "train_loss"})
# What a run's plan.json records of the rows it trained and was validated on: lmlab's data
# preparation version (another lmlab holds other documents of the same corpus out, or trains
# another BPE), the text's digest and the validation split's bytes. Runs of one data config
# differ in them where its files changed between the runs or another lmlab prepared them.
# Each is compared among the runs that record it (an older plan lacks some).
RECORD_KEYS = ("plan.data_preparation", "plan.corpus.text_sha256", "plan.corpus.val.bytes")


def tokenizer_notes(runs: Sequence[Run], metric: str) -> list[str]:
    """A warning when ``metric`` is per token and the runs split text into tokens
    differently: another tokenizer changes the loss per token without changing the model's
    quality, so bits per byte is the comparable measure. Runs validated on other text
    (``TEXT_KEYS``) are warned of for bits per byte too: no loss compares them. A key counts
    only in the runs where it has an effect (:func:`data_settings`)."""
    if result_key(metric) not in PER_TOKEN | {"val_bits_per_byte"}:  # val/loss: val_loss
        return []
    done = [run for run in runs if not run.failed]
    settings = [(run.dir.name, data_settings(run) | record_settings(run)) for run in done]
    keys = [*(key for key, _ in TOKENIZER_KEYS), *RECORD_KEYS]
    groups = {key: _by_value(settings, key) for key in keys}
    differ = [key for key, by_value in groups.items() if len(by_value) > 1]
    text = [key for key in differ if key in TEXT_KEYS or key in RECORD_KEYS]
    if text:  # which runs: a key no override set is in no column of the table
        shown = ", ".join(f"{key} ({_which(groups[key])})" for key in differ)
        same = set(differ) <= set(RECORD_KEYS)  # one data config, other rows
        return [
            f"warning: the runs differ in {shown}, so they were validated on "
            f"different text and {metric} does not compare them, per token or per byte; "
            + (
                "their data config is the same, but its files changed between the runs or "
                "another lmlab prepared them (plan.json's data_preparation): train them again "
                "with one lmlab on the same files"
                if same
                else "compare runs of one corpus, slice (data.max_bytes) and validation split "
                "(data.val_split, data.val_path or data.val_fraction)"
            )
        ]
    if not differ or result_key(metric) not in PER_TOKEN:
        return []
    return [
        f"warning: the runs differ in {', '.join(differ)}, so their tokens differ and {metric} "
        "(per token) does not compare them; rank by val_bits_per_byte (--metric "
        "val_bits_per_byte) instead"
    ]


PRECISION = "trainer.precision"


def precision_notes(runs: Sequence[tuple[str, Run]], metric: str) -> list[str]:
    """A warning when the completed runs with a value of ``metric`` trained, and were
    validated, at different numeric precisions (plan.json's ``precision``, as resolved:
    ``trainer.precision=auto``, ``trainer=ddp``'s and ``trainer=fsdp``'s, is bf16-mixed on a GPU
    with bf16 and 32-true elsewhere, so one command run on two machines differs): bf16
    autocast rounds every matmul's inputs, the validation's too, so the ranking compares
    precisions as much as variants. Not where the precision is the swept variant (each run
    sets ``trainer.precision``). ``runs``: (row label, run)."""
    done = [(label, run) for label, run in runs if not run.failed]
    done = [(label, run) for label, run in done if run_value(run, metric) is not None]
    if all(PRECISION in run.overrides for _, run in done):
        return []
    settings = [
        (label, {PRECISION: str(run.plan["precision"])})
        for label, run in done
        if run.plan.get("precision")
    ]
    by_value = {
        value: list(dict.fromkeys(labels))
        for value, labels in _by_value(settings, PRECISION).items()
    }
    if len(by_value) < 2:
        return []
    return [
        f"warning: the runs trained and were validated at different precisions "
        f"({_which(by_value)}), so {metric} compares precisions as much as variants; set "
        f"{PRECISION} to one value (32-true or bf16-mixed) for every run"
    ]


def record_settings(run: Run) -> dict[str, str]:
    """The run's value of each ``RECORD_KEYS`` key its plan.json holds."""
    flat = flatten(run.plan, "plan")
    return {key: str(flat[key]) for key in RECORD_KEYS if key in flat}


# DataConfig's fields a run's data config is read back with: not where the cache is, nor the
# run's own folders (no key of the config).
_READ_BACK = frozenset(_DATA_DEFAULTS) - {"cache_dir", "run_folders"}


def data_settings(run: Run) -> dict[str, str]:
    """The run's value of each ``TOKENIZER_KEYS`` key (the default where its config lacks the
    key), less the keys its own data config switches off (``DataConfig.unused_fields``:
    ``data.val_fraction`` under ``data.val_split`` or ``data.val_path``, ``data.vocab_size``
    under ``data.tokenizer=char``): runs that differ in such a key trained on the same text
    and tokens. A local path is the file it names (``Run.files``). A config DataConfig
    cannot read (an older run's) keeps every key."""
    values = run_values(run)
    settings = {key: str(values.get(key, default)) for key, default in TOKENIZER_KEYS}
    data = run.config.get("data")
    if not isinstance(data, dict):
        return settings
    try:
        data_cfg = to_schema(DataConfig, {k: v for k, v in data.items() if k in _READ_BACK})
    except ConfigError:
        return settings
    padded = run.flat_config.get("task.kind", "lm") != "lm"  # fine-tuning's batches
    for name in data_cfg.unused_fields(padded):
        settings.pop(f"data.{name}", None)
    return settings


def run_values(run: Run) -> dict[str, object]:
    """The run's flat config with each local path as the file it names (``Run.files``)."""
    return {**run.flat_config, **run.files}


def _by_value(settings: Sequence[tuple[str, dict[str, str]]], key: str) -> dict[str, list[str]]:
    """The runs' folder names by their value of ``key``, of the runs where it has an effect
    (``settings``: each run's folder name and :func:`data_settings`)."""
    by_value: dict[str, list[str]] = {}
    for name, values in settings:
        if key in values:
            by_value.setdefault(values[key], []).append(name)
    return by_value


def _which(by_value: dict[str, list[str]]) -> str:
    """``0.05: 5 runs; 0.2: 3``: each value with its runs' folders, or their count where more
    than three share it."""
    return "; ".join(
        f"{value}: {', '.join(names) if len(names) <= 3 else f'{len(names)} runs'}"
        for value, names in sorted(by_value.items())
    )


# What fixes a fine-tuning run's examples: where they come from and which columns are read.
EXAMPLE_KEYS = tuple(
    f"task.{name}"
    for name in (
        "source",
        "name",
        "subset",
        "train",
        "val",
        "train_split",
        "val_split",
        "val_fraction",
        "text_column",
        "text_pair_column",
        "label_column",
        "input_column",
        "target_column",
    )
)


def example_notes(runs: Sequence[Run], metric: str) -> list[str]:
    """A warning when fine-tuning runs were validated on different examples (another file,
    hub set or column): any metric of theirs, a loss or an accuracy, measures another data
    set, so its ranking says which data is easier, not which variant is better."""
    done = [run for run in runs if not run.failed]
    if all(run.flat_config.get("task.kind", "lm") == "lm" for run in done):
        return []
    values = [run_values(run) for run in done]
    differ = [key for key in EXAMPLE_KEYS if len({repr(v.get(key)) for v in values}) > 1]
    if not differ:
        return []
    return [
        f"warning: the runs differ in {', '.join(differ)}, so they were trained and validated "
        f"on different examples and {metric} compares the data sets as much as the variants"
    ]


def item_notes(runs: Sequence[tuple[str, Run]], metric: str) -> list[str]:
    """A warning when ``metric`` is an eval's (``eval/<task>/...``) and the completed runs
    with a value scored different numbers of the task's items (``eval.limit``, ``lmlab
    evaluate limit=``): each count is another sample of the task, with its own noise (and
    its first items may be easier), so the ranking compares samples as much as variants.
    And one when they scored it with different shots (``lmlab evaluate num_fewshot=``): a
    3-shot score and a 0-shot one measure different things, whatever the variants. And one
    when they formatted its prompts differently (``lmlab evaluate apply_chat_template=``, its
    shots as turns or a system instruction, against plain prompts): an instruct model scores
    otherwise in its chat template. ``runs``: (row label, run)."""
    task = eval_task(metric)
    if task is None:
        return []
    lines = []
    for of, label, scored, compares, alike in _EVAL_SETTINGS:
        if len(groups := _grouped(runs, metric, of)) > 1:
            which = "; ".join(f"{label.format(v)}: {', '.join(names)}" for v, names in groups)
            lines.append(
                f"warning: the runs scored {task} {scored} ({which}), so {metric} compares "
                f"{compares} as much as the variants; evaluate every run {alike}"
            )
    return lines


# What item_notes checks of an eval metric's runs: how to read it of a run, how a group is
# named, and the warning's words (how the runs differ, what the metric then compares, and how
# to evaluate them alike).
_EVAL_SETTINGS = (
    (
        eval_items,
        "{} items",
        "on different numbers of items",
        "samples of the task",
        "on the same items (the same eval.limit, or lmlab evaluate limit=)",
    ),
    (
        eval_shots,
        "{}-shot",
        "with different numbers of few-shot examples",
        "the prompts",
        "with the same num_fewshot= (the evals during training use the task's own)",
    ),
    (
        eval_format,
        "{}",
        "with differently formatted prompts",
        "the formats",
        "alike (lmlab evaluate apply_chat_template=, chat_template=, fewshot_as_multiturn=, "
        "system_instruction=; eval.apply_chat_template= and the others during training)",
    ),
)


def _grouped(
    runs: Sequence[tuple[str, Run]], metric: str, of: Callable[[Run, str], int | str | None]
) -> list[tuple[int | str, list[str]]]:
    """The labels of the completed runs with a value of ``metric``, by what ``of`` says of
    it (item count, shots, prompt format), in increasing order; runs where ``of`` knows
    nothing left out."""
    groups: dict[int | str, list[str]] = {}
    for label, run in runs:
        value = of(run, metric)
        if not run.failed and value is not None and run_value(run, metric) is not None:
            labels = groups.setdefault(value, [])
            if label not in labels:
                labels.append(label)
    return sorted(groups.items())


def eval_notes(runs: Sequence[Run], metric: str) -> list[str]:
    """For an eval metric: each ``eval/step<N>.json`` skipped as another model's (its
    ``model_digest`` is not the run's final checkpoint's), the runs ranked by an evaluation of
    weights older than their last step (``stale_evals``), and the runs whose evals during
    training failed (results.json's ``eval_failures``)."""
    task = eval_task(metric)
    if task is None:
        return []
    lines = [f"warning: {why}" for run in runs for why in run.skipped_evals]
    lines += stale_evals(runs, metric)
    failed = eval_failures([run for run in runs if run_value(run, metric) is None], task)
    if failed:
        lines.append(f"note: no {metric} for some runs{failed}")
    return lines


def stale_evals(runs: Sequence[Run], metric: str) -> list[str]:
    """The runs whose ``metric`` is ``lmlab evaluate``'s record of a step before the last they
    trained: a run resumed past its evaluation (``trainer.max_steps`` raised) was ranked by
    its earlier weights, unsaid. One line each, naming the steps and the checkpoint to
    evaluate."""
    lines = []
    for run in runs:
        trained, step = run.results.get("global_step"), run.eval_step
        if not isinstance(trained, int) or step is None or step >= trained:
            continue
        if metric in run.evals and run_value(run, metric) == run.evals[metric]:
            lines.append(
                f"note: {run.dir}: {metric} is lmlab evaluate's of step {step}, but the run "
                f"trained on to step {trained}; evaluate its last checkpoint for the final "
                f"weights' (lmlab evaluate ckpt={run.dir / 'checkpoints' / 'last.ckpt'})"
            )
    return lines
