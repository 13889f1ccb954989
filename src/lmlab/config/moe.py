"""``model.moe.*``: a sparse Mixture-of-Experts feed-forward (MoEConfig)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmlab.errors import ConfigError


@dataclass
class MoEConfig:
    """A sparse Mixture-of-Experts feed-forward (``model.moe.<field>``): each token's FFN is
    the gate-weighted sum of ``top_k`` of ``num_experts`` expert FFNs, chosen by a learned
    router (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al. 2024).
    Experts are FFNs of the model's own activation and ``d_ff`` (SwiGLU experts under
    ``+experiment=mixtral``), or of ``d_ff / granularity`` (fine-grained experts)."""

    num_experts: int = 0
    """Experts per MoE layer; 0 is the dense feed-forward (the default), 1 routes every token
    to one expert (the dense FFN with a router beside it)."""
    top_k: int = 2
    """Experts per token. k >= 2 weights them by the softmax over their k router logits
    (Mixtral); k = 1 by the router probability itself (Switch), so the router keeps a gradient
    through the output."""
    aux_loss_coef: float = 0.01
    """Weight of the load-balancing loss E * sum_i f_i P_i (Switch eq. 4; 1.0 when balanced),
    averaged over MoE layers and added to the LM loss. Switch's 1e-2. transformers' Mixtral
    loss counts f against tokens, not assignments (k times this): its ``router_aux_loss_coef``
    is this / top_k for the same weight, as the conversion writes it."""
    z_loss_coef: float = 0.001
    """Weight of the router z-loss mean(logsumexp(logits)^2), which keeps router logits small
    (ST-MoE, Zoph et al. 2022, eq. 5, their 1e-3)."""
    capacity_factor: float | None = None
    """null: dropless, every token reaches its k experts. A number c: in training each expert
    takes at most ceil(c * tokens * k / E) of a batch's assignments, first choices first
    (GShard's priority); the rest are dropped and pass through the residual unchanged. An
    expert holds no more slots than the batch's tokens, so c >= E / k drops nothing and a
    larger c costs no more. Padding takes no slot. Evaluation and generation stay dropless."""
    every_n_layers: int = 1
    """Block i gets the MoE feed-forward when i % every_n_layers == 0, the others stay dense
    (1: every block; 2: every other block, as in GShard and Switch; Megatron's
    ``moe_layer_freq``). Counted per stack for T5's encoder and decoder."""
    granularity: int = 1
    """Fine-grained experts (DeepSeekMoE, Dai et al. 2024; Krajewski et al. 2024's G): each
    expert's hidden width is the dense feed-forward's ``d_ff`` / granularity, which must
    divide it. With top_k = granularity a token's experts hold the dense feed-forward's
    parameters at any width (``+sweeps=moe``'s equal-active row: 8 experts, top-2,
    granularity 2). 1: experts as wide as the dense feed-forward (Switch, Mixtral)."""

    def __post_init__(self) -> None:
        if self.num_experts < 0:
            raise ConfigError(
                f"model.moe.num_experts={self.num_experts} must be >= 0 (0: dense feed-forward)"
            )
        if self.top_k < 1 or (self.num_experts and self.top_k > self.num_experts):
            allowed = (
                f"between 1 and model.moe.num_experts={self.num_experts}"
                if self.num_experts
                else ">= 1"
            )
            raise ConfigError(
                f"model.moe.top_k={self.top_k} must be {allowed} (the experts each token is "
                "sent to)"
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
        if self.granularity < 1:
            raise ConfigError(
                f"model.moe.granularity={self.granularity} must be >= 1 (1: experts as wide as "
                "the dense feed-forward)"
            )

    def applies_to(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based, within its stack) has the MoE feed-forward."""
        return self.num_experts > 0 and layer % self.every_n_layers == 0
