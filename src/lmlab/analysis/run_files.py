"""The files of one run directory, each read on its own: ``results.json``, Hydra's
``.hydra/`` records (overrides, choices), the config it ran with, ``csv/metrics.csv``'s
curves and the ``eval/`` records of ``lmlab evaluate``. Unreadable files read as nothing;
:mod:`lmlab.analysis.runs` puts them together into one :class:`~lmlab.analysis.runs.Run` per
job (``lmlab evaluate`` reads the config of a checkpoint's run here too)."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmlab.config.local_paths import hydra_runtime
from lmlab.config.prompts import prompt_format
from lmlab.files import EVAL_RECORDS, RUN_CONFIG

# metrics.csv columns that are the x axis, not metrics.
CURVE_AXIS_COLUMNS = frozenset({"step", "epoch"})
_NUMBER_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_EVAL_RECORD_RE = re.compile(r"step(\d+)")  # eval/step<N>.json, N the weights' step


def read_choices(path: Path) -> dict[str, str]:
    """Hydra's ``runtime.choices`` (each group's option; none when unreadable)."""
    hydra = read_yaml(path)
    choices = (
        hydra.get("hydra", {}).get("runtime", {}).get("choices")
        if isinstance(hydra, dict)
        else None
    )
    if not isinstance(choices, dict):
        return {}
    return {str(k): str(v) for k, v in choices.items() if v is not None and "/" not in str(k)}


@dataclass
class EvalRecord:
    """What :func:`read_evals` found: the record used (its step, metrics, per-task item
    counts, shots and prompt formats) and why any newer one was skipped."""

    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    shots: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def read_evals(job_dir: Path, results: dict[str, Any]) -> EvalRecord:
    """The ``eval/step<N>.json`` with the largest N as a number (step 1000000 after step
    999999; ``lmlab evaluate`` of the final checkpoint, usually); other names and unreadable
    files are skipped. So is the record of the run's final step (results.json's
    ``global_step``) whose ``model_digest`` is not results.json's, the digest of that
    checkpoint: another model's evaluation, left in the folder or copied there (named in
    ``skipped``); the next record, or results.json's own eval metrics, count instead. A record
    of another step cannot be checked so (results.json knows the final weights only) and
    counts as before, as does any record where either side has no digest (older runs).
    Empty without one."""
    records = []
    for path in (job_dir / EVAL_RECORDS).glob("step*.json"):
        match = _EVAL_RECORD_RE.fullmatch(path.stem)
        if match:
            records.append((int(match[1]), path))
    final, digest = results.get("global_step"), results.get("model_digest")
    skipped = []
    for step, path in sorted(records, reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            metrics = record.get("metrics", {})
        except (OSError, ValueError, AttributeError):
            continue
        theirs = record.get("model_digest")
        known = isinstance(theirs, str) and isinstance(digest, str)
        if step == final and known and theirs != digest:
            skipped.append(
                f"{path}: its model_digest {theirs} is not that of the run's final checkpoint "
                f"({digest}, results.json): the evaluation of another model, skipped"
            )
            continue
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        items, shots, formats = _record_items(record), record_shots(record), _formats(record)
        return EvalRecord(step, values, items, shots, formats, skipped)
    return EvalRecord(skipped=skipped)


def _record_items(record: dict[str, Any]) -> dict[str, int]:
    """Per task of an eval record, the items it scored: the harness's ``n_samples``
    (``effective``), else the ``limit`` it ran with; tasks with neither are left out."""
    tasks = record.get("tasks")
    out = {}
    for task, entry in (tasks if isinstance(tasks, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        settings = entry.get("lm_eval")
        limit = settings.get("limit") if isinstance(settings, dict) else None
        count = item_count(entry.get("n_samples"), limit)
        if count is not None:
            out[str(task)] = count
    return out


def record_shots(record: dict[str, Any]) -> dict[str, int]:
    """Per task of an eval record, the few-shot examples each item was scored with (the
    harness's ``n-shot``: ``num_fewshot=``, else the task's own); tasks without one are left
    out."""
    tasks = record.get("tasks")
    entries = tasks.items() if isinstance(tasks, dict) else ()
    shots = {str(t): count(e.get("n_shot")) for t, e in entries if isinstance(e, dict)}
    return {task: n for task, n in shots.items() if n is not None}


def _formats(record: dict[str, Any]) -> dict[str, str]:
    """Per task of an eval record, how its prompts were formatted (``prompt_format``), from
    the settings the task's entry holds (an older record kept them once, at its top)."""
    tasks, once = record.get("tasks"), record.get("lm_eval")
    out = {}
    for task, entry in (tasks if isinstance(tasks, dict) else {}).items():
        if isinstance(entry, dict):
            settings = entry.get("lm_eval", once)
            settings = settings if isinstance(settings, dict) else {}
            out[str(task)] = prompt_format(settings, count(entry.get("n_shot")))
    return out


