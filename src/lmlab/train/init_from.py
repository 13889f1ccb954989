"""``init_from=<checkpoint>``: start a run from a checkpoint's weights with a fresh optimizer
and schedule (nanoGPT's ``init_from``): continued pre-training, or fine-tuning a converted
Hugging Face model on the user's text.

The architecture is the checkpoint's: the run's model config is the checkpoint's
``model_config``, and only the fields that carry no weights (``model.dropout`` and the
runtime fields, such as ``model.activation_checkpointing``) come from the composed config. A
``model=``/``model.<field>=`` override or a ``+experiment=`` that asks for another architecture
is refused, naming the field, before any data is prepared. The token ids only mean something
with the checkpoint's own tokenizer, so ``data.tokenizer=checkpoint`` is required.

plan.json records what was loaded (``init_source``: the path made absolute, the file a
``last.ckpt`` link pointed at, and its step), which a resume keeps: the source run may have
trained on since. A resume names the same source however it is spelt (``same_source``): from
another working folder, by its absolute path, through a linked folder, by the step file.

Fine-tuning a classifier (``task=classify``) takes the checkpoint's encoder and leaves its head
out: the keys under ``FRESH_PREFIXES`` (BERT's MLM head, or another classifier's head) are
dropped from the checkpoint and the model's own keys there start from their initialisation.
Every other key must load, with its shape, as for pre-training.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmlab.config import (
    RUNTIME_FIELDS,
    DataConfig,
    ModelConfig,
    MoEConfig,
    TaskKind,
    TokenizerKind,
    model_config_dict,
    to_schema,
)
from lmlab.config.asked import asked_fields, asked_paths, command_line_overrides
from lmlab.config.local_paths import source_name
from lmlab.data.tokenizer import document_end_id
from lmlab.errors import ConfigError
from lmlab.files import PLAN, RUN_CONFIG, checkpoints_in, read_record
from lmlab.infer.checkpoint import (
    consolidate,
    is_sharded,
    newest_checkpoint,
    no_checkpoint,
    read_checkpoint,
)
from lmlab.infer.ckpt_tokenizer import stored_tokenizer
from lmlab.infer.declared import Declared
from lmlab.infer.pretrained import check_finite, model_state

log = logging.getLogger(__name__)

# Model fields a run may set differently from the checkpoint it starts from: none has weights.
# The run's own value (its config's) is taken. ``init`` and ``init_std`` say only how weights
# the checkpoint does not hold start (a classifier's fresh head); ``from_hf`` cannot read
# them (a converted T5 has the default init, ``model=t5_* +experiment=t5`` asks for T5's).
FREE_FIELDS = ("dropout", *RUNTIME_FIELDS, "init", "init_std")
# The MoE fields that weigh or limit routing in training only (no weights): the checkpoint's
# value, unless the command asks for another (fine-tuning a converted Mixtral without the
# z-loss it never had: ``model.moe.z_loss_coef=0``).
FREE_MOE_FIELDS = ("aux_loss_coef", "z_loss_coef", "capacity_factor")
# Per task, the model keys (prefixes) that start fresh: left out of the checkpoint, initialised
# in the model. A classifier's head replaces whatever head the checkpoint had.
FRESH_PREFIXES: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.lm: (),
    TaskKind.classify: ("head.",),
    TaskKind.seq2seq: (),
}
# Per task, the checkpoints (their task; pre-training's have none) it can start from: a
# classifier has no MLM head to continue pre-training with.
STARTS_FROM: dict[TaskKind, tuple[TaskKind, ...]] = {
    TaskKind.lm: (TaskKind.lm, TaskKind.seq2seq),
    TaskKind.classify: (TaskKind.lm, TaskKind.classify),
    TaskKind.seq2seq: (TaskKind.lm, TaskKind.seq2seq),
}


# A model preset (``model=gpt_small``) asks for every field of the architecture.
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
MOE_ARCHITECTURE = tuple(
    f.name for f in dataclasses.fields(MoEConfig) if f.name not in FREE_MOE_FIELDS
)
# The fields init_from takes from the checkpoint, dotted: the architecture.
ARCHITECTURE = frozenset(
    [n for n in MODEL_FIELDS if n not in FREE_FIELDS and n != "moe"]
    + [f"moe.{n}" for n in MOE_ARCHITECTURE]
)


@dataclasses.dataclass(frozen=True)
class InitFrom:
    path: Path  # as typed
    model_cfg: ModelConfig
    tokenizer: str  # the tokenizer's JSON
    # plan.json's record of the source: ``init_from`` as typed when the run started and
    # ``init_source`` (``loaded_source``); a resume's is the run's own record
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    declared: Declared = Declared()  # what a converted model declares: kept by the run

    @property
    def file(self) -> Path:
        """The file (or sharded folder) the weights are loaded from: the one whose metadata was
        read, although a ``last.ckpt`` named may since point at a newer step."""
        return Path(self.record.get("init_source", {}).get("file") or self.path)


def loaded_source(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a run records of the checkpoint it starts from (plan.json's ``init_source``): its
    ``source_name``, the ``file`` read (links followed: which step a ``last.ckpt`` was) and
    that checkpoint's ``global_step`` (null for a converted Hugging Face model)."""
    return {
        "path": source_name(path),
        "file": os.path.realpath(path),
        "global_step": ckpt.get("global_step"),
    }


