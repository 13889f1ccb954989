"""A run's config entries that are built from a ``_target_`` (the trainer, optimizer,
schedule, loggers and callbacks): their keys and the types of their values held to what the
class takes, before any data is read (``check_target_node``), and the callbacks built, each
refusal one line naming the field (``build_callbacks``)."""

from __future__ import annotations

import inspect
import re

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ConfigError, first_line, spelled
from lmlab.train.strategy_check import (
    annotated_parameters,
    describe_kinds,
    takes,
    target_parameters,
    value_kinds,
)

# Fields whose value lmlab reads before the target does, with words of its own: null is auto.
LMLAB_READS = {"logger.wandb": ("offline",), "optim": ("fused",)}

# Arguments lmlab passes a target itself, {group: {argument: what it passes}}: a key for one
# (+scheduler.total_steps=100) was overridden without a word (the schedule still ended with
# the run), or failed as a second value once the data was prepared (+optim.params=...).
LMLAB_PASSES = {
    "optim": {"params": "the model's parameter groups (weight decay on matmul weights only)"},
    "scheduler": {
        "optimizer": "the run's optimizer",
        "total_steps": "the run's planned steps (trainer.max_steps, or the budget's): the "
        "schedule ends with the run",
    },
    "logger.wandb": {
        "id": "the run directory's W&B id (its wandb_id file), which a resume reopens",
        "resume": "'allow': a resumed run reopens its W&B run",
        "mode": "offline or online as logger.wandb.offline says (W&B off: logger=csv)",
    },
    "trainer": {
        "callbacks": "the callbacks group's (callbacks.<name>=...)",
        "logger": "the logger group's (logger=csv, wandb or none)",
    },
}


def check_target_node(node: DictConfig, where: str, keys: bool = True, types: bool = False) -> None:
    """A ``_target_`` node's keys are arguments its target takes (``keys``): a key added with
    ``+`` (``+trainer.foo=1``, ``+optim.foo=1``) failed only when the object was built, after
    the data was prepared, through a traceback. And a field the target annotates as
    true/false (Lightning's ``Trainer(use_distributed_sampler=...)``,
    ``ModelCheckpoint(enable_version_counter=...)``) given anything else is refused: ``yes``
    or ``7`` were passed on, and read as true. ``types``: every field the target annotates
    with basic types (int, float, str, bool, Optional, a Literal or an Enum) is held to them
    (a callback's: ``callbacks.sample.temperature=hot`` failed in its comparison with 0)."""
    try:
        target = get_method(node._target_)
        params = (
            target_parameters(target)[0]
            if isinstance(target, type)
            else annotated_parameters(target)
        )
        takes_any = any(
            p.kind == inspect.Parameter.VAR_KEYWORD
            for p in inspect.signature(target).parameters.values()
        )
    except (ImportError, ValueError, TypeError, AttributeError):
        return  # the target itself is named when it is built
    named = [key for key in node if not str(key).startswith("_")]
    passed = LMLAB_PASSES.get(where, {})
    if keys and (key := next((k for k in named if k in passed), None)) is not None:
        raise ConfigError(
            f"{where}.{key}={spelled(node[key])}: not a setting: lmlab passes {passed[key]}"
        )
    unknown = [key for key in named if key not in params]
    if keys and unknown and not takes_any:
        key = unknown[0]
        allowed = ", ".join(name for name in params if name not in ("self", "**", *passed))
        raise ConfigError(
            f"{where}.{key}={node[key]}: unknown key ({node._target_} does not take it); "
            f"allowed: {allowed}"
        )
    for key in named:
        if key in unknown or key in LMLAB_READS.get(where, ()):
            continue
        kinds = value_kinds(*params[key])
        true_false = kinds and bool in kinds[0] and kinds[0] <= {bool, type(None)} and not kinds[1]
        if (true_false or (types and kinds)) and not takes(kinds, node[key]):
            shown = spelled(node[key])
            raise ConfigError(f"{where}.{key}={shown}: allowed: {describe_kinds(kinds)}")


def check_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks, each field held to the type its target annotates
    (``check_target_node``), then built (``build_callbacks``): the run's, and ``lmlab
    train``'s check before it starts the run (nothing written to its directory yet)."""
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and not has_target(node):
            raise not_built("callbacks", name, node)
        if node is not None:  # its keys and the types of their values
            check_target_node(node, f"callbacks.{name}", types=True)
    return build_callbacks(cfg)


def not_built(group: str, name: str, node: object, kind: str = "Callback") -> ConfigError:
    """``<group>.<name>`` (``callbacks``, ``logger``) that builds no Lightning ``kind``: an
    entry without ``_target_`` (a key added with ``+callbacks.early.patience=3`` or
    ``+logger.mine.project=x``, what ``~callbacks`` leaves of ``+debug=smoke``'s settings) or
    a class of another kind. Lightning or lmlab failed on it after the data was prepared, with
    a traceback."""
    shown = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    return ConfigError(
        f"{group}.{name}={spelled(shown)}: not a {kind.lower()}; allowed: a Lightning {kind} "
        f"class, as {group}.{name}._target_=<its dotted path>, or {group}.{name}=null to "
        "turn it off"
    )


def has_target(node: object) -> bool:
    """Whether a config entry is built from a ``_target_``."""
    return OmegaConf.is_dict(node) and "_target_" in node


def callback_error(name: str, entry: DictConfig, cause: BaseException) -> ConfigError:
    """A callback constructor's refusal (a ValueError, Lightning's
    MisconfigurationException) as one line that names the fields its message names:
    ``callbacks.checkpoint.every_n_train_steps=-1: Invalid value for ... Must be >= 0``."""
    text = first_line(cause)
    keys = [
        str(key)
        for key in entry
        if not str(key).startswith("_") and re.search(rf"\b{re.escape(str(key))}\b", text)
    ]
    for key in keys:  # a message that starts with the field itself: said once
        text = re.sub(rf"^{re.escape(key)}=[^:]*: ", "", text)
    named = " ".join(f"callbacks.{name}.{key}={spelled(entry[key])}" for key in keys)
    return ConfigError(f"{named or f'callbacks.{name}'}: {text}")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """``cfg.callbacks``' entries (``callbacks.<name>=null`` turns one off). A value a
    callback refuses (its ConfigError, a ValueError or Lightning's MisconfigurationException:
    ``callback_error``) or cannot take (a TypeError: a key it does not have), and a
    ``_target_`` that does not import, are one ConfigError, not Hydra's wrapping of it."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    callbacks = []
    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is None:
            continue
        try:
            callback = instantiate(entry)
        except InstantiationException as err:
            cause = err.__cause__
            if isinstance(cause, ConfigError):
                raise cause from None
            if isinstance(cause, ValueError | MisconfigurationException):
                raise callback_error(name, entry, cause) from err
            if isinstance(cause, TypeError):
                raise ConfigError(f"callbacks.{name}: {cause}") from err
            if isinstance(cause, ImportError):  # Hydra's, naming the module it could not load
                origin = cause.__cause__ or cause
                raise ConfigError(
                    f"callbacks.{name}._target_={entry.get('_target_')!r} cannot be imported "
                    f"({type(origin).__name__}: {str(origin).strip()}): a class's dotted path "
                    "on the Python path, or callbacks." + name + "=null"
                ) from err
            raise
        if not isinstance(callback, L.Callback):
            raise not_built("callbacks", name, entry)
        callbacks.append(callback)
    return callbacks
