"""Mixtral (``MixtralForCausalLM``): Llama's blocks with a sparse Mixture-of-Experts
feed-forward in every block, each token routed to ``top_k`` experts by a softmax over the
router's logits renormalised over the chosen ones (Jiang et al. 2024). lmlab's
``+experiment=mixtral`` recipe. The experts are gated MLPs of ``hidden_act``, as Llama's MLP
is: SwiGLU (``silu``, Mixtral's own) or GeGLU (``gelu_pytorch_tanh``), in both directions.
transformers 5 holds each layer's experts stacked in memory:
``mlp.experts.gate_up_proj`` (E, 2 d_ff, d) is lmlab's ``w_gate`` and ``w_in`` side by side,
``down_proj`` (E, d, d_ff) its ``w_out``. Its save_pretrained writes them one by one, as
published checkpoints, transformers 4 and vLLM have them, and so does to_hf:
``block_sparse_moe.experts.<e>.w1`` (d_ff, d) is expert e's ``w_gate``, ``w3`` its ``w_in``,
``w2`` (d, d_ff) its ``w_out``, and ``block_sparse_moe.gate`` the router. from_hf reads
either (transformers loads both into its stacked layout).

The load-balancing loss is the same E * sum_i f_i P_i (Switch) on both sides, but
transformers' ``load_balancing_loss_func`` takes f_i as the fraction of the tokens that chose
expert i (each token counted k times: k when balanced), lmlab's as the fraction of the N * k
assignments (1 when balanced): on one layer transformers' loss is k times lmlab's. So
``router_aux_loss_coef`` c is ``model.moe.aux_loss_coef`` k * c, which gives the balancing
loss the same weight (over several layers transformers pools their counts and probabilities
before the product, lmlab averages the layers' losses: the same at balance). Mixtral has no
router z-loss: ``model.moe.z_loss_coef`` comes in as 0 and goes out as nothing. Nor has it a
capacity factor, but ``model.moe.capacity_factor`` drops assignments in training only (lmlab's
evaluation and generation are dropless): a model with either goes out, and to_hf names them as
not written (training settings; the weights compute the same)."""

from __future__ import annotations

from typing import Any

from lmlab.config import Family, ModelConfig, Positional
from lmlab.errors import ConfigError
from lmlab.infer.hf import llama
from lmlab.infer.hf.mapping import Architecture, Rule, rule, same


def config_from_hf(hf: Any, tied: bool) -> dict[str, Any]:
    if hf.num_experts_per_tok < 2:
        raise ConfigError(
            f"num_experts_per_tok={hf.num_experts_per_tok}: Mixtral renormalises the chosen "
            "gates (a single expert gets weight 1), lmlab's top_k=1 weights it by its router "
            "probability (Switch); only top_k >= 2 converts"
        )
    if getattr(hf, "router_jitter_noise", 0.0):
        raise ConfigError(
            f"router_jitter_noise={hf.router_jitter_noise}: lmlab's router has no jitter "
            "(allowed: 0); jitter changes training only, so the model's config.json with "
            "router_jitter_noise set to 0 converts with the same logits"
        )
    fields = llama.config_from_hf(hf, tied)
    k = hf.num_experts_per_tok
    fields["moe"] = {
        "num_experts": hf.num_local_experts,
        "top_k": k,
        "aux_loss_coef": hf.router_aux_loss_coef * k,  # its loss is k times lmlab's
        "z_loss_coef": 0.0,  # Mixtral trains without a router z-loss
    }
    return fields


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    out = llama.config_to_hf(cfg)
    out.pop("attention_bias", None), out.pop("mlp_bias", None)
    return out | dict(
        intermediate_size=cfg.expert_dim,  # Mixtral's is its experts' (every block has them)
        num_local_experts=cfg.moe.num_experts,
        num_experts_per_tok=cfg.moe.top_k,
        router_aux_loss_coef=cfg.moe.aux_loss_coef / cfg.moe.top_k,  # its loss is k times ours
        sliding_window=cfg.attention_window,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """transformers 5's state dict: each layer's experts stacked, gate and up fused."""
    out = [r for r in llama.rules(cfg) if ".ffn." not in r.lmlab[0]]
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.ffn", f"model.layers.{i}.mlp"
        out += [
            rule(f"{b}.router.weight", f"{h}.gate.weight"),
            rule(
                (f"{b}.experts.w_gate.weight", f"{b}.experts.w_in.weight"),
                f"{h}.experts.gate_up_proj",
                dim=1,
            ),
            rule(f"{b}.experts.w_out.weight", f"{h}.experts.down_proj"),
        ]
    return out


# lmlab's stacked expert weight -> the name of each expert's matrix in the saved layout
SAVED_EXPERTS = {"w_gate": "w1", "w_in": "w3", "w_out": "w2"}


def saved_rules(cfg: ModelConfig) -> list[Rule]:
    """What save_pretrained writes: each expert's matrices apart, under ``block_sparse_moe``."""
    out = [r for r in llama.rules(cfg) if ".ffn." not in r.lmlab[0]]
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.ffn", f"model.layers.{i}.block_sparse_moe"
        out.append(rule(f"{b}.router.weight", f"{h}.gate.weight"))
        for ours, theirs in SAVED_EXPERTS.items():
            each = [f"{h}.experts.{e}.{theirs}.weight" for e in range(cfg.moe.num_experts)]
            out.append(rule(f"{b}.experts.{ours}.weight", each, stacked=True))
    return out


MIXTRAL = Architecture(
    hf_class="MixtralForCausalLM",
    model_type="mixtral",
    family=Family.gpt,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    saved_rules=saved_rules,
    requirements=[
        *llama.REQUIREMENTS,
        ("bias", same(False), "Mixtral has no biases"),
        ("moe.every_n_layers", same(1), "Mixtral has experts in every block"),
        (
            "moe.top_k",
            lambda c: tuple(range(2, c.moe.num_experts + 1)),
            "Mixtral renormalises the chosen gates: top_k from 2 to model.moe.num_experts",
        ),
    ],
    # lmlab drops over capacity in training only: its evaluation and generation are dropless
    training_only=[
        ("moe.z_loss_coef", same(0.0), "Mixtral has no router z-loss"),
        ("moe.capacity_factor", same(None), "Mixtral trains dropless"),
    ],
    selects=lambda cfg: cfg.positional == Positional.rope and cfg.moe.num_experts > 0,
    selected_by="model.positional=rope with model.moe.num_experts > 0",
)
