"""A composed config checked as a whole before any work: the schemas, the optimizer, the
launcher, the sequence length; and the schemas' registration in Hydra's ConfigStore."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig

from lmlab.config.data import DataConfig
from lmlab.config.knobs import Family
from lmlab.config.model import ModelConfig
from lmlab.config.run import BudgetConfig, RunConfig
from lmlab.config.schema import to_schema, without_none
from lmlab.config.task import TaskConfig, resolve_task
from lmlab.config.top_level import check_groups, check_top_level
from lmlab.errors import ConfigError, spelled


def check_fused(fused: Any) -> None:
    """``optim.fused``: auto, true or false (0 and 1 are not true and false here)."""
    if not (isinstance(fused, bool) or fused == "auto"):
        raise ConfigError(f"optim.fused={fused!r}: allowed auto, true, false")


def check_optimizer(optim: Mapping[str, Any], scheduler: Mapping[str, Any]) -> None:
    """The values the optimizer and schedule groups (``_target_`` nodes, no schema: any
    torch optimizer fits) must have whatever the target."""
    check_fused(optim.get("fused", "auto"))
    lr = optim.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise ConfigError(f"optim.lr={lr} must be a positive number (default 1e-3)")
    warmup = scheduler.get("warmup_steps", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"scheduler.warmup_steps={warmup} must be an int >= 0 (steps)")
    ratio = scheduler.get("min_lr_ratio", 0.0)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise ConfigError(f"scheduler.min_lr_ratio={ratio} must be in [0, 1]")
    # the optimizer's own checks would fail only once training starts, with a traceback
    decay = optim.get("weight_decay", 0.0)
    if not is_number(decay) or not 0 <= decay < math.inf:
        raise ConfigError(f"optim.weight_decay={decay} must be >= 0 (0: no decay)")
    betas = optim.get("betas")
    if betas is not None and (
        not isinstance(betas, Sequence | ListConfig)
        or len(betas) != 2
        or not all(is_number(b) and 0 <= b < 1 for b in betas)
    ):
        shown = list(betas) if isinstance(betas, ListConfig) else betas
        raise ConfigError(f"optim.betas={shown} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    eps = optim.get("eps", 1e-8)
    if not is_number(eps) or not 0 < eps < math.inf:
        raise ConfigError(f"optim.eps={eps} must be a positive number (default 1e-8)")


# float16's smallest normal number (2^-14, 6.1e-05): an optimizer's eps below it is lost where
# its state is float16
FP16_TINY = 2.0**-14


def check_optimizer_precision(optim: Mapping[str, Any], trainer: Mapping[str, Any]) -> None:
    """``trainer.precision=16-true`` keeps the weights, gradients and Adam's moments in float16.
    Squared gradients below float16's range are 0 there, and an ``optim.eps`` below it (the
    default 1e-8) no longer bounds the update ``m / (sqrt(v) + eps)``: foreach AdamW's eps
    rounds to 0 (a NaN at the first step), and fused AdamW, which adds it in fp32, divides by
    1e-8 in silence (gpt_tiny's embeddings grew to 32 in 2 steps; validation loss 24 against
    8.2). bf16 has fp32's range, so ``bf16-true`` is not refused."""
    eps = optim.get("eps")
    if str(trainer.get("precision")) != "16-true" or not is_number(eps) or eps >= FP16_TINY:
        return
    raise ConfigError(
        f"optim.eps={eps:g} with trainer.precision=16-true: the optimizer's state is float16, "
        f"whose smallest normal number is {FP16_TINY:.2g}, so the update divides by an eps "
        "that float16 cannot hold (the weights blow up or turn NaN); allowed: optim.eps >= "
        f"{FP16_TINY:.2g} (1e-4 is usual for float16 state), or trainer.precision=bf16-true, "
        "bf16-mixed or 16-mixed (fp32 weights and state)"
    )


def is_number(value: Any) -> bool:
    """An int or a float (a YAML ``true`` is neither)."""
    return not isinstance(value, bool) and isinstance(value, int | float)


