"""The run's other groups: budget, compile, guard, checkpoint, evals, and the top-level
fields (RunConfig)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config.knobs import Choice, Family
from lmlab.errors import ConfigError, spelled


class BudgetKind(Choice):
    steps = "steps"  # trainer.max_steps as given
    chinchilla = "chinchilla"  # D = tokens_per_param * N (Hoffmann et al. 2022)
    flops = "flops"  # D = C / (6 N)
    tokens = "tokens"  # D given


class ParamCount(Choice):
    active = "active"  # parameters one token runs through (a MoE counts top_k of its experts)
    total = "total"  # every parameter (a MoE counts all its experts)


TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022's compute-optimal ratio, the default


@dataclass
class BudgetConfig:
    """How long to train (``budget=<kind>``, fields ``budget.<field>=...``).

    ``flops`` is needed by ``budget=flops`` and ``tokens`` by ``budget=tokens``; either set
    under another kind is an error rather than silently ignored. Both are floats so that
    ``budget.flops=1e18`` and ``budget.tokens=2e9`` can be typed.
    """

    kind: BudgetKind = BudgetKind.steps
    tokens_per_param: float = TOKENS_PER_PARAM
    flops: float | None = None
    tokens: float | None = None
    params: ParamCount = ParamCount.active
    """The N of D = tokens_per_param * N and C = 6 N D: ``active`` (the compute a token costs;
    a dense model's active parameters are all of them) or ``total`` (a MoE's every expert)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Each kind has the value it needs, and every value is positive."""
        kind = BudgetKind(self.kind)
        if not 0 < self.tokens_per_param < math.inf:  # NaN too: D = NaN x N has no steps
            raise ConfigError(
                f"budget.tokens_per_param={self.tokens_per_param} must be > 0 and finite"
            )
        if kind != BudgetKind.chinchilla and self.tokens_per_param != TOKENS_PER_PARAM:
            raise ConfigError(
                f"budget.tokens_per_param={self.tokens_per_param:g} is set but budget.kind="
                f"{kind.value} ignores it (choose budget=chinchilla)"
            )
        for name in ("flops", "tokens"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ConfigError(f"budget.{name}={value:g} must be a positive, finite number")
            needed = kind.value == name
            if needed and value is None:
                unit, example = ("FLOPs", "1e15") if name == "flops" else ("tokens", "2e9")
                raise ConfigError(f"budget={name} needs budget.{name}=<{unit}>, e.g. {example}")
            if not needed and value is not None:
                raise ConfigError(
                    f"budget.{name}={value:g} is set but budget.kind={kind.value} ignores it "
                    f"(choose budget={name})"
                )


class Compile(Choice):
    none = "none"  # eager
    blocks = "blocks"  # each transformer block, in place (true means this too)
    model = "model"  # the whole training loss: embeddings, blocks, head, cross-entropy


# What ``compile=`` takes, as a config spells it (a bool as ``spelled`` writes it: YAML's and
# Hydra's true/false in any case are bools already), and the mode each value selects.
COMPILE_VALUES = {
    "false": Compile.none,
    "true": Compile.blocks,
    "blocks": Compile.blocks,
    "model": Compile.model,
}


def compile_mode(value: object) -> Compile:
    """``compile=``: false, true (= blocks), blocks or model, exactly: ``none`` (the eager
    mode's name inside lmlab), null and another case (``Model``) are refused with what is
    allowed, as an enum field's unknown value is."""
    text = spelled(value) if isinstance(value, bool) else value
    if not isinstance(text, str) or text not in COMPILE_VALUES:
        raise ConfigError(
            f"compile={spelled(value, quote=True)}: allowed false, blocks, model (true = blocks)"
        )
    return COMPILE_VALUES[text]


# torch.set_float32_matmul_precision: "highest" is full fp32, "high" lets CUDA use TF32 (10-bit
# mantissa inputs, fp32 accumulation: about 8x the fp32 rate on Ampere and Hopper).
MATMUL_PRECISIONS = ("highest", "high", "medium")


class GuardMode(Choice):
    stop = "stop"  # end the run, naming the step and the last good checkpoint
    skip = "skip"  # drop the update, at most guard.max_skips times in a run
    off = "off"  # no check


@dataclass
class GuardConfig:
    """A NaN/inf loss or gradient norm (``guard.<field>``)."""

    mode: GuardMode = GuardMode.stop
    max_skips: int = 10
    """Updates ``mode=skip`` may drop before the run stops."""
    min_loss_scale: float = 1.0
    """Under fp16 with a GradScaler: the run stops once the loss scale is below this (read on
    logging steps). The scaler halves the scale at every step whose gradients overflow and
    skips that update, so a run whose every step overflows would otherwise go on updating
    nothing (DeepSpeed stops at its minimum scale too). 0 never stops."""

    def __post_init__(self) -> None:
        if self.max_skips < 0:
            raise ConfigError(f"guard.max_skips={self.max_skips} must be >= 0")
        if not 0 <= self.min_loss_scale < math.inf:
            raise ConfigError(
                f"guard.min_loss_scale={self.min_loss_scale} must be >= 0 and finite "
                "(0: never stop)"
            )


@dataclass
class CheckpointConfig:
    """When checkpoints are written (``checkpoint.<field>``)."""

    every_n_steps: int = 200
    """Steps between checkpoints; 0 writes only the final one (``checkpoints/last.ckpt``)."""

    def __post_init__(self) -> None:
        if self.every_n_steps < 0:
            raise ConfigError(
                f"checkpoint.every_n_steps={self.every_n_steps} must be >= 0 (0: the final "
                "checkpoint only)"
            )


# The tokens a generating task's answers may take where the task sets no length: lm-eval's
# HFLM's default, for ``lmlab evaluate``'s ``max_gen_toks=`` and training's ``eval.max_gen_toks``.
MAX_GEN_TOKS = 256


@dataclass
class EvalConfig:
    """lm-eval tasks run on the model while it trains (``eval.<field>``), through the model
    class ``lmlab evaluate`` uses; logged as ``eval/<task>/<metric>`` to every logger and
    written to results.json."""

    tasks: list[str] = field(default_factory=list)
    """Task names: the shipped offline ones (stdlib_nextline, stdlib_cloze,
    stdlib_perplexity) or any lm-eval task, whose dataset is downloaded (online only).
    Empty: no evals. Checked before training starts."""
    include_path: str | None = None
    """A folder of your own lm-eval task YAML files (lm-eval's ``--include_path``), whose
    tasks ``tasks`` may then name (``lmlab.infer.task_folders``)."""
    every_n_steps: int = 0
    """Steps between evals; they always run at the last step (0: only there)."""
    limit: int | None = None
    """At most this many items per task (null: all)."""
    batch_size: int = 16
    """Requests per forward pass."""
    max_gen_toks: int = MAX_GEN_TOKS
    """Tokens a generating task's answers may take where the task sets no length (as
    ``lmlab evaluate``'s ``max_gen_toks=``). A GPT's prompt keeps its last
    ``model.max_seq_len - max_gen_toks`` tokens, so each generating task's length must be
    below ``model.max_seq_len``: checked before training starts."""
    apply_chat_template: bool = False
    """Every request in the chat template the model declares (a run started with
    ``init_from`` a converted instruct model), as ``lmlab evaluate apply_chat_template=true``;
    checked before training starts."""
    chat_template: str | None = None
    """Of several templates by name, the one (default: ``default``)."""
    fewshot_as_multiturn: bool = True
    """With the template: each few-shot example a turn of its own (lm-eval's default)."""
    system_instruction: str | None = None
    """With the template: the chat's system turn."""

    def __post_init__(self) -> None:
        for name in ("chat_template", "system_instruction"):
            if getattr(self, name) is not None and not self.apply_chat_template:
                raise ConfigError(
                    f"eval.{name}={getattr(self, name)!r} is of the chat format; allowed with "
                    "eval.apply_chat_template=true"
                )
        if self.apply_chat_template and not self.tasks:
            raise ConfigError(
                "eval.apply_chat_template=true formats the evals' requests, and eval.tasks is "
                "empty: allowed with eval.tasks=[<task>, ...] (or leave it false)"
            )
        if self.every_n_steps < 0:
            raise ConfigError(
                f"eval.every_n_steps={self.every_n_steps} must be >= 0 (0: at the last step only)"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit={self.limit} must be >= 1 (or null: every item)")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size={self.batch_size} must be >= 1")
        if self.max_gen_toks < 1:
            raise ConfigError(f"eval.max_gen_toks={self.max_gen_toks} must be >= 1")
        bad = [t for t in self.tasks if not isinstance(t, str) or not t.strip() or "," in t]
        if bad:
            raise ConfigError(
                f"eval.tasks={list(self.tasks)}: {bad[0]!r} is not a task name (allowed: a list "
                "of names, eval.tasks=[stdlib_nextline,stdlib_cloze])"
            )


def check_val_batches(name: str, value: object) -> None:
    """A Lightning ``limit_*_batches`` value: null, an int >= 1 (batches) or a float in
    (0, 1] (a fraction of the split)."""
    ok = value is None or (
        not isinstance(value, bool)
        and (
            (isinstance(value, int) and value >= 1)
            or (isinstance(value, float) and 0.0 < value <= 1.0)
        )
    )
    if not ok:
        raise ConfigError(
            f"{name}={spelled(value, quote=True)}: allowed null, a number of batches (an int >= "
            "1) or a fraction of the validation split (a float in (0, 1], 1.0 = all of it)"
        )


# The largest seed: Lightning's seed_everything seeds numpy too, whose seeds are 32-bit unsigned.
MAX_SEED = 2**32 - 1


@dataclass
class RunConfig:
    """The top-level keys of ``conf/train.yaml`` that are not a group of their own."""

    seed: int = 1337
    """Seeds Python, numpy and torch (and the data's shuffle): 0 to 2**32-1."""
    dry_run: bool = False
    compile: Any = False
    """false, blocks (or true) or model: see ``Compile``."""
    cuda_graphs: bool = False
    """true: ``compile=model``'s training step replayed as CUDA graphs (torch.compile's
    ``mode="reduce-overhead"``): the host launches each step's kernels in one call instead of
    one by one. A CUDA GPU, one device and one micro-batch a step only
    (``lmlab.train.machine.check_cuda_graphs``)."""
    matmul_precision: str = "high"
    """fp32 matmuls on CUDA: high (TF32), highest (full fp32) or medium."""
    resume: Any = False
    """true: continue the run directory's newest checkpoint; auto: only if it has one."""
    ckpt_path: str | None = None
    """Start from this checkpoint file or sharded folder (same model config)."""
    init_from: str | None = None
    """Start from this checkpoint's weights and architecture, with a fresh optimizer and
    schedule (``lmlab.train.init_from``); needs ``data.tokenizer=checkpoint``."""
    final_val_batches: Any = None
    """The validation after the last step, whose loss is results.json's ``val_loss``: null
    scores what ``trainer.limit_val_batches`` scores during training; 1.0 the whole held-out
    split; an int that many batches, a float in (0, 1) that fraction. Set it to 1.0 with a
    small ``trainer.limit_val_batches`` to watch a cheap fixed subset during training and
    still rank runs on the whole split."""
    guard: GuardConfig = field(default_factory=GuardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(
                f"seed={self.seed}: allowed an integer from 0 to {MAX_SEED} (2**32-1, the "
                "range numpy's random state takes)"
            )
        if compile_mode(self.compile) != Compile.model and self.cuda_graphs:
            raise ConfigError(
                f"cuda_graphs=true needs compile=model (got compile={spelled(self.compile)}): the "
                "graphs are recorded from the whole step's compiled graph"
            )
        if self.matmul_precision not in MATMUL_PRECISIONS:
            allowed = ", ".join(MATMUL_PRECISIONS)
            raise ConfigError(
                f"matmul_precision={spelled(self.matmul_precision, quote=True)}: allowed {allowed}"
            )
        check_val_batches("final_val_batches", self.final_val_batches)
        if not (self.resume is None or isinstance(self.resume, bool) or self.resume == "auto"):
            raise ConfigError(f"resume={spelled(self.resume)}: allowed true, false, auto")
        if self.ckpt_path and self.init_from:
            raise ConfigError(
                f"init_from={self.init_from} and ckpt_path={self.ckpt_path} exclude each other: "
                "init_from starts a new run from a checkpoint's weights (a fresh optimizer and "
                "schedule), ckpt_path continues a run's checkpoint (its optimizer, schedule and "
                "step); give one"
            )
        if self.ckpt_path and self.resume is True:  # the newest checkpoint was taken, silently
            raise ConfigError(
                f"resume=true and ckpt_path={self.ckpt_path} exclude each other: resume=true "
                "continues the newest checkpoint in hydra.run.dir, ckpt_path starts from another "
                "one in a directory without checkpoints (with resume=auto, a requeued job then "
                "continues its own); give one"
            )
        if self.ckpt_path and not Path(self.ckpt_path).expanduser().exists():
            raise ConfigError(
                f"ckpt_path={self.ckpt_path}: no such file or sharded checkpoint folder"
            )


def check_sampling(
    key: str,
    temperature: float,
    top_k: int | None,
    top_p: float | None = None,
    no_top_k: str = "every token",
) -> None:
    """The sampling settings of a generation, each refused in one line naming ``key`` (the
    prefix of its field: ``callbacks.sample.`` or none) and what is allowed; ``no_top_k``:
    what ``top_k=null`` means there."""
    if not 0 <= temperature < math.inf:
        raise ConfigError(f"{key}temperature={temperature} must be >= 0 (0: greedy)")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"{key}top_k={top_k} must be >= 1 (or null: {no_top_k})")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{key}top_p={top_p} must be in (0, 1] (or null: no nucleus)")


# What a checkpoint of each family does with a text (``lmlab generate``'s ``task``): a
# decoder continues it, an encoder with a masked-LM head fills its masks, an encoder-decoder
# fills its sentinel spans.
INFER_TASKS = {Family.gpt: "generate", Family.bert: "fill_mask", Family.t5: "infill"}


def check_infer_task(family: Family, task: str, what: str, where: str) -> None:
    """``task`` is the one a model of ``family`` does (``INFER_TASKS``); else one line naming
    ``what`` asked for it, the family it needs and ``where`` the model came from. (A GPT's
    logits ranked as fill-mask candidates are a causal model's guesses, given silently; the
    other pairs fail on a method the model lacks.)"""
    if INFER_TASKS[family] != task:
        need = next(f.value for f, t in INFER_TASKS.items() if t == task)
        raise ConfigError(
            f"{what} needs a {need} checkpoint; {where} is {family.value} (a {family.value} "
            f"model's task is {INFER_TASKS[family]})"
        )
