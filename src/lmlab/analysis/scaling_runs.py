"""The runs a scaling fit reads (:func:`scan_runs`): each job's ``results.json`` under a
multirun directory, parsed (:data:`REQUIRED_FIELDS` as numbers) or skipped with the reason
(not completed, no validation, a non-finite value, a copy of an earlier run), and checked to
measure one loss (:func:`check_one_loss`)."""

from __future__ import annotations

import math
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Any

from lmlab.analysis.comparable import (
    OBJECTIVE_KEYS,
    RECORD_KEYS,
    TOKENIZER_KEYS,
    data_settings,
    record_settings,
)
from lmlab.analysis.compute import budget_params, feed_forward
from lmlab.analysis.runs import Run, RunDirError, load_runs, not_runs_note
from lmlab.analysis.scaling_fit import N_KEYS, ScalingError
from lmlab.config import ModelConfig
from lmlab.files import RESULTS, kept_as, read_record

REQUIRED_FIELDS = ("params", "non_embedding_params", "tokens", "flops", "val_loss")


def _number(data: dict[str, Any], field: str, file: Path) -> float:
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScalingError(f"{file}: field '{field}' must be a number, got {value!r}")
    return float(value)


def _parse_run(file: Path, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The run as a dict (fields made float, ``results_file`` added) or the reason to skip it."""
    if data.get("unreadable"):  # the file, not the run: no status to speak of
        return None, data["error"]
    if "status" not in data:
        raise ScalingError(f"{file}: missing required field 'status'")
    if data["status"] != "completed":
        why = f": {data['error']}" if data.get("error") else ""
        return None, f"status is {data['status']!r}, not 'completed'{why}"
    for field in REQUIRED_FIELDS:
        if field not in data:
            raise ScalingError(f"{file}: missing required field '{field}'")
    if data["val_loss"] is None:  # a completed run's validation was off: no loss to fit
        return None, "val_loss is null: its validation was off (trainer.limit_val_batches=0)"
    early = data.get("stopped_early")
    if isinstance(early, dict):  # a callback (EarlyStopping) ended it: its schedule unfinished
        return None, (
            f"stopped early by {early.get('by')} at step {early.get('step')} of "
            f"{early.get('planned_steps')} planned: its loss is not a run's of its budget"
        )
    run = dict(data)
    for field in REQUIRED_FIELDS:
        run[field] = _number(data, field, file)
        if not math.isfinite(run[field]) or run[field] <= 0:
            return None, f"{field} is {run[field]!r}, not a positive finite number"
    if data.get("budget_flops") is not None:
        run["budget_flops"] = _number(data, "budget_flops", file)
        if not 0 < run["budget_flops"] < math.inf:
            raise ScalingError(
                f"{file}: field 'budget_flops' must be > 0, got {run['budget_flops']}"
            )
    run["results_file"] = str(file)
    return run, None


def scan_runs(
    path: str | Path,
) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[str]]:
    """All runs under ``path`` (:func:`lmlab.analysis.runs.load_runs`): the usable runs, for
    the others ``{"file", "reason"}`` (not completed, unreadable, a non-finite/non-positive
    value such as a NaN loss, or a copy of an earlier run), and the notes of
    :func:`check_one_loss`.

    Raises ScalingError if the directory does not exist, holds no results.json, or a completed
    run lacks one of REQUIRED_FIELDS (the message names the file and the field)."""
    try:
        found = load_runs(path)
    except RunDirError as exc:
        raise ScalingError(str(exc)) from None
    runs, skipped, used = [], [], []
    first: dict[tuple[Any, ...], Path] = {}
    for job in found:
        file = job.dir / RESULTS
        run, reason = _parse_run(file, job.results)
        if run is not None:
            run, reason = _not_extended(run, job.dir)
        if run is not None:
            run, reason = _first_of_its_copies(run, job, file, first)
        if run is None:
            skipped.append({"file": str(file), "reason": str(reason)})
        else:
            run["budget_params"] = budget_params(job)  # the N of its flops: active or total
            run["feed_forward"] = feed_forward(job)  # dense, or its experts
            runs.append(run)
            used.append(job)
    notes = check_one_loss(used, path)
    stray = not_runs_note(path)
    return runs, skipped, [stray, *notes] if stray else notes


def _not_extended(run: dict[str, Any], folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``run``, or why it is skipped: a completed run resumed with a larger budget (an earlier
    launch's ``results.<n>.json`` completed fewer steps) restarted its learning-rate schedule
    there, so its loss is not that of a run trained for its budget: on a 2e9-to-6e9 extension
    it read 3.55 where a fresh run of the size read 3.48 (Hoffmann et al. 2022: the cosine
    must span the run)."""
    n = 1
    while (kept := kept_as(folder / RESULTS, n)).is_file():
        earlier = read_record(kept)
        step = earlier.get("global_step")
        done = earlier.get("status") == "completed" and isinstance(step, int)
        if done and step < run.get("global_step", step):
            return None, (
                f"extended: {kept.name} completed {step} steps, and a resume with a larger "
                f"budget trained on to {run['global_step']}, its learning-rate schedule "
                "started again, so its loss is not a run's of this budget: train it afresh"
            )
        n += 1
    return run, None


def _first_of_its_copies(
    run: dict[str, Any], job: Run, file: Path, first: dict[tuple[Any, ...], Path]
) -> tuple[dict[str, Any] | None, str | None]:
    """``run``, or why it is skipped: a run whose seed, sizes, tokens and val_loss equal an
    earlier one's is a copy of that job's folder (or the same seed run again), one measurement,
    not a replicate. Counted twice it would fake the scatter the curvature gate weighs (n - 3
    degrees of freedom): a copied docs/isoflop read minima at all three budgets and
    N_opt ~ C^1.43, where the runs once give none."""
    key = (repr(job.seed), *(run.get(k) for k in (*N_KEYS, "tokens", "flops", "val_loss")))
    if key not in first:
        first[key] = file
        return run, None
    return None, f"a copy of {first[key]} (its seed, sizes, tokens and val_loss): counted once"


CONTEXT_KEY = "data.seq_len"


def context_length(job: Run) -> int | None:
    """The tokens of context the run's loss is averaged over: results.json's ``batch.seq_len``,
    else its config's ``data.seq_len``, else ``model.max_seq_len`` (which a null
    ``data.seq_len`` follows); None where neither records it. A token's loss falls with the
    context before it, so a run validated on longer rows reads a lower loss at the same
    quality: presets differ in ``max_seq_len`` (gpt_tiny 256, gpt_small 1024)."""
    batch = job.results.get("batch")
    if isinstance(batch, dict) and isinstance(batch.get("seq_len"), int):
        return batch["seq_len"]
    seq_len = job.flat_config.get(CONTEXT_KEY)
    return seq_len if seq_len is not None else job.flat_config.get("model.max_seq_len")


def check_one_loss(jobs: list[Run], path: str | Path) -> list[str]:
    """One fit is of one loss: runs of another objective (``model.family``, ``task.kind``),
    context (:func:`context_length`), corpus, validation split or tokenizer
    (``TOKENIZER_KEYS``; a key a config lacks is at its default; a data key counts only where
    it has an effect, :func:`data_settings`) measure
    another quantity, and a law fitted across them means nothing: refused. So are runs of one
    data config whose plan.json records other validation rows (``RECORD_KEYS``: another
    lmlab's data preparation, the corpus file edited between them), compared among the runs
    that record them.
    Runs without a config (results.json alone, which names none of these) are taken as they
    are, with a note counting them."""
    known = [job for job in jobs if job.config]
    settings = [
        {
            **{key: str(job.flat_config.get(key, d)) for key, d in OBJECTIVE_KEYS},
            **data_settings(job),
            **record_settings(job),
        }
        for job in known
    ]
    differ = []
    for key in [*(key for key, _ in (*OBJECTIVE_KEYS, *TOKENIZER_KEYS)), *RECORD_KEYS]:
        counts = Counter(values[key] for values in settings if key in values)
        if len(counts) > 1:
            differ.append(f"{key}: " + ", ".join(f"{v} ({n})" for v, n in sorted(counts.items())))
    contexts = Counter(c for c in map(context_length, jobs) if c is not None)
    if len(contexts) > 1:  # results.json records it: runs without a config are checked too
        differ.append(
            f"{CONTEXT_KEY} (the context each loss is averaged over): "
            + ", ".join(f"{v} ({n})" for v, n in sorted(contexts.items()))
        )
    if differ:
        raise ScalingError(
            f"the runs under {path} differ in {'; '.join(differ)}: their losses measure "
            "different things, and one law cannot be fitted across them; fit the runs of one "
            "objective, context, corpus and tokenizer (move the others out)"
            + (
                ": their data config is the same, but its files changed between the runs or "
                "another lmlab prepared them (plan.json's data_preparation)"
                if all(line.startswith(RECORD_KEYS) for line in differ)
                else ""
            )
        )
    notes = recipe_notes(known, path)
    unchecked = len(jobs) - len(known)
    if not unchecked:
        return notes
    which = f"{unchecked} of the {len(jobs)} runs have" if known else f"the {unchecked} runs have"
    return [
        f"{which} no .hydra/config.yaml (results.json alone, which does not name them), so "
        "their objective (model.family, task.kind), corpus and tokenizer could not be checked "
        "against " + ("the others'" if known else "each other's") + ": make sure they measure "
        "one loss",
        *notes,
    ]


# The knobs of a recipe (``+experiment=llama``: RMSNorm, SwiGLU, RoPE, no biases): runs that
# differ in one are other architectures, each with its own law, where the sizes of one
# ladder (d_model, n_layers, n_heads, d_ff) are the points of one law.
RECIPE_KEYS = tuple(
    f"model.{name}"
    for name in (
        *("norm_placement", "norm", "activation", "positional", "bias", "tie_embeddings"),
        *("init", "attention_window"),
    )
)


def recipe_notes(jobs: list[Run], path: str | Path) -> list[str]:
    """A note where runs with a config differ in a recipe knob (``RECIPE_KEYS``; a key a
    config lacks is at ``ModelConfig``'s default): one law is fitted across architectures,
    two sweeps' folders under one parent (``+experiment=llama`` beside the GPT-2 recipe)."""
    defaults = ModelConfig()
    differ = []
    for key in RECIPE_KEYS:
        default = getattr(defaults, key.removeprefix("model."))
        default = default.value if isinstance(default, Enum) else default
        counts = Counter(str(job.flat_config.get(key, default)) for job in jobs)
        if len(counts) > 1:
            differ.append(f"{key}: " + ", ".join(f"{v} ({n})" for v, n in sorted(counts.items())))
    if not differ:
        return []
    return [
        f"the runs under {path} differ in {'; '.join(differ)}: one law is fitted across "
        "architectures, whose constants differ in general; to compare recipes, fit each "
        "recipe's runs on their own (a folder each)"
    ]
