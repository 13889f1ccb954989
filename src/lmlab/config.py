"""Every knob as a str-Enum, and the structured configs Hydra validates at compose time.

No torch import here: composing and validating a config must be cheap (``--cfg job`` and the
preset x experiment tests load this module only).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lmlab.errors import ConfigError

# The Hydra config tree that ``lmlab train`` composes (``conf/`` at the repository root).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class Family(str, Enum):
    gpt = "gpt"  # decoder-only, next-token prediction (Radford et al. 2019)
    bert = "bert"  # encoder-only, masked LM (Devlin et al. 2019)
    t5 = "t5"  # encoder-decoder, span corruption (Raffel et al. 2020)


class NormPlacement(str, Enum):
    pre = "pre"  # x + f(norm(x))            (GPT-2, Llama)
    post = "post"  # norm(x + f(x))          (Vaswani et al. 2017, BERT)
    sandwich = "sandwich"  # x + norm(f(norm(x)))  (CogView, Ding et al. 2021)


class Norm(str, Enum):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"  # Zhang & Sennrich 2019


class Activation(str, Enum):
    relu = "relu"
    gelu = "gelu"  # tanh approximation (GPT-2; Hugging Face's gelu_new / gelu_pytorch_tanh)
    gelu_exact = "gelu_exact"  # x * Phi(x), the erf form (Hendrycks & Gimpel 2016; HF BERT's gelu)
    swiglu = "swiglu"  # Shazeer 2020, gated with SiLU
    geglu = "geglu"  # Shazeer 2020, gated with GELU


class Init(str, Enum):
    gpt2 = "gpt2"  # N(0, init_std), residual projections / sqrt(2 n_layers) (Radford et al. 2019)
    t5 = "t5"  # Mesh TensorFlow's: linear layers N(0, 1/fan_in), embeddings N(0, 1) (Raffel 2020)


class Positional(str, Enum):
    learned = "learned"  # absolute, trained table (GPT-2, BERT)
    sinusoidal = "sinusoidal"  # absolute, fixed (Vaswani et al. 2017)
    rope = "rope"  # rotary (Su et al. 2021)
    alibi = "alibi"  # linear attention bias (Press et al. 2022)
    relative = "relative"  # T5's bucketed relative attention bias (Raffel et al. 2020)
    none = "none"  # NoPE: causal masking alone (Kazemnejad et al. 2023)


GATED = {Activation.swiglu, Activation.geglu}
# Config fields (of any group) that change how a run computes, not what: a checkpoint and
# the run that continues or loads it may differ in them.
RUNTIME_FIELDS = ("activation_checkpointing", "fused", "num_workers")


@dataclass
class MoEConfig:
    """A sparse Mixture-of-Experts feed-forward (``model.moe.<field>``): each token's FFN is
    the gate-weighted sum of ``top_k`` of ``num_experts`` expert FFNs, chosen by a learned
    router (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al. 2024).
    Experts are FFNs of the model's own activation and ``d_ff`` (SwiGLU experts under
    ``+experiment=mixtral``)."""

    num_experts: int = 0
    """Experts per MoE layer; 0 is the dense feed-forward (the default), 1 routes every token
    to one expert (the dense FFN with a router beside it)."""
    top_k: int = 2
    """Experts per token. k >= 2 weights them by the softmax over their k router logits
    (Mixtral); k = 1 by the router probability itself (Switch), so the router keeps a gradient
    through the output."""
    aux_loss_coef: float = 0.01
    """Weight of the load-balancing loss E * sum_i f_i P_i (Switch eq. 4; 1.0 when balanced),
    averaged over MoE layers and added to the LM loss. Switch's 1e-2."""
    z_loss_coef: float = 0.001
    """Weight of the router z-loss mean(logsumexp(logits)^2), which keeps router logits small
    (ST-MoE, Zoph et al. 2022, eq. 5, their 1e-3)."""
    capacity_factor: float | None = None
    """null: dropless, every token reaches its k experts. A number c: in training each expert
    takes at most ceil(c * tokens * k / E) of a batch's assignments, first choices first
    (GShard's priority); the rest are dropped and pass through the residual unchanged.
    Evaluation and generation stay dropless."""
    every_n_layers: int = 1
    """Block i gets the MoE feed-forward when i % every_n_layers == 0, the others stay dense
    (1: every block; 2: every other block, as in GShard and Switch; Megatron's
    ``moe_layer_freq``). Counted per stack for T5's encoder and decoder."""

    def __post_init__(self) -> None:
        if self.num_experts < 0:
            raise ConfigError(
                f"model.moe.num_experts={self.num_experts} must be >= 0 (0: dense feed-forward)"
            )
        if self.num_experts and not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(
                f"model.moe.top_k={self.top_k} must be between 1 and "
                f"model.moe.num_experts={self.num_experts}"
            )
        for name in ("aux_loss_coef", "z_loss_coef"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"model.moe.{name}={getattr(self, name)} must be >= 0 and finite")
        cf = self.capacity_factor
        if cf is not None and not 0 < cf < math.inf:
            raise ConfigError(
                f"model.moe.capacity_factor={cf} must be > 0 (or null: dropless routing)"
            )
        if self.every_n_layers < 1:
            raise ConfigError(f"model.moe.every_n_layers={self.every_n_layers} must be >= 1")

    def applies_to(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based, within its stack) has the MoE feed-forward."""
        return self.num_experts > 0 and layer % self.every_n_layers == 0


@dataclass
class ModelConfig:
    """Architecture of one model. Every field is a plain override (``model.norm=rmsnorm``).

    ``d_ff=None`` derives the feed-forward width: 4 * d_model for ReLU/GELU, and for the gated
    SwiGLU/GeGLU (three matrices instead of two) 2/3 of that rounded up to ``ffn_multiple_of``,
    as Llama does, so the parameter count stays comparable.
    ``n_kv_heads=None`` means n_heads (multi-head); 1 is MQA, anything between is GQA.
    ``d_head=None`` gives each head d_model / n_heads dimensions; set it when n_heads x d_head
    differs from d_model (T5 v1.1 small: 6 heads of 64 in a 512 model; Gemma, Qwen3).
    ``vocab_size=None`` takes the tokenizer's size at training time.
    ``attention_window=None`` is full attention; an int W lets each query see its W most recent
    keys (itself included), as in Mistral's sliding window; in an encoder, the keys within W-1
    positions either side. Cross-attention is never windowed.
    ``n_decoder_layers=None`` gives T5's decoder as many layers as its encoder (``n_layers``).
    ``type_vocab_size`` > 0 adds BERT's segment (token-type) embeddings (2 in BERT).
    ``relative_buckets`` / ``relative_max_distance``: T5's relative position bias (32 / 128).
    ``activation_checkpointing`` recomputes each block's activations in the backward pass
    instead of keeping them (less memory, about a third more compute); it changes how the model
    runs, not what it computes, so it may differ between a checkpoint and the run resuming it.
    ``moe``: the Mixture-of-Experts feed-forward (``model.moe.num_experts=8``), see ``MoEConfig``.
    ``init``: how the weights start. ``gpt2`` (the default): N(0, ``init_std``) for matrices
    and embeddings, the residual output projections divided by sqrt(2 n_layers). ``t5``: Mesh
    TensorFlow's, as transformers initialises T5: every linear layer N(0, 1/fan_in), the token,
    position and segment embeddings N(0, 1), T5's relative bias table N(0, 1/d_model)
    (the t5_* presets). T5's tied head rescales by d_model**-0.5; GPT's
    and BERT's do not, so there an embedding that is also the head is N(0, 1/d_model).
    """

    family: Family = Family.gpt
    d_model: int = 128
    n_layers: int = 4
    n_decoder_layers: int | None = None
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_ff: int | None = None
    ffn_multiple_of: int = 64
    max_seq_len: int = 256
    vocab_size: int | None = None
    norm_placement: NormPlacement = NormPlacement.pre
    norm: Norm = Norm.layernorm
    norm_eps: float = 1e-5
    activation: Activation = Activation.gelu
    positional: Positional = Positional.learned
    rope_theta: float = 10000.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    type_vocab_size: int = 0
    attention_window: int | None = None
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    init: Init = Init.gpt2
    init_std: float = 0.02
    activation_checkpointing: bool = False
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self) -> None:
        if isinstance(self.moe, Mapping):  # plain types, as a checkpoint's model_config holds
            self.moe = MoEConfig(**self.moe)
        self.validate()

    def validate(self) -> None:
        """Cross-field invariants, with the offending values in the message."""
        for name in ("d_model", "n_layers", "n_heads", "max_seq_len", "ffn_multiple_of"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_ff is not None and self.d_ff < 1:
            raise ConfigError(
                f"model.d_ff={self.d_ff} must be >= 1 (or null: derived from d_model and the "
                "activation)"
            )
        for name in ("norm_eps", "rope_theta", "init_std"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be > 0 and finite")
        if self.d_head is not None and self.d_head < 1:
            raise ConfigError(
                f"model.d_head={self.d_head} must be >= 1 (or null: d_model / n_heads)"
            )
        if self.d_head is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads} "
                "(or set model.d_head, the dimension of each head)"
            )
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not divisible by "
                f"model.n_kv_heads={self.n_kv_heads} (allowed: a divisor of n_heads)"
            )
        if self.positional == Positional.rope and self.head_dim % 2:
            raise ConfigError(
                f"model.positional=rope needs an even head dimension, but the head dimension "
                f"(model.d_head, or d_model / n_heads) is {self.head_dim}"
            )
        if self.attention_window is not None and not 1 <= self.attention_window <= self.max_seq_len:
            raise ConfigError(
                f"model.attention_window={self.attention_window} must be between 1 and "
                f"model.max_seq_len={self.max_seq_len} (null for full attention)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be >= 2")
        self.validate_family()

    def validate_family(self) -> None:
        """Fields that only one family uses, and knob values a family cannot use."""
        if self.n_decoder_layers is not None and (
            self.family != Family.t5 or self.n_decoder_layers < 1
        ):
            raise ConfigError(
                f"model.n_decoder_layers={self.n_decoder_layers} needs model.family=t5 and a "
                f"value >= 1 (family={self.family.value}; null follows n_layers)"
            )
        if self.type_vocab_size < 0:
            raise ConfigError(f"model.type_vocab_size={self.type_vocab_size} must be >= 0")
        if self.type_vocab_size and self.family != Family.bert:
            raise ConfigError(
                f"model.type_vocab_size={self.type_vocab_size} (segment embeddings, "
                f"+experiment=bert) applies to model.family=bert only, not "
                f"family={self.family.value}; set it to 0"
            )
        if self.positional == Positional.none and self.family != Family.gpt:
            raise ConfigError(
                f"model.positional=none cannot work with model.family={self.family.value}: "
                "without causal masking an encoder sees its input as a bag of tokens "
                "(NoPE needs a decoder-only model)"
            )
        if self.positional == Positional.relative and not (
            self.relative_buckets >= 4 and self.relative_max_distance > self.relative_buckets // 2
        ):
            raise ConfigError(
                f"model.positional=relative needs model.relative_buckets >= 4 and "
                f"model.relative_max_distance > relative_buckets / 2, got relative_buckets="
                f"{self.relative_buckets}, relative_max_distance={self.relative_max_distance}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.activation in GATED:
            m = self.ffn_multiple_of
            return m * math.ceil(2 * 4 * self.d_model / 3 / m)
        return 4 * self.d_model


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """``cfg`` as plain types (enums as their values), as checkpoints store it."""
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in dataclasses.asdict(cfg).items()}


class Source(str, Enum):
    stdlib = "stdlib"  # the Python standard library's own .py sources (no download)
    text = "text"  # a local UTF-8 file or a folder of them
    shakespeare = "shakespeare"  # Tiny Shakespeare (1.1 MB, public domain), shipped with lmlab
    hf = "hf"  # a Hugging Face `datasets` name (online users)


class TokenizerKind(str, Enum):
    bpe = "bpe"  # byte-level BPE trained on the training split
    char = "char"  # one token per character seen in the training split
    checkpoint = "checkpoint"  # the tokenizer of the init_from checkpoint (a converted model's)


@dataclass
class DataConfig:
    """Corpus, tokenizer and batching. ``seq_len=None`` follows ``model.max_seq_len``.

    ``batch_size`` is the micro-batch of one device. ``global_batch_size`` (sequences) or
    ``global_batch_tokens`` fixes the batch of one optimizer step across devices, nodes and
    accumulation; gradient accumulation is then derived (``lmlab.train.distributed``), so a run on
    1 device and on 8 trains on the same batches. Null: micro-batch x devices x
    ``trainer.accumulate_grad_batches``.
    ``val_batch_size`` (null: ``batch_size``) with ``trainer.limit_val_batches`` fixes the
    validation rows: set it when comparing runs whose micro-batches differ.

    ``max_bytes`` keeps only the first documents up to that many bytes (deterministic order),
    which ``+debug=smoke`` uses for a fast slice. ``val_fraction`` of the documents (by a
    stable hash of their name) or, for fewer than 20 documents, the tail of each document is
    held out for validation, as nanoGPT does.

    ``stride`` (tokens, null: one row) is where training windows start in the packed token
    stream: null cuts it into rows that do not overlap, each token seen once per epoch; 1
    starts a window at every token, as nanoGPT's random crops do, which helps small corpora
    seen for many epochs (Tiny Shakespeare). Validation always uses the non-overlapping rows.
    """

    source: Source = Source.stdlib
    path: str | None = None
    name: str | None = None
    subset: str | None = None
    split: str = "train"
    text_column: str = "text"
    tokenizer: TokenizerKind = TokenizerKind.bpe
    vocab_size: int = 4096
    seq_len: int | None = None
    batch_size: int = 16
    global_batch_size: int | None = None
    global_batch_tokens: int | None = None
    val_batch_size: int | None = None
    stride: int | None = None
    val_fraction: float = 0.05
    max_bytes: int | None = None
    cache_dir: str = "${oc.env:LMLAB_CACHE,${oc.env:HOME}/.cache/lmlab}"
    num_workers: int | None = None  # null: 0 on a CPU, up to 4 per process on a GPU

    def __post_init__(self) -> None:
        if self.source == Source.text and not self.path:
            raise ConfigError("data.source=text needs data.path=<file or folder>")
        if self.source == Source.hf and not self.name:
            raise ConfigError("data.source=hf needs data.name=<datasets hub name>")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} must be >= 1")
        if self.vocab_size < 2:
            raise ConfigError(f"data.vocab_size={self.vocab_size} must be >= 2")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0 (or null: auto)")
        for name in (
            "seq_len",
            "global_batch_size",
            "global_batch_tokens",
            "val_batch_size",
            "stride",
            "max_bytes",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name}={value} must be >= 1 (or null)")


class BudgetKind(str, Enum):
    steps = "steps"  # trainer.max_steps as given
    chinchilla = "chinchilla"  # D = tokens_per_param * N (Hoffmann et al. 2022)
    flops = "flops"  # D = C / (6 N)
    tokens = "tokens"  # D given


class ParamCount(str, Enum):
    active = "active"  # parameters one token runs through (a MoE counts top_k of its experts)
    total = "total"  # every parameter (a MoE counts all its experts)


@dataclass
class BudgetConfig:
    """How long to train (``budget=<kind>``, fields ``budget.<field>=...``).

    ``flops`` is needed by ``budget=flops`` and ``tokens`` by ``budget=tokens``; either set
    under another kind is an error rather than silently ignored. Both are floats so that
    ``budget.flops=1e18`` and ``budget.tokens=2e9`` can be typed.
    """

    kind: BudgetKind = BudgetKind.steps
    tokens_per_param: float = 20.0
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
        if self.tokens_per_param <= 0:
            raise ConfigError(f"budget.tokens_per_param={self.tokens_per_param} must be > 0")
        for name in ("flops", "tokens"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ConfigError(f"budget.{name}={value:g} must be a positive number")
            needed = kind.value == name
            if needed and value is None:
                unit = "FLOPs" if name == "flops" else "tokens"
                raise ConfigError(f"budget={name} needs budget.{name}=<{unit}>, e.g. 1e15")
            if not needed and value is not None:
                raise ConfigError(
                    f"budget.{name}={value:g} is set but budget.kind={kind.value} ignores it "
                    f"(choose budget={name})"
                )


class Compile(str, Enum):
    none = "none"  # eager
    blocks = "blocks"  # each transformer block, in place (true means this too)
    model = "model"  # the whole training loss: embeddings, blocks, head, cross-entropy


def compile_mode(value: object) -> Compile:
    """``compile=``: false, true (= blocks), blocks or model."""
    text = {"false": "none", "true": "blocks"}.get(str(value).lower(), str(value).lower())
    if text not in Compile.__members__:
        raise ConfigError(f"compile={value!r}: allowed false, blocks, model (true = blocks)")
    return Compile(text)


# torch.set_float32_matmul_precision: "highest" is full fp32, "high" lets CUDA use TF32 (10-bit
# mantissa inputs, fp32 accumulation: about 8x the fp32 rate on Ampere and Hopper).
MATMUL_PRECISIONS = ("highest", "high", "medium")


class GuardMode(str, Enum):
    stop = "stop"  # end the run, naming the step and the last good checkpoint
    skip = "skip"  # drop the update, at most guard.max_skips times in a run
    off = "off"  # no check


@dataclass
class GuardConfig:
    """A NaN/inf loss or gradient norm (``guard.<field>``)."""

    mode: GuardMode = GuardMode.stop
    max_skips: int = 10
    """Updates ``mode=skip`` may drop before the run stops."""

    def __post_init__(self) -> None:
        if self.max_skips < 0:
            raise ConfigError(f"guard.max_skips={self.max_skips} must be >= 0")


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


@dataclass
class EvalConfig:
    """lm-eval tasks run on the model while it trains (``eval.<field>``), through the model
    class ``lmlab evaluate`` uses; logged as ``eval/<task>/<metric>`` to every logger and
    written to results.json."""

    tasks: list[str] = field(default_factory=list)
    """Task names: the shipped offline ones (stdlib_nextline, stdlib_cloze,
    stdlib_perplexity) or any lm-eval task, whose dataset is downloaded (online only).
    Empty: no evals. Checked before training starts."""
    every_n_steps: int = 0
    """Steps between evals; they always run at the last step (0: only there)."""
    limit: int | None = None
    """At most this many items per task (null: all)."""
    batch_size: int = 16
    """Requests per forward pass."""

    def __post_init__(self) -> None:
        if self.every_n_steps < 0:
            raise ConfigError(
                f"eval.every_n_steps={self.every_n_steps} must be >= 0 (0: at the last step only)"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit={self.limit} must be >= 1 (or null: every item)")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size={self.batch_size} must be >= 1")
        bad = [t for t in self.tasks if not isinstance(t, str) or not t.strip() or "," in t]
        if bad:
            raise ConfigError(
                f"eval.tasks={list(self.tasks)}: {bad[0]!r} is not a task name (allowed: a list "
                "of names, eval.tasks=[stdlib_nextline,stdlib_cloze])"
            )


@dataclass
class RunConfig:
    """The top-level keys of ``conf/train.yaml`` that are not a group of their own."""

    seed: int = 1337
    dry_run: bool = False
    compile: Any = False
    """false, blocks (or true) or model: see ``Compile``."""
    matmul_precision: str = "high"
    """fp32 matmuls on CUDA: high (TF32), highest (full fp32) or medium."""
    resume: Any = False
    """true: continue the run directory's newest checkpoint; auto: only if it has one."""
    ckpt_path: str | None = None
    """Start from this checkpoint file or sharded folder (same model config)."""
    init_from: str | None = None
    """Start from this checkpoint's weights and architecture, with a fresh optimizer and
    schedule (``lmlab.train.init_from``); needs ``data.tokenizer=checkpoint``."""
    guard: GuardConfig = field(default_factory=GuardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        compile_mode(self.compile)
        if self.matmul_precision not in MATMUL_PRECISIONS:
            allowed = ", ".join(MATMUL_PRECISIONS)
            raise ConfigError(f"matmul_precision={self.matmul_precision!r}: allowed {allowed}")
        if self.resume not in (True, False, "auto", None):
            raise ConfigError(f"resume={self.resume}: allowed true, false, auto")
        if self.ckpt_path and not Path(self.ckpt_path).exists():
            raise ConfigError(
                f"ckpt_path={self.ckpt_path}: no such file or sharded checkpoint folder"
            )


class TaskKind(str, Enum):
    lm = "lm"  # pre-training: the family's own objective on the corpus of data=
    classify = "classify"  # text -> label: BERT with a classification head on [CLS]
    seq2seq = "seq2seq"  # input text -> target text: T5, teacher-forced


# The family each fine-tuning task trains (task=lm trains any).
TASK_FAMILIES = {TaskKind.classify: Family.bert, TaskKind.seq2seq: Family.t5}


class TaskSource(str, Enum):
    shipped = "shipped"  # an example set shipped with lmlab, named by task.name (no download)
    files = "files"  # task.train (and task.val): local JSONL or CSV files
    hf = "hf"  # task.name (and task.subset): a Hugging Face `datasets` name (online users)


# The example sets shipped in src/lmlab/data/corpora/<name>.{train,val}.jsonl (written by
# scripts/make_finetune_data.py), with the task each is for.
SHIPPED_TASKS = {"code_or_play": TaskKind.classify, "def_name": TaskKind.seq2seq}
# File suffix -> the `datasets` loader that reads it.
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
# What each example source needs, and the fields it would ignore (set: refused).
SOURCE_NEEDS = {TaskSource.files: "train", TaskSource.hf: "name"}
SOURCE_IGNORES = {
    TaskSource.shipped: ("train", "val", "subset"),
    TaskSource.files: ("name", "subset"),
    TaskSource.hf: ("train", "val"),
}


@dataclass
class TaskConfig:
    """What a run trains for (``task=lm|classify|seq2seq``, fields ``task.<field>=...``).

    ``lm`` (the default) pre-trains on ``data=``. ``classify`` and ``seq2seq`` fine-tune on
    examples (``lmlab.data.finetune``): ``data.*`` then sets only the tokenizer and the
    batches (``data.tokenizer``, ``data.vocab_size``, ``data.seq_len``, ``data.batch_size``);
    the corpus fields are ``task=lm``'s.
    """

    kind: TaskKind = TaskKind.lm
    source: TaskSource = TaskSource.shipped
    """Where the examples come from: shipped, files or hf."""
    name: str | None = None
    """source=shipped: code_or_play (classify) or def_name (seq2seq), null: the task's one;
    source=hf: a hub name."""
    subset: str | None = None
    """source=hf: the dataset's configuration (``task.name=glue task.subset=sst2``)."""
    train: str | None = None
    """source=files: the training examples, ``.jsonl`` (a JSON object a line) or ``.csv``."""
    val: str | None = None
    """source=files: the validation examples (null: ``val_fraction`` of ``train``)."""
    train_split: str = "train"
    """source=hf: the training split."""
    val_split: str | None = "validation"
    """source=hf: the validation split (null: ``val_fraction`` of ``train_split``)."""
    val_fraction: float = 0.1
    """Examples held out for validation when there is no validation file or split: a fixed
    shuffle (seed 0, whatever the run's seed), so every run of a sweep sees the same ones."""
    text_column: str = "text"
    label_column: str = "label"
    """classify: the columns of the text and of its label."""
    input_column: str = "input"
    target_column: str = "target"
    """seq2seq: the columns of the input text and of the target text."""
    num_labels: int | None = None
    """classify: the number of classes (null: as many as the training split has). Integer
    labels are the class ids 0 .. num_labels - 1; other labels take ids in sorted order."""
    max_target_len: int | None = None
    """seq2seq: target tokens kept per example, EOS included (null: the sequence length)."""
    decode_rows: int = 128
    """seq2seq: validation rows decoded greedily for ``val/exact_match`` (0: none)."""

    def __post_init__(self) -> None:
        if self.kind == TaskKind.lm:
            given = [f for f in ("name", "train", "val") if getattr(self, f) is not None]
            if given:
                raise ConfigError(
                    f"task.{given[0]}={getattr(self, given[0])} is set but task=lm pre-trains on "
                    "data= (fine-tuning: task=classify or task=seq2seq)"
                )
            return
        needed = SOURCE_NEEDS.get(self.source)
        if needed and getattr(self, needed) is None:
            raise ConfigError(f"task.source={self.source.value} needs task.{needed}=<...>")
        for name in SOURCE_IGNORES[self.source]:
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"task.{name}={getattr(self, name)} is set but task.source="
                    f"{self.source.value} ignores it (task.train/val: task.source=files; "
                    "task.name/subset: task.source=hf or shipped)"
                )
        if self.source == TaskSource.shipped:
            self.check_shipped()
        if self.source == TaskSource.files:
            for name in ("train", "val"):
                check_example_file(f"task.{name}", getattr(self, name))
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"task.val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.num_labels is not None and self.num_labels < 2:
            raise ConfigError(f"task.num_labels={self.num_labels} must be >= 2 (or null)")
        if self.max_target_len is not None and self.max_target_len < 2:
            raise ConfigError(f"task.max_target_len={self.max_target_len} must be >= 2")
        if self.decode_rows < 0:
            raise ConfigError(f"task.decode_rows={self.decode_rows} must be >= 0")

    def check_shipped(self) -> None:
        """The shipped set exists and is one for this task (null: the task's own)."""
        if self.name is None:
            self.name = next(n for n, k in SHIPPED_TASKS.items() if k == self.kind)
        if SHIPPED_TASKS.get(self.name) != self.kind:
            ours = [n for n, k in SHIPPED_TASKS.items() if k == self.kind]
            raise ConfigError(
                f"task.name={self.name}: no shipped set for task={self.kind.value} by that name; "
                f"allowed: {', '.join(ours)} (other examples: task.source=files or hf)"
            )


