"""T5 (``T5ForConditionalGeneration``): relative position buckets per stack, pre-RMSNorm, no
biases, a plain (v1.0) or gated (v1.1, Flan) MLP, a tied head rescaled by d_model**-0.5
(Raffel et al. 2020). lmlab's ``+experiment=t5`` recipe. T5 folds attention's 1/sqrt(d) into
its query weights; lmlab scales the scores, so queries are multiplied by sqrt(d) on the way in
(exact in binary floating point when d is a power of 4, as T5's 64 is)."""

from __future__ import annotations

from typing import Any

from lmlab.config import Activation, Family, ModelConfig, Norm, NormPlacement, Positional
from lmlab.errors import ConfigError
from lmlab.infer.hf.mapping import (
    Architecture,
    Rule,
    fused_kv,
    heads_default,
    query_scale,
    rule,
    same,
)

# feed_forward_proj -> lmlab's activation ("gated-gelu" is the tanh GELU, as T5Config reads it)
FEED_FORWARDS = {
    "relu": Activation.relu,
    "gelu_new": Activation.gelu,
    "gelu": Activation.gelu_exact,
    "gated-gelu": Activation.geglu,
    "gated-gelu_new": Activation.geglu,
    "gated-silu": Activation.swiglu,
}
FEED_FORWARD_NAMES = {
    Activation.relu: "relu",
    Activation.gelu: "gelu_new",
    Activation.gelu_exact: "gelu",
    Activation.geglu: "gated-gelu",
    Activation.swiglu: "gated-silu",
}
DEFAULT_MAX_SEQ_LEN = 512  # T5's pre-training length; relative positions set no limit


