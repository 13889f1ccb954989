"""What a resumed run checks of the run it continues, and what a new run checks of the
directory it is given (``resume``, ``resume=auto``, ``ckpt_path``): the same model, data,
optimizer and schedule (``run_config.yaml``) and steps left to train; what the checkpoint
itself must match is ``lmlab.train.checkpoint_check``'s. Reads run directories, never writes
them (``lmlab.train.rundir`` writes)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lmlab.config import (
    RUNTIME_FIELDS,
    BudgetKind,
    ModelConfig,
    TaskKind,
    flatten,
    model_config_dict,
)
from lmlab.config.asked import pasteable
from lmlab.config.local_paths import launch_cwd, named_files
from lmlab.errors import ConfigError
from lmlab.files import CHECKPOINTS, PLAN, RUN_CONFIG, checkpoints_in, read_record
from lmlab.infer.checkpoint import newest_checkpoint, read_checkpoint
from lmlab.train.completed import (
    already_done,
    done_before_data,
    finished_run,
    kept_record,
    read_results,
)
from lmlab.train.init_from import same_source
from lmlab.train.plan import RunPlan, check_resumable, read_plan
from lmlab.train.runfiles import (
    absolute,
    asked_checkpoint,
    holds_run,
    launch_rank_is_zero,
    run_files_in,
)
from lmlab.train.strategy_check import check_strategy_loads

log = logging.getLogger(__name__)

# What a resumed run must share with the run it continues.
RESUME_KEYS = ("model", "data", "optim", "scheduler", "seed", "init_from")
# ... and of the trainer: how the gradients are clipped (the update's arithmetic). Its
# precision is recorded too, but a resume may change it (another GPU, or a CPU: the same
# function, rounded otherwise), with a warning. A run_config.yaml saved before these were
# held in it has no ``trainer`` and is not compared on them.
TRAINER_IDENTITY = ("gradient_clip_val", "gradient_clip_algorithm", "precision")
CHANGEABLE = ("trainer.precision",)


# A saved config without a field (one added since it was saved: the MoE block, RoPE scaling)
# had its default, which keeps what older models computed.
ADDED_MODEL_FIELDS = flatten(model_config_dict(ModelConfig()), "model")


# A null that stands for another field's value: set to that value, it is the same run.
NULL_MEANS = {"data.seq_len": "model.max_seq_len", "data.val_batch_size": "data.batch_size"}
# Lightning's clipping algorithm, unset or null: its default, norm; read in any case.
CLIP_ALGORITHM, CLIP_DEFAULT = "trainer.gradient_clip_algorithm", "norm"

# How the global batch is split (micro-batch x devices x accumulation) or named (sequences,
# tokens, or null: micro-batch x devices): a run resumed on another device count names it its
# own way. plan.json holds the global batch itself, which ``check_resumable`` compares, so
# with it these fields are left to that check (without it, compared as they were saved).
BATCH_FIELDS = (
    "data.batch_size",
    "data.val_batch_size",
    "data.global_batch_size",
    "data.global_batch_tokens",
)

# The statuses of a stop, whose results.json names the step of the checkpoint it saved.
STOPS = ("preempted", "interrupted")

# Fields of run_identity that set what validation measures, not what is trained: a resume may
# change them, as it may trainer.val_check_interval (which run_identity does not hold).
VALIDATION_FIELDS = ("task.decode_rows",)


def differences(a: dict, b: dict, prefix: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """Fields that differ between ``a`` (saved) and ``b`` (now), RUNTIME_FIELDS,
    VALIDATION_FIELDS and ``ignore`` aside."""
    flat_a, flat_b = flatten(a, prefix), flatten(b, prefix)
    if any(k.startswith("model.") for k in flat_a):
        flat_a = {**ADDED_MODEL_FIELDS, **flat_a}
    for flat in (flat_a, flat_b):
        for key, source in NULL_MEANS.items():
            if key in flat and flat[key] is None:
                flat[key] = flat.get(source)
        if any(k.startswith("trainer.") for k in flat):  # one setting, two spellings
            flat[CLIP_ALGORITHM] = str(flat.get(CLIP_ALGORITHM) or CLIP_DEFAULT).lower()
    for key in [k for k in {*flat_a, *flat_b} if k.split(".")[-1] in RUNTIME_FIELDS]:
        flat_a.pop(key, None), flat_b.pop(key, None)  # how the model runs, not what it is
    for key in (*VALIDATION_FIELDS, *ignore):  # what validation measures; checked elsewhere
        flat_a.pop(key, None), flat_b.pop(key, None)
    return [
        f"{k}: {flat_a.get(k)!r} (saved) vs {flat_b.get(k)!r} (now)"
        for k in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(k) != flat_b.get(k)
    ]


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (saved as ``run_config.yaml``):
    the ``task`` too when it fine-tunes (a pre-training run's identity stays as it was)."""
    fine_tuning = TaskKind(cfg.get("task", {}).get("kind", TaskKind.lm)) != TaskKind.lm
    keys = (*RESUME_KEYS, "task") if fine_tuning else RESUME_KEYS
    identity = {
        k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True)
        if OmegaConf.is_config(cfg[k])
        else cfg[k]
        for k in keys
    }
    trainer = cfg.get("trainer") or {}
    identity["trainer"] = {k: trainer.get(k) for k in TRAINER_IDENTITY if k in trainer}
    return identity


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to continue from (``ckpt_path=`` or ``resume=true``), after checking the
    run directory: a resumed run must have the same model, data, optimizer and schedule, and a
    fresh run must not overwrite another run's checkpoints. Reads, never writes."""
    resume = cfg.get("resume")
    if resume not in (True, False, "auto", None):
        raise ConfigError(f"resume={resume!r}: allowed true, false, auto")
    found = checkpoints_in(out_dir)
    if resume == "auto":  # a requeued SLURM job: continue if there is anything to continue
        resume = bool(found)
    if resume:
        if not found:
            restart = (
                f"; the run there {no_checkpoint_left(out_dir)}: resume=auto starts it again "
                "from step 0 with the same config"
                if holds_run(out_dir) and not finished_run(out_dir)
                else ""
            )
            if not holds_run(out_dir):  # a new folder, or one a run stopped before training
                restart = "; no run trained there: start it without resume=true (or resume=auto)"
            raise ConfigError(
                f"resume=true but {out_dir / CHECKPOINTS / 'last.ckpt'} does not exist "
                f"(nothing to resume in hydra.run.dir={out_dir}){restart}"
            )
        check_same_run(cfg, out_dir, "the checkpoints were trained with", continues=True)
        # plan.json (unreadable, or of another data preparation) is checked by ``train()``
        # before the data is prepared, once it knows whether the run has steps left
        return check_strategy_loads(cfg.trainer, newest_checkpoint(found))
    if found:
        raise ConfigError(
            f"hydra.run.dir={out_dir} already holds checkpoints of an earlier run: continue "
            f"it with {resume_command(out_dir)}, or choose another directory"
        )
    started = (out_dir / RUN_CONFIG).exists()  # written when training starts
    if cfg.get("resume") == "auto" and started:
        # no checkpoint: an earlier attempt of this config (killed before its first save,
        # or completed without one) starts again or stays as it is; another config's run
        # is not overwritten
        check_same_run(cfg, out_dir, "the run there was started with")
    elif holds_run(out_dir) and launch_rank_is_zero():  # other ranks start once it wrote
        # without run_config.yaml nothing of it trained here (another run's eval/ records
        # alone): resume=auto has nothing of it to start again either
        written = run_files_in(out_dir)
        restart = (
            ""
            if finished_run(out_dir) or not started
            else f"; it {no_checkpoint_left(out_dir)}: resume=auto starts it again from step 0 "
            "with the same config"
        )
        raise ConfigError(
            f"hydra.run.dir={out_dir} already holds an earlier run ({written}; no checkpoint "
            f"to resume){restart}: choose another directory, or move that run away first"
        )
    return asked_checkpoint(cfg)