def same_source(typed: str, saved: str | None, record: dict[str, Any]) -> bool:
    """Whether ``init_from=typed`` names the source of the run whose ``run_config.yaml`` has
    ``init_from: saved`` and whose plan.json holds ``record``: the words typed at the start
    (``record["init_from"]``), the same ``source_name``, or a path to the very file loaded
    (the step a ``last.ckpt`` pointed at, or a link to it). A resume reads its own checkpoint,
    not this file, which may be gone or hold another model by now."""
    source = record.get("init_source") or {}
    names = {source_name(n) for n in (saved, source.get("path")) if n}
    return (
        typed == record.get("init_from")
        or source_name(typed) in names
        or os.path.realpath(os.path.expanduser(typed)) == source.get("file")
    )


def resolve_init_from(
    cfg: DictConfig, composed: ModelConfig, data_cfg: DataConfig, task: TaskKind = TaskKind.lm
) -> InitFrom | None:
    """The checkpoint ``init_from`` names, its model config (with this run's free fields) and
    tokenizer; None without ``init_from``. Reads the checkpoint's metadata only. A checkpoint
    ``task`` cannot start from (``STARTS_FROM``) is refused."""
    path = cfg.get("init_from")
    if data_cfg.tokenizer == TokenizerKind.checkpoint and not path:
        raise ConfigError("data.tokenizer=checkpoint needs init_from=<checkpoint file or folder>")
    if not path:
        return None
    # a resume takes them from the run's own checkpoint, whatever the file now holds
    resumed = resumed_from(cfg, str(path))
    path = Path(path).expanduser()  # quoted for Hydra, a shell leaves the ~
    source = resumed[0] if resumed else path if path.is_file() or is_sharded(path) else None
    if source is None:
        raise no_checkpoint("init_from", path)
    ckpt = read_checkpoint(source)
    if "model_config" not in ckpt or "state_dict" not in ckpt and not is_sharded(source):
        raise ConfigError(f"init_from={path}: not an lmlab checkpoint (no model_config/weights)")
    if data_cfg.tokenizer != TokenizerKind.checkpoint:
        raise ConfigError(
            f"init_from={path} needs data.tokenizer=checkpoint: the checkpoint's token ids mean "
            f"something only with its own tokenizer (data.tokenizer={data_cfg.tokenizer.value} "
            "would train another)"
        )
    if "tokenizer" not in ckpt:
        raise ConfigError(
            f"init_from={path} holds no tokenizer, so data.tokenizer=checkpoint has none: "
            "converted from a Hugging Face folder without tokenizer files? Put the model's "
            "(tokenizer.json, tokenizer_config.json) in that folder and run from_hf again"
        )
    saved_task = TaskKind(ckpt.get("task", {}).get("kind", TaskKind.lm))
    if saved_task not in STARTS_FROM[task]:
        raise ConfigError(
            f"init_from={path} holds a task={saved_task.value} model; task={task.value} starts "
            f"from {' or '.join(k.value for k in STARTS_FROM[task])} checkpoints only"
        )
    saved = to_schema(ModelConfig, ckpt["model_config"], "model.")
    overrides = command_line_overrides()
    moe_asked = [p.removeprefix("moe.") for p in asked_paths(overrides, "model")]
    moe = {n: getattr(composed.moe, n) for n in FREE_MOE_FIELDS if n in moe_asked}
    free = {name: getattr(composed, name) for name in FREE_FIELDS if hasattr(composed, name)}
    model_cfg = dataclasses.replace(saved, **free, moe=dataclasses.replace(saved.moe, **moe))
    differs = {  # a field left null (the vocabulary, d_ff) is derived: it asks for nothing
        name: where
        for name, where in asked_architecture(overrides).items()
        if (value := field_value(composed, name)) is not None and value != field_value(saved, name)
    }
    if differs:
        asked = {name: f"model.{name}={_shown(field_value(composed, name))}" for name in differs}
        shown = "; ".join(  # where it came from, unless that is the field typed as shown
            asked[name]
            + ("" if where.lstrip("+") == asked[name] else f" (from {where})")
            + f" but the checkpoint has {_shown(field_value(saved, name))}"
            for name, where in sorted(differs.items())
        )
        free_names = [f for f in FREE_FIELDS if hasattr(saved, f)]
        free_names += [f"moe.{f}" for f in FREE_MOE_FIELDS]
        raise ConfigError(
            f"init_from={path} takes the architecture from the checkpoint: {shown}. Only "
            f"{', '.join('model.' + f for f in free_names)} may be set"
        )
    record = resumed[1] if resumed else {"init_source": loaded_source(path, ckpt)}
    declared = Declared.read(ckpt, f"init_from={path}")  # what a converted model declares
    if declared.eos_tokens or declared.roles or declared.generation_ends():
        # its names are its tokenizer's: parsed only to check them; the run ends its
        # documents with the EOS found by name, so its checkpoints' generation stops there too
        tok = stored_tokenizer(ckpt["tokenizer"], f"init_from={path}")
        declared = declared.checked(tok, f"init_from={path}")
        if (end := document_end_id(tok)) is not None:
            declared = declared.ending_also(end)
    return InitFrom(
        path, model_cfg, ckpt["tokenizer"], {"init_from": str(path), **record}, declared
    )


