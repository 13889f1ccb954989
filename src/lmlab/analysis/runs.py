"""Read run directories: one :class:`Run` per job that ``lmlab train`` left, for every
analysis tool (compare, scaling).

A job directory is found by its ``results.json`` (at any depth under the given directory) and
holds ``results.json``, ``plan.json`` (the frozen run plan: steps, global batch, precision),
``.hydra/overrides.yaml``, ``.hydra/config.yaml``, ``csv/metrics.csv`` and, once ``lmlab
evaluate`` has scored a checkpoint, ``eval/step<N>.json`` (a record of the final step whose
``model_digest`` is not the one results.json holds is another model's, and skipped). A job
that has not ended (``.hydra/`` without results.json, or results.json still ``running``) is
``running`` where a live process holds its lock or its sweep's, else ``killed``
(:mod:`lmlab.analysis.job_state`). A dry run's folder (``dry_run=true``: ``.hydra/`` and a
``plan.json`` marked ``dry_run``) holds no run: it is left out (:func:`dry_runs` lists them),
not counted as a job that was refused. Nor is a folder whose results.json no run wrote (a JSON
object without ``status``, and no ``.hydra/`` or ``plan.json`` beside it: notes left in a
sweep's folder; :func:`not_runs` lists them); a results.json with a ``status`` is a run's even
alone, as in the folders of results.json files that ``lmlab scaling`` is given
(``docs/isoflop``). A run started with ``init_from`` trained the checkpoint's model, not the
one its config composed: plan.json's ``model`` replaces the config's. A basic sweeper's
``multirun.yaml`` holds its grid, so the jobs of it that have no folder (a sweep stopped
before them) are known too (:mod:`lmlab.analysis.sweep_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lmlab.analysis.job_state import (
    RUNNING,
    STOPPED,
    UNFINISHED,
    continued,
    live_holder_of,
    tally,
    unfinished,
)
from lmlab.analysis.run_files import (
    parse_overrides,
    read_choices,
    read_curve,
    read_evals,
    read_run_config,
    read_yaml,
    results_or_failed,
)
from lmlab.config import flatten
from lmlab.config.local_paths import launch_cwd, named_files
from lmlab.config.locks import LOCK_FILE
from lmlab.errors import ConfigError
from lmlab.files import PLAN, RESULTS, checkpoints_in, read_json


class RunDirError(ConfigError):
    """A directory that holds no readable runs (missing, or no results.json); one line."""


@dataclass
class Run:
    """One job of the multirun: its directory and what the trainer left there."""

    dir: Path
    results: dict[str, Any]
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    evals: dict[str, float] = field(default_factory=dict)
    """``eval/<task>/<metric>`` from ``lmlab evaluate`` of the run's newest evaluated step."""
    eval_step: int | None = None
    """The step of the weights ``evals`` scored (its ``eval/step<N>.json``); None without."""
    eval_items: dict[str, int] = field(default_factory=dict)
    """Per task of ``evals``, the items it scored (the record's ``n_samples``, else its
    ``limit``)."""
    eval_shots: dict[str, int] = field(default_factory=dict)
    """Per task of ``evals``, the few-shot examples each item was scored with (the record's
    ``n_shot``)."""
    eval_formats: dict[str, str] = field(default_factory=dict)
    """Per task of ``evals``, how its prompts were formatted
    (``lmlab.config.prompts.prompt_format``)."""
    skipped_evals: list[str] = field(default_factory=list)
    """Why each ``eval/step<N>.json`` that is not this run's was skipped (one line each)."""
    choices: dict[str, str] = field(default_factory=dict)
    """The option of each config group it ran with (``model: gpt_tiny``), overridden or not."""
    partial_config: bool = False
    """``config`` is ``run_config.yaml``'s (model, data, optimizer, schedule, seed): the run's
    ``.hydra/config.yaml`` is missing or unreadable (a copy made with ``cp -r run/*``). The
    keys it lacks are unknown, not different."""
    cwd: str | None = None
    """The working directory its newest launch read relative paths in (``launch_cwd``: Hydra's
    ``hydra.runtime.cwd``); None where its ``.hydra/hydra.yaml`` is missing."""
    plan: dict[str, Any] = field(default_factory=dict)
    """Its plan.json (what it trained with, of the rows it was validated on); {} without."""
    checkpointed: bool = True
    """Whether its folder holds a checkpoint (``lmlab.files.checkpoints_in``): a run that has
    not finished is continued from it by a resume; one without is started again."""

    @property
    def failed(self) -> bool:
        """True unless results.json says ``status: completed``."""
        return self.results.get("status") != "completed"

    @property
    def stopped(self) -> bool:
        """Stopped before its end by a signal (``preempted``, ``interrupted``), with a
        checkpoint to resume from: not finished, but not failed either."""
        return self.results.get("status") in STOPPED

    @property
    def state(self) -> str:
        """``completed``, ``failed``, or the status of a run that has not finished
        (``UNFINISHED``: stopped by a signal, still running, or killed)."""
        status = self.results.get("status")
        return status if status in ("completed", *UNFINISHED) else "failed"

    @property
    def error(self) -> str | None:
        """The error message of a failed run (or a stand-in naming its status)."""
        if not self.failed:
            return None
        error = self.results.get("error")
        return str(error) if error else f"status {self.results.get('status')!r}"

    @property
    def seed(self) -> Any:
        """The seed from results.json, else config.yaml, else the overrides."""
        for source in (self.results, self.flat_config, self.overrides):
            if source.get("seed") is not None:
                return source["seed"]
        return None

    @cached_property
    def flat_config(self) -> dict[str, Any]:
        """config.yaml flattened to dotted keys."""
        return flatten(self.config)

    @cached_property
    def files(self) -> dict[str, str]:
        """Its config's local paths (dotted keys: ``data.path``, a local ``data.name``) as the
        files they name from its launch's working directory (``named_files``): ``./x.jsonl``
        and its absolute path are one file, the same words typed in two folders two, as a
        resume compares them. A relative one whose folder is not known is left out (as typed)."""
        return named_files(self.flat_config, self.cwd)


