"""A multirun's check of every job before the first one starts (``check_sweep``): one bad job
refuses the sweep, naming each bad job and why, before anything is written; so do jobs that
would share a folder, a sweeper setting that launches nothing and a swept value list that is
empty. The jobs themselves are composed in ``lmlab.cli.sweep``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lmlab.analysis.compute import FLOPS_TOLERANCE, MIN_STEPS, sci
from lmlab.cli.heap import long_lived
from lmlab.cli.hydra_errors import hydra_error, refuse
from lmlab.cli.sweep import (
    job_config,
    runs_here,
    search_corners,
    shared_folder,
    sweep_jobs,
    sweep_without_values,
    sweeper_setting,
    swept_keys,
    unresumable_search,
)
from lmlab.config import BudgetKind
from lmlab.errors import ConfigError
from lmlab.train.budget import Budget
from lmlab.train.runfiles import in_the_way

MAX_REASONS = 10  # a refused sweep's lines, one reason each


def check_sweep(config: DictConfig, resumed: bool = False) -> None:
    """Every job of a sweep passes the checks a run makes before any work
    (``lmlab.train.preflight.check_job``), or the sweep exits here, before Hydra writes
    anything, naming each refused job and why. Jobs that would share a folder refuse the sweep
    first (``shared_folder``). ``resumed``: a sweep continued in its folder; each job passes
    its run directory's checks too (``lmlab.train.resume.check_continues``), so a job whose
    config changed, or whose checkpoint is past its steps, is refused before its neighbours
    train. Jobs a cluster launcher sends elsewhere are checked without this machine's GPU and memory
    (``lmlab.cli.sweep.runs_here``). An Optuna sweep: the corners of its search space
    (``lmlab.cli.sweep.search_corners``). Before any of it, a sweeper setting that would launch
    nothing (``n_trials=0``) and a swept value list that is empty (``range(2,2)``), in one
    line (``lmlab.cli.sweep.sweeper_setting``, ``sweep_without_values``); so does a resumed
    Optuna search whose sampler would not draw its trials' values again
    (``lmlab.cli.sweep.unresumable_search``)."""
    if (why := sweeper_setting(config) or sweep_without_values(config)) is not None:
        refuse(why)
    if resumed and (why := unresumable_search(config)) is not None:
        refuse(why)
    jobs = sweep_jobs(config)
    corners = jobs is None
    if corners:
        jobs = search_corners(config)
    if not jobs:
        return  # another sweeper: each job is checked as it starts
    what, noun = ("search space's", "corner") if corners else ("sweep's", "job")
    noun += "s" if len(jobs) != 1 else ""
    with long_lived():
        from lmlab.train.preflight import check_job
        from lmlab.train.resume import check_continues
    started = time.perf_counter()
    keys, machine = swept_keys(jobs), runs_here(config)
    refused: dict[str, list[str]] = {}
    folders: dict[Path, list[int]] = {}  # each job's, by its number
    steps = tokens = flops = 0
    budgets: list[tuple[str, Budget]] = []  # each job's, by its name
    try:
        for num, overrides in enumerate(jobs):
            try:
                job = job_config(config, overrides, num)
                HydraConfig.instance().set_config(job)  # ${hydra:...} of this job
                out_dir = Path(job.hydra.runtime.output_dir)
                folders.setdefault(out_dir, []).append(num)
                if (blocker := in_the_way(out_dir)) is not None:  # Hydra's mkdir would raise
                    raise ConfigError(  # after the jobs before this one trained
                        f"its folder {out_dir} cannot be created: {blocker} is a file, not a folder"
                    )
                plan = check_job(job, machine)
                if resumed and not corners:
                    check_continues(job, plan, out_dir)
                budget = plan.budget
                steps, tokens, flops = (
                    steps + budget.steps,
                    tokens + budget.tokens,
                    flops + budget.flops,
                )
                budgets.append((job_name(overrides, keys, num, corners), budget))
            except ConfigError as err:
                why = str(err)
            except (HydraException, OmegaConfBaseException) as err:  # it does not compose
                why = str(hydra_error(err, overrides))
            except (ValueError, TypeError) as err:  # a value of a type no check expected
                why = f"{type(err).__name__}: {err}"  # (Hydra would only warn, and launch)
            else:
                continue
            named = swept_values(overrides, keys)
            if named and " " not in named:  # one swept value, which the reason may start with
                why = why.removeprefix(f"{named}: ")
            refused.setdefault(why, []).append(job_name(overrides, keys, num, corners))
        shared = shared_folder(config, jobs, folders, corners)
    finally:
        HydraConfig.instance().set_config(config)
    if shared is not None:
        refuse(shared)
    checked = f"checked the {what} {len(jobs)} {noun} in {time.perf_counter() - started:.1f} s"
    if not refused and not corners:
        checked += f"; they train {steps:,} steps, {tokens:,} tokens, {flops:.3g} FLOPs (6ND)"
    logging.getLogger("lmlab").info(checked)
    if not refused and not corners:
        for line in unequal_compute(budgets):
            logging.getLogger("lmlab").warning(line)
    if refused:
        count = sum(len(names) for names in refused.values())
        lines = [
            f"{count} of the {what} {len(jobs)} {noun} would be refused, so "
            + (
                "no trial was started (fix, narrow or leave out these values):"
                if corners
                else "none was started (fix or leave out these values):"
            )
        ]
        for why, names in list(refused.items())[:MAX_REASONS]:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"  {shown}: {why}")
        if len(refused) > MAX_REASONS:
            rest = sum(len(names) for names in list(refused.values())[MAX_REASONS:])
            lines.append(
                f"  and {rest} more job(s), for {len(refused) - MAX_REASONS} other reasons"
            )
        refuse("\n".join(lines))


def swept_values(overrides: Sequence[str], keys: set[str]) -> str:
    """``model.norm_placement=pre model.activation=gelu``: a job's swept values."""
    return " ".join(o for o in overrides if o.partition("=")[0] in keys)


