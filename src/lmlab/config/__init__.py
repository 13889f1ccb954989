"""The configuration: every knob as a str-Enum, and the structured configs Hydra validates at
compose time, one module per group (knobs, model, data, run, task), how a node becomes a checked
dataclass (schema) and how a composed config is checked as a whole (resolve). Everything is
importable from ``lmlab.config``.

No torch import here: composing and validating a config must be cheap (``--cfg job`` and the
preset x experiment tests load this package only).
"""

from __future__ import annotations

from pathlib import Path

from lmlab.config.data import DataConfig, Source, TokenizerKind
from lmlab.config.knobs import (
    GATED,
    IGNORE,
    RUNTIME_FIELDS,
    TABLED_POSITIONS,
    Activation,
    AttentionKernel,
    CrossEntropy,
    Family,
    Init,
    Norm,
    NormPlacement,
    Positional,
    RopeScaling,
)
from lmlab.config.model import ModelConfig, MoEConfig, model_config_dict
from lmlab.config.resolve import (
    LAUNCHER_VARIABLES,
    MIN_SEQ_LEN,
    check_fused,
    check_launch,
    check_optimizer,
    register_configs,
    resolve_configs,
    sequence_length,
)
from lmlab.config.run import (
    INFER_TASKS,
    MATMUL_PRECISIONS,
    MAX_GEN_TOKS,
    BudgetConfig,
    BudgetKind,
    CheckpointConfig,
    Compile,
    EvalConfig,
    GuardConfig,
    GuardMode,
    ParamCount,
    RunConfig,
    check_infer_task,
    check_sampling,
    compile_mode,
)
from lmlab.config.schema import flatten, omegaconf_error, redact, to_schema
from lmlab.config.task import (
    FILE_FORMATS,
    PRETRAINING,
    SHIPPED_TASKS,
    SOURCE_IGNORES,
    SOURCE_NEEDS,
    TASK_FAMILIES,
    TaskConfig,
    TaskKind,
    TaskSource,
    TaskSpec,
    check_example_file,
    check_task_model,
    resolve_task,
)

# The Hydra config tree that ``lmlab train`` composes (``conf/`` at the repository root).
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def group_options(group: str) -> list[str]:
    """The options of the config group ``group`` (``conf/<group>/*.yaml``), sorted: what a
    refusal of ``<group>=`` lists as allowed."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


__all__ = [
    "Activation",
    "AttentionKernel",
    "IGNORE",
    "CrossEntropy",
    "BudgetConfig",
    "BudgetKind",
    "check_example_file",
    "check_launch",
    "check_fused",
    "check_optimizer",
    "check_infer_task",
    "check_sampling",
    "check_task_model",
    "CheckpointConfig",
    "Compile",
    "compile_mode",
    "CONF_DIR",
    "group_options",
    "DataConfig",
    "EvalConfig",
    "Family",
    "FILE_FORMATS",
    "flatten",
    "redact",
    "GATED",
    "GuardConfig",
    "GuardMode",
    "INFER_TASKS",
    "Init",
    "LAUNCHER_VARIABLES",
    "MATMUL_PRECISIONS",
    "MAX_GEN_TOKS",
    "model_config_dict",
    "ModelConfig",
    "MoEConfig",
    "Norm",
    "NormPlacement",
    "omegaconf_error",
    "ParamCount",
    "Positional",
    "TABLED_POSITIONS",
    "PRETRAINING",
    "register_configs",
    "resolve_configs",
    "resolve_task",
    "RunConfig",
    "RopeScaling",
    "RUNTIME_FIELDS",
    "sequence_length",
    "MIN_SEQ_LEN",
    "SHIPPED_TASKS",
    "Source",
    "SOURCE_IGNORES",
    "SOURCE_NEEDS",
    "TASK_FAMILIES",
    "TaskConfig",
    "TaskKind",
    "TaskSource",
    "TaskSpec",
    "to_schema",
    "TokenizerKind",
]
