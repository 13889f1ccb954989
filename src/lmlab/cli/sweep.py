"""The jobs of a multirun, known before the first one starts: what Hydra's basic sweeper
launches (the product of the swept values, job ``#i`` in Hydra's order) and each job's config
as its launcher composes it. ``RunDirCallback.on_multirun_start`` checks them all
(``lmlab.train.preflight.check_job``), so a bad value in a sweep's last job is refused before
the first job trains, not hours later. Jobs that would share a folder (``shared_folder``) and
a sweep over the sweep files themselves (``swept_sweep_files``) are refused there too, and
so are a sweep with no job (``sweep_without_values``: ``range(2,2)``) and a sweeper setting
that launches nothing (``sweeper_setting``: ``hydra.sweeper.n_trials=0``). What the command
line does to a sweep file's grid is ``lmlab.cli.sweep_overrides``.

Optuna's sweeper draws its trials as it goes, so its jobs are not known in advance. What is
known is its search space: ``search_corners`` gives the jobs at its corners (every choice, both
ends of every range), which are checked the same way, so a range that reaches a refused value
(a learning rate of 0, a width no head count divides) is refused before the first trial; each
trial is still checked as it starts, as a single run is. Other sweepers: each job as it starts.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab.analysis.run_files import read_yaml
from lmlab.analysis.sweep_grid import BASIC_SWEEPER, grid_jobs
from lmlab.cli.sweep_overrides import OPTUNA_SWEEPER, SWEEPS_GROUP
from lmlab.config.asked import as_typed
from lmlab.errors import first_line
from lmlab.files import SWEEP_RECORD
from lmlab.train.runfiles import absolute, listed

# an integer range with at most this many values is checked at every value, not its two ends
ALL_INT_VALUES = 8
# the corners checked in every combination up to this many; past it, each parameter's values
# one at a time, the others at their first value
MAX_CORNERS = 32
# the launcher that runs each job in this process, on this machine
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, as Hydra's basic sweeper builds them from ``hydra.sweeper.params``
    and the command line (``lmlab.analysis.sweep_grid.grid_jobs``); None under another
    sweeper."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    loader = GlobalHydra.instance().config_loader()
    return grid_jobs(sweeper.get("params") or {}, as_typed(config.hydra.overrides.task), loader)


def sweeper_setting(config: DictConfig) -> str | None:
    """Why a sweeper setting would launch nothing, or stop on an assertion of the sweeper's
    (one line naming the field, its value and what is allowed), or None. Optuna's
    ``n_trials=0`` ran no trial and exited 0 ("dry run: 0 trials planned" without a dry run),
    its ``n_jobs=0`` launched 0 jobs and ended on "division by zero", the basic sweeper's
    ``max_batch_size=0`` and Optuna's ``max_failure_rate=2`` on a bare AssertionError; an
    Optuna ``direction`` other than minimize searched the wrong way (``search_direction``)."""
    sweeper = config.hydra.sweeper
    target = sweeper.get("_target_")
    if target == OPTUNA_SWEEPER:
        trials, jobs = sweeper.get("n_trials"), sweeper.get("n_jobs")
        rate = sweeper.get("max_failure_rate")
        if (why := search_direction(sweeper.get("direction", "minimize"))) is not None:
            return why
        if trials is not None and trials < 1:
            return f"hydra.sweeper.n_trials={trials}: a search needs at least 1 trial"
        if jobs is not None and jobs < 1:
            return (
                f"hydra.sweeper.n_jobs={jobs}: the sweeper launches its trials n_jobs at a "
                "time, so it needs at least 1 (1: one trial after another)"
            )
        if rate is not None and not 0 <= rate <= 1:
            return (
                f"hydra.sweeper.max_failure_rate={rate}: the share of failed trials that stops "
                "the search; allowed: 0 to 1"
            )
    if target == BASIC_SWEEPER:
        batch = sweeper.get("max_batch_size")
        if batch is not None and batch < 1:
            return (
                f"hydra.sweeper.max_batch_size={batch}: the sweeper launches its jobs in "
                "batches of this size, so it needs at least 1 (or null: all in one batch)"
            )
    return None


def search_direction(direction: Any) -> str | None:
    """Why an Optuna search's ``direction`` cannot be searched, one line, or None. A trial's
    value is what ``train()`` returns, the run's validation loss: ``maximize`` searched for
    the worst runs and named the worst one best, and several objectives failed each trial on
    their count (one value against two directions) after it trained."""
    given = list(direction) if OmegaConf.is_list(direction) else [direction]
    names = [str(getattr(d, "name", d)) for d in given]  # Optuna's Direction, or its name
    if names == ["minimize"]:
        return None
    shown = f"[{','.join(names)}]" if OmegaConf.is_list(direction) else names[0]
    return (
        f"hydra.sweeper.direction={shown}: each trial's value is its run's validation loss, "
        "one number, lower is better; allowed: minimize"
    )


def unresumable_search(config: DictConfig) -> str | None:
    """Why an Optuna search resumed in its folder (``resume=auto``) cannot continue its trials,
    one line, or None. The sweeper starts again at trial #0 and draws each trial's values
    anew, so a trial continues its folder's run only where it draws that run's values again:
    a sampler seeded as the search's first command seeded it (``+sweeps=lr``: 1337). Unseeded
    (the samplers' default, seed null; ``GridSampler``, which takes none and picks its grid
    points at random), every trial drew other values and was refused ("holds another
    config") after the search's checks, its runs left unfinished. The first command's seed is
    read from the folder's ``multirun.yaml`` (``lmlab.train.rundir.record_sweep``)."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER:
        return None
    sampler, resume = sweeper.get("sampler") or {}, config.get("resume")
    resumed = f"resume={'true' if resume is True else resume} continues an Optuna search's runs"
    why = (
        f"{resumed} only where each trial draws its folder's values again, as a sampler "
        "seeded alike does"
    )
    fresh = "start the search in a new folder, with hydra.sweeper.sampler.seed=<n>"
    name = str(sampler.get("_target_")).rpartition(".")[2]
    if "seed" not in sampler:
        return (
            f"{why}: {name} takes no seed (it picks its points in a random order); {fresh} "
            "and a sampler that takes one (hydra/sweeper/sampler=tpe)"
        )
    seed = sampler.get("seed")
    if seed is None:
        return f"{why}: hydra.sweeper.sampler.seed=null draws other values each time; {fresh}"
    record = read_yaml(absolute(str(config.hydra.sweep.dir)) / SWEEP_RECORD)
    earlier = OmegaConf.select(OmegaConf.create(record), "hydra.sweeper") if record else None
    if not earlier or earlier.get("_target_") != OPTUNA_SWEEPER or "sampler" not in earlier:
        return None  # another sweep's record, or none: each trial's own check says
    first = (earlier.sampler or {}).get("seed")
    if first == seed:
        return None
    if first is None:
        return f"{why}: its first command had no seed, so no seed draws its values again; {fresh}"
    return (
        f"{why}: its first command had hydra.sweeper.sampler.seed={first}, this one {seed}; "
        f"give it hydra.sweeper.sampler.seed={first}"
    )


def sweep_without_values(config: DictConfig) -> str | None:
    """The override (the sweep file's ``hydra.sweeper.params`` or the command line's, the last
    of each key as the sweeper takes it) that sweeps no value, and what is allowed, or None.
    The basic sweeper launched the product of the swept values, none when one is empty
    (``range(2,2)``, a ``glob`` that matches no option): "Launching 0 jobs", exit 0, and a
    ``multirun.yaml`` left behind. Optuna's sweeper ended on the distribution's own error
    (``range(5,2)``: "The `low` value must be smaller than ... (low=5, high=2)", no key) or
    a bare AssertionError (a ``glob``, which its parser cannot expand). An interval, which
    only Optuna searches, ended the basic sweeper on "BasicSweeper does not support sweep type
    : INTERVAL_SWEEP", after a warning of the checks it broke."""
    target = config.hydra.sweeper.get("_target_")
    if target not in (BASIC_SWEEPER, OPTUNA_SWEEPER):
        return None
    loader = GlobalHydra.instance().config_loader()
    arguments = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += as_typed(config.hydra.overrides.task)
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    except Exception:  # noqa: BLE001 - the sweeper parses them again and says what is wrong
        return None
    if target == OPTUNA_SWEEPER:  # it makes a distribution of each, replaced or not
        return next((why for o in parsed if (why := optuna_refuses(o)) is not None), None)
    for override in parsed:  # the sweeper enumerates each one, replaced or not
        if override.is_sweep_override() and not override.is_discrete_sweep():
            return (
                f"{override.input_line}: Hydra's basic sweeper runs a grid, and an interval "
                "has no values to list; search it with Optuna (add hydra/sweeper=optuna, as "
                f"+sweeps=lr does), or list the values ({override.key_or_group}=a,b,c, "
                "range(start,stop,step), choice(a,b))"
            )
    last = {o.get_key_element(): o for o in parsed}  # a later value of a key wins
    for override in last.values():
        if override.is_sweep_override() and not list(override.sweep_string_iterator()):
            why = empty_because(override.value(), override.key_or_group)
            return f"{override.input_line} sweeps no value: {why}"
    return None


def empty_because(value: Any, key: str) -> str:
    """What is allowed instead of a basic sweeper's empty ``value`` (of override ``key``)."""
    from hydra.core.override_parser.types import Glob, RangeSweep

    if isinstance(value, RangeSweep):
        start, step = value.start, value.step
        one = f"range({start},{start + step}{f',{step}' if step != 1 else ''})"
        return (
            "range(start, stop, step) leaves out stop, as Python's range does; allowed: a stop "
            f"past the start in the step's direction ({one} sweeps {start})"
        )
    if isinstance(value, Glob):
        options = GlobalHydra.instance().config_loader().get_group_options(key)
        options = [o for o in options if not o.startswith("base_")]  # schemas, not presets
        return f"the glob matches none of {key}'s options ({', '.join(options)})"
    return "a sweep needs at least one value"


def optuna_refuses(override: Any) -> str | None:
    """Why the Optuna sweeper cannot make a distribution of ``override`` (one line naming
    it), or None."""
    from hydra.core.override_parser.types import Glob, RangeSweep
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    if not override.is_sweep_override():
        return None
    value, line = override.value(), override.input_line
    if isinstance(value, Glob):
        return (
            f"{line}: Optuna's sweeper cannot expand a glob (its parser reads no config group); "
            f"allowed: the options listed, {override.key_or_group}=choice(a,b)"
        )
    try:
        create_optuna_distribution_from_override(override)
    except Exception as err:  # noqa: BLE001 - optuna's own check, said with the key
        if isinstance(value, RangeSweep):
            return (
                f"{line} sweeps no value: Optuna's range(low, high) includes both ends; allowed: "
                f"high >= low (range({value.start},{value.start}) is {value.start} alone)"
            )
        return f"{line}: {first_line(err)}"
    return None


def swept_sweep_files(config: DictConfig) -> str | None:
    """The command line's override that sweeps the ``sweeps`` group (``+sweeps=a,b``), or
    None. A sweep file sets the sweeper's grid (``hydra.sweeper.params``), which Hydra reads
    once, from the config composed without the swept values: each job would compose one
    sweep file and run it as a default run, its grid unread."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    for override in parser.parse_overrides(as_typed(config.hydra.overrides.task)):
        if override.key_or_group == SWEEPS_GROUP and override.is_sweep_override():
            return override.input_line
    return None


def sweep_file_without_multirun(config: DictConfig) -> str | None:
    """Why a single run (no ``-m``) that composed a sweep file (``+sweeps=<name>``) is refused,
    or None. The file's grid (``hydra.sweeper.params``) is read by a sweeper only, so without
    ``-m`` Hydra would train one run at the defaults, none of the grid's values, in silence (as
    Hydra refuses ``model.activation=relu,gelu`` without ``-m``)."""
    name = OmegaConf.select(config, f"hydra.runtime.choices.{SWEEPS_GROUP}")
    params = OmegaConf.select(config, "hydra.sweeper.params")
    if name is None or not params:
        return None
    grid = "; ".join(f"{key}: {value}" for key, value in params.items())
    return (
        f"+{SWEEPS_GROUP}={name} is a sweep ({grid}): add -m (--multirun) to run its jobs; "
        "without it this would train one run with none of those values"
    )


def subdir_as_typed(config: DictConfig) -> str:
    """``hydra.sweep.subdir`` as configured (``${hydra.job.num}``, not resolved: the job
    number is set only per job)."""
    return str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))


def optuna_logs_as_lmlab(config: DictConfig) -> None:
    """Under Optuna's sweeper, Optuna's log lines ("A new study created", each trial's value)
    go through Python's logging as lmlab's and Hydra's do, not through the handler Optuna adds
    to its logger at import: that handler holds the ``sys.stderr`` of that moment, and where it
    was a stream since closed (a test's captured output, a notebook cell's) every later line
    was a "--- Logging error ---" traceback instead. Optuna is imported by the sweeper already."""
    if config.hydra.sweeper.get("_target_") != OPTUNA_SWEEPER:
        return
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def search_corners(config: DictConfig) -> list[list[str]] | None:
    """Jobs at the corners of an Optuna sweep's search space (``hydra.sweeper.params`` and the
    command line, read by the sweeper's own parser): every value of a choice and of a short
    integer range, both ends of any other range, with the fixed values, as Optuna's trials
    write their overrides. All combinations, or past ``MAX_CORNERS`` each parameter's values
    one at a time. None under another sweeper, or with the sweeper's older ``search_space``
    form, which is left to the checks each trial makes as it starts."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER or sweeper.get("search_space"):
        return None
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += as_typed(config.hydra.overrides.task)
    try:
        space, fixed = create_params_from_overrides(arguments)
    except Exception:  # noqa: BLE001 - the sweeper parses them again and says what is wrong
        return None
    for name in fixed:  # a fixed value wins, as in the sweeper
        space.pop(name, None)
    values = {name: corner_values(dist) for name, dist in space.items()}
    if math.prod(len(v) for v in values.values()) <= MAX_CORNERS:
        points = [dict(zip(values, p, strict=True)) for p in itertools.product(*values.values())]
    else:
        first = {name: v[0] for name, v in values.items()}
        points = [first] + [first | {name: v} for name, vs in values.items() for v in vs[1:]]
    return [[f"{k}={v}" for k, v in (point | fixed).items()] for point in points]


def corner_values(distribution: Any) -> list[Any]:
    """The values of one Optuna distribution that ``search_corners`` checks."""
    if hasattr(distribution, "choices"):
        return list(distribution.choices)
    low, high = distribution.low, distribution.high
    step = getattr(distribution, "step", None) or getattr(distribution, "q", None)
    if isinstance(low, int) and isinstance(high, int):
        every = list(range(low, high + 1, step or 1))
        if len(every) <= ALL_INT_VALUES:
            return every
    return [low, high]


def runs_here(config: DictConfig) -> bool:
    """Whether the sweep's jobs train on this machine (Hydra's basic launcher), not on the
    machines a cluster launcher sends them to."""
    return config.hydra.launcher.get("_target_") == BASIC_LAUNCHER


def job_config(config: DictConfig, overrides: Sequence[str], num: int) -> DictConfig:
    """Job ``num``'s config as the basic launcher composes it, with the run directory it
    will have (``hydra.runtime.output_dir``, which ``paths.output_dir`` reads)."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
    with open_dict(job):
        job.hydra.job.id = job.hydra.job.num = num
    sweep_dir = str(OmegaConf.select(job, "hydra.sweep.dir"))
    subdir = str(OmegaConf.select(job, "hydra.sweep.subdir"))
    with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):  # as Hydra's run_job
        job.hydra.runtime.output_dir = os.path.abspath(os.path.join(sweep_dir, subdir))
    return job


def swept_keys(jobs: Sequence[Sequence[str]]) -> set[str]:
    """The override keys whose value differs between jobs (what names a job to its user)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}


