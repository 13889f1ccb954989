"""What a checkpoint must match for a run to continue from it (``ckpt_path``, ``resume``):
lmlab's own, with an optimizer state (not weights only), the same architecture, knobs and task
(``check_checkpoint_model``), the same tokenizer (``check_same_tokenizer``), and the optimizer
settings its state would restore (``check_checkpoint_optimizer``). The run directory's own
record is ``lmlab.train.resume``'s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from lmlab.config import PRETRAINING, ModelConfig, TaskKind, TaskSpec, model_config_dict
from lmlab.config.task import EXAMPLES_DIGEST
from lmlab.errors import ConfigError
from lmlab.infer.checkpoint import holds_weights_only
from lmlab.train.plan import PREPARED_OTHERWISE, TEXT_DIGEST
from lmlab.train.resume import differences


def check_same_tokenizer(
    ckpt: dict, path: Path, tokenizer: Any, corpus: dict[str, Any] | None = None
) -> None:
    """The data's tokenizer now is the checkpoint's: a changed corpus (or a fine-tuning run's
    changed examples) trains another one, whose ids would not mean what the weights learnt.
    ``corpus``: this run's corpus record (its text digest); where the checkpoint records the
    same text, the corpus and settings are the run's, and the refusal says that lmlab trains
    the tokenizer otherwise than the lmlab that saved it."""
    saved = ckpt.get("tokenizer")
    if saved is None or tokenizer is None or json.loads(saved) == json.loads(tokenizer.to_str()):
        return
    was, now = Tokenizer.from_str(saved).get_vocab_size(), tokenizer.get_vocab_size()
    sizes = f"{was:,} tokens then, {now:,} now" if was != now else f"{now:,} tokens each"
    fine_tuning = TaskKind(ckpt.get("task", {}).get("kind", TaskKind.lm)) != TaskKind.lm
    data = (
        "the examples of task.train or task.val (or of task.source's task.name)"
        if fine_tuning
        else "the corpus"
    )
    weights = (
        f"start a new run in another directory from its weights: init_from={path} "
        "data.tokenizer=checkpoint"
    )
    digest = ((ckpt.get("run_state") or {}).get("corpus") or {}).get(TEXT_DIGEST)
    if digest is not None and digest == (corpus or {}).get(TEXT_DIGEST):
        raise ConfigError(
            f"checkpoint {path} was trained with another tokenizer than this lmlab trains on "
            f"the same corpus (its text digest {digest}) and settings ({sizes}): the lmlab "
            f"that saved it prepared the data otherwise ({PREPARED_OTHERWISE}). Finish the run "
            f"with the lmlab version that started it, or {weights}"
        )
    older = "" if digest is not None else ", or the lmlab that saved it prepared it otherwise"
    raise ConfigError(
        f"checkpoint {path} was trained with another tokenizer than the one this run's data "
        f"gives now ({sizes}; {data}, data.tokenizer or data.vocab_size changed since{older}): "
        f"resume with the data it was trained on, or {weights}"
    )


# The optimizer settings a checkpoint's optimizer state restores (AdamW's param_groups): the
# optim field and its key there. The learning rate is the schedule's base, ``initial_lr``.
RESTORED_OPTIM = {
    "lr": "initial_lr",
    "betas": "betas",
    "eps": "eps",
    "weight_decay": "weight_decay",
}


def check_checkpoint_optimizer(ckpt: dict, path: Path, optim: DictConfig) -> None:
    """A checkpoint's optimizer state brings its own learning rate, betas, eps and weight
    decay: ``ckpt_path=`` in a new directory with other ``optim`` values trained with the
    checkpoint's while ``run_config.yaml`` recorded the new ones. Refused, naming each field
    (a resume's ``run_config.yaml`` check names them first). A sharded checkpoint keeps its
    optimizer state in the shards: not checked."""
    groups = [g for state in ckpt.get("optimizer_states", [])[:1] for g in state["param_groups"]]
    now = OmegaConf.to_container(optim, resolve=True)
    diffs = []
    for field, key in RESTORED_OPTIM.items():
        if not groups or field not in now or key not in groups[0]:
            continue
        # the groups differ in weight decay only: the decayed one's is the setting
        saved = max(g[key] for g in groups) if field == "weight_decay" else groups[0][key]
        if _as_floats(saved) != _as_floats(now[field]):
            diffs.append(f"optim.{field}: {_as_floats(saved)} (saved) vs {now[field]} (now)")
    if diffs:
        raise ConfigError(
            f"checkpoint {path} continues its optimizer, which restores its own settings: "
            f"{'; '.join(diffs)}; this run would train with the saved ones. Keep them, or start "
            f"a fresh optimizer from its weights with init_from={path} data.tokenizer=checkpoint"
        )


def _as_floats(value: Any) -> Any:
    """A number as a float, a list or tuple (AdamW's betas) as a tuple of floats."""
    return tuple(map(float, value)) if isinstance(value, list | tuple) else float(value)


def check_checkpoint_model(
    ckpt: dict, path: Path, model_cfg: ModelConfig, task: TaskSpec | None = PRETRAINING
) -> None:
    """A checkpoint from another architecture, knob setting or task (another head, other
    labels) is refused, naming the fields; a weights-only file (``consolidate``'s) too: it
    has no optimizer state or step to continue from; a checkpoint with no model config (another
    program's Lightning checkpoint) is refused as not lmlab's. ``task`` None: before the data
    is read, what it decides is not compared yet (the task's labels, and a ``vocab_size``
    left to the tokenizer)."""
    if "model_config" not in ckpt:
        raise ConfigError(
            f"checkpoint {path} is not an lmlab checkpoint (no model_config: another program's "
            "Lightning checkpoint?): a run continues only from a checkpoint lmlab saved"
        )
    if holds_weights_only(ckpt, path):
        raise ConfigError(
            f"checkpoint {path} holds weights only (as `lmlab consolidate` writes them: no "
            f"optimizer state or step), so a run cannot continue from it: start a new run in "
            f"another directory from its weights with init_from={path}"
        )
    later = ("model.vocab_size",) if task is None and model_cfg.vocab_size is None else ()
    diffs = differences(ckpt.get("model_config", {}), model_config_dict(model_cfg), "model", later)
    # the examples' digest is the data's, not the model's: plan.json's is compared with this
    # run's (plan.check_resumable), and checkpoints written before it have none
    if task is not None:
        saved, now = (
            {k: v for k, v in record.items() if k != EXAMPLES_DIGEST}
            for record in (ckpt.get("task", PRETRAINING.record()), task.record())
        )
        diffs += differences(saved, now, "task")
    if diffs:
        raise ConfigError(
            f"checkpoint {path} was trained with another model; differing fields: "
            + "; ".join(diffs)
        )
