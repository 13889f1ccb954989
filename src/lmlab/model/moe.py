"""Mixture-of-Experts feed-forward: a router sends each token to ``top_k`` of ``num_experts``
expert FFNs and mixes their outputs (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral,
Jiang et al. 2024):

    y(x) = sum over e in TopK(x W_r) of g_e(x) * FFN_e(x)

where g is the softmax over the k chosen router logits (Mixtral), or for k = 1 the router
probability itself (Switch), which keeps a gradient to the router through the output.

Dispatch never loops over tokens. Dropless (default): the (token, expert) assignments are
sorted by expert and each expert multiplies its contiguous rows in one matmul: one
``F.grouped_mm`` call for all experts where torch has it, else one matmul per expert
over the stacked weights (``grouped_mm``). With ``capacity_factor`` (training only), each
expert gets a fixed buffer of C rows (GShard, Lepikhin et al. 2020): static shapes, one
``bmm``; assignments past C are dropped and their token passes through the residual.

Each forward records its router losses and load on the module (``aux_loss``, ``z_loss``,
``load_E``, ``dropped``); ``lmlab.train.task.LMTask`` adds the losses to its one loss and logs
the load on logging steps. Where a batch is padded, the forward takes its (B, T) mask of real
tokens (``AttnContext.real``): the losses and load are over real tokens only, and pads take no
capacity slot. Padding's own outputs are computed (dropless) or dropped (capacity): no loss
reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import GATED, Activation, ModelConfig
from lmlab.model.feedforward import ACTIVATIONS, hidden_drop

# One call for every expert's rows: F.grouped_mm (torch 2.13 has it), else the private
# torch._grouped_mm of earlier releases; with neither, one matmul per expert (torch >= 2.5).
GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
# grouped_mm inside a compiled graph: bf16 on CUDA (SM >= 80, its docs say), the only dtype
# its meta kernel takes (torch 2.13).
TRACEABLE_GROUPED_MM = {("cuda", torch.bfloat16)}
# grouped_mm run eagerly (outside the graph under compile): torch 2.13's CPU kernel takes these.
EAGER_GROUPED_MM = {("cpu", torch.float32), ("cpu", torch.bfloat16), ("cpu", torch.float16)}


def _aligned(x_MI: torch.Tensor, w_EOI: torch.Tensor) -> bool:
    """grouped_mm exists and has row strides that are multiples of 16 bytes, as it needs."""
    step = 16 // x_MI.element_size()
    return GROUPED_MM is not None and x_MI.shape[-1] % step == 0 and w_EOI.shape[-2] % step == 0


def grouped_mm(x_MI: torch.Tensor, w_EOI: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Rows ``offsets[e-1]:offsets[e]`` of ``x`` times ``w[e].T``, for every expert e: (M, O).

    ``GROUPED_MM`` (one call for all experts, offsets on the device, no host read) where
    torch has it for the dtype; otherwise one matmul per expert, which reads the group sizes
    on the host (on a GPU, one synchronisation per MoE layer: float32 there, and float64)."""
    where = (x_MI.device.type, x_MI.dtype)
    if where in TRACEABLE_GROUPED_MM and _aligned(x_MI, w_EOI):
        return GROUPED_MM(x_MI, w_EOI.transpose(-2, -1), offs=offsets_E)
    if where in EAGER_GROUPED_MM and _aligned(x_MI, w_EOI):
        return _eager_grouped_mm(x_MI, w_EOI, offsets_E)
    return _per_expert_mm(x_MI, w_EOI, offsets_E)


@torch.compiler.disable  # traceable in bf16 only: run eagerly, a graph break, no recompile
def _eager_grouped_mm(x_MI: torch.Tensor, w_EOI: torch.Tensor, offsets_E: torch.Tensor):
    return GROUPED_MM(x_MI, w_EOI.transpose(-2, -1), offs=offsets_E)