def resumed_from(ckpt_path: Path) -> Path:
    """The checkpoint a run continues, as its record names it: a link (``last.ckpt``) as the
    file it points to now, before this run's first save points it at another step."""
    if not ckpt_path.is_symlink():
        return ckpt_path
    return ckpt_path.parent / ckpt_path.readlink()  # a relative link; an absolute one as is


def no_checkpoint_left(out_dir: Path) -> str:
    """Why the run in ``out_dir``, which did not complete, has no checkpoint, as far as the
    directory tells: a stop's record names the step it saved; ``checkpoints/`` is made by the
    first save, and a save that was killed leaves its temporary file there (``.*.tmp``,
    ``.*.old``). Neither: it stopped before its first checkpoint, or the folder was removed
    with them. A stop that saved none says so in its record (a second Ctrl-C stopped the
    first save, whose temporary file went, and the folder stayed)."""
    record = kept_record(read_results(out_dir)) or {}
    stopped = record.get("status") in STOPS
    step = record.get("global_step") if stopped else None
    ckpt_dir = out_dir / CHECKPOINTS
    if step is not None:
        return f"saved checkpoints, the last at step {step}, since removed"
    if stopped:  # a stop that saved none: its record says "no checkpoint to resume from"
        return "stopped before its first checkpoint"
    if ckpt_dir.is_dir() and not [*ckpt_dir.glob(".*.tmp"), *ckpt_dir.glob(".*.old")]:
        return "saved checkpoints into checkpoints/, since removed"
    return (
        "holds no checkpoint, whether they were removed or it stopped before its first checkpoint"
    )


