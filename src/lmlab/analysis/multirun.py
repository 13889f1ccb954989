"""The knobs that vary between the runs of a multirun, and a metric's value per run (the runs
are read by :mod:`lmlab.analysis.runs`).

The knobs are the overrides whose values differ between jobs, falling back to differing
``config.yaml`` keys. Run-control settings (``RUN_CONTROL``: resuming, where a run writes,
which loggers it has, which downstream evals it runs) never are: they change neither the
model nor its training, and a resumed sweep's jobs differ in them (a resumed job's overrides
hold ``resume=auto``). Runs ranked by an eval scored on different item counts get a warning
instead, and so do runs scored with different shots (``comparable.item_notes``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from lmlab.analysis.run_files import canonical, count, item_count
from lmlab.analysis.runs import Run, RunDirError
from lmlab.config.prompts import PLAIN_PROMPTS, prompt_format
from lmlab.files import RESULTS

# results.json keys that are not metrics.
NON_METRIC_KEYS = frozenset(
    {"status", "error", "run_name", "seed", "wandb_id", "resumed_from", "resumed_step"}
)
# Config keys that are bookkeeping, not knobs (fallback when overrides do not vary).
_EXCLUDED_TOKENS = frozenset(
    {"path", "paths", "dir", "dirs", "root", "file", "files", "cwd", "seed"}
    | {"timestamp", "date", "datetime", "now"}
)
# ``eval``: the downstream evals during training (tasks, limit, every_n_steps, batch_size),
# which leave the training as it was (the random state is put back) and measure it.
_EXCLUDED_GROUPS = frozenset({"hydra", "wandb", "logger", "logging", "paths", "eval"})
# Config keys under another group that are run-control settings too: the eval callback's
# arguments (``conf/callbacks/default.yaml``, resolved from ``eval.*``).
_EXCLUDED_PREFIXES = ("callbacks.eval.",)
# Top-level keys that say how a run is driven, not what it trains: continuing a run
# (``resume``, ``ckpt_path``) or only planning it (``dry_run``). With the groups above, never
# knobs, in the overrides or config.yaml (``conf/train.yaml`` leaves most out of a run's name).
RUN_CONTROL = frozenset({"resume", "ckpt_path", "dry_run"})
_EXCLUDED_LEAVES = frozenset({"run_name", "run_id", "experiment_name"})
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
MISSING = "-"
_ABSENT = object()


class CompareError(RunDirError):
    """Bad input to the comparison (missing directory, no runs, unknown metric); one line."""


# --------------------------------------------------------------------------- knobs


def varying_knobs(runs: Sequence[Run]) -> list[str]:
    """The override keys whose values differ between runs, in command-line order; ``seed``,
    run-control settings (:func:`is_run_control`) and constant overrides excluded. Falls back
    to differing config.yaml keys (no paths, dirs, seeds, run names, timestamps, run control)
    when no override varies. A run without a config (a results.json alone) names no knob and
    is left out of the choice, when some run has one: its blanks would make every override
    vary."""
    runs = [run for run in runs if run.config or run.overrides] or list(runs)
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(
            dict.fromkeys(k for k in run.overrides if not (_is_seed_key(k) or is_run_control(k)))
        )
    knobs = [k for k in keys if len({knob_value(r, k) for r in runs}) > 1]
    return knobs or _config_knobs(runs)


def _is_seed_key(key: str) -> bool:
    return re.split(r"[./]", key)[-1] == "seed"


def is_run_control(key: str) -> bool:
    """Whether a config key drives the run rather than sets what it trains: ``resume``,
    ``ckpt_path``, ``dry_run`` and the ``hydra``, ``logger``, ``paths`` and ``eval`` groups
    (``RUN_CONTROL``, ``_EXCLUDED_GROUPS``, ``_EXCLUDED_PREFIXES``)."""
    key = key.lstrip("+~")
    return (
        key in RUN_CONTROL
        or re.split(r"[./]", key)[0] in _EXCLUDED_GROUPS
        or key.startswith(_EXCLUDED_PREFIXES)
    )


def knob_value(run: Run, key: str) -> str:
    """The run's value for a knob: its override, else its config value (a group's option:
    the default preset it ran with), else ``-``. ``trainer.max_steps`` of a run whose budget
    set its steps (tokens, FLOPs, Chinchilla) is ``-``: the config's value was not used; so
    is the default ``model`` preset of an ``init_from`` run, which trained the checkpoint's
    architecture (its fields are plan.json's: a converted BERT was listed as ``gpt_tiny``).
    A local path is the file it names (``Run.files``): ``./x.jsonl`` and its absolute path are
    one variant, the same words typed in two folders two (one was taken for the other's copy)."""
    if key.lstrip("+~") == "trainer.max_steps" and _budget_kind(run) not in (None, "steps"):
        return MISSING
    if key.lstrip("+~") in run.files:
        return run.files[key.lstrip("+~")]
    if key in run.overrides:
        return run.overrides[key]
    if key.lstrip("+~") == "model" and run.flat_config.get("init_from"):
        return MISSING
    if key.lstrip("+~") in run.choices:
        return run.choices[key.lstrip("+~")]
    value = run.flat_config.get(key, _ABSENT)
    return MISSING if value is _ABSENT or isinstance(value, dict) else canonical(value)


def _budget_kind(run: Run) -> str | None:
    """What set the run's steps (``budget.kind``: steps, tokens, flops, chinchilla)."""
    budget = run.results.get("budget")
    kind = budget.get("kind") if isinstance(budget, dict) else None
    return kind if kind is not None else run.flat_config.get("budget.kind")


def _config_knobs(runs: Sequence[Run]) -> list[str]:
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.flat_config))
    knobs = []
    for key in keys:
        values = [run.flat_config.get(key) for run in runs]
        if _excluded_config_key(key) or any(_looks_like_path(v) for v in values):
            continue
        # a run read from run_config.yaml alone does not know the keys it lacks
        known = [r for r in runs if not (r.partial_config and key not in r.flat_config)]
        if len({knob_value(r, key) for r in known}) > 1:
            knobs.append(key)
    return knobs