def shared_folder(
    config: DictConfig, jobs: list[list[str]], folders: dict[Path, list[int]], corners: bool
) -> str | None:
    """Why jobs of the sweep would share a folder (one line), or None: each job of a sweep
    needs its own. ``hydra.sweep.subdir=.`` (or any subdir the job number is not in) gave
    every job the sweep's folder: the second job was refused at the first's checkpoints, but
    only after Hydra's launcher had rewritten the first's ``.hydra/``, and the sweep exited 0.
    A grid's jobs (``folders``, by job number) are distinct points, compared as they are; an
    Optuna search's trials may draw the same values, so their folder must change with the
    trial number (corner 0 composed as trial 0 and as trial 1). One job alone may use ``.``."""
    subdir = f"hydra.sweep.subdir={subdir_as_typed(config)}"
    if not corners:
        for folder, nums in folders.items():
            if len(nums) > 1:
                named = listed([f"#{n}" for n in nums], most=3)
                return (
                    f"{subdir} gives jobs {named} the same folder {folder}: a sweep needs a "
                    f"folder per job; allowed: a subdir with ${{hydra.job.num}} in it (the "
                    "default), or with values that differ between all the jobs"
                )
        return None
    trials = config.hydra.sweeper.get("n_trials") or 0
    first = next((folder for folder, nums in folders.items() if 0 in nums), None)
    if trials < 2 or first is None:  # corner 0 did not compose: refused for that
        return None
    if Path(job_config(config, jobs[0], 1).hydra.runtime.output_dir) != first:
        return None
    return (
        f"{subdir} gives trials #0 and #1 the same folder {first}: a search of {trials} trials "
        "needs a folder per trial, and trials may draw the same values; allowed: a subdir with "
        "${hydra.job.num} in it (the default)"
    )