def job_name(overrides: Sequence[str], keys: set[str], num: int, corner: bool) -> str:
    """``#1 model.activation=gelu``: a job by its number and swept values (a corner of a
    search space, which is no job, by its values alone)."""
    named = swept_values(overrides, keys)
    return named if corner else f"#{num} {named}".strip()


def promised_flops(budget: Budget) -> float | None:
    """The C = 6 N D a job's budget promises before whole steps round it: ``budget.flops``,
    or ``budget=chinchilla``'s 6 N x tokens_per_param N (one C only at one N); None for the
    budgets that promise steps or tokens."""
    if budget.kind == BudgetKind.flops:
        return budget.nominal_flops
    if budget.kind == BudgetKind.chinchilla:
        return 6.0 * budget.n_params * budget.target_tokens
    return None


def unequal_compute(jobs: Sequence[tuple[str, Budget]]) -> list[str]:
    """A warning for each group of jobs that one C was promised (``promised_flops``) whose
    whole steps would train FLOPs more than ``FLOPS_TOLERANCE`` of C apart: compare warns of
    it once they trained (``lmlab.analysis.compute``); said before, a larger budget or a
    smaller global batch still makes the sweep compare equal compute. ``jobs``: (name, its
    budget)."""
    groups: dict[tuple[str, str], list[tuple[str, Budget]]] = {}
    for name, budget in jobs:
        if (c := promised_flops(budget)) is not None:
            groups.setdefault((budget.kind.value, f"{c:.6g}"), []).append((name, budget))
    lines = []
    for (kind, c_text), group in groups.items():
        c = float(c_text)
        (low, lowest), (high, highest) = (
            min(group, key=lambda job: job[1].flops),
            max(group, key=lambda job: job[1].flops),
        )
        spread = (highest.flops - lowest.flops) / c
        if spread <= FLOPS_TOLERANCE:
            continue
        step = max(6.0 * b.n_params * b.tokens_per_step for _, b in group)
        knob = "budget.flops" if kind == "flops" else "budget.tokens_per_param"
        lines.append(
            f"unequal compute: budget={kind} promises {len(group)} jobs C = {sci(c)} FLOPs "
            f"each, but whole steps would train {sci(lowest.flops)} ({low}) to "
            f"{sci(highest.flops)} ({high}), "
            f"{spread:.1%} of C apart, and one step is up to {step / c:.1%} of C: they would "
            f"compare unequal compute; raise the budget ({knob}) or shrink the global batch "
            f"until every job takes {MIN_STEPS}+ steps (then they differ by under "
            f"{FLOPS_TOLERANCE:.0%})"
        )
    return lines
