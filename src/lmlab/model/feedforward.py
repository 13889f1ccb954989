"""Position-wise feed-forward: a plain MLP or a gated one (GLU variants, Shazeer 2020).

Each takes the (B, T) mask of real tokens a block hands every feed-forward and ignores it:
position-wise, a pad changes no other position's output, and no loss reads a pad's. (The
Mixture-of-Experts one, ``lmlab.model.moe``, routes a batch as a whole and does read it.)

``hidden_dropout`` drops the hidden activations, after the activation (and the gate's product)
and before ``w_out``: T5's recipe (Mesh TensorFlow's ``dense_relu_dense``, transformers'
``T5DenseActDense`` and ``T5DenseGatedActDense``), which ``lmlab.model.t5`` wires in with
``model.dropout``. GPT-2, BERT and Llama drop no hidden activations: their blocks build with 0.
A gated layer's dropout after the product equals one on the gate alone (the same mask scales
both), so where it sits there is a matter of reading, not of what it computes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from lmlab.config import GATED, Activation, ModelConfig


def unchanged(h: torch.Tensor) -> torch.Tensor:
    return h


def hidden_drop(p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The hidden activations' dropout: ``nn.Dropout(p)``, or for ``p`` 0 (every GPT and BERT
    block) a plain function that returns its input, so that an eager step calls no module per
    feed-forward for a dropout that does nothing."""
    return nn.Dropout(p) if p > 0 else unchanged


class MLP(nn.Module):
    """w_out(act(w_in x)): ReLU as in Vaswani et al., GELU as in GPT-2 and BERT."""

    def __init__(
        self, cfg: ModelConfig, act: Callable[[], nn.Module], hidden_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.w_in = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.act = act()
        self.drop = hidden_drop(hidden_dropout)
        self.w_out = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)
        self.w_out.residual_projection = True  # GPT-2 scaled init

    def forward(self, x_BTD: torch.Tensor, real_BT: torch.Tensor | None = None) -> torch.Tensor:
        return self.w_out(self.drop(self.act(self.w_in(x_BTD))))


class GatedMLP(nn.Module):
    """w_out(act(w_gate x) * w_in x): SwiGLU (SiLU gate, Llama) or GeGLU (GELU gate).

    Three matrices instead of two, so ``ModelConfig.ffn_dim`` defaults to 2/3 of the plain width.
    """

    def __init__(
        self, cfg: ModelConfig, act: Callable[[], nn.Module], hidden_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.w_in = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.act = act()
        self.drop = hidden_drop(hidden_dropout)
        self.w_out = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)
        self.w_out.residual_projection = True  # GPT-2 scaled init

    def forward(self, x_BTD: torch.Tensor, real_BT: torch.Tensor | None = None) -> torch.Tensor:
        return self.w_out(self.drop(self.act(self.w_gate(x_BTD)) * self.w_in(x_BTD)))


# ``gelu`` is the tanh approximation, as in GPT-2 and BERT's original code; ``gelu_exact`` the
# erf form that Hugging Face's BERT (``hidden_act="gelu"``) and torch's default use. A gated
# activation's function alone (SiLU for SwiGLU) is what an ungated layer such as BERT's MLM
# transform uses.
ACTIVATIONS: dict[Activation, Callable[[], nn.Module]] = {
    Activation.relu: nn.ReLU,
    Activation.gelu: partial(nn.GELU, approximate="tanh"),
    Activation.gelu_exact: nn.GELU,
    Activation.swiglu: nn.SiLU,
    Activation.geglu: partial(nn.GELU, approximate="tanh"),
}

FEEDFORWARDS: dict[Activation, Callable[..., nn.Module]] = {
    a: partial(GatedMLP if a in GATED else MLP, act=ACTIVATIONS[a]) for a in Activation
}


def make_feedforward(cfg: ModelConfig, hidden_dropout: float = 0.0) -> nn.Module:
    """The dense feed-forward of ``model.activation``, its hidden activations dropped with
    probability ``hidden_dropout`` in training (T5's recipe; 0 elsewhere)."""
    return FEEDFORWARDS[cfg.activation](cfg, hidden_dropout=hidden_dropout)