# Trainer options that end or cut Lightning's epochs: lmlab's run is a plan of optimizer steps
# (trainer.max_steps, or the budget's) over its own resumable sampler, one Lightning epoch
# long. {option: (the values that change nothing, why not and what to use instead)}
NOT_STEP_PLANS: dict[str, tuple[tuple[Any, ...], str]] = {
    "max_epochs": (
        (-1, None),
        "the run trains its planned steps whatever the epochs (trainer.max_steps, or the "
        "budget's); allowed: -1 or null; a shorter run: trainer.max_steps, or budget=tokens "
        "(dry_run=true shows the steps)",
    ),
    "max_time": (
        (None,),
        "a run stopped by the clock says completed after fewer steps than planned, its "
        "schedule unfinished; allowed: null; a shorter run: trainer.max_steps or a budget "
        "(dry_run=true shows the wall time it plans); a cluster's time limit: its SIGTERM "
        "saves a checkpoint that resume=auto continues",
    ),
    "limit_train_batches": (
        (None, 1.0),
        "each Lightning epoch restarts lmlab's resumable sampler, so every epoch trains the "
        "same first batches; allowed: null or 1.0 (every batch); a shorter run: "
        "trainer.max_steps or +debug=smoke; less text: data.max_bytes",
    ),
    "overfit_batches": (
        (0, 0.0, None),
        "each Lightning epoch restarts lmlab's resumable sampler, so the batches it keeps are "
        "not the ones asked for; allowed: 0; a tiny corpus: data.max_bytes",
    ),
    "min_steps": (
        (None, 0),
        "the run trains exactly its planned steps (trainer.max_steps, or the budget's): a "
        "minimum above them was ignored, the run said completed after fewer; allowed: null "
        "or 0; a longer run: trainer.max_steps or a budget (dry_run=true shows the steps)",
    ),
    "min_epochs": (
        (None, 0),
        "the run is one Lightning epoch of its planned steps (trainer.max_steps, or the "
        "budget's), which it ends whatever the minimum (the run said completed after one); "
        "allowed: null or 0; a longer run: trainer.max_steps or a budget (dry_run=true shows "
        "the steps)",
    ),
    "fast_dev_run": (
        (False, 0, None),
        "it ends after its batches while results.json says completed; allowed: false; a "
        "quick check: +debug=smoke (trainer.max_steps=1 for one step), or dry_run=true for "
        "the plan",
    ),
}


def check_step_plan(trainer: Mapping[str, Any]) -> None:
    """``NOT_STEP_PLANS``: an option set to anything but a value that changes nothing is
    refused (``max_epochs: -1`` ships in ``conf/trainer/cpu.yaml``): it was taken without a
    word and broke the run's plan of steps."""
    for name, (inert, why) in NOT_STEP_PLANS.items():
        value = trainer.get(name)
        if not any(value == v and type(value) is type(v) for v in inert):
            raise ConfigError(f"trainer.{name}={spelled(value)}: {why}")


# Lightning's ``gradient_clip_algorithm`` values (``GradClipAlgorithmType``, read in any case),
# which ``LMTask.configure_gradient_clipping`` applies.
CLIP_ALGORITHMS = ("norm", "value")


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """The Trainer's values that Lightning would divide by, or take without complaint and
    train wrongly with (a negative clipping threshold flips every gradient's sign; an option
    that ends its epochs, ``check_step_plan``). Checked for a dry run too, which plans with
    them."""
    check_num_nodes(trainer)
    check_step_plan(trainer)
    for name in ("max_steps", "accumulate_grad_batches", "max_epochs"):
        value = trainer.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"trainer.{name}={value!r} must be an int")
    for name in ("log_every_n_steps", "val_check_interval"):
        value = trainer.get(name, 1)
        if value is None or (is_number(value) and isinstance(value, int) and value >= 1):
            continue
        why = " (lmlab trains by steps, not epochs: a fraction of one has no meaning)"
        shown = f"'{value}'" if isinstance(value, str) else value
        once = " or null (once, after the last step)" if name == "val_check_interval" else ""
        raise ConfigError(
            f"trainer.{name}={shown} must be an int >= 1 (optimizer steps){once}"
            + (why if isinstance(value, float) else "")
        )
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not is_number(clip) or not 0 <= clip < math.inf):
        raise ConfigError(f"trainer.gradient_clip_val={clip} must be >= 0 (0 or null: no clipping)")
    algorithm = trainer.get("gradient_clip_algorithm")
    if algorithm is not None and str(algorithm).lower() not in CLIP_ALGORITHMS:
        raise ConfigError(
            f"trainer.gradient_clip_algorithm={algorithm}: allowed norm (the default: the "
            "global norm of all gradients at most gradient_clip_val) or value (each gradient "
            "element clamped to [-gradient_clip_val, gradient_clip_val])"
        )
    limit = trainer.get("limit_val_batches", 1.0)
    if limit is not None and (
        not is_number(limit) or limit < 0 or (isinstance(limit, float) and limit > 1)
    ):
        raise ConfigError(
            f"trainer.limit_val_batches={limit}: allowed an int >= 0 (batches; 0: no "
            "validation) or a float in [0, 1] (a fraction of the validation split)"
        )