def _excluded_config_key(key: str) -> bool:
    parts = key.split(".")
    tokens = {t for part in parts for t in part.lower().split("_")}
    return (
        bool(tokens & _EXCLUDED_TOKENS)
        or is_run_control(key)
        or parts[-1] in _EXCLUDED_LEAVES
        or key == "name"
    )


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and (
        value.startswith(("/", "~", "./")) or bool(_DATE_RE.search(value))
    )


def short_names(knobs: Sequence[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """The shortest dotted suffix that still tells each knob apart (``model.act`` -> ``act``)
    and is none of the ``taken`` names (a table's other columns: ``budget.flops`` beside the
    FLOPs column)."""
    taken = set(taken)
    out: dict[str, str] = {}
    for knob in knobs:
        parts = knob.split(".")
        out[knob] = knob
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            unique = sum(o == suffix or o.endswith("." + suffix) for o in knobs) == 1
            if unique and suffix not in taken:
                out[knob] = suffix
                break
    return out


def variant_label(knobs: dict[str, str]) -> str:
    """``norm_placement=pre, activation=gelu`` (short knob names); ``all runs`` without knobs."""
    names = short_names(list(knobs))
    return ", ".join(f"{names[k]}={v}" for k, v in knobs.items()) or "all runs"


# --------------------------------------------------------------------------- metrics


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric results.json keys (null counts), ``lmlab evaluate``'s metrics and metrics.csv
    columns present in any run."""
    names: set[str] = set()
    for run in runs:
        names.update(
            k
            for k, v in run.results.items()
            if k not in NON_METRIC_KEYS and (v is None or _is_number(v))
        )
        names.update(run.evals)
        names.update(run.curve)
    return sorted(names)


# lm-eval metrics where more is better; its others (perplexity, bits_per_byte, ...) are less
HIGHER_EVAL_METRICS = frozenset(
    {"acc", "acc_norm", "acc_mutual_info", "exact_match", "f1", "mcc", "bleu", "chrf"}
)


# results.json keys where more is better: throughput, and the fine-tuning tasks' validation
# metrics (``train.finetune.TASK_RESULTS``); their metrics.csv columns too (``result_key``)
HIGHER_RUN_METRICS = frozenset(
    {"tokens_per_second", "mfu", "val_acc", "val_f1", "val_accuracy", "val_exact_match"}
)
# metrics.csv's group of the throughput columns, whose results.json keys have no prefix
PERF_GROUP = "perf"


def result_key(metric: str) -> str:
    """The results.json name of a metric given by its metrics.csv column (``val/loss`` ->
    ``val_loss``, ``train/loss`` -> ``train_loss``, ``perf/tokens_per_second`` ->
    ``tokens_per_second``), so that either name gets the same direction, format and checks;
    an eval metric (``eval/<task>/<metric>``) and any other name stay as they are."""
    if eval_task(metric) is not None or metric.count("/") != 1:
        return metric
    group, name = metric.split("/")
    return name if group == PERF_GROUP else f"{group}_{name}"


def higher_is_better(metric: str) -> bool:
    """The default direction of ``metric``: higher for the accuracy-like eval metrics
    (``eval/<task>/acc``), a fine-tuned task's accuracies and F1, and throughput (tokens per
    second, MFU), by their results.json or metrics.csv names; lower for everything else
    (losses, perplexities, bits per byte, time)."""
    parts = metric.split("/")
    if len(parts) == 3 and parts[0] == "eval":
        return parts[2] in HIGHER_EVAL_METRICS
    return result_key(metric) in HIGHER_RUN_METRICS


def check_metric(runs: Sequence[Run], metric: str) -> None:
    """Raise CompareError naming the available metrics when ``metric`` is unknown, and for an
    eval metric the runs whose evals during training failed (results.json's
    ``eval_failures``), which is why they have none."""
    if {metric, result_key(metric)} & set(available_metrics(runs)):
        return
    if any(curve_column(metric, run.curve) for run in runs):
        return
    available = ", ".join(available_metrics(runs)) or "none"
    task = eval_task(metric)
    failed = eval_failures(runs, task) if task else ""
    raise CompareError(f"unknown metric {metric!r}{failed}; available: {available}")


def eval_failures(runs: Sequence[Run], task: str) -> str:
    """``; the evals failed in <run dirs> (results.json eval_failures, step N: <error>)`` for
    the runs whose evals of ``task`` during training failed; empty where none did."""
    failed = [run for run in runs if _failures(run, task)]
    if not failed:
        return ""
    first = _failures(failed[0], task)[-1]
    names = [run.dir.name for run in failed]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return (
        f"; the evals during training failed in {', '.join(names[:5])}{more} (results.json "
        f"eval_failures; {names[0]}, step {first.get('step')}: {first.get('error')})"
    )


def _failures(run: Run, task: str) -> list[dict[str, Any]]:
    """results.json's ``eval_failures`` of ``run`` (each ``{"step", "tasks", "error"}``) that
    scored ``task``; a record from before the tasks were named counts for every task."""
    failures = run.results.get("eval_failures")
    found = [f for f in failures if isinstance(f, dict)] if isinstance(failures, list) else []
    return [f for f in found if not isinstance(f.get("tasks"), list) or task in f["tasks"]]


def eval_task(metric: str) -> str | None:
    """The task of an eval metric (``eval/<task>/<metric>``); None for any other metric."""
    parts = metric.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "eval" else None


def eval_items(run: Run, metric: str) -> int | None:
    """How many items of its task the run's value of the eval metric ``metric`` scored, from
    where :func:`run_value` takes the value: ``lmlab evaluate``'s record, or results.json's
    ``eval_n_samples`` (the evals during training; metrics.csv's eval columns are theirs
    too), else their ``eval.limit``; None where unknown or not an eval metric."""
    task = eval_task(metric)
    if task is None:
        return None
    if from_record(run, metric):
        return run.eval_items.get(task)
    n_samples = run.results.get("eval_n_samples")
    entry = n_samples.get(task) if isinstance(n_samples, dict) else None
    return item_count(entry, run.flat_config.get("eval.limit"))


def eval_shots(run: Run, metric: str) -> int | None:
    """How many few-shot examples each item of the run's value of the eval metric ``metric``
    was scored with, from where :func:`run_value` takes the value: ``lmlab evaluate``'s
    record (``num_fewshot=``), or results.json's ``eval_n_shot`` (the evals during training:
    each task's own); None where unknown (a run from before it was recorded)."""
    task = eval_task(metric)
    shots = run.eval_shots if from_record(run, metric) else run.results.get("eval_n_shot")
    return count(shots.get(task)) if task is not None and isinstance(shots, dict) else None


def eval_format(run: Run, metric: str) -> str | None:
    """How the prompts of the run's value of the eval metric ``metric`` were formatted
    (``lmlab.config.prompts.prompt_format``), from where :func:`run_value` takes the value: ``lmlab
    evaluate``'s record, or results.json's ``eval_prompts`` (the evals during training; plain
    prompts in a run from before it was recorded); None where not an eval metric."""
    task = eval_task(metric)
    if task is None:
        return None
    if from_record(run, metric):
        return run.eval_formats.get(task, PLAIN_PROMPTS)
    settings = run.results.get("eval_prompts")
    return prompt_format(settings if isinstance(settings, dict) else {}, eval_shots(run, metric))


def from_record(run: Run, metric: str) -> bool:
    """Whether :func:`run_value` of the eval metric ``metric`` is ``lmlab evaluate``'s record
    (else results.json's, the evals during training)."""
    return metric in run.evals and (evaluated_last(run) or not _is_number(run.results.get(metric)))


def curve_column(metric: str, columns: Iterable[str]) -> str | None:
    """The metrics.csv column for a metric: ``val_loss`` -> ``val/loss``,
    ``tokens_per_second`` -> ``perf/tokens_per_second``; None when there is none."""
    columns = list(columns)
    if metric in columns:
        return metric
    for column in columns:
        if column.replace("/", "_") == metric:
            return column
    tails = [c for c in columns if c.split("/")[-1] == metric]
    return tails[0] if len(tails) == 1 else None


def run_value(run: Run, metric: str) -> float | None:
    """results.json value of ``metric`` (or of its results.json name, ``result_key``: the
    run's ``tokens_per_second`` for ``perf/tokens_per_second``, not the last logging window's
    in metrics.csv), else (completed runs only: a failed run's partial curve is not a final
    value) ``lmlab evaluate``'s value, else the last value of its metrics.csv column, except
    for an eval metric: results.json holds the last step's evals, and where they failed, an
    earlier step's row would read as the final model's (``eval_failures`` says why there is
    none). An eval metric in both results.json and ``lmlab evaluate``'s record is the
    evaluation of the newer weights, and of the same weights ``lmlab evaluate``'s
    (:func:`evaluated_last`)."""
    if metric in run.evals and evaluated_last(run):
        return run.evals[metric]
    key = metric if metric in run.results else result_key(metric)
    value = run.results.get(key)
    if _is_number(value):
        return float(value)
    if value is not None:  # edited by hand: its metrics.csv would stand in for it unsaid
        raise CompareError(f"{run.dir / RESULTS}: field {key!r} must be a number, got {value!r}")
    if run.failed:
        return None
    if metric in run.evals:  # lmlab evaluate of an earlier checkpoint, and nothing newer
        return run.evals[metric]
    if eval_task(metric) is not None:
        return None
    column = curve_column(metric, run.curve)
    if column and run.curve[column]:
        return run.curve[column][-1][1]
    return None


def evaluated_last(run: Run) -> bool:
    """Whether the run's ``lmlab evaluate`` record (``eval/step<N>.json``) scored weights at
    least as new as its evals during training, which results.json holds for its last step
    (``global_step``): a completed run evaluated at that step or later. Of the same step the
    record wins: the user ran it after training, usually on more items."""
    trained = run.results.get("global_step")
    return (
        not run.failed
        and run.eval_step is not None
        and (not _is_number(trained) or run.eval_step >= trained)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
