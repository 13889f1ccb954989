"""Config nodes as typed, checked dataclasses, with one-line errors; dotted flattening; secret
values redacted."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lmlab.errors import ConfigError, first_line

T = TypeVar("T")


def to_schema(schema: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """``values`` (a dict or config node) as the dataclass ``schema``, typed and checked. An
    unknown key (which a ``+`` override can add even to a structured config: Hydra adds with
    ``force_add``, by design), a value of the wrong type or outside an enum, and the schema's
    ``__post_init__`` checks are a ConfigError naming the key, the value and what is allowed."""
    if OmegaConf.is_config(values):
        values = OmegaConf.to_container(values, resolve=True)
    try:  # merge copies the template: it stays as built
        return OmegaConf.to_object(OmegaConf.merge(structured(schema), values))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        if not key:
            raise ConfigError(f"{prefix.rstrip('.')}: {first_line(err)}") from None
        value = OmegaConf.select(OmegaConf.create(values), key)
        raise omegaconf_error(err, f"{prefix}{key}={value}") from None


@functools.cache
def structured(schema: type) -> Any:
    """The dataclass ``schema`` as a structured config, built once: a run checks its configs
    about a dozen times, and building one (every field's node) took as long as the merge."""
    return OmegaConf.structured(schema)


def omegaconf_error(err: OmegaConfBaseException, where: str) -> ConfigError:
    """OmegaConf's error at ``where`` (``key=value``) as one line; an unknown key lists the
    keys its node has, a value of the wrong type what the field takes. A node built from a
    ``_target_`` (the Trainer, the optimizer, a strategy, a logger, a callback) takes more
    arguments than its YAML names: those are added with ``+`` (``+trainer.deterministic=true``),
    which the unknown key's line says, as Hydra's own message does, where the key typed is the
    one missing (``trainer.strategy.foo=1`` under ``trainer=cpu``, whose missing key is
    ``trainer.strategy``: ``+`` would add a dict, not an argument)."""
    parent = getattr(err, "parent_node", None)
    if isinstance(err, ConfigKeyError | ConfigAttributeError) and OmegaConf.is_dict(parent):
        if not parent:  # logger.wandb.project=x under logger=none
            node = str(getattr(err, "full_key", "") or "").rpartition(".")[0] or "the config"
            return ConfigError(f"{where}: unknown key; allowed: none, {node} is empty")
        keys = ", ".join(map(str, parent))
        typed = where.partition("=")[0].lstrip("+~")
        if "_target_" in parent and "=" in where and typed == str(getattr(err, "full_key", "")):
            return ConfigError(
                f"{where}: unknown key; allowed: {keys}; or another argument that "
                f"{parent['_target_']} takes, added with +: +{where}"
            )
        return ConfigError(f"{where}: unknown key; allowed: {keys}")
    kind = field_kind(err, where)
    return ConfigError(f"{where}: {first_line(err)}" + (f"; allowed: {kind}" if kind else ""))


KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def without_none(hint: Any) -> tuple[Any, bool]:
    """``hint`` with its ``None`` option taken out (``int | None``: int), and whether it had
    one."""
    args = typing.get_args(hint)
    if type(None) not in args:
        return hint, False
    return next((a for a in args if a is not type(None)), hint), True


def field_kind(err: OmegaConfBaseException, where: str) -> str | None:
    """What the dataclass field an error is about takes, in words (``an integer or null``),
    read from its type; None for an enum (OmegaConf's message lists its values), a field it
    cannot tell, or another error than a value's."""
    schema, key = getattr(err, "object_type", None), getattr(err, "key", None)
    if not dataclasses.is_dataclass(schema) or not isinstance(key, str):
        return None
    try:
        hint = typing.get_type_hints(schema).get(key)
    except Exception:  # a type it cannot resolve: OmegaConf's words alone
        return None
    hint, optional = without_none(hint)
    if typing.get_origin(hint) in (list, tuple):
        value = where.partition("=")[2]
        shown = "[a,b]" if value in ("", "None", "null") or value.startswith("[") else f"[{value}]"
        kind = f"a list, as {where.partition('=')[0]}={shown}"
    elif hint in KINDS:
        kind = KINDS[hint]
    elif dataclasses.is_dataclass(hint):  # a block (model.moe): its fields, one at a time
        names = [f.name for f in dataclasses.fields(hint)]
        field = where.partition("=")[0]
        kind = f"its fields ({', '.join(names)}), as {field}.{names[0]}=<value>"
    else:
        return None
    return f"{kind} or null" if optional else kind


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: ``{"model": {"norm": "rmsnorm"}}`` ->
    ``{"model.norm": "rmsnorm"}`` (W&B's config keys, compare's knobs); lists and scalars are
    leaves, and a scalar at the top is ``{prefix: tree}``."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Replace the value of any secret-looking environment variable (``WANDB_API_KEY``,
    ``HF_TOKEN``, ...) inside ``value`` by ``<redacted:NAME>``: a config interpolating
    ``${oc.env:...}`` must not leak it into W&B, CSV hparams or results.json."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        for name, secret in os.environ.items():
            if len(secret) >= 8 and SECRET_NAME.search(name) and secret in value:
                value = value.replace(secret, f"<redacted:{name}>")
    return value