def check_example_file(field_name: str, path: str | None) -> None:
    """An example file exists and is JSONL or CSV."""
    if path is None:
        return
    if Path(path).suffix.lower() not in FILE_FORMATS:
        raise ConfigError(
            f"{field_name}={path}: allowed file types {', '.join(FILE_FORMATS)} "
            "(one JSON object a line, or a CSV with a header row)"
        )
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{field_name}={path}: no such file")


@dataclass(frozen=True)
class TaskSpec:
    """A run's task once its examples are read: what the model's head, the validation
    metrics, the checkpoint and ``plan.json`` need. The default is pre-training (task=lm)."""

    kind: TaskKind = TaskKind.lm
    labels: tuple[str, ...] = ()
    """classify: the class names, in id order."""
    train_examples: int = 0
    val_examples: int = 0
    decode_rows: int = 0
    """seq2seq: validation rows decoded greedily for exact match."""

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def record(self) -> dict[str, Any]:
        """Plain types, for checkpoints, plan.json and results.json."""
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.labels:
            out["labels"] = list(self.labels)
        return out


PRETRAINING = TaskSpec()  # task=lm: the family's own head and objective


def check_task_model(task: TaskConfig, model_cfg: ModelConfig, where: str) -> None:
    """A fine-tuning task trains its own family; ``where`` says what gave the model ("the
    model has", "init_from=<path> holds")."""
    family = TASK_FAMILIES.get(task.kind)
    if family is not None and model_cfg.family != family:
        raise ConfigError(
            f"task={task.kind.value} fine-tunes a {family.value} model; {where} "
            f"model.family={model_cfg.family.value} (allowed: model={family.value}_tiny or "
            f"another {family.value} preset, or init_from=<a {family.value} checkpoint>)"
        )
    if (task.max_target_len or 0) > model_cfg.max_seq_len:
        raise ConfigError(
            f"task.max_target_len={task.max_target_len} is above the decoder's "
            f"model.max_seq_len={model_cfg.max_seq_len}"
        )


