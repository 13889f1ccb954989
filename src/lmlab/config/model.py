"""``model.*``: the architecture of one model (ModelConfig; its ``model.moe``: MoEConfig)."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lmlab.config.knobs import (
    GATED,
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
from lmlab.config.moe import MoEConfig
from lmlab.errors import ConfigError


@dataclass
class ModelConfig:
    """Architecture of one model. Every field is a plain override (``model.norm=rmsnorm``);
    each is described below it."""

    family: Family = Family.gpt
    d_model: int = 128
    n_layers: int = 4
    n_decoder_layers: int | None = None
    """T5's decoder layers; None: as many as its encoder (``n_layers``)."""
    n_heads: int = 4
    n_kv_heads: int | None = None
    """None: ``n_heads`` (multi-head attention); 1 is MQA, anything between is GQA."""
    d_head: int | None = None
    """None: each head has d_model / n_heads dimensions. Set it when n_heads x d_head differs
    from d_model (T5 v1.1 small: 6 heads of 64 in a 512 model; Gemma, Qwen3)."""
    d_ff: int | None = None
    """None derives the feed-forward width: 4 * d_model for ReLU/GELU, and for the gated
    SwiGLU/GeGLU (three matrices instead of two) 2/3 of that, truncated to a whole number and
    rounded up to ``ffn_multiple_of``, as Llama's code does, so the parameter count stays
    comparable."""
    ffn_multiple_of: int = 64
    max_seq_len: int = 256
    vocab_size: int | None = None
    """None: the tokenizer's size at training time."""
    norm_placement: NormPlacement = NormPlacement.pre
    norm: Norm = Norm.layernorm
    norm_eps: float = 1e-5
    activation: Activation = Activation.gelu
    positional: Positional = Positional.learned
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling.none
    """Stretches RoPE's frequencies for contexts longer than pre-training saw. ``linear``
    divides every frequency by ``rope_factor`` (position interpolation); ``llama3`` (Llama 3.1
    to 3.3) divides those whose wavelength exceeds ``rope_original_max_seq_len /
    rope_low_freq_factor`` by ``rope_factor``, keeps those shorter than
    ``rope_original_max_seq_len / rope_high_freq_factor`` and interpolates in between. The
    defaults of the four are Llama 3.1's (8, 1, 4, 8192)."""
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192
    relative_buckets: int = 32
    """T5's relative position bias: its buckets (32) and ``relative_max_distance`` (128)."""
    relative_max_distance: int = 128
    type_vocab_size: int = 0
    """> 0 adds BERT's segment (token-type) embeddings (2 in BERT)."""
    attention_window: int | None = None
    """None is full attention; an int W lets each query see its W most recent keys (itself
    included), as in Mistral's sliding window; in an encoder, the keys within W-1 positions
    either side. Cross-attention is never windowed."""
    attention_kernel: AttentionKernel = AttentionKernel.sdpa
    """How attention that needs a mask or a bias runs (ALiBi, T5's relative bias, a window,
    padding). ``sdpa`` (the default) merges them into one dense mask, which rules out SDPA's
    flash kernels; ``flex`` runs FlexAttention (block-sparse masks, the bias computed inside
    the kernel); ``auto`` takes FlexAttention on CUDA and SDPA elsewhere. ``sdpa`` stays the
    default until FlexAttention's path has been measured on a GPU (``make test-gpu``, ``make
    bench-gpu``). FlexAttention has no attention dropout, so ``auto`` with ``dropout`` > 0
    takes SDPA. Generation with a KV cache always runs SDPA. It changes how attention runs,
    not what it computes (equal within the precision's rounding)."""
    cross_entropy: CrossEntropy = CrossEntropy.auto
    """How training computes the output layer's loss. ``full`` projects every position to the
    whole vocabulary, then takes the cross-entropy in fp32: under bf16 that is an fp32 copy of
    the (tokens, vocab) logits, plus its gradient. ``chunked`` is torch's
    ``linear_cross_entropy`` (torch 2.13 and later): projection, loss and both gradients for a
    chunk of rows at a time, so the whole logits never exist. ``auto`` (the default) is
    chunked when the output is at least 8 times as wide as its input (a vocabulary head:
    gpt_tiny's 4096 over 128) and torch has it, full otherwise (Tiny Shakespeare's 171
    characters, a classifier). Under ``compile=model`` Inductor fuses the loss of the full
    form into the compiled graph, whatever this is set to. Validation and generation need the
    logits, so they always take the full form."""
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    embed_scale: bool = False
    """Multiplies the token embeddings by sqrt(d_model) where they enter the model, as the
    original Transformer does (Vaswani et al. 2017, 3.4; ``+experiment=vaswani2017``), so that
    they are not small beside a fixed sinusoidal table: with ``init_std=0.02`` at d_model 512,
    an embedding's entries are 0.02 against the table's 0.7 (root mean square). A tied head
    uses the weights unscaled. No transformers class lmlab converts to scales them
    (``to_hf`` refuses it)."""
    init: Init = Init.gpt2
    """How the weights start. ``gpt2`` (the default): N(0, ``init_std``) for matrices and
    embeddings, the residual output projections divided by sqrt(2 n_layers). ``t5``: Mesh
    TensorFlow's, as transformers initialises T5: every linear layer N(0, 1/fan_in), the
    token, position and segment embeddings N(0, 1), T5's relative bias table N(0, 1/d_model)
    (the t5_* presets). T5's tied head rescales by d_model**-0.5; GPT's and BERT's do not, so
    there an embedding that is also the head is N(0, 1/d_model). One difference from
    transformers: an untied head (T5 v1.1) is a linear layer here, N(0, 1/d_model), where
    transformers draws it N(0, 1)."""
    init_std: float = 0.02
    activation_checkpointing: bool = False
    """Recomputes each block's activations in the backward pass instead of keeping them (less
    memory, about a third more compute); it changes how the model runs, not what it computes,
    so it may differ between a checkpoint and the run resuming it."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """The Mixture-of-Experts feed-forward (``model.moe.num_experts=8``), see ``MoEConfig``."""

    def __post_init__(self) -> None:
        if isinstance(self.moe, Mapping):  # plain types, as a checkpoint's model_config holds
            self.moe = MoEConfig(**self.moe)
        for name, kind in choice_fields().items():  # ModelConfig(norm="rmsnorm") from Python
            value = getattr(self, name)
            if not isinstance(value, kind):
                allowed = ", ".join(c.value for c in kind)
                try:
                    setattr(self, name, kind(value))
                except ValueError:
                    raise ConfigError(
                        f"model.{name}={value!r} is not one of its values; allowed: {allowed}"
                    ) from None
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
        if self.moe.num_experts and self.ffn_dim % self.moe.granularity:
            raise ConfigError(
                f"model.moe.granularity={self.moe.granularity} must divide the feed-forward "
                f"width {self.ffn_dim} ({self.ffn_source()}): each expert is d_ff / granularity "
                "wide"
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
        self.validate_rope_scaling()
        if self.attention_window is not None and not 1 <= self.attention_window <= self.max_seq_len:
            raise ConfigError(
                f"model.attention_window={self.attention_window} must be between 1 and "
                f"model.max_seq_len={self.max_seq_len} (null for full attention)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.attention_kernel == AttentionKernel.flex and self.dropout:
            raise ConfigError(
                f"model.attention_kernel=flex cannot apply model.dropout={self.dropout}: "
                "FlexAttention has no attention dropout (use auto or sdpa, or dropout=0)"
            )
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be >= 2")
        self.validate_family()

    def validate_rope_scaling(self) -> None:
        if self.rope_scaling == RopeScaling.none:
            return
        scaling = f"model.rope_scaling={self.rope_scaling.value}"
        if self.positional != Positional.rope:
            raise ConfigError(
                f"{scaling} scales RoPE: it needs model.positional=rope, not "
                f"{self.positional.value} (or model.rope_scaling=none)"
            )
        if not 1 <= self.rope_factor < math.inf:  # below 1 squeezes positions (HF warns too)
            raise ConfigError(
                f"model.rope_factor={self.rope_factor}: allowed 1 or more, finite (how many "
                "times longer a context RoPE stretches to; 1 leaves it as trained)"
            )
        if self.rope_scaling != RopeScaling.llama3:
            return
        low, high = self.rope_low_freq_factor, self.rope_high_freq_factor
        if not 0 < low < high < math.inf:
            raise ConfigError(
                f"{scaling} needs 0 < model.rope_low_freq_factor < model.rope_high_freq_factor, "
                f"got {low} and {high}"
            )
        if self.rope_original_max_seq_len < 1:
            raise ConfigError(
                f"model.rope_original_max_seq_len={self.rope_original_max_seq_len} must be >= 1"
            )

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
        # the exact buckets' end, which the logarithmic ones start from, up to the max distance
        # (``relative_position_bucket``): BERT's stack is bidirectional only, a decoder's causal
        exact, halves = (
            (self.relative_buckets // 4, "4")
            if self.family == Family.bert
            else (self.relative_buckets // 2, "2")
        )
        if self.positional == Positional.relative and not (
            self.relative_buckets >= 4 and self.relative_max_distance > exact
        ):
            raise ConfigError(
                f"model.positional=relative needs model.relative_buckets >= 4 and "
                f"model.relative_max_distance > relative_buckets // {halves} ({exact}) for "
                f"family={self.family.value}, got relative_buckets={self.relative_buckets}, "
                f"relative_max_distance={self.relative_max_distance}"
            )

    def unused_fields(self) -> dict[str, str]:
        """{field: the setting it has no effect under}: the fields another field switches off
        (``rope_theta`` without RoPE, ``moe.top_k`` with no experts). Their values are kept
        and compared as any field's; ``lmlab.train.preflight.warn_unused`` names those a
        command asked for."""
        unused: dict[str, str] = {}

        def off(names: tuple[str, ...], because: str) -> None:
            unused.update({name: because for name in names if name not in unused})

        rope = ("rope_theta", "rope_scaling")
        scaled = ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor")
        llama3 = ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_seq_len")
        if self.positional != Positional.rope:
            off(rope + scaled + llama3, f"model.positional={self.positional.value}")
        elif self.rope_scaling == RopeScaling.none:
            off(scaled + llama3, "model.rope_scaling=none")
        elif self.rope_scaling == RopeScaling.linear:
            off(llama3, "model.rope_scaling=linear")
        if self.positional != Positional.relative:
            off(
                ("relative_buckets", "relative_max_distance"),
                f"model.positional={self.positional.value}",
            )
        if self.d_ff is not None:
            off(("ffn_multiple_of",), f"model.d_ff={self.d_ff}")
        elif self.activation not in GATED:
            off(("ffn_multiple_of",), f"model.activation={self.activation.value}")
        if self.init == Init.t5:
            off(("init_std",), "model.init=t5")
        if not self.moe.num_experts:
            moe = [
                f"moe.{f.name}" for f in dataclasses.fields(MoEConfig) if f.name != "num_experts"
            ]
            off(tuple(moe), "model.moe.num_experts=0")
        return unused

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    @property
    def masked_attention(self) -> AttentionKernel:
        """``attention_kernel`` as it applies: ``auto`` with attention dropout is ``sdpa``
        (FlexAttention has no dropout)."""
        if self.attention_kernel == AttentionKernel.auto and self.dropout:
            return AttentionKernel.sdpa
        return self.attention_kernel

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def ffn_source(self) -> str:
        """Where ``ffn_dim`` comes from, for messages."""
        if self.d_ff is not None:
            return f"model.d_ff={self.d_ff}"
        act = self.activation.value
        return f"derived from model.d_model={self.d_model} and model.activation={act}"

    @property
    def expert_dim(self) -> int:
        """A Mixture of Experts' expert hidden width: ``ffn_dim`` / ``moe.granularity``."""
        return self.ffn_dim // self.moe.granularity

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.activation in GATED:
            # Llama's FeedForward: int(2 * 4d / 3) first, then up to a multiple of m
            m, two_thirds = self.ffn_multiple_of, 8 * self.d_model // 3
            return m * math.ceil(two_thirds / m)
        return 4 * self.d_model


@functools.cache
def choice_fields() -> dict[str, type[Enum]]:
    """ModelConfig's fields that take one of a Choice's values, with that Choice."""
    hints = typing.get_type_hints(ModelConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(ModelConfig)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], Enum)
    }


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """``cfg`` as plain types (enums as their values), as checkpoints store it."""
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in dataclasses.asdict(cfg).items()}
