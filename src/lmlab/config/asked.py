"""What a run's command line asks for, as against what presets and defaults give it: a field
set by an override (``model.n_layers=2``), by a preset of its group (``model=gpt_small``) or
by the block of a ``+experiment``, ``+debug`` or ``+sweeps`` file. ``init_from`` refuses an
architecture asked for that is not its checkpoint's; a budget other than ``steps`` refuses a
``trainer.max_steps`` asked for, which it would ignore. ``override`` and ``pasteable`` write an
override back: one that Hydra reads as the value (a folder lmlab names for Hydra), and one a
user pastes into a shell (a folder an error names in the command to run next)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from hydra.errors import HydraException
from omegaconf import OmegaConf

from lmlab.config import CONF_DIR

# The groups of files that apply a delta to other groups (``# @package _global_``).
DELTA_GROUPS = ("experiment", "debug", "sweeps")


def as_typed(overrides: Any) -> list[str]:
    """A Hydra overrides list (``hydra.overrides.task`` or ``.hydra``) as it was typed. Read
    item by item, the list would resolve an interpolation inside an override against the
    config: ``hydra.sweep.subdir=a/${hydra.job.num}`` fails where no job is set yet, and
    ``model.d_ff=${model.d_model}`` becomes the value it had."""
    if not overrides:
        return []
    if isinstance(overrides, list | tuple):  # read already
        return list(overrides)
    return list(OmegaConf.to_container(overrides, resolve=False))


def override(key: str, value: str) -> str:
    """``key=value`` as Hydra's override grammar reads ``value`` back: as it is where it reads
    so, else single-quoted. Unquoted, a folder named ``日本`` or ``ü`` is a parse error and one
    with a comma a sweep of two folders."""
    plain = f"{key}={value}"
    try:
        parsed = OverridesParser.create().parse_override(plain)
        if not parsed.is_sweep_override() and parsed.value() == value:
            return plain
    except HydraException:
        pass
    return f"{key}={QuotedString(text=value, quote=Quote.single).with_quotes()}"


# what a shell's double quotes would still read: the override is then quoted by shlex
SHELL_SPECIAL_IN_DOUBLE_QUOTES = re.compile(r'["$`\\!]')


def pasteable(key: str, value: str) -> str:
    """``override(key, value)`` as a shell word, for a command an error tells the user to
    run: ``"hydra.run.dir='/runs/a b/日本'"``, the way Hydra's docs quote such a value."""
    word = override(key, value)
    if shlex.quote(word) == word:
        return word
    if SHELL_SPECIAL_IN_DOUBLE_QUOTES.search(word) is None:
        return f'"{word}"'
    return shlex.quote(word)


def command_line_overrides() -> list[str]:
    """The overrides typed for this run (``model.dropout=0.1``, ``+experiment=llama``)."""
    if not HydraConfig.initialized():
        return []
    return as_typed(HydraConfig.get().overrides.task)


def asked_fields(overrides: list[str], group: str, preset: Iterable[str] = ()) -> dict[str, str]:
    """{field of ``group``: the override that asked for it}. ``preset``: the fields a preset
    of the group (``group=name``) asks for (all of a model's; none of a trainer's, whose
    values are defaults). A nested field counts as its top field (``moe`` for ``moe.top_k``).
    Of two presets (``model=gpt_tiny model=gpt_mini``) the last is the one Hydra takes."""
    asked: dict[str, str] = {}
    for path, override in asked_paths(overrides, group).items():
        asked[path.split(".")[0]] = override
    named = set(asked)
    for override in overrides:  # a preset: the fields no override or file asked for
        key, value = parsed(override)
        if key == group and not isinstance(value, dict):  # model={...} names its fields
            asked.update({name: override for name in preset if name not in named})
    return asked


def asked_paths(overrides: list[str], group: str) -> dict[str, str]:
    """{dotted field of ``group`` (``moe.top_k``): the override that asked for it}, the one
    whose value Hydra takes: the last that names the field on the command line, else the last
    ``+experiment``/``+debug``/``+sweeps`` file that sets it (Hydra applies them in the order
    given, and the command line's values over them). A dict value names its own fields
    (``model.moe={top_k:1}``: ``moe.top_k``; ``model={moe:{num_experts:0}}``, as
    ``+sweeps=moe``'s jobs get: ``moe.num_experts``). Presets are left out."""
    typed: dict[str, str] = {}
    for override in overrides:
        key, value = parsed(override)
        if key == group or key.startswith(f"{group}."):
            path = key.removeprefix(group).removeprefix(".")
            named = leaves(value, f"{path}." if path else "") if isinstance(value, dict) else []
            for name in named or ([path] if path else []):
                typed[name] = override
    files: dict[str, str] = {}
    for override, path in delta_files(overrides):
        block = OmegaConf.load(path).get(group)
        for name in leaves(OmegaConf.to_container(block) if block is not None else None):
            files[name] = override
    return typed | {name: file for name, file in files.items() if name not in typed}


def delta_files(overrides: list[str]) -> list[tuple[str, Path]]:
    """The ``+experiment``/``+debug``/``+sweeps`` files that ``overrides`` add, in order, each
    with its override (``+experiment=[a,b]`` adds two); a name with no file is left to
    Hydra, which refuses it."""
    found: list[tuple[str, Path]] = []
    for override in overrides:
        if override.startswith("~"):
            continue
        key, value = parsed(override)
        if key.lstrip("+") in DELTA_GROUPS:
            names = getattr(value, "list", value)  # a sweep's choices: each
            for name in names if isinstance(names, list) else [names]:
                path = CONF_DIR / key.lstrip("+") / f"{name}.yaml"
                if path.is_file():
                    found.append((override, path))
    return found


def parsed(override: str) -> tuple[str, Any]:
    """An override's key and value as Hydra reads them (``{a:1}`` a dict); the text split at
    the first ``=`` where Hydra cannot parse it (Hydra names that error itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed_override = OverridesParser.create().parse_override(override)
        return parsed_override.key_or_group, parsed_override.value()
    except Exception:  # noqa: BLE001 - any parse failure: Hydra has refused it already
        key, _, value = override.lstrip("+~").partition("=")
        return key, value


def leaves(node: object, prefix: str = "") -> list[str]:
    """The dotted paths of a plain config block's values (a dict's, recursively)."""
    if not isinstance(node, dict):
        return [prefix.rstrip(".")] if prefix else []
    return [path for key, value in node.items() for path in leaves(value, f"{prefix}{key}.")]