def resolve_task(cfg: DictConfig, model_cfg: ModelConfig) -> TaskConfig:
    """The ``task`` group, checked against the rest of the run before any work: the model's
    family (unless ``init_from`` brings the model: ``lmlab.train.init_from`` checks that),
    and the settings a fine-tuning run cannot honour."""
    node = cfg.get("task")
    task = TaskConfig() if node is None else to_schema(TaskConfig, node, "task.")
    if task.kind == TaskKind.lm:
        return task
    if not cfg.get("init_from"):
        check_task_model(task, model_cfg, "the model has")
    kind = task.kind.value
    source = Source(cfg.data.get("source", Source.stdlib))
    if source != Source.stdlib:
        raise ConfigError(
            f"data.source={source.value} is a corpus for task=lm; task={kind} reads its "
            "examples from task.source (shipped, files, hf): drop the data= override"
        )
    budget = BudgetKind(cfg.budget.get("kind", BudgetKind.steps))
    if budget != BudgetKind.steps:
        raise ConfigError(
            f"budget={budget.value} counts the tokens of packed rows; task={kind} trains on "
            "padded examples: use budget=steps (trainer.max_steps)"
        )
    if cfg.get("dry_run"):
        raise ConfigError(f"dry_run=true plans task=lm runs; task={kind} has no dry run")
    return task