def load_runs(path: str | Path) -> list[Run]:
    """Load every job under a multirun directory, ordered by job directory (0, 1, ..., 10).

    Job directories with ``.hydra/`` but without results.json are runs too: ``running`` or
    ``killed`` (``Run.state``), as is a results.json that still says ``running``. A dry run's
    are not (:func:`dry_runs`).
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise RunDirError(f"{root} is a file: give a multirun directory or a run directory")
    if not root.is_dir():
        raise RunDirError(f"multirun directory does not exist: {root}")
    job_dirs, started, planned, strays = job_folders(root)
    if not job_dirs and not started and strays:
        names = truncate_names([str(d.relative_to(root)) for d in sorted(strays)])
        raise RunDirError(
            f"no run under {root}: its results.json in {names} was not written by a run (no "
            ".hydra/ or plan.json beside it, and no status in it)"
        )
    if not job_dirs and not started and planned:
        raise RunDirError(
            f"no run under {root}: its {len(planned)} job folder(s) are dry runs "
            "(dry_run=true writes the plan and trains nothing); train without dry_run=true"
        )
    if not job_dirs and started:  # a sweep whose first job still runs, say
        dirs = sorted(started)
        states = [unfinished(d, root, {}) for d in dirs]
        raise RunDirError(
            f"no run under {root} has written its results.json yet ({len(started)} started: "
            + "; ".join(tally(states, [bool(checkpoints_in(d)) for d in dirs]))
            + ")"
        )
    if not job_dirs:
        raise RunDirError(f"no results.json under {root}: not a multirun directory?")
    runs = [_load_run(d, root, has_results=True) for d in job_dirs]
    runs += [_load_run(d, root, has_results=False) for d in started]
    return sorted(runs, key=lambda run: _path_key(run.dir.relative_to(root)))


def job_folders(root: Path) -> tuple[set[Path], set[Path], set[Path], set[Path]]:
    """The job folders under ``root``: those with a results.json, those started without one
    (``.hydra/``), the dry runs' (:func:`_planned`), which are neither, and the folders whose
    results.json no run wrote (:func:`_is_run`), which are no job's."""
    found = {p.parent for p in root.rglob(RESULTS) if p.is_file()}
    strays = {d for d in found if not _is_run(d)}
    job_dirs = found - strays
    started = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")} - found
    planned = {d for d in started if _planned(d, root)}
    return job_dirs, started - planned, planned, strays


