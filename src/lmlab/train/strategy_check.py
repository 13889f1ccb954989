"""``trainer.strategy`` checked before Lightning builds it: a name in Lightning's registry, or
a node whose ``_target_`` imports as a Strategy and whose keys are arguments it takes, of a
type it takes (``check_strategy``); and a sharded checkpoint resumed only by a strategy that
reads one (``check_strategy_loads``: a refusal before the data is prepared, not an
``IsADirectoryError`` after)."""

from __future__ import annotations

import enum
import importlib
import inspect
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy, Strategy, StrategyRegistry

from lmlab.errors import ConfigError, first_line
from lmlab.infer.checkpoint import is_sharded


def strategy_class(trainer_cfg: Mapping[str, Any]) -> type[Strategy] | None:
    """The Lightning strategy ``trainer.strategy`` names: a ``_target_`` node's class
    (``trainer=ddp``, ``trainer=fsdp``) or a name in Lightning's registry (``ddp``); None for
    ``auto`` (unset: one device, or DDP) and for what Lightning cannot find, which its Trainer
    refuses itself."""
    strategy = trainer_cfg.get("strategy") or "auto"
    if isinstance(strategy, str):
        return StrategyRegistry[strategy]["strategy"] if strategy in StrategyRegistry else None
    module, _, name = str(strategy.get("_target_", "")).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) and issubclass(found, Strategy) else None


# What a node's value may be, by the parameter's annotation: the basic types a config holds.
BASIC_TYPES = (bool, int, float, str, type(None))


def check_strategy(trainer_cfg: Mapping[str, Any]) -> None:
    """``trainer.strategy`` is one Lightning builds: a name in its ``StrategyRegistry``, or a
    node whose ``_target_`` imports as a Strategy and whose keys are arguments it takes, of
    a basic type it takes (a bool field given ``maybe``). Lightning refused a bad name when
    the Trainer was built, through a traceback, and a bad field once every rank had
    started."""
    strategy = trainer_cfg.get("strategy")
    if strategy is None or isinstance(strategy, str):
        names = ["auto", *StrategyRegistry.available_strategies()]
        if strategy is None or strategy in names:
            return
        raise ConfigError(
            f"trainer.strategy={strategy}: not a strategy Lightning knows; allowed: "
            f"{', '.join(names)}, or a node with a _target_ (trainer=ddp, trainer=fsdp)"
        )
    if not isinstance(strategy, Mapping) or "_target_" not in strategy:
        raise ConfigError(
            f"trainer.strategy={strategy}: neither a strategy's name nor a node with a "
            "_target_; allowed: a name (auto, ddp, ...) or a node (trainer=ddp, trainer=fsdp)"
        )
    target = str(strategy["_target_"])
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"trainer.strategy._target_={target}: cannot be imported ({type(err).__name__}: "
            f"{first_line(err)}); allowed: a Strategy class's dotted path, such as "
            "lightning.pytorch.strategies.DDPStrategy (trainer=ddp) or "
            "lmlab.train.distributed.FSDPStrategy (trainer=fsdp)"
        ) from None
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise ConfigError(
            f"trainer.strategy._target_={target}: not a Lightning Strategy class; allowed: "
            "a subclass of lightning.pytorch.strategies.Strategy, such as DDPStrategy"
        )
    params, closed = target_parameters(found)
    fixed = getattr(found, "FIXED_ARGUMENTS", {})  # what the class passes its parent itself
    params = {k: v for k, v in params.items() if k not in fixed}
    for key, value in strategy.items():
        if str(key).startswith("_"):
            continue
        if key in fixed:
            raise ConfigError(
                f"trainer.strategy.{key}={value}: not a setting of {found.__name__}, which "
                f"passes {key}={fixed[key]} itself (every process holds a shard of every "
                f"parameter: FSDP over the whole world, no tensor parallelism); allowed keys: "
                f"{', '.join(params)}"
            )
        if key not in params:
            if closed:
                raise ConfigError(
                    f"trainer.strategy.{key}={value}: unknown key ({target} does not take "
                    f"it); allowed: {', '.join(params)}"
                )
            continue
        allowed = value_kinds(*params[key])
        if allowed is not None and not takes(allowed, value):
            shown = f"'{value}'" if isinstance(value, str) else value
            raise ConfigError(
                f"trainer.strategy.{key}={shown}: not a value {found.__name__} takes for "
                f"{key}; allowed: {describe_kinds(allowed)}"
            )