T = TypeVar("T")


def to_schema(schema: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """``values`` (a dict or config node) as the dataclass ``schema``, typed and checked. An
    unknown key (which a ``+`` override can add even to a structured config: Hydra adds with
    ``force_add``, by design), a value of the wrong type or outside an enum, and the schema's
    ``__post_init__`` checks are a ConfigError naming the key, the value and what is allowed."""
    if OmegaConf.is_config(values):
        values = OmegaConf.to_container(values, resolve=True)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        if not key:
            raise ConfigError(f"{prefix.rstrip('.')}: {str(err).splitlines()[0]}") from None
        value = OmegaConf.select(OmegaConf.create(values), key)
        raise omegaconf_error(err, f"{prefix}{key}={value}") from None


def omegaconf_error(err: OmegaConfBaseException, where: str) -> ConfigError:
    """OmegaConf's error at ``where`` (``key=value``) as one line; an unknown key lists the
    keys its node has."""
    parent = getattr(err, "parent_node", None)
    if isinstance(err, ConfigKeyError | ConfigAttributeError) and OmegaConf.is_dict(parent):
        return ConfigError(f"{where}: unknown key; allowed: {', '.join(map(str, parent))}")
    return ConfigError(f"{where}: {str(err).splitlines()[0]}")


def check_optimizer(optim: Mapping[str, Any], scheduler: Mapping[str, Any]) -> None:
    """The values the optimizer and schedule groups (``_target_`` nodes, no schema: any
    torch optimizer fits) must have whatever the target."""
    lr = optim.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise ConfigError(f"optim.lr={lr} must be a positive number (default 1e-3)")
    warmup = scheduler.get("warmup_steps", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"scheduler.warmup_steps={warmup} must be >= 0")
    ratio = scheduler.get("min_lr_ratio", 0.0)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise ConfigError(f"scheduler.min_lr_ratio={ratio} must be in [0, 1]")


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


def check_launch(trainer: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> None:
    """More than one node needs a launcher: without one, Lightning starts this node's
    processes and waits for the others forever."""
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"trainer.num_nodes={nodes} must be >= 1")
    if nodes > 1 and not any(name in environ for name in LAUNCHER_VARIABLES):
        raise ConfigError(
            f"trainer.num_nodes={nodes} needs a launcher that starts every node's processes: "
            f"torchrun (--nnodes={nodes}) or SLURM (scripts/slurm/train.sbatch); none of "
            f"{', '.join(LAUNCHER_VARIABLES)} is set, so Lightning would wait for the other "
            "nodes forever"
        )


def resolve_configs(cfg: DictConfig) -> tuple[ModelConfig, DataConfig, int]:
    """Validate the structured configs (``__post_init__`` checks) and the other groups'
    values before any work starts: ``lmlab train`` calls this before torch and Lightning are
    imported, so bad input is reported before the slow imports (start-up times:
    BENCHMARKS.md)."""
    model_cfg = to_schema(ModelConfig, cfg.model, "model.")
    data_cfg = to_schema(DataConfig, cfg.data, "data.")
    to_schema(BudgetConfig, cfg.budget, "budget.")
    run_cfg = to_schema(RunConfig, {f.name: cfg.get(f.name) for f in dataclasses.fields(RunConfig)})
    check_optimizer(cfg.optim, cfg.scheduler)
    resolve_task(cfg, model_cfg)
    if not run_cfg.dry_run:  # a dry run plans for many nodes and launches nothing
        check_launch(cfg.trainer)
    return model_cfg, data_cfg, sequence_length(model_cfg, data_cfg)


def sequence_length(model_cfg: ModelConfig, data_cfg: DataConfig) -> int:
    """``data.seq_len``, or the model's ``max_seq_len`` when null, checked against both."""
    seq_len = model_cfg.max_seq_len if data_cfg.seq_len is None else data_cfg.seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} is above model.max_seq_len={model_cfg.max_seq_len}"
        )
    if data_cfg.stride is not None and data_cfg.stride > seq_len:
        raise ConfigError(
            f"data.stride={data_cfg.stride} is above the sequence length {seq_len}: windows "
            "would skip tokens (allowed: 1 to the sequence length, or null for whole rows)"
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


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: ``{"model": {"norm": "rmsnorm"}}`` ->
    ``{"model.norm": "rmsnorm"}`` (W&B's config keys, compare's knobs); lists and scalars are
    leaves, and a scalar at the top is ``{prefix: tree}``."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