# Set in every process of a multi-node run by what started it, and read by Lightning to find
# the other nodes: torchrun, SLURM, LSF, MPI (Open MPI, MPICH), or NODE_RANK where Lightning
# starts the processes of each node itself.
LAUNCHER_VARIABLES = (
    "WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "LSB_JOBID",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "NODE_RANK",
)


def check_num_nodes(trainer: Mapping[str, Any]) -> int:
    """``trainer.num_nodes``, an int >= 1 (the global batch is multiplied by it)."""
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        shown = str(nodes).lower() if isinstance(nodes, bool) else nodes  # as typed
        raise ConfigError(
            f"trainer.num_nodes={shown}: must be an integer >= 1; allowed: 1 (this machine) "
            "or the number of nodes a launcher (torchrun, SLURM) starts"
        )
    return nodes


def check_launch(trainer: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> None:
    """More than one node needs a launcher: without one, Lightning starts this node's
    processes and waits for the others forever. (That a launcher started as many processes
    as ``trainer.devices x trainer.num_nodes`` is checked once torch can count this node's
    GPUs: ``lmlab.train.rank_check.check_world_size``.)"""
    nodes = check_num_nodes(trainer)
    if nodes > 1 and not any(name in environ for name in LAUNCHER_VARIABLES):
        raise ConfigError(
            f"trainer.num_nodes={nodes} needs a launcher that starts every node's processes: "
            f"torchrun (--nnodes={nodes}) or SLURM (scripts/slurm/train.sbatch); none of "
            f"{', '.join(LAUNCHER_VARIABLES)} is set, so Lightning would wait for the other "
            "nodes forever"
        )


# The groups whose fields a schema types (the top-level keys: RunConfig's).
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "budget": BudgetConfig,
    "task": TaskConfig,
}


def field_hint(key: str) -> Any:
    """The type a schema gives the dotted ``key`` (``model.moe.top_k``: int), Optional
    unwrapped; None for a key no schema types (``trainer.*``, an unknown one)."""
    group, _, rest = key.partition(".")
    schema, path = (GROUP_SCHEMAS.get(group), rest.split(".")) if rest else (None, [])
    if schema is None:
        schema, path = RunConfig, key.split(".")
    hint: Any = schema
    for name in path:
        if not dataclasses.is_dataclass(hint):
            return None
        hint = without_none(typing.get_type_hints(hint).get(name))[0]
    return hint


def check_bool_overrides(overrides: Sequence[str]) -> None:
    """A true/false field given anything else on the command line is refused: OmegaConf
    reads any integer as a bool (``model.tie_embeddings=7`` is true) and ``yes``/``off`` as
    words for one, where the error for ``maybe`` says "allowed: true or false". A sweep's
    choices (``model.bias=true,0``), a block's fields (``model.moe={...}``) and the fields an
    ``+experiment``/``+debug``/``+sweeps`` file sets (``bias: 0``) are checked the same
    way."""
    from hydra.core.override_parser.types import ChoiceSweep
    from omegaconf import OmegaConf

    from lmlab.config.asked import delta_files, parsed  # it imports the package: not here

    def check(key: str, value: Any, where: str = "") -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                check(f"{key}.{name}" if key else str(name), item, where)
        elif field_hint(key) is bool and not isinstance(value, bool | None):
            if isinstance(value, str) and (value.startswith("${") or value in ("true", "false")):
                return  # an interpolation, or a quoted word: what OmegaConf reads as asked
            raise ConfigError(f"{key}={value}{where}: allowed: true or false")

    for override in overrides:
        if override.startswith("~"):
            continue
        key, value = parsed(override)
        for one in value.list if isinstance(value, ChoiceSweep) else [value]:
            check(key.lstrip("+"), one)
    for override, path in delta_files(list(overrides)):
        fields = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        fields = {k: v for k, v in fields.items() if k not in ("defaults", "hydra")}
        check("", fields, f" in {path.relative_to(path.parents[1])} ({override})")


