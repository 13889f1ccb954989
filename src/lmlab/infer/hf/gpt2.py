"""GPT-2 (``GPT2LMHeadModel``): learned positions, pre-LayerNorm, biases, fused ``c_attn``
(Radford et al. 2019). lmlab's ``+experiment=gpt2`` recipe."""

from __future__ import annotations

from typing import Any

from lmlab.config import Activation, Family, ModelConfig, Norm, NormPlacement, Positional
from lmlab.errors import ConfigError
from lmlab.infer.hf.mapping import Architecture, Rule, heads_default, linear, norm, rule, same

# transformers' activation names for a plain (ungated) MLP, and lmlab's knob for each
PLAIN_ACTIVATIONS = {
    "relu": Activation.relu,
    "gelu_new": Activation.gelu,
    "gelu_pytorch_tanh": Activation.gelu,
    "gelu": Activation.gelu_exact,
}
PLAIN_NAMES = {Activation.relu: "relu", Activation.gelu: "gelu_new", Activation.gelu_exact: "gelu"}


def plain_activation(name: str, field: str) -> Activation:
    if name not in PLAIN_ACTIVATIONS:
        raise ConfigError(
            f"{field}={name!r} has no lmlab equivalent; allowed: {', '.join(PLAIN_ACTIVATIONS)}"
        )
    return PLAIN_ACTIVATIONS[name]


def config_from_hf(hf: Any, tied: bool) -> dict[str, Any]:
    for name, expected in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if getattr(hf, name, expected) != expected:
            raise ConfigError(f"GPT-2 config {name}={getattr(hf, name)}: lmlab needs {expected}")
    return dict(
        family=Family.gpt,
        d_model=hf.n_embd,
        n_layers=hf.n_layer,
        n_heads=hf.n_head,
        d_ff=hf.n_inner or 4 * hf.n_embd,
        max_seq_len=hf.n_positions,
        vocab_size=hf.vocab_size,
        norm_placement=NormPlacement.pre,
        norm=Norm.layernorm,
        norm_eps=hf.layer_norm_epsilon,
        activation=plain_activation(hf.activation_function, "activation_function"),
        positional=Positional.learned,
        bias=True,
        tie_embeddings=tied,
        init_std=hf.initializer_range,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return dict(
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.ffn_dim,
        n_positions=cfg.max_seq_len,
        vocab_size=cfg.vocab_size,
        layer_norm_epsilon=cfg.norm_eps,
        activation_function=PLAIN_NAMES[cfg.activation],
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    out = [
        rule("embed.weight", "transformer.wte.weight"),
        rule("positional.table.weight", "transformer.wpe.weight"),
    ]
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}", f"transformer.h.{i}"
        out += norm(f"{b}.attn_res.norm", f"{h}.ln_1", bias=True)
        out += [
            rule((f"{b}.attn.wq.weight", f"{b}.attn.wkv.weight"), f"{h}.attn.c_attn.weight", True),
            rule((f"{b}.attn.wq.bias", f"{b}.attn.wkv.bias"), f"{h}.attn.c_attn.bias"),
        ]
        out += linear(f"{b}.attn.wo", f"{h}.attn.c_proj", bias=True, transpose=True)
        out += norm(f"{b}.ffn_res.norm", f"{h}.ln_2", bias=True)
        out += linear(f"{b}.ffn.w_in", f"{h}.mlp.c_fc", bias=True, transpose=True)
        out += linear(f"{b}.ffn.w_out", f"{h}.mlp.c_proj", bias=True, transpose=True)
    out += norm("norm_f", "transformer.ln_f", bias=True)
    if not cfg.tie_embeddings:
        out.append(rule("head.weight", "lm_head.weight"))
    return out


GPT2 = Architecture(
    hf_class="GPT2LMHeadModel",
    model_type="gpt2",
    family=Family.gpt,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    requirements=[
        ("norm_placement", same(NormPlacement.pre), "GPT-2 is pre-norm"),
        ("norm", same(Norm.layernorm), "GPT-2 uses LayerNorm"),
        ("activation", lambda c: tuple(PLAIN_NAMES), "GPT-2's MLP is ungated"),
        ("bias", same(True), "GPT-2's layers all have biases"),
        ("n_kv_heads", heads_default, "GPT-2 has no grouped-query attention"),
        ("d_head", lambda c: (None, c.d_model // c.n_heads), "GPT-2's heads split d_model"),
        ("attention_window", same(None), "GPT-2 attends to the whole context"),
    ],
    selects=lambda cfg: cfg.positional == Positional.learned,
    selected_by="model.positional=learned",
)