def strategy_arguments(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``trainer.strategy`` builds its class with: a registry name's own
    (``ddp_spawn``: ``start_method='spawn'``), a node's keys; none for ``auto``."""
    strategy = trainer_cfg.get("strategy") or "auto"
    if isinstance(strategy, str):
        known = strategy in StrategyRegistry
        return dict(StrategyRegistry[strategy]["init_params"]) if known else {}
    return {str(k): v for k, v in strategy.items() if not str(k).startswith("_")}


# How lmlab starts the ranks of a run: Lightning's default, each rank a process running the
# command line (``_SubprocessScriptLauncher``), which ``job_command`` and ``JobScope`` serve.
START_METHOD = "popen"


def check_start_method(trainer_cfg: Mapping[str, Any]) -> None:
    """A DDP strategy that starts its ranks with multiprocessing (``ddp_spawn``, ``ddp_fork``,
    ``ddp_notebook``, ``trainer.strategy.start_method=spawn``) is refused: lmlab's records
    are those of ranks started as commands (under multiprocessing the ranks' CSV logger fails
    at the first logged step, ``dict contains fields not in fieldnames``, and the run ends in
    a traceback, ``'SpawnProcess' object has no attribute 'wait'``)."""
    from lightning.pytorch.strategies import DDPStrategy

    found = strategy_class(trainer_cfg)
    if found is None or not issubclass(found, DDPStrategy):
        return
    method = strategy_arguments(trainer_cfg).get("start_method", START_METHOD)
    if method == START_METHOD:
        return
    strategy = trainer_cfg.get("strategy")
    given = (
        f"trainer.strategy={strategy}"
        if isinstance(strategy, str)
        else f"trainer.strategy.start_method={method}"
    )
    raise ConfigError(
        f"{given}: starts the ranks with multiprocessing's {method}, which lmlab does not run "
        "(each rank's log, CSV logger and exit are those of a process started as a command); "
        f"allowed: start_method={START_METHOD}, as trainer=ddp (or trainer=fsdp) starts them"
    )


def check_lightning_fsdp(trainer_cfg: Mapping[str, Any], cuda: bool | None = None) -> None:
    """Lightning's own FSDP (FSDP1: ``trainer.strategy=fsdp``, ``fsdp_cpu_offload``, or its
    class as a node) without a GPU accelerator, which its Trainer refuses (``requires a GPU
    accelerator``) once the data is prepared, through a traceback: refused here, naming
    lmlab's ``trainer=fsdp`` (FSDP2, which runs on CPU too). ``cuda``: whether this machine
    has a CUDA GPU, where ``trainer.accelerator=auto`` takes one; None (any machine: a dry
    run, a sweep's pre-checks) refuses only an accelerator that is no GPU on any machine."""
    from lightning.pytorch.strategies import FSDPStrategy as LightningFSDP

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    gpu = ("gpu", "cuda") if cuda is False else ("gpu", "cuda", "auto")
    if strategy_class(trainer_cfg) is not LightningFSDP or accelerator in gpu:
        return
    strategy = trainer_cfg.get("strategy")
    given = strategy if isinstance(strategy, str) else "lightning.pytorch.strategies.FSDPStrategy"
    got = (
        f"{accelerator}, and this machine has no CUDA GPU" if accelerator == "auto" else accelerator
    )
    raise ConfigError(
        f"trainer.strategy={given} is Lightning's FSDP, which needs trainer.accelerator=gpu or "
        f"cuda (got {got}); for lmlab's FSDP2, which also runs on CPU processes: "
        "trainer=fsdp (trainer.devices=2 trainer.accelerator=cpu)"
    )


def strategy_requirement(found: type) -> Any:
    """Lightning's own check of the package a strategy class needs that lmlab does not install
    (a ``RequirementCache``: false where missing, its text says what is not met), or None:
    DeepSpeed's, and torch_xla for the XLA (TPU) strategies."""
    from lightning.fabric.accelerators.xla import _XLA_AVAILABLE
    from lightning.fabric.strategies.deepspeed import _DEEPSPEED_AVAILABLE
    from lightning.pytorch.strategies import DeepSpeedStrategy, SingleDeviceXLAStrategy, XLAStrategy

    if issubclass(found, DeepSpeedStrategy):
        return _DEEPSPEED_AVAILABLE
    if issubclass(found, XLAStrategy | SingleDeviceXLAStrategy):
        return _XLA_AVAILABLE
    return None


def check_strategy_installed(trainer_cfg: Mapping[str, Any]) -> None:
    """A strategy whose package this machine lacks (``+trainer.strategy=deepspeed`` without
    DeepSpeed, ``xla_debug`` without torch_xla), which Lightning refuses once the data is
    prepared, through a traceback: refused here in one line. A dry run plans for another
    machine, which may have it."""
    found = strategy_class(trainer_cfg)
    requirement = strategy_requirement(found) if found is not None else None
    if requirement is None or requirement:
        return
    strategy = trainer_cfg.get("strategy")
    given = strategy if isinstance(strategy, str) else f"{found.__module__}.{found.__name__}"
    raise ConfigError(
        f"trainer.strategy={given} needs a package this machine lacks ({requirement}); "
        "lmlab's own: trainer=ddp, or trainer=fsdp (FSDP2: shards the model over the devices)"
    )


def target_parameters(cls: type) -> tuple[dict[str, tuple[Any, Any]], bool]:
    """The arguments a strategy (or another target class) node may set, each with its
    annotation and default, and whether they are all it takes. A ``**kwargs`` of lmlab's own
    class goes to its parent
    (``FSDPStrategy``: Lightning's ModelParallelStrategy), DDPStrategy's to torch's
    DistributedDataParallel; any other's is open (Lightning's FSDPStrategy passes it to
    torch's FSDP)."""
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    params: dict[str, tuple[Any, Any]] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        more = annotated_parameters(init)
        params |= {k: v for k, v in more.items() if k not in params}
        if "**" not in more:
            break
        del params["**"]
        if klass is DDPStrategy:
            ddp = annotated_parameters(DistributedDataParallel.__init__)
            params |= {k: v for k, v in ddp.items() if k not in params and k != "module"}
            break
        if not klass.__module__.startswith("lmlab."):
            return params, False
    return params, True


def annotated_parameters(init: Any) -> dict[str, tuple[Any, Any]]:
    """``init``'s keyword parameters: name -> (annotation, default), the annotations
    resolved where they can be; a ``**kwargs`` is the key ``**``."""
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 (an annotation that does not resolve: left unchecked)
        hints = {}
    out: dict[str, tuple[Any, Any]] = {}
    for name, p in inspect.signature(init).parameters.items():
        if p.kind == inspect.Parameter.VAR_KEYWORD:
            out["**"] = (None, None)
        elif name != "self" and p.kind != inspect.Parameter.VAR_POSITIONAL:
            out[name] = (hints.get(name, p.annotation), p.default)
    return out


def value_kinds(annotation: Any, default: Any) -> tuple[set[type], list[Any]] | None:
    """The basic types and literal values a parameter takes, by its annotation (an
    unannotated one by a bool default: torch's DDP flags; an Enum by its members' values);
    None where that is not cheap to tell (a class, a callable, a timedelta)."""
    if annotation in (inspect.Parameter.empty, typing.Any, None):
        return ({bool}, []) if isinstance(default, bool) else None
    options = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    kinds: set[type] = set()
    literals: list[Any] = []
    for option in options:
        if typing.get_origin(option) is typing.Literal:
            literals += typing.get_args(option)
        elif isinstance(option, type) and issubclass(option, enum.Enum):
            literals += [member.value for member in option]  # as a config gives one: its value
        elif option in BASIC_TYPES:
            kinds.add(option)
        else:
            return None
    return kinds, literals


def takes(allowed: tuple[set[type], list[Any]], value: Any) -> bool:
    """Whether ``value`` is of the basic types or among the literals ``allowed`` holds (an
    int for a float; a bool is not an int here)."""
    kinds, literals = allowed
    if any(value == v and type(value) is type(v) for v in literals):
        return True
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return bool(kinds & {int, float})
    return type(value) in kinds


def describe_kinds(allowed: tuple[set[type], list[Any]]) -> str:
    kinds, literals = allowed
    words = {bool: "true, false", int: "an integer", float: "a number", str: "a string"}
    said = [str(v) for v in literals] + [words[k] for k in BASIC_TYPES if k in words and k in kinds]
    return ", ".join(said + (["null"] if type(None) in kinds else []))


def reads_sharded(trainer_cfg: Mapping[str, Any]) -> bool:
    """Whether the run's strategy loads a sharded checkpoint folder: Lightning's
    ModelParallelStrategy and lmlab's FSDPStrategy built on it (any device count: the
    shards are resharded on load)."""
    found = strategy_class(trainer_cfg)
    return found is not None and issubclass(found, ModelParallelStrategy)


def check_strategy_loads(trainer_cfg: Mapping[str, Any], ckpt: Path | None) -> Path | None:
    """``ckpt``, the checkpoint a run continues, when its strategy can load it; a sharded
    folder (``trainer=fsdp``'s) with another strategy is refused before the data is prepared
    (Lightning would read the folder as a file: ``IsADirectoryError``)."""
    if ckpt is None or not is_sharded(ckpt) or reads_sharded(trainer_cfg):
        return ckpt
    found = strategy_class(trainer_cfg)
    name = found.__name__ if found is not None else trainer_cfg.get("strategy") or "auto"
    preset = trainer_preset()
    this = f"trainer={preset} (strategy {name})" if preset else f"strategy ({name})"
    raise ConfigError(
        f"checkpoint {ckpt} is sharded (a folder of per-rank shards, as trainer=fsdp writes) "
        f"and this run's {this} cannot load it: continue it with trainer=fsdp (any "
        f"device count), or start a new run in another directory from its weights with "
        f"init_from={ckpt} (a fresh optimizer and schedule), or write them into one file with "
        f"`lmlab consolidate ckpt={ckpt}` (weights only: for generate, evaluate, convert and "
        "init_from, not to continue a run)"
    )


def trainer_preset() -> str | None:
    """The ``trainer`` preset the run composed (``cpu``, ``ddp``, ...), as Hydra chose it;
    None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get("trainer")
    return str(choice) if choice else None
