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
import logging
import os
from dataclasses import dataclass

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
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
from lmlab.errors import ConfigError, say_once
from lmlab.infer.declared import NOTHING, Declared
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
    check_strategy_installed,
    check_strategy_loads,
)
from lmlab.train.targets import check_callbacks, check_target_node, has_target, not_built
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
    declared = init.declared if init is not None else NOTHING
    check_evals(cfg, model_cfg, data_cfg if task_cfg.kind == TaskKind.lm else None, declared)
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


def check_evals(
    cfg: DictConfig,
    model_cfg: ModelConfig,
    data_cfg: DataConfig | None,
    declared: Declared = NOTHING,
) -> None:
    """``eval.tasks`` name tasks whose data can be read now (a hub task's dataset is fetched
    here), for a model that can be scored, whose generating tasks ask what lmlab's decoder
    does and leave a GPT's prompt room at ``eval.max_gen_toks`` (``check_generation``), in
    a chat template the model declares where ``eval.apply_chat_template`` asks for one
    (``declared``: what the ``init_from`` checkpoint declares): before data, plan or model
    are built. A shipped
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
    if (cfg.get("eval") or {}).get("apply_chat_template"):
        name = cfg.eval.get("chat_template")
        where = "eval.apply_chat_template=true: the model it trains"
        declared.chat(name or True, where, key="eval.chat_template")
    for line in harness.trained_items(tasks, data_cfg) if data_cfg else ():
        say_once(log, logging.WARNING, f"eval.tasks: {line}")