def count(value: Any) -> int | None:
    """``value`` where it is a count (an integer; JSON's true is none), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def item_count(n_samples: Any, limit: Any = None) -> int | None:
    """The items a task was scored on: lm-eval's ``n-samples`` entry (``{"original": 300,
    "effective": 20}``, or a bare count), else ``limit`` (at most that many); None unknown."""
    if isinstance(n_samples, dict):
        n_samples = n_samples.get("effective", n_samples.get("original"))
    return next((n for n in map(count, (n_samples, limit)) if n is not None), None)


def results_or_failed(path: Path) -> dict[str, Any]:
    """``results.json``; one that cannot be read ranks as a failed run (``compare``), marked
    ``unreadable`` so that a tool can say it was the file, not the run, that failed."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"status": "failed", "unreadable": True, "error": f"unreadable results.json: {exc}"}
    if not isinstance(results, dict):
        return {
            "status": "failed",
            "unreadable": True,
            "error": "results.json is not a JSON object",
        }
    return results


def read_run_config(job_dir: Path) -> tuple[dict[str, Any] | None, bool]:
    """The config a run ran with, and whether it is partial: ``.hydra/config.yaml``, else
    (missing or unreadable: a copy made with ``cp -r run/*``) the ``run_config.yaml`` training
    wrote when it started (model, data, optimizer, schedule, seed; the task of a fine-tune);
    None where neither reads."""
    config = read_yaml(job_dir / ".hydra" / "config.yaml")
    if isinstance(config, dict):
        return config, False
    config = read_yaml(job_dir / RUN_CONFIG)
    return (config, True) if isinstance(config, dict) else (None, False)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def parse_overrides(items: Iterable[Any]) -> dict[str, str]:
    """``["+model.act=gelu", "~x"]`` -> ``{"model.act": "gelu", "x": "<deleted>"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if re.split(r"[./]", key)[0] == "hydra":
            continue
        out[key] = canonical(value) if sep else "<deleted>"
    return out


def canonical(value: Any) -> str:
    """A value as a comparable string: override text and config values of the same value match
    (``"true"`` and ``True``, ``"0.10"`` and ``0.1``)."""
    if isinstance(value, str):
        text = value
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, dict | list):
            return text
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value):
            value = float(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return _compact(value)
    return str(value)


def _compact(value: float) -> str:
    """A float as short as it reads: ``1e5``, not ``100000.0``, for a whole number of five
    digits or more (a learning rate typed as 1e5); else its ``repr``. Both round-trip, so two
    values read alike only where they are equal."""
    text = repr(value)
    if math.isfinite(value) and value == int(value) and abs(value) >= 1e4:
        mantissa, _, exponent = f"{value:e}".partition("e")
        short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        if float(short) == value and len(short) < len(text):
            return short
    return text


def metrics_csv(job_dir: Path, config: dict[str, Any] | None) -> Path | None:
    """The run's metrics.csv, where its config's ``logger.csv`` wrote it: Lightning's
    ``save_dir/name/version`` (``csv/`` by default; ``logger.csv.name=mylogs`` puts it in
    ``mylogs/``), ``version: null`` the newest ``version_N``. ``paths.output_dir`` (the
    default ``save_dir``) is the run's folder where it is now, a copied one's own; a relative
    ``save_dir`` is the training command's working directory's (``hydra.yaml``). A config
    without ``logger.csv`` (``run_config.yaml``'s, or none) is looked for in ``csv/`` and its
    ``version_N``. Outside the run's folder, a save_dir that other runs share, only a file
    whose ``hparams.yaml`` names this run's output folder is the run's. None where there is
    no file."""
    runtime = hydra_runtime(job_dir)
    where = _csv_logger(job_dir, config, Path(runtime.get("cwd") or job_dir))
    save_dir, name, version = where if where is not None else (job_dir, "csv", "")
    root = save_dir / name if name else save_dir
    found = [root / version] if isinstance(version, str) else []
    if where is None or not isinstance(version, str):  # Lightning's version_N: the newest
        versions = {int(d.name[8:]): d for d in root.glob("version_*") if d.name[8:].isdigit()}
        found += [versions[v] for v in sorted(versions, reverse=True)]
    ours = {str(job_dir), str(runtime.get("output_dir"))}
    for folder in found:
        if (folder / "metrics.csv").is_file() and _written_by(folder, job_dir, ours):
            return folder / "metrics.csv"
    return None


def _written_by(folder: Path, job_dir: Path, ours: set[str]) -> bool:
    """Whether the CSV log ``folder`` is the run's: inside its folder, or its ``hparams.yaml``
    (the resolved config, dotted) names one of ``ours`` as ``paths.output_dir``."""
    if job_dir.resolve() in folder.resolve().parents:
        return True
    hparams = read_yaml(folder / "hparams.yaml")
    return isinstance(hparams, dict) and str(hparams.get("paths.output_dir")) in ours


def _csv_logger(
    job_dir: Path, config: dict[str, Any] | None, cwd: Path
) -> tuple[Path, str, Any] | None:
    """``logger.csv``'s save_dir (absolute: a relative one is the command's working directory
    ``cwd``'s), name and version, resolved with ``paths.output_dir`` as ``job_dir``; None
    without a readable ``logger.csv``."""
    logger = (config or {}).get("logger")
    if not isinstance(logger, dict) or not isinstance(logger.get("csv"), dict):
        return None
    try:
        cfg = OmegaConf.create(config)
        OmegaConf.update(cfg, "paths.output_dir", str(job_dir), force_add=True)
        csv_cfg = OmegaConf.to_container(cfg.logger.csv, resolve=True)
    except (OmegaConfBaseException, ValueError):  # a resolver only training has (hydra:)
        return None
    save_dir = cwd / str(csv_cfg.get("save_dir", job_dir))  # an absolute one stays as it is
    name, version = csv_cfg.get("name", "lightning_logs"), csv_cfg.get("version")
    version = f"version_{version}" if isinstance(version, int) else version
    return save_dir, str(name or ""), version


def read_curve(
    job_dir: Path, config: dict[str, Any] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """metrics.csv (:func:`metrics_csv`) as ``{column: [(step, value), ...]}`` in file order,
    empty cells skipped."""
    path = metrics_csv(job_dir, config)
    if path is None:
        return {}
    curve: dict[str, list[tuple[float, float]]] = {}
    try:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                step = _to_float(row.get("step"))
                if step is None:
                    continue
                for column, raw in row.items():
                    value = _to_float(raw)
                    if column and column not in CURVE_AXIS_COLUMNS and value is not None:
                        curve.setdefault(column, []).append((step, value))
    except (OSError, csv.Error):
        return curve
    return curve


def optimizer_steps(logged_step: float) -> float:
    """The optimizer steps behind a ``metrics.csv`` row logged at ``logged_step``: Lightning
    logs a batch's row, and the validation after it, at the number of steps before that batch,
    so the weights after N steps are at N - 1 (the inverse of
    :func:`lmlab.train.loggers.log_step`, which analysis does not import: a test holds the
    two together). A run of ``trainer.max_steps=12`` ends at 12, as its ``global_step``."""
    return logged_step + 1


def _to_float(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None