def check_same_run(cfg: DictConfig, out_dir: Path, what: str, continues: bool = False) -> None:
    """The run in ``out_dir`` has the model, data, optimizer and schedule of ``cfg``: its
    ``run_config.yaml`` (``what``: whose config that is) names no other value. ``continues``:
    from a checkpoint, whose global batch plan.json holds (``BATCH_FIELDS``); a run started
    again from step 0 in its place has the config's own fields compared."""
    saved_path = out_dir / RUN_CONFIG
    if not saved_path.is_file():
        raise ConfigError(
            f"cannot resume {out_dir}: its {RUN_CONFIG} (the model, data, optimizer and "
            f"schedule {what}) is missing, so this config cannot be checked against it: "
            "restore it from a copy of the run, or start a new run in another directory "
            "(from the weights: init_from=<checkpoint>)"
        )
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    except (OSError, ValueError, yaml.YAMLError) as err:
        saved = f"{type(err).__name__}: {err}".splitlines()[0]
    if not isinstance(saved, dict):
        raise ConfigError(
            f"cannot resume {out_dir}: its {RUN_CONFIG} cannot be read as a config "
            f"({saved if isinstance(saved, str) else type(saved).__name__}): restore it from a "
            "copy of the run, or start a new run in another directory"
        )
    planned = continues and (out_dir / PLAN).is_file()  # checked against its batch
    now = run_identity(cfg)
    if "trainer" not in saved:  # saved before it held the trainer's fields
        now.pop("trainer")
    typed, started = cfg.get("init_from"), saved.get("init_from")
    if typed and started:  # the file it names, not the words (relative, through a link)
        record = read_record(out_dir / PLAN)
        if same_source(typed, started, record):
            now["init_from"] = started
        elif loaded := (record.get("init_source") or {}).get("file"):
            saved["init_from"] = f"{started} ({loaded})"  # which file that was
    saved, now = same_files(flatten(saved), launch_cwd(out_dir), flatten(now))
    found = differences(saved, now, ignore=BATCH_FIELDS if planned else ())
    changed = [d for d in found if d.startswith(CHANGEABLE)]
    diffs = [d for d in found if d not in changed]
    if continues and changed and not diffs:
        log.warning(
            "%s: the steps from the checkpoint on train in the new one; run_config.yaml and "
            "plan.json will hold it",
            "; ".join(changed),
        )
    if diffs:
        raise ConfigError(
            f"cannot resume {out_dir}: it holds another config; differing "
            f"fields: {'; '.join(diffs[:8])}"
        )


def same_files(
    saved: dict[str, Any], saved_cwd: str | None, now: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flat configs ``saved`` (read in ``saved_cwd``, its launch's working directory;
    None: unknown, taken as this one's, as the words were compared) and ``now`` (read here),
    their local paths compared as the files they name (``named_files``): a path field of
    ``now`` that names the file ``saved``'s named takes ``saved``'s words (``./x.jsonl`` then,
    its absolute path now); one that names another file, spelt the same or not, is shown with
    the file each names."""
    here = os.getcwd()
    was, named = named_files(saved, saved_cwd or here), named_files(now, here)
    saved, now = dict(saved), dict(now)
    for key in was.keys() | named.keys():
        if was.get(key) == named.get(key):
            now[key] = saved[key]
            continue
        for config, names in ((saved, was), (now, named)):
            if key in names and names[key] != config[key]:
                config[key] = f"{config[key]} ({names[key]})"
    return saved, now


def check_continues(cfg: DictConfig, plan: RunPlan, out_dir: Path) -> None:
    """What a resumed run checks of the run it continues in ``out_dir`` (``resume_checkpoint``:
    its checkpoint and config; ``check_resumable``: its plan's task, global batch and
    sequence length; ``already_done``: its checkpoint is not past the planned steps), for a
    resumed sweep's job before any job of the sweep starts: a grid reordered
    (``trainer.max_steps=2,4`` resumed as ``4,2``) extended job 0 before job 1 was refused.
    A completed job with no step left (``done_before_data``) is checked no further, as its run
    checks it. Steps that a ``flops`` or ``chinchilla`` budget sets rest on the parameter
    count, which a sweep's checks take at the tokenizer's target vocabulary: those are left to
    ``train()`` where the job has steps left."""
    ckpt_path = resume_checkpoint(cfg, out_dir)
    exact = BudgetKind(plan.budget.kind) in (BudgetKind.steps, BudgetKind.tokens)
    if ckpt_path is None or not (exact or finished_run(out_dir)):
        check_resumable(read_plan(out_dir), plan, out_dir)
        return
    ckpt = read_checkpoint(ckpt_path)
    if done_before_data(cfg, plan.batch, out_dir, ckpt, ckpt_path) is not None:
        return
    check_resumable(read_plan(out_dir), plan, out_dir)
    if exact:
        already_done(out_dir, plan.steps, ckpt, ckpt_path)


def resume_command(out_dir: Path) -> str:
    """How to continue a run that stopped: in a sweep, the sweep (a stop ends it: this job
    continues and the jobs after it run), else the run; the folder quoted as the shell and
    Hydra read it back (``pasteable``)."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = absolute(HydraConfig.get().sweep.dir)
        folder = pasteable("hydra.sweep.dir", str(sweep_dir))
        return f"python src/train.py -m <same overrides> resume=auto {folder}"
    folder = pasteable("hydra.run.dir", str(out_dir))
    return f"python src/train.py <same overrides> resume=true {folder}"
