"""What a run's command line asks for, as against what presets and defaults give it: a field
set by an override (``model.n_layers=2``), by a preset of its group (``model=gpt_small``) or
by the block of a ``+experiment``, ``+debug`` or ``+sweeps`` file. ``init_from`` refuses an
architecture asked for that is not its checkpoint's; a budget other than ``steps`` refuses a
``trainer.max_steps`` asked for, which it would ignore."""

from __future__ import annotations

from collections.abc import Iterable

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lmlab.config import CONF_DIR

# The groups of files that apply a delta to other groups (``# @package _global_``).
DELTA_GROUPS = ("experiment", "debug", "sweeps")


def command_line_overrides() -> list[str]:
    """The overrides typed for this run (``model.dropout=0.1``, ``+experiment=llama``)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def asked_fields(overrides: list[str], group: str, preset: Iterable[str] = ()) -> dict[str, str]:
    """{field of ``group``: the override that asked for it}. ``preset``: the fields a preset
    of the group (``group=name``) asks for (all of a model's; none of a trainer's, whose
    values are defaults). A nested field counts as its top field (``moe`` for ``moe.top_k``)."""
    asked: dict[str, str] = {}
    for path, override in asked_paths(overrides, group).items():
        asked.setdefault(path.split(".")[0], override)
    for override in overrides:  # a preset: the fields no override or file asked for
        if override.lstrip("+~").partition("=")[0] == group:
            asked.update({name: override for name in preset if name not in asked})
    return asked


def asked_paths(overrides: list[str], group: str) -> dict[str, str]:
    """{dotted field of ``group`` (``moe.top_k``): the override that asked for it}: a field
    named on the command line, else the first ``+experiment``/``+debug``/``+sweeps`` file that
    sets it. Presets are left out."""
    asked: dict[str, str] = {}
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key.startswith(f"{group}."):
            asked.setdefault(key.removeprefix(f"{group}."), override)
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in DELTA_GROUPS:
            path = CONF_DIR / key / f"{value}.yaml"
            block = OmegaConf.load(path).get(group) if path.is_file() else None
            for name in leaves(OmegaConf.to_container(block) if block is not None else None):
                asked.setdefault(name, override)
    return asked


def leaves(node: object, prefix: str = "") -> list[str]:
    """The dotted paths of a plain config block's values (a dict's, recursively)."""
    if not isinstance(node, dict):
        return [prefix.rstrip(".")] if prefix else []
    return [path for key, value in node.items() for path in leaves(value, f"{prefix}{key}.")]