def config_from_hf(hf: Any, tied: bool) -> dict[str, Any]:
    if hf.feed_forward_proj not in FEED_FORWARDS:
        raise ConfigError(
            f"feed_forward_proj={hf.feed_forward_proj!r} has no lmlab equivalent; allowed: "
            f"{', '.join(FEED_FORWARDS)}"
        )
    # lmlab rescales the head by d_model**-0.5 exactly when it is tied (T5 v1.0). transformers 5
    # ties T5's head always, and unties it when the weights differ (v1.1, Flan); a tied head
    # without the rescaling converts as an untied copy, which computes the same.
    scaled = getattr(hf, "scale_decoder_outputs", tied)
    if scaled and not tied:
        raise ConfigError(
            "T5 with scale_decoder_outputs=true and an untied head: lmlab rescales the head "
            "only when it is tied to the embedding"
        )
    return dict(
        family=Family.t5,
        d_model=hf.d_model,
        n_layers=hf.num_layers,
        n_decoder_layers=None if hf.num_decoder_layers == hf.num_layers else hf.num_decoder_layers,
        n_heads=hf.num_heads,
        d_head=None if hf.d_kv * hf.num_heads == hf.d_model else hf.d_kv,
        d_ff=hf.d_ff,
        max_seq_len=getattr(hf, "n_positions", None) or DEFAULT_MAX_SEQ_LEN,
        vocab_size=hf.vocab_size,
        norm_placement=NormPlacement.pre,
        norm=Norm.rmsnorm,
        norm_eps=hf.layer_norm_epsilon,
        activation=FEED_FORWARDS[hf.feed_forward_proj],
        positional=Positional.relative,
        relative_buckets=hf.relative_attention_num_buckets,
        relative_max_distance=hf.relative_attention_max_distance,
        bias=False,
        tie_embeddings=tied and scaled,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return dict(
        d_model=cfg.d_model,
        num_layers=cfg.n_layers,
        num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.n_heads,
        d_kv=cfg.head_dim,
        d_ff=cfg.ffn_dim,
        n_positions=cfg.max_seq_len,
        vocab_size=cfg.vocab_size,
        layer_norm_epsilon=cfg.norm_eps,
        feed_forward_proj=FEED_FORWARD_NAMES[cfg.activation],
        relative_attention_num_buckets=cfg.relative_buckets,
        relative_attention_max_distance=cfg.relative_max_distance,
        tie_word_embeddings=cfg.tie_embeddings,
        scale_decoder_outputs=cfg.tie_embeddings,
        dropout_rate=cfg.dropout,
    )


def attention(lmlab: str, hf: str, cfg: ModelConfig) -> list[Rule]:
    return [
        rule(f"{lmlab}.wq.weight", f"{hf}.q.weight", scale=query_scale(cfg)),
        *fused_kv(f"{lmlab}.wkv", f"{hf}.k", f"{hf}.v", cfg, bias=False),
        rule(f"{lmlab}.wo.weight", f"{hf}.o.weight"),
    ]


def feed_forward(lmlab: str, hf: str, cfg: ModelConfig) -> list[Rule]:
    if cfg.activation in (Activation.geglu, Activation.swiglu):
        pairs = [("w_gate", "wi_0"), ("w_in", "wi_1"), ("w_out", "wo")]
    else:
        pairs = [("w_in", "wi"), ("w_out", "wo")]
    return [rule(f"{lmlab}.{a}.weight", f"{hf}.DenseReluDense.{b}.weight") for a, b in pairs]


def rules(cfg: ModelConfig) -> list[Rule]:
    bias_table = "layer.0.SelfAttention.relative_attention_bias.weight"
    out = [
        rule("embed.weight", "shared.weight"),
        rule("enc_positional.table.weight", f"encoder.block.0.{bias_table}"),
        rule("dec_positional.table.weight", f"decoder.block.0.{bias_table}"),
        rule("enc_norm.weight", "encoder.final_layer_norm.weight"),
        rule("dec_norm.weight", "decoder.final_layer_norm.weight"),
    ]
    for i in range(cfg.n_layers):
        b, h = f"encoder.{i}", f"encoder.block.{i}.layer"
        out.append(rule(f"{b}.attn_res.norm.weight", f"{h}.0.layer_norm.weight"))
        out += attention(f"{b}.attn", f"{h}.0.SelfAttention", cfg)
        out.append(rule(f"{b}.ffn_res.norm.weight", f"{h}.1.layer_norm.weight"))
        out += feed_forward(f"{b}.ffn", f"{h}.1", cfg)
    for i in range(cfg.decoder_layers):
        b, h = f"decoder.{i}", f"decoder.block.{i}.layer"
        out.append(rule(f"{b}.attn_res.norm.weight", f"{h}.0.layer_norm.weight"))
        out += attention(f"{b}.attn", f"{h}.0.SelfAttention", cfg)
        out.append(rule(f"{b}.cross_res.norm.weight", f"{h}.1.layer_norm.weight"))
        out += attention(f"{b}.cross", f"{h}.1.EncDecAttention", cfg)
        out.append(rule(f"{b}.ffn_res.norm.weight", f"{h}.2.layer_norm.weight"))
        out += feed_forward(f"{b}.ffn", f"{h}.2", cfg)
    if not cfg.tie_embeddings:
        out.append(rule("head.weight", "lm_head.weight"))
    return out


T5 = Architecture(
    hf_class="T5ForConditionalGeneration",
    model_type="t5",
    family=Family.t5,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    requirements=[
        ("norm_placement", same(NormPlacement.pre), "T5 is pre-norm"),
        ("norm", same(Norm.rmsnorm), "T5's layer norm is RMSNorm"),
        ("positional", same(Positional.relative), "T5 uses relative position buckets"),
        ("activation", lambda c: tuple(FEED_FORWARD_NAMES), "T5's feed_forward_proj"),
        ("bias", same(False), "T5 has no biases (+experiment=t5)"),
        ("n_kv_heads", heads_default, "T5 has no grouped-query attention"),
        ("attention_window", same(None), "T5 attends to the whole input"),
    ],
)
