"""BERT (``BertForMaskedLM``): learned positions and segments, post-LayerNorm with a norm on the
embeddings, the MLM head's transform (Devlin et al. 2019). lmlab's ``+experiment=bert``
recipe; Hugging Face's ``hidden_act="gelu"`` is lmlab's ``activation=gelu_exact``."""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import Family, ModelConfig, Norm, NormPlacement, Positional
from lmlab.errors import ConfigError
from lmlab.infer.hf.gpt2 import PLAIN_NAMES, plain_activation
from lmlab.infer.hf.mapping import Architecture, Rule, fused_kv, heads_default, linear, rule, same

PREFIX = "bert"


def config_from_hf(hf: Any, tied: bool) -> dict[str, Any]:
    kind = getattr(hf, "position_embedding_type", "absolute")
    if kind != "absolute" or getattr(hf, "is_decoder", False):
        raise ConfigError(
            f"BERT with position_embedding_type={kind!r}, is_decoder={hf.is_decoder}: lmlab "
            "converts the absolute-position encoder only"
        )
    return dict(
        family=Family.bert,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        d_ff=hf.intermediate_size,
        max_seq_len=hf.max_position_embeddings,
        vocab_size=hf.vocab_size,
        type_vocab_size=hf.type_vocab_size,
        norm_placement=NormPlacement.post,
        norm=Norm.layernorm,
        norm_eps=hf.layer_norm_eps,
        activation=plain_activation(hf.hidden_act, "hidden_act"),
        positional=Positional.learned,
        bias=True,
        tie_embeddings=tied,
        init_std=hf.initializer_range,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return dict(
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.ffn_dim,
        max_position_embeddings=cfg.max_seq_len,
        vocab_size=cfg.vocab_size,
        type_vocab_size=max(cfg.type_vocab_size, 1),  # none in lmlab: one all-zero segment
        layer_norm_eps=cfg.norm_eps,
        hidden_act=PLAIN_NAMES[cfg.activation],
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    e = f"{PREFIX}.embeddings"
    out = [
        rule("embed.weight", f"{e}.word_embeddings.weight"),
        rule("positional.table.weight", f"{e}.position_embeddings.weight"),
        *linear("emb_norm", f"{e}.LayerNorm", bias=True),
    ]
    if cfg.type_vocab_size:
        out.append(rule("segment.weight", f"{e}.token_type_embeddings.weight"))
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}", f"{PREFIX}.encoder.layer.{i}"
        out += linear(f"{b}.attn.wq", f"{h}.attention.self.query", bias=True)
        out += fused_kv(
            f"{b}.attn.wkv", f"{h}.attention.self.key", f"{h}.attention.self.value", cfg, True
        )
        out += linear(f"{b}.attn.wo", f"{h}.attention.output.dense", bias=True)
        out += linear(f"{b}.attn_res.norm", f"{h}.attention.output.LayerNorm", bias=True)
        out += linear(f"{b}.ffn.w_in", f"{h}.intermediate.dense", bias=True)
        out += linear(f"{b}.ffn.w_out", f"{h}.output.dense", bias=True)
        out += linear(f"{b}.ffn_res.norm", f"{h}.output.LayerNorm", bias=True)
    out += linear("head.dense", "cls.predictions.transform.dense", bias=True)
    out += linear("head.norm", "cls.predictions.transform.LayerNorm", bias=True)
    if cfg.tie_embeddings:
        out.append(rule("head.out.bias", "cls.predictions.bias"))
    else:  # the decoder's own bias is the one transformers' forward adds when untied
        out.append(rule("head.out.weight", "cls.predictions.decoder.weight"))
        out.append(rule("head.out.bias", "cls.predictions.decoder.bias"))
    return out


def saved_rules(cfg: ModelConfig) -> list[Rule]:
    """save_pretrained's layout: an untied head's bias also as ``cls.predictions.bias``, the
    parameter the tied layout shares with the decoder (its forward adds the decoder's)."""
    out = rules(cfg)
    if not cfg.tie_embeddings:
        out.append(rule("head.out.bias", "cls.predictions.bias"))
    return out


def fill_to_hf(cfg: ModelConfig, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Without segments in lmlab, Hugging Face's one segment embedding is zero (adds nothing)."""
    if cfg.type_vocab_size:
        return {}
    return {f"{PREFIX}.embeddings.token_type_embeddings.weight": like.new_zeros(1, cfg.d_model)}


BERT = Architecture(
    hf_class="BertForMaskedLM",
    model_type="bert",
    family=Family.bert,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    saved_rules=saved_rules,
    fill_to_hf=fill_to_hf,
    droppable=("bert.pooler.", "cls.seq_relationship."),
    requirements=[
        ("norm_placement", same(NormPlacement.post), "BERT is post-norm (+experiment=bert)"),
        ("norm", same(Norm.layernorm), "BERT uses LayerNorm"),
        ("positional", same(Positional.learned), "BERT has learned absolute positions"),
        ("activation", lambda c: tuple(PLAIN_NAMES), "BERT's MLP is ungated"),
        ("bias", same(True), "BERT's layers all have biases"),
        ("n_kv_heads", heads_default, "BERT has no grouped-query attention"),
        ("d_head", lambda c: (None, c.d_model // c.n_heads), "BERT's heads split d_model"),
        ("attention_window", same(None), "BERT attends to the whole input"),
    ],
)
