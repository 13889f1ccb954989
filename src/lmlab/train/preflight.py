"""The checks a run passes before it reads data, builds a model or writes into its directory:
``check_run`` for the run itself (``lmlab.train.run.train``), ``check_job`` for each job of a
sweep before the first one starts (``lmlab.cli.sweep_check.check_sweep``), so that a sweep
whose sixth job has a bad value is refused at once, not after five jobs have trained.

``machine=False`` leaves out what depends on the machine the run will train on (a GPU there,
its free memory, a multi-node launcher's variables): a sweep that a cluster launcher sends
to other machines is checked on the one it is started from.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
from dataclasses import dataclass

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from lmlab.config import (
    MAX_GEN_TOKS,
    DataConfig,
    Family,
    ModelConfig,
    TaskConfig,
    TaskKind,
    TokenizerKind,
    check_task_model,
    resolve_configs,
    resolve_task,
    sequence_length,
)
from lmlab.config.asked import asked_paths, command_line_overrides
from lmlab.data.collators import COLLATORS, SpanCorruptionCollator
from lmlab.data.splits import LISTED, list_splits
from lmlab.data.tokenizer import N_SENTINELS, check_vocab
from lmlab.errors import ConfigError, first_line, say_once, spelled
from lmlab.model.loss import check_cross_entropy
from lmlab.train.batch import GlobalBatch, resolve_global_batch
from lmlab.train.budget import check_max_steps
from lmlab.train.estimate import planning_model_config
from lmlab.train.init_from import InitFrom, resolve_init_from
from lmlab.train.machine import (
    check_accelerator,
    check_attention_kernel,
    check_cuda_graphs,
    check_precision_installed,
    check_trainer_choices,
)
from lmlab.train.memory import check_state_fits
from lmlab.train.plan import RunPlan, make_plan
from lmlab.train.rank_check import check_master_port, check_process_group_backend, check_world_size
from lmlab.train.runfiles import asked_checkpoint, check_checkpoint_folder
from lmlab.train.strategy_check import (
    annotated_parameters,
    check_strategy_installed,
    check_strategy_loads,
    describe_kinds,
    takes,
    target_parameters,
    value_kinds,
)
from lmlab.train.wandb_check import check_wandb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedRun:
    """What the checks resolved, for the run to go on with."""

    model_cfg: ModelConfig  # with ``init_from``: the checkpoint's architecture
    data_cfg: DataConfig
    seq_len: int
    task_cfg: TaskConfig
    init: InitFrom | None
    batch: GlobalBatch
    callbacks: list[L.Callback]


def check_stride(stride: int | None, family: Family, seq_len: int) -> None:
    """``data.stride`` is at most the row a pre-training window takes from the token stream
    (``seq_len`` + 1 for GPT's shifted labels, ``seq_len`` - 2 for BERT's [CLS]/[SEP], more
    for T5, whose spans shrink): a longer one would skip tokens between windows."""
    row = COLLATORS[Family(family)].row_len(seq_len)
    if stride is not None and stride > row:
        raise ConfigError(
            f"data.stride={stride} is above the {row}-token rows a {Family(family).value} model "
            f"trains on at data.seq_len={seq_len}: windows would skip tokens (allowed: 1 to "
            f"{row}, or null for whole rows)"
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


def check_run(cfg: DictConfig, machine: bool = True) -> CheckedRun:
    """Every check of ``cfg`` that needs no data, model or run directory, in the order a run
    meets them; the first failure is a ConfigError. A dry run (``dry_run=true``) plans for any
    machine, so the machine's own checks are left out of it, and a ``data.path`` that is not
    there (it may be on the machine planned for) is a warning in it, not a refusal."""
    here = machine and not cfg.get("dry_run")
    model_cfg, data_cfg, seq_len = resolve_configs(cfg, machine=machine)
    data_cfg = dataclasses.replace(data_cfg, run_folders=run_folders(cfg))
    for group in ("trainer", "optim", "scheduler"):
        check_target_node(cfg[group], group)
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and not has_target(node):  # logger.<name>=null turns one off
            raise not_built("logger", name, node, "Logger")
        check_target_node(node, f"logger.{name}")
    check_wandb(cfg)
    check_checkpoint_folder(cfg.get("callbacks") or {}, cfg.paths.output_dir)
    check_max_steps(cfg)
    task_cfg = resolve_task(cfg, model_cfg)
    init = resolve_init_from(cfg, model_cfg, data_cfg, task_cfg.kind)
    if init is not None:  # the checkpoint's architecture
        source = f"init_from={init.path}'s checkpoint"
        model_cfg, seq_len = init.model_cfg, sequence_length(init.model_cfg, data_cfg, source)
        check_task_model(task_cfg, model_cfg, f"init_from={init.path} holds")
    check_vocab(data_cfg)  # before the corpus is read
    if task_cfg.kind == TaskKind.lm:
        check_stride(data_cfg.stride, model_cfg.family, seq_len)
        if model_cfg.family == Family.t5 and data_cfg.tokenizer != TokenizerKind.checkpoint:
            SpanCorruptionCollator.check_spans(seq_len, N_SENTINELS)  # lmlab's tokenizers' count
    check_trainer_choices(cfg.trainer)
    if asked := asked_checkpoint(cfg):  # resume=true's: checked once chosen (resume_checkpoint)
        check_strategy_loads(cfg.trainer, asked)
    batch = resolve_global_batch(cfg.trainer, data_cfg, seq_len)  # bad batches fail early
    check_cuda_graphs(cfg, batch, machine=here)  # a dry run may plan for a GPU elsewhere
    check_evals(cfg, model_cfg, data_cfg if task_cfg.kind == TaskKind.lm else None)
    if machine:
        check_attention_kernel(cfg.trainer, model_cfg)
    check_cross_entropy(model_cfg)
    callbacks = check_callbacks(cfg)  # their bad values are refused here
    if machine and data_cfg.source in LISTED and task_cfg.kind == TaskKind.lm:
        check_corpus_listed(data_cfg, dry_run=bool(cfg.get("dry_run")))
    if here:
        check_accelerator(cfg.trainer)
        check_precision_installed(cfg.trainer)
        check_strategy_installed(cfg.trainer)
        check_process_group_backend(cfg.trainer)
        check_world_size(cfg.trainer)
        check_master_port(cfg.trainer)
    return CheckedRun(model_cfg, data_cfg, seq_len, task_cfg, init, batch, callbacks)


def run_folders(cfg: DictConfig) -> tuple[str, ...]:
    """The folders this run writes in: its output directory and, for a multirun's job, the
    sweep's folder (absolute). A corpus folder that holds them leaves them out
    (``DataConfig.run_folders``), also before the run or the sweep wrote anything there."""
    folders = [OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)]
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        folders.append(HydraConfig.get().sweep.dir)
    return tuple(os.path.abspath(os.path.expanduser(str(f))) for f in folders if f)


def check_corpus_listed(data_cfg: DataConfig, dry_run: bool) -> None:
    """A corpus whose files or splits are not there (``list_splits``: listed, not read):
    refused, so that a sweep's job is refused before the first starts. A dry run plans for
    any machine, where the path may be: there it is said, and the plan is made."""
    try:
        list_splits(data_cfg)
    except ConfigError as err:
        if not dry_run:
            raise
        log.warning("%s: a run here would be refused; this dry run reads no data", err)


def warn_unused(
    model_cfg: ModelConfig, data_cfg: DataConfig | None = None, task_cfg: TaskConfig | None = None
) -> list[str]:
    """A warning for each model, data or task field the command asked for (an override, or an
    ``+experiment``/``+debug``/``+sweeps`` file) that another field switches off:
    ``model.rope_theta=5e5`` under ``model.positional=alibi`` (or ``data.vocab_size`` under
    ``data.tokenizer=char``) trains what the default would, and a sweep over it repeats one
    run. Not refused: a sweep over the switch (``model.positional=rope,alibi
    model.rope_theta=5e5``) means it for some of its jobs. Presets are left out (a preset sets
    every field). Returns the warnings."""
    warnings = []
    padded = task_cfg is not None and task_cfg.kind != TaskKind.lm  # fine-tuning's batches
    unused_of = {
        "model": model_cfg.unused_fields(),
        "data": data_cfg.unused_fields(padded) if data_cfg is not None else {},
        "task": task_cfg.unused_fields() if task_cfg is not None else {},
    }
    for group, cfg in (("model", model_cfg), ("data", data_cfg), ("task", task_cfg)):
        unused = unused_of[group]
        for path, override in asked_paths(command_line_overrides(), group).items():
            if path in unused:
                value = OmegaConf.select(OmegaConf.structured(cfg), path)
                typed = override.lstrip("+~").startswith(f"{group}.")
                origin = "" if typed else f" (from {override})"
                warnings.append(
                    f"{group}.{path}={value}{origin} has no effect under {unused[path]}: this "
                    "run trains as it would without it"
                )
    for warning in warnings:
        log.warning(warning)
    return warnings


def check_job(cfg: DictConfig, machine: bool = True) -> RunPlan:
    """``check_run`` and the plan a dry run would print (its budget, the parameters' memory
    against this machine's): one job of a sweep, checked before any job starts. Returns that
    plan (its vocabulary is the tokenizer's target size: no data is read)."""
    checked = check_run(cfg, machine)
    planned = planning_model_config(checked.model_cfg, checked.data_cfg)
    plan = make_plan(cfg, planned, checked.data_cfg, checked.seq_len)
    if machine and not cfg.get("dry_run"):
        check_state_fits(plan, planned, cfg.trainer, cfg.optim, warn=False)
    return plan


def check_evals(cfg: DictConfig, model_cfg: ModelConfig, data_cfg: DataConfig | None) -> None:
    """``eval.tasks`` name tasks whose data can be read now (a hub task's dataset is fetched
    here), for a model that can be scored, whose generating tasks ask what lmlab's decoder
    does and leave a GPT's prompt room at ``eval.max_gen_toks`` (``check_generation``):
    before data, plan or model are built. A shipped
    task whose items the corpus ``data_cfg`` (a language model's) trains on is warned of,
    once per process (``harness.trained_items``)."""
    tasks = list((cfg.get("eval") or {}).get("tasks") or [])
    if not tasks:
        return
    from lmlab.infer import harness  # lm-eval itself is imported only for a hub task

    harness.check_family(
        model_cfg.family, f"eval.tasks={tasks} with model.family={model_cfg.family.value}"
    )
    folders = harness.checked_folders(
        (cfg.get("eval") or {}).get("include_path"), "eval.include_path"
    )
    harness.check_tasks(tasks, where="eval.tasks", folders=folders)
    max_gen_toks = (cfg.get("eval") or {}).get("max_gen_toks", MAX_GEN_TOKS)
    harness.check_generation(tasks, model_cfg, max_gen_toks, "eval.max_gen_toks", folders)
    for line in harness.trained_items(tasks, data_cfg) if data_cfg else ():
        say_once(log, logging.WARNING, f"eval.tasks: {line}")


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
