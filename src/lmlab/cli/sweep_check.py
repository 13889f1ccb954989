"""A multirun's check of every job before the first one starts (``check_sweep``): one bad job
refuses the sweep, naming each bad job and why, before anything is written; so do jobs that
would share a folder, a sweeper setting that launches nothing and a swept value list that is
empty. The jobs themselves are composed in ``lmlab.cli.sweep``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

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
)
from lmlab.errors import ConfigError
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
    line (``lmlab.cli.sweep.sweeper_setting``, ``sweep_without_values``)."""
    if (why := sweeper_setting(config) or sweep_without_values(config)) is not None:
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
            except ConfigError as err:
                why = str(err)
            except (HydraException, OmegaConfBaseException) as err:  # it does not compose
                why = str(hydra_error(err, overrides))
            except (ValueError, TypeError) as err:  # a value of a type no check expected
                why = f"{type(err).__name__}: {err}"  # (Hydra would only warn, and launch)
            else:
                continue
            named = " ".join(o for o in overrides if o.partition("=")[0] in keys)
            if named and " " not in named:  # one swept value, which the reason may start with
                why = why.removeprefix(f"{named}: ")
            name = named if corners else f"#{num} {named}".strip()  # a corner is no job
            refused.setdefault(why, []).append(name)
        shared = shared_folder(config, jobs, folders, corners)
    finally:
        HydraConfig.instance().set_config(config)
    if shared is not None:
        refuse(shared)
    checked = f"checked the {what} {len(jobs)} {noun} in {time.perf_counter() - started:.1f} s"
    if not refused and not corners:
        checked += f"; they train {steps:,} steps, {tokens:,} tokens, {flops:.3g} FLOPs (6ND)"
    logging.getLogger("lmlab").info(checked)
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
