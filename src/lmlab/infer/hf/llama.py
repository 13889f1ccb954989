"""Llama (``LlamaForCausalLM``) and Mistral (``MistralForCausalLM``, Llama with a sliding
window): RoPE with half-split pairs, pre-RMSNorm, a gated MLP, GQA, no biases. lmlab's
``+experiment=llama`` recipe (``model.attention_window`` for Mistral)."""

from __future__ import annotations

from typing import Any

from lmlab.config import (
    Activation,
    Family,
    ModelConfig,
    Norm,
    NormPlacement,
    Positional,
    RopeScaling,
)
from lmlab.errors import ConfigError
from lmlab.infer.hf.mapping import Architecture, Rule, fused_kv, linear, rule, same

GATED_ACTIVATIONS = {
    "silu": Activation.swiglu,
    "gelu_pytorch_tanh": Activation.geglu,
    "gelu_new": Activation.geglu,
}
GATED_NAMES = {Activation.swiglu: "silu", Activation.geglu: "gelu_pytorch_tanh"}


# transformers' rope_type for each model.rope_scaling (YaRN, dynamic NTK and LongRoPE have
# no lmlab knob: they also rescale attention or depend on the input's length)
ROPE_TYPES = {
    RopeScaling.none: "default",
    RopeScaling.linear: "linear",
    RopeScaling.llama3: "llama3",
}
LLAMA3_PARAMETERS = {  # transformers' rope_parameters key -> lmlab's field
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_seq_len",
}


def rope_fields(hf: Any) -> dict[str, Any]:
    """RoPE's base and scaling from ``rope_parameters`` (transformers 5) or ``rope_theta``."""
    params = getattr(hf, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    scalings = {v: k for k, v in ROPE_TYPES.items()}
    if kind not in scalings:
        raise ConfigError(
            f"rope_type={kind!r} has no lmlab knob; allowed: {', '.join(scalings)} "
            "(model.rope_scaling)"
        )
    partial = params.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", 1.0))
    if partial not in (None, 1.0):
        raise ConfigError(
            f"partial_rotary_factor={partial}: lmlab's RoPE rotates every dimension of a head "
            "(only 1.0 converts)"
        )
    theta = float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))
    fields: dict[str, Any] = {"rope_theta": theta, "rope_scaling": scalings[kind]}
    if kind != "default":
        fields["rope_factor"] = float(params["factor"])
    if kind == "llama3":
        fields |= {ours: params[theirs] for theirs, ours in LLAMA3_PARAMETERS.items()}
    return fields


def rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    """transformers' ``rope_parameters`` of ``cfg``'s RoPE."""
    out: dict[str, Any] = {"rope_type": ROPE_TYPES[cfg.rope_scaling], "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != RopeScaling.none:
        out["factor"] = cfg.rope_factor
    if cfg.rope_scaling == RopeScaling.llama3:
        out |= {theirs: getattr(cfg, ours) for theirs, ours in LLAMA3_PARAMETERS.items()}
    return out


def config_from_hf(hf: Any, tied: bool) -> dict[str, Any]:
    if hf.hidden_act not in GATED_ACTIVATIONS:
        raise ConfigError(
            f"hidden_act={hf.hidden_act!r} has no lmlab gated MLP; allowed: "
            f"{', '.join(GATED_ACTIVATIONS)}"
        )
    attention_bias, mlp_bias = getattr(hf, "attention_bias", False), getattr(hf, "mlp_bias", False)
    if attention_bias != mlp_bias:
        raise ConfigError(
            f"attention_bias={attention_bias} with mlp_bias={mlp_bias}: lmlab's model.bias "
            "sets both"
        )
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    kv_heads = hf.num_key_value_heads or hf.num_attention_heads
    window = getattr(hf, "sliding_window", None)
    if window is not None and window >= hf.max_position_embeddings:
        window = None  # no input is longer than the window: full attention
    return dict(
        family=Family.gpt,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=None if kv_heads == hf.num_attention_heads else kv_heads,
        d_head=None if head_dim * hf.num_attention_heads == hf.hidden_size else head_dim,
        d_ff=hf.intermediate_size,
        max_seq_len=hf.max_position_embeddings,
        vocab_size=hf.vocab_size,
        norm_placement=NormPlacement.pre,
        norm=Norm.rmsnorm,
        norm_eps=hf.rms_norm_eps,
        activation=GATED_ACTIVATIONS[hf.hidden_act],
        positional=Positional.rope,
        **rope_fields(hf),
        attention_window=window,
        bias=attention_bias,
        tie_embeddings=tied,
        init_std=hf.initializer_range,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    out = dict(
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.ffn_dim,
        max_position_embeddings=cfg.max_seq_len,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.norm_eps,
        hidden_act=GATED_NAMES[cfg.activation],
        rope_parameters=rope_parameters(cfg),
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        attention_dropout=cfg.dropout,
    )
    if cfg.attention_window is None:
        out.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    else:
        out.update(sliding_window=cfg.attention_window)
    return out


def rules(cfg: ModelConfig) -> list[Rule]:
    out = [rule("embed.weight", "model.embed_tokens.weight")]
    bias = cfg.bias
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}", f"model.layers.{i}"
        out.append(rule(f"{b}.attn_res.norm.weight", f"{h}.input_layernorm.weight"))
        out += linear(f"{b}.attn.wq", f"{h}.self_attn.q_proj", bias)
        out += fused_kv(
            f"{b}.attn.wkv", f"{h}.self_attn.k_proj", f"{h}.self_attn.v_proj", cfg, bias
        )
        out += linear(f"{b}.attn.wo", f"{h}.self_attn.o_proj", bias)
        out.append(rule(f"{b}.ffn_res.norm.weight", f"{h}.post_attention_layernorm.weight"))
        out += linear(f"{b}.ffn.w_gate", f"{h}.mlp.gate_proj", bias)
        out += linear(f"{b}.ffn.w_in", f"{h}.mlp.up_proj", bias)
        out += linear(f"{b}.ffn.w_out", f"{h}.mlp.down_proj", bias)
    out.append(rule("norm_f.weight", "model.norm.weight"))
    if not cfg.tie_embeddings:
        out.append(rule("head.weight", "lm_head.weight"))
    return out


REQUIREMENTS = [
    ("norm_placement", same(NormPlacement.pre), "Llama is pre-norm"),
    ("norm", same(Norm.rmsnorm), "Llama uses RMSNorm"),
    ("activation", lambda c: tuple(GATED_NAMES), "Llama's MLP is gated"),
]

LLAMA = Architecture(
    hf_class="LlamaForCausalLM",
    model_type="llama",
    family=Family.gpt,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    requirements=REQUIREMENTS,
    selects=lambda cfg: (
        cfg.positional == Positional.rope
        and cfg.attention_window is None
        and not cfg.moe.num_experts
    ),
    selected_by="model.positional=rope, no attention window, dense",
)

MISTRAL = Architecture(
    hf_class="MistralForCausalLM",
    model_type="mistral",
    family=Family.gpt,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    requirements=[*REQUIREMENTS, ("bias", same(False), "Mistral has no biases")],
    selects=lambda cfg: (
        cfg.positional == Positional.rope
        and cfg.attention_window is not None
        and not cfg.moe.num_experts
    ),
    selected_by="model.positional=rope with model.attention_window, dense",
)