def resumed_from(cfg: DictConfig, path: str) -> tuple[Path, dict[str, Any]] | None:
    """Where this command resumes (``resume=true`` or ``auto``) the run that started from
    ``init_from`` (``same_source``): the run's newest checkpoint, which holds the architecture
    and tokenizer the run took (and the weights the resume restores), whether that file is gone
    or now holds another model (it was read, and the run's checkpoint refused as "another
    model"); and the run's record of its source in plan.json (``init_from`` as typed then and
    ``init_source``), which it keeps. Else None."""
    if cfg.get("resume") not in (True, "auto"):
        return None  # a new run: its folder is not listed
    out_dir = Path(cfg.paths.output_dir)
    found = checkpoints_in(out_dir)
    if not found:
        return None
    try:
        started = OmegaConf.load(out_dir / RUN_CONFIG).get("init_from")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return None  # no record of the run's start: resume_checkpoint names the damage
    plan = read_record(out_dir / PLAN)
    if started is None or not same_source(path, started, plan):
        return None
    newest = newest_checkpoint(found)
    log.info("init_from=%s: the architecture and tokenizer the run took are %s's", path, newest)
    kept = {k: plan[k] for k in ("init_from", "init_source") if k in plan}
    return newest, kept


def asked_architecture(overrides: list[str]) -> dict[str, str]:
    """{model field, dotted (``moe.num_experts``): the override that asked for it}, free
    fields left out: a preset asks for every field (and ``moe`` as a whole: its architecture
    fields, ``MOE_ARCHITECTURE``), an override or ``+experiment`` file for what it names."""
    whole = [f"moe.{n}" for n in MOE_ARCHITECTURE]  # what asking for ``moe`` itself asks for
    asked: dict[str, str] = {}
    for path, where in asked_paths(overrides, "model").items():  # model.moe={...} too
        asked.update({p: where for p in (whole if path == "moe" else [path]) if p not in asked})
    named = asked_fields(overrides, "model")  # by an override or a file, not a preset
    for name, where in asked_fields(overrides, "model", MODEL_FIELDS).items():
        if name not in named:  # a preset's
            asked.update({path: where for path in (whole if name == "moe" else [name])})
    return {name: where for name, where in asked.items() if name in ARCHITECTURE}


def field_value(cfg: ModelConfig, path: str) -> Any:
    """The value of a dotted model field (``moe.top_k``)."""
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part, None)
    return value


def _shown(value: Any) -> Any:
    return getattr(value, "value", value)


def load_weights(
    model: nn.Module, init: InitFrom, task: TaskKind = TaskKind.lm
) -> tuple[list[str], list[str]]:
    """The checkpoint's weights into ``model``: every key, every shape, but the keys
    ``task`` starts fresh (``FRESH_PREFIXES``). Returns (the checkpoint keys left out, the
    model keys left at their initialisation)."""
    ckpt = consolidate(init.file) if is_sharded(init.file) else read_checkpoint(init.file)
    state, fresh = model_state(ckpt["state_dict"]), FRESH_PREFIXES[task]
    check_finite(state, f"init_from={init.path}")
    dropped = sorted(k for k in state if k.startswith(fresh))
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(fresh)}, strict=False
    )
    wrong = [k for k in missing if not k.startswith(fresh)] + list(unexpected)
    if wrong:
        raise ConfigError(
            f"init_from={init.path} does not fit the task={task.value} model: "
            f"{', '.join(sorted(wrong)[:8])} missing or unexpected"
        )
    return dropped, sorted(missing)


def model_record(init: InitFrom) -> dict[str, Any]:
    """What plan.json records of the checkpoint a run started from (``init_from`` as typed,
    ``init_source``: what was loaded) and of the model it took from it."""
    return {**init.record, "model": model_config_dict(init.model_cfg)}