@torch.compiler.disable  # data-dependent sizes: eager, so a compiled block never respecializes
def _per_expert_mm(x_MI: torch.Tensor, w_EOI: torch.Tensor, offsets_E: torch.Tensor):
    sizes = torch.diff(offsets_E, prepend=offsets_E.new_zeros(1)).tolist()
    return torch.cat([x_mI @ w_OI.T for x_mI, w_OI in zip(x_MI.split(sizes), w_EOI, strict=True)])


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` runs in: autocast's where it is on (grouped_mm is not on
    autocast's list), else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class Grouped:
    """Dropless rows: sorted by expert, expert e's rows end at ``offsets_E[e]``."""

    def __init__(self, offsets_E: torch.Tensor, expert_M: torch.Tensor) -> None:
        self.offsets_E, self.expert_M = offsets_E, expert_M

    def linear(self, x_MI: torch.Tensor, w_EOI: torch.Tensor, b_EO: torch.Tensor | None):
        dtype = compute_dtype(x_MI)
        y_MO = grouped_mm(x_MI.to(dtype), w_EOI.to(dtype), self.offsets_E)
        return y_MO if b_EO is None else y_MO + b_EO.to(dtype)[self.expert_M]


class Slots:
    """Capacity-limited rows: a (E, C, in) buffer, expert e's C slots in row e."""

    def linear(self, x_ECI: torch.Tensor, w_EOI: torch.Tensor, b_EO: torch.Tensor | None):
        y_ECO = torch.bmm(x_ECI, w_EOI.transpose(1, 2))
        return y_ECO if b_EO is None else y_ECO + b_EO[:, None].to(y_ECO.dtype)


class ExpertLinear(nn.Module):
    """``num_experts`` linear layers stacked: ``weight`` (E, out, in), each expert's
    ``nn.Linear`` layout (as HF's Mixtral and torchtitan store experts), ``bias`` (E, out)."""

    def __init__(self, num_experts: int, d_in: int, d_out: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(num_experts, d_out)) if bias else None

    def extra_repr(self) -> str:
        E, d_out, d_in = self.weight.shape
        bias = self.bias is not None
        return f"experts={E}, in_features={d_in}, out_features={d_out}, bias={bias}"

    def forward(self, x: torch.Tensor, rows: Grouped | Slots) -> torch.Tensor:
        return rows.linear(x, self.weight, self.bias)


class Experts(nn.Module):
    """E copies of ``MLP`` (``d_ff`` / granularity wide): w_out(act(w_in x)) on each expert's
    rows."""

    def __init__(
        self, cfg: ModelConfig, act: Callable[[], nn.Module], hidden_dropout: float = 0.0
    ) -> None:
        super().__init__()
        E = cfg.moe.num_experts
        self.w_in = ExpertLinear(E, cfg.d_model, cfg.expert_dim, cfg.bias)
        self.act = act()
        self.drop = hidden_drop(hidden_dropout)
        self.w_out = ExpertLinear(E, cfg.expert_dim, cfg.d_model, cfg.bias)
        self.w_out.residual_projection = True  # GPT-2 scaled init

    def forward(self, x: torch.Tensor, rows: Grouped | Slots) -> torch.Tensor:
        return self.w_out(self.drop(self.act(self.w_in(x, rows))), rows)


class GatedExperts(nn.Module):
    """E copies of ``GatedMLP`` (``d_ff`` / granularity wide): w_out(act(w_gate x) * w_in x),
    SwiGLU experts in Mixtral."""

    def __init__(
        self, cfg: ModelConfig, act: Callable[[], nn.Module], hidden_dropout: float = 0.0
    ) -> None:
        super().__init__()
        E = cfg.moe.num_experts
        self.w_gate = ExpertLinear(E, cfg.d_model, cfg.expert_dim, cfg.bias)
        self.w_in = ExpertLinear(E, cfg.d_model, cfg.expert_dim, cfg.bias)
        self.act = act()
        self.drop = hidden_drop(hidden_dropout)
        self.w_out = ExpertLinear(E, cfg.expert_dim, cfg.d_model, cfg.bias)
        self.w_out.residual_projection = True  # GPT-2 scaled init

    def forward(self, x: torch.Tensor, rows: Grouped | Slots) -> torch.Tensor:
        h = self.act(self.w_gate(x, rows)) * self.w_in(x, rows)
        return self.w_out(self.drop(h), rows)


EXPERTS: dict[Activation, Callable[..., nn.Module]] = {
    a: partial(GatedExperts if a in GATED else Experts, act=ACTIVATIONS[a]) for a in Activation
}


def real_mean(x_N: torch.Tensor, real_N: torch.Tensor | None) -> torch.Tensor:
    """The mean over tokens (dim 0) of ``x``: over the real ones where ``real_N`` (N,) bool
    marks them (0 where there are none), over all of them where it is None."""
    if real_N is None:
        return x_N.mean(0)
    w_N = real_N.to(x_N.dtype).view(-1, *(1,) * (x_N.dim() - 1))
    return (x_N * w_N).sum(0) / w_N.sum().clamp(min=1)


def load_balancing_loss(f_E: torch.Tensor, P_E: torch.Tensor) -> torch.Tensor:
    """E * sum_i f_i * P_i (Switch, Fedus et al. 2021, eq. 4): f_i the fraction of the
    assignments routed to expert i (no gradient), P_i the mean router probability of expert
    i, both over the same tokens. f is over all their N * k assignments, so a balanced router
    gives 1 for every k (HF's Mixtral loss is k times this); a router that sends everything
    to one expert, E."""
    return f_E.shape[-1] * (f_E * P_E).sum()


def router_z_loss(logits_NE: torch.Tensor, real_N: torch.Tensor | None = None) -> torch.Tensor:
    """mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022, eq. 5): penalises
    large router logits, whose softmax round-off destabilises training."""
    return real_mean(logits_NE.logsumexp(-1).square(), real_N)


class MoEFeedForward(nn.Module):
    """The MoE feed-forward of one block: ``router`` (a bias-free linear to E logits) and
    ``experts`` (E FFNs of the model's activation, stacked). Forward: (B, T, D) -> (B, T, D),
    with the (B, T) bool mask of real tokens where the batch is padded (None: all are). Each
    expert drops its hidden activations as the dense feed-forward does (``hidden_dropout``:
    T5's, as Switch Transformers' experts)."""

    def __init__(self, cfg: ModelConfig, hidden_dropout: float = 0.0) -> None:
        super().__init__()
        moe = cfg.moe
        self.num_experts, self.top_k = moe.num_experts, moe.top_k
        self.capacity_factor = moe.capacity_factor
        self.router = nn.Linear(cfg.d_model, moe.num_experts, bias=False)
        self.experts = EXPERTS[cfg.activation](cfg, hidden_dropout=hidden_dropout)
        # what the last forward measured (read by LMTask): losses with their graph, load without
        self.aux_loss = self.z_loss = self.dropped = torch.zeros(())
        self.load_E = torch.zeros(moe.num_experts)

    def forward(self, x_BTD: torch.Tensor, real_BT: torch.Tensor | None = None) -> torch.Tensor:
        x_ND = x_BTD.flatten(0, 1)
        real_N = None if real_BT is None else real_BT.flatten()
        logits_NE = self.router(x_ND)
        logits_NE = logits_NE.to(torch.promote_types(logits_NE.dtype, torch.float32))
        probs_NE = logits_NE.softmax(-1)
        gate_NK, expert_NK = probs_NE.topk(self.top_k, dim=-1)
        if self.top_k > 1:  # Mixtral: softmax over the chosen logits = renormalised probs
            gate_NK = gate_NK / gate_NK.sum(-1, keepdim=True)
        if self.capacity_factor is not None and self.training:
            y_NKD, kept_NK = self.dispatch_capacity(x_ND, expert_NK, real_N)
        else:
            y_NKD, kept_NK = self.dispatch_dropless(x_ND, expert_NK), None
        y_ND = (gate_NK.unsqueeze(-1) * y_NKD).sum(1).to(x_BTD.dtype)
        self.record(logits_NE, probs_NE, expert_NK, kept_NK, real_N)
        return y_ND.view_as(x_BTD)

    def dispatch_dropless(self, x_ND: torch.Tensor, expert_NK: torch.Tensor) -> torch.Tensor:
        """Every assignment computed: sort by expert, one grouped matmul per expert weight,
        unsort. Returns the expert outputs (N, k, D), token n's j-th expert at [n, j]."""
        N, K = expert_NK.shape
        expert_M = expert_NK.flatten()  # M = N * k assignments, token n's j-th at n * k + j
        order_M = expert_M.argsort(stable=True)  # grouped by expert, token order within
        counts_E = expert_M.new_zeros(self.num_experts).scatter_add_(
            0, expert_M, torch.ones_like(expert_M)
        )
        rows = Grouped(counts_E.cumsum(0, dtype=torch.int32), expert_M[order_M])
        y_MD = self.experts(x_ND[order_M // K], rows)
        y_MD = torch.zeros_like(y_MD).index_copy(0, order_M, y_MD)  # back to assignment order
        return y_MD.view(N, K, -1)

    def dispatch_capacity(
        self, x_ND: torch.Tensor, expert_NK: torch.Tensor, real_N: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At most C = min(ceil(capacity_factor * N * k / E), N) assignments per expert,
        taken in order of choice then token (all first choices before any second one,
        GShard's priority); the rest are dropped (output 0). No expert can get more than N (a
        token's k choices are k different experts), so a factor of E / k or more drops nothing
        and its buffer stays N rows an expert, not the factor's. Padding (``real_N`` False)
        queues for no slot and is dropped; C stays that of all N tokens (a static shape).
        Returns (N, k, D) outputs and kept (N, k)."""
        N, K = expert_NK.shape
        E, D = self.num_experts, x_ND.shape[-1]
        C = min(math.ceil(self.capacity_factor * N * K / E), N)
        expert_M = expert_NK.T.flatten()  # token n's j-th choice at j * N + n
        # not F.one_hot: on a CPU it reads the indices' min and max to check them (a host
        # read each layer; on CUDA it checks on the device)
        onehot_ME = (expert_M.unsqueeze(-1) == torch.arange(E, device=expert_M.device)).long()
        real_M = None if real_N is None else real_N.repeat(K)
        if real_M is not None:  # a pad's row of zeros: it takes no place in any queue
            onehot_ME = onehot_ME * real_M.unsqueeze(-1)
        rank_M = ((onehot_ME.cumsum(0) - 1) * onehot_ME).sum(-1)  # place in its expert's queue
        kept_M = rank_M < C if real_M is None else (rank_M < C) & real_M
        slot_M = expert_M * C + rank_M.clamp(max=C - 1)  # a dropped one adds 0 to a full slot
        x_MD = x_ND.repeat(K, 1) * kept_M.unsqueeze(-1)
        x_ECD = x_ND.new_zeros(E * C, D).index_add(0, slot_M, x_MD).view(E, C, D)
        y_MD = self.experts(x_ECD, Slots()).flatten(0, 1)[slot_M] * kept_M.unsqueeze(-1)
        return y_MD.view(K, N, D).transpose(0, 1), kept_M.view(K, N).T

    def record(
        self,
        logits_NE: torch.Tensor,
        probs_NE: torch.Tensor,
        expert_NK: torch.Tensor,
        kept_NK: torch.Tensor | None,
        real_N: torch.Tensor | None = None,
    ) -> None:
        """Router losses (with their graph) and load (detached) of this forward, for LMTask:
        over the real tokens' assignments where ``real_N`` marks them, else over all."""
        expert_M = expert_NK.flatten()  # token n's j-th choice at n * k + j
        if real_N is None:
            weight_M = torch.ones_like(expert_M, dtype=probs_NE.dtype)
            assignments = expert_M.numel()
        else:  # a pad's assignments count nowhere
            weight_M = real_N.to(probs_NE.dtype).unsqueeze(-1).expand_as(expert_NK).flatten()
            assignments = weight_M.sum().clamp(min=1)
        counts_E = torch.zeros_like(probs_NE[0]).scatter_add_(0, expert_M, weight_M)
        f_E = counts_E / assignments
        self.aux_loss = load_balancing_loss(f_E, real_mean(probs_NE, real_N))
        self.z_loss = router_z_loss(logits_NE, real_N)
        self.load_E = f_E.detach()
        # new_zeros fills on the device: a tensor from a Python float would be a host copy
        dropless = kept_NK is None
        self.dropped = probs_NE.new_zeros(()) if dropless else 1 - kept_NK.sum() / assignments

    @property
    def expert_params(self) -> int:
        return sum(p.numel() for p in self.experts.parameters())

    @property
    def inactive_params(self) -> int:
        """Expert parameters a token does not run through: E - k of the E experts."""
        return self.expert_params // self.num_experts * (self.num_experts - self.top_k)

    @property
    def active_expert_weights(self) -> int:
        """Expert matmul weights one token multiplies: k experts' matrices (the router is an
        ``nn.Linear``, counted as such)."""
        stacked = [m for m in self.experts.modules() if isinstance(m, ExpertLinear)]
        return self.top_k * sum(m.weight[0].numel() for m in stacked)


def moe_layers(model: nn.Module) -> dict[str, MoEFeedForward]:
    """{block name: MoE feed-forward} in module order (``blocks.0``, ``decoder.3``), wrapper
    prefixes (activation checkpointing, compile) removed."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, MoEFeedForward):
            for wrapper in ("._checkpoint_wrapped_module", "._orig_mod"):
                name = name.replace(wrapper, "")
            out[name.removesuffix(".ffn")] = module
    return out