def _is_run(folder: Path) -> bool:
    """Whether the results.json in ``folder`` is a run's: lmlab's files beside it
    (``.hydra/``, ``plan.json``), or a ``status`` in it, which every run writes (a folder
    holding a run's results.json alone, as ``lmlab scaling`` is given them). One that does
    not parse is a run's too, whose file broke: ranked as failed, ``unreadable``."""
    if (folder / ".hydra").is_dir() or (folder / PLAN).is_file():
        return True
    results = read_json(folder / RESULTS)
    return not isinstance(results, dict) or "status" in results


def not_runs(path: str | Path) -> list[Path]:
    """The folders under ``path`` whose results.json no run wrote (a user's notes in a sweep's
    folder), which :func:`load_runs` leaves out, ordered as the runs are."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(job_folders(root)[3], key=lambda d: _path_key(d.relative_to(root)))


def not_runs_note(path: str | Path) -> str | None:
    """What ``compare`` and ``scaling`` say of the folders :func:`not_runs` finds, or None."""
    root = Path(path)
    strays = [str(d.relative_to(root)) for d in not_runs(root)]
    if not strays:
        return None
    return (
        f"left out {len(strays)} folder(s) whose results.json no run wrote "
        f"({truncate_names(strays)}): no .hydra/ or plan.json beside it, and no status in it"
    )


def truncate_names(names: list[str], limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``limit`` names of a list."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def dry_runs(path: str | Path) -> list[Path]:
    """The dry runs' folders under ``path`` (``dry_run=true``: a plan, nothing trained), which
    :func:`load_runs` leaves out, ordered as the runs are."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(job_folders(root)[2], key=lambda d: _path_key(d.relative_to(root)))


def _planned(job_dir: Path, root: Path) -> bool:
    """Whether a folder without results.json is a dry run's: its plan.json is marked
    ``dry_run`` (a run that trains replaces it as it starts) and no run has started there
    since (no lock file, held or left by a kill, and no live sweep holding one above it)."""
    plan = read_json(job_dir / PLAN)
    return (
        isinstance(plan, dict)
        and plan.get("dry_run") is True
        and not (job_dir / LOCK_FILE).exists()
        and live_holder_of(job_dir, root) is None
    )


def _path_key(path: Path) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def _load_run(job_dir: Path, root: Path, has_results: bool) -> Run:
    results = results_or_failed(job_dir / RESULTS) if has_results else {}
    if not has_results or results.get("status") == RUNNING:
        results = unfinished(job_dir, root, results)
    else:
        results = continued(job_dir, results)
    overrides = read_yaml(job_dir / ".hydra" / "overrides.yaml")
    config, partial = read_run_config(job_dir)
    plan = read_json(job_dir / PLAN)
    if isinstance(config, dict) and isinstance(plan, dict) and isinstance(plan.get("model"), dict):
        config = {**config, "model": plan["model"]}
    record = read_evals(job_dir, results)
    return Run(
        dir=job_dir,
        results=results,
        overrides=parse_overrides(overrides if isinstance(overrides, list) else []),
        config=config if isinstance(config, dict) else {},
        curve=read_curve(job_dir, config if isinstance(config, dict) else None),
        evals=record.metrics,
        eval_step=record.step,
        eval_items=record.items,
        eval_shots=record.shots,
        eval_formats=record.formats,
        skipped_evals=record.skipped,
        choices=read_choices(job_dir / ".hydra" / "hydra.yaml"),
        partial_config=partial,
        cwd=launch_cwd(job_dir),
        plan=plan if isinstance(plan, dict) else {},
        checkpointed=bool(checkpoints_in(job_dir)),
    )