def resolve_configs(cfg: DictConfig, machine: bool = True) -> tuple[ModelConfig, DataConfig, int]:
    """Validate the structured configs (``__post_init__`` checks) and the other groups'
    values before any work starts: ``lmlab train`` calls this before torch and Lightning are
    imported, so bad input is reported before the slow imports (start-up times:
    BENCHMARKS.md). ``machine=False``: not whether this machine can launch the run (a sweep
    that a cluster launcher sends elsewhere)."""
    from lmlab.config.asked import command_line_overrides

    check_bool_overrides(command_line_overrides())
    check_groups(cfg)
    check_top_level(cfg)
    model_cfg = composed_model(cfg)
    data_cfg = to_schema(DataConfig, cfg.data, "data.")
    to_schema(BudgetConfig, cfg.budget, "budget.")
    run_cfg = to_schema(RunConfig, {f.name: cfg.get(f.name) for f in dataclasses.fields(RunConfig)})
    check_optimizer(cfg.optim, cfg.scheduler)
    check_trainer(cfg.trainer)
    check_optimizer_precision(cfg.optim, cfg.trainer)
    resolve_task(cfg, model_cfg)
    if machine and not run_cfg.dry_run:  # a dry run plans for many nodes, launches nothing
        check_launch(cfg.trainer)
    return model_cfg, data_cfg, sequence_length(model_cfg, data_cfg)


def composed_model(cfg: DictConfig) -> ModelConfig:
    """``cfg.model`` as a checked ModelConfig. Under ``init_from`` the checkpoint's
    architecture replaces it later (``lmlab.train.init_from``), but the composed model is
    checked first: a refusal then says why a model the user did not ask for (the default
    preset's family) is checked at all."""
    try:
        return to_schema(ModelConfig, cfg.model, "model.")
    except ConfigError as err:
        if not cfg.get("init_from"):
            raise
        raise ConfigError(
            f"{err}. init_from={cfg.init_from} takes the architecture from the checkpoint, "
            f"but the composed model (model.family={cfg.model.get('family')}, from the model= "
            "preset or the default's) is checked first: drop the +experiment or model.<field> "
            "override that does not fit it (the checkpoint brings its architecture), or name "
            "the checkpoint's own preset (model=<family>_<size>)"
        ) from None


# The shortest sequence each family's objective can fill: BERT frames a row as [CLS] row [SEP];
# T5's span corruption turns two tokens into one kept token, one sentinel and EOS
# (lmlab.data.collators, tested there).
MIN_SEQ_LEN = {Family.gpt: 1, Family.bert: 3, Family.t5: 3}


def sequence_length(model_cfg: ModelConfig, data_cfg: DataConfig, source: str = "") -> int:
    """``data.seq_len``, or the model's ``max_seq_len`` when null, checked against both and
    against what the family's objective needs. ``source``: where the model's positions come
    from when not from ``model.max_seq_len`` (``init_from=<file>``'s checkpoint)."""
    seq_len = model_cfg.max_seq_len if data_cfg.seq_len is None else data_cfg.seq_len
    shortest = MIN_SEQ_LEN[Family(model_cfg.family)]
    if seq_len < shortest:
        raise ConfigError(
            f"data.seq_len={seq_len} is too short for a {Family(model_cfg.family).value} "
            f"model: at least {shortest}"
        )
    if seq_len > model_cfg.max_seq_len:
        most = model_cfg.max_seq_len
        limit = f"the max_seq_len of {source}, {most}," if source else f"model.max_seq_len={most},"
        raise ConfigError(
            f"data.seq_len={seq_len} is above {limit} the positions the model has; allowed: "
            f"{shortest} to {most}"
        )
    return seq_len


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore: ``conf/model/*.yaml``, ``conf/data/*.yaml``,
    ``conf/budget/*.yaml`` and ``conf/task/*.yaml`` start with ``defaults: [base_model, _self_]``
    (``base_data``, ``base_budget``, ``base_task``), so an unknown key or enum value fails at
    compose time."""
    cs = ConfigStore.instance()
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="budget", name="base_budget", node=BudgetConfig)
    cs.store(group="task", name="base_task", node=TaskConfig)
