"""What the command line does to a sweep's grid, said before the first job
(``RunDirCallback.on_multirun_start``): a command-line value for a key that the sweep file
sweeps replaces the file's grid for it (``replaced_by_command_line``, a warning: Hydra's way to
narrow a sweep); a key given twice on the command line keeps one of its values
(``repeated_on_command_line``, a warning: as a single run keeps its last value); a value for
a field that the file's swept values set inside another key is refused
(``grid_values_overridden``: every job would train it under another name)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from lmlab.config import flatten
from lmlab.config.asked import as_typed

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# the config group of the sweep files (``+sweeps=<name>``)
SWEEPS_GROUP = "sweeps"


def replaced_by_command_line(config: DictConfig) -> list[str]:
    """One line for each command-line override whose key the sweep file's grid
    (``hydra.sweeper.params``) sweeps too. Hydra's sweepers let the command line win, which
    narrows a sweep (``+sweeps=norm_x_activation model.activation=gelu`` runs gelu alone), but
    said nothing: the sweep ran 2 of the file's 6 jobs without a word. Keys compare without
    ``+``/``++``, as the composed jobs do."""
    params = config.hydra.sweeper.get("params") or {}
    if not params:
        return []
    parser = OverridesParser.create()
    typed = OmegaConf.to_container(params, resolve=False)  # the grid as the file has it
    try:
        task = parser.parse_overrides(as_typed(config.hydra.overrides.task))
        grid = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    except Exception:  # noqa: BLE001 - the sweeper parses them again and says what is wrong
        return []
    swept = {_target(o): value for o, value in zip(grid, typed.values(), strict=True)}
    source = _grid_source(task)
    return [
        f"{o.input_line} on the command line replaces {source} grid for it ({swept[_target(o)]})"
        for o in task
        if not o.is_delete() and _target(o) in swept
    ]


def repeated_on_command_line(config: DictConfig) -> list[str]:
    """One line for each key that the command line gives more than once, a swept value among
    them, naming each value and the one the sweep keeps. A single run keeps a key's last
    value and says nothing (``model.activation=relu model.activation=gelu`` trains gelu), and
    so do Hydra's sweepers, which narrows a sweep: ``model.activation=relu,gelu
    model.activation=swiglu`` ran swiglu alone, "checked the sweep's 1 job", without a word.
    Optuna's sweeper keeps a fixed value over a search range, in either order. Keys compare
    without ``+``/``++``, as the composed jobs do (the last value is the one composed)."""
    try:
        task = OverridesParser.create().parse_overrides(as_typed(config.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - the sweeper parses them again and says what is wrong
        return []
    given: dict[str, list[Any]] = {}
    for override in task:
        if not override.is_delete():
            given.setdefault(_target(override), []).append(override)
    optuna = config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER
    lines = []
    for key, values in given.items():
        if len(values) < 2 or not any(o.is_sweep_override() for o in values):
            continue
        fixed = [o for o in values if not o.is_sweep_override()]
        if optuna and fixed:
            kept, why = fixed[-1], "Optuna's sweeper keeps a fixed value over a search range"
        else:
            kept, why = values[-1], "Hydra keeps a key's last value, as a single run does"
        lines.append(
            f"{' and '.join(o.input_line for o in values)}: the command line gives {key} "
            f"{len(values)} values, and the sweep takes {kept.input_line} alone ({why}); "
            f"give {key} once"
        )
    return lines


def grid_values_overridden(config: DictConfig) -> str | None:
    """The refusal of a command-line override that sets a field the sweep file's swept values
    set inside another key (``+sweeps=isoflop model.d_model=64``: each ``model={d_model:..}``
    value sets ``model.d_model``), or None. Hydra applies the command line after the grid, so
    every job would train the command line's value under the name of the swept one: the
    isoflop ladder's ``{d_model:40,n_layers:2}`` and ``{d_model:48,n_layers:2}`` one model,
    and ``+sweeps=moe model.moe.top_k=1`` a top-1 row named ``top_k:2``. An
    override of the swept key itself replaces its grid (``replaced_by_command_line``)."""
    params = config.hydra.sweeper.get("params") or {}
    parser = OverridesParser.create()
    try:
        task = parser.parse_overrides(as_typed(config.hydra.overrides.task))
        grid = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    except Exception:  # noqa: BLE001 - the sweeper parses them again and says what is wrong
        return None
    for swept in grid:
        values = _leaf_values(swept)
        for override in task:
            if override.is_delete() or _target(override) == _target(swept):
                continue
            for leaf in _leaf_values(override).keys() & values.keys():
                inside = (
                    f" in its {swept.key_or_group} values" if leaf != swept.key_or_group else ""
                )
                return (
                    f"{override.input_line} on the command line overrides {leaf}, which "
                    f"{_grid_source(task)} grid sweeps{inside} "
                    f"({', '.join(map(str, values[leaf]))}): every job would train the command "
                    "line's value under the name of its swept one (its run name, its row in "
                    "lmlab compare), and jobs that differ only there would train one model; "
                    "leave it out, or change the swept values in a copy of the sweep file"
                )
    return None


def _leaf_values(override: Any) -> dict[str, list[Any]]:
    """Each dotted key that ``override`` sets, with its values: the key itself, and inside
    dict values (``model={d_model:32},{d_model:40}``) each leaf (``model.d_model``: 32, 40)."""
    from hydra.core.override_parser.types import ChoiceSweep

    if override.package:  # another package's keys: not compared
        return {}
    value, key = override.value(), override.key_or_group
    if isinstance(value, ChoiceSweep):
        items = value.list
    else:  # one value, or a range or interval as typed
        items = [value if isinstance(value, dict) else override.input_line.partition("=")[2]]
    leaves: dict[str, list[Any]] = {}
    for item in items:
        for leaf, v in flatten(item, key).items():
            if v not in leaves.setdefault(leaf, []):
                leaves[leaf].append(v)
    return leaves


def _grid_source(task: Sequence[Any]) -> str:
    """``+sweeps=moe's``: the sweep file on the command line, whose grid it is."""
    return next(
        (f"{o.input_line}'s" for o in task if o.key_or_group == SWEEPS_GROUP),
        "hydra.sweeper.params'",
    )


def _target(override: Any) -> str:
    """What ``override`` sets: its key or group, with its package (``model@a``)."""
    return override.key_or_group + (f"@{override.package}" if override.package else "")
