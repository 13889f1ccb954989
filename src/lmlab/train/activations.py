"""The coarse memory of a training step, counted from the config alone (no model is built):
the state (fp32 weights, gradients and AdamW's moments, 16 bytes a parameter) and the
activations a step keeps for its backward (``activation_bytes``: d-wide tensors per token and
layer, a Mixture of Experts' extra, the output layer's vocabulary-wide ones, activation
checkpointing's saving), and the free memory of a device. The run planner
(``lmlab.train.estimate``) and the memory check (``lmlab.train.memory``) use them."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.config import ModelConfig
from lmlab.train.hardware import compute_dtype


def training_bytes(
    model_cfg: ModelConfig, n_params: int, micro_batch: int, seq_len: int, precision: str
) -> int:
    """Coarse memory of the timed steps (``measure_tokens_per_second``): the whole model in one
    process, its fp32 weights, gradients and AdamW's two moments (16 bytes per parameter),
    plus ``activation_bytes`` at ``precision``, as the run's own step estimate counts them
    (``lmlab.train.memory``)."""
    return 16 * n_params + activation_bytes(model_cfg, micro_batch, seq_len, precision)


# d-wide fp32 tensors per token that one block's forward keeps for its backward
BLOCK_ACTIVATIONS = 16
# of these, the feed-forward's: its output and its hidden layer's tensors (two of 4 d, or three
# of a gated 8/3 d), measured 9 and 9.25 with torch's MemTracker
FFN_ACTIVATIONS = 9
# what one expert a token passes through holds at the step's peak: a feed-forward's activations
# and its backward's temporaries of the same widths (measured 13.5 for GELU, 17.5 for SwiGLU
# d-wide tensors per token), and what the router and the dispatch add per MoE layer (1.6 to 2)
EXPERT_ACTIVATIONS, ROUTER_ACTIVATIONS = 18, 2


def moe_extra_activations(model_cfg: ModelConfig) -> tuple[int, int]:
    """d-wide tensors per token that the Mixture-of-Experts layers hold beyond a dense
    feed-forward's ``FFN_ACTIVATIONS``: each token passes through ``top_k`` experts, each
    holding a feed-forward's activations and backward temporaries (MemTracker, one layer at
    d 256: 35.6 d-wide at k = 2 and 70.2 at k = 4, against a dense SwiGLU's 17.5). Returns
    (all MoE layers', one MoE layer's); (0, 0) for a dense model. Fine-grained experts
    (``moe.granularity`` > 1) are counted at the dense width: an overestimate."""
    moe = model_cfg.moe
    if not moe.num_experts:
        return 0, 0
    one = moe.top_k * EXPERT_ACTIVATIONS + ROUTER_ACTIVATIONS - FFN_ACTIVATIONS
    layers = len(range(0, model_cfg.n_layers, moe.every_n_layers))
    return layers * one, one


def activation_bytes(
    model_cfg: ModelConfig, micro_batch: int, seq_len: int, precision: str = "32-true"
) -> int:
    """What an eager step keeps for its backward: about ``BLOCK_ACTIVATIONS`` d-wide tensors
    per token and layer, and three vocabulary-wide ones (logits, softmax and its gradient), in
    the compute dtype of ``precision`` (fp32's 4 bytes, 2 under 16-bit compute). For
    gpt_mini at 8 x 1024 in fp32 that is 1,152 MiB; the measured growth of the step's peak
    memory, gradients (22 MiB) included, was 1,279 MiB with the full cross-entropy and 953 MiB
    with the chunked one (BENCHMARKS.md, memory case). With activation checkpointing
    (``model.activation_checkpointing``) a block keeps only its input (one d-wide tensor per
    token) until the backward recomputes it, so the step holds every block's input, one
    block's activations at a time, and the output layer's, which no block holds: gpt_mini at
    16 x 256 then needs 280 MiB by this count (the vocabulary-wide 192 MiB of it the chunked
    cross-entropy does not hold), where a real checkpointed step's tensors (torch's
    ``MemTracker``) peaked at 108 MiB of activations and temporaries, and the process's
    resident memory grew by 533 MiB in all (weights, gradients and AdamW state, 89 MiB,
    included); counted as none, the step's estimate had been the state's 89 MiB. A Mixture
    of Experts keeps more (``moe_extra_activations``): counted as dense, an 8-expert top-2
    gpt_mini's step was planned at 740 MiB against 835 MiB measured (now 1,088)."""
    layers, d = model_cfg.n_layers, model_cfg.d_model
    moe_all, moe_one = moe_extra_activations(model_cfg)
    blocks = (
        layers + BLOCK_ACTIVATIONS + moe_one
        if model_cfg.activation_checkpointing
        else (BLOCK_ACTIVATIONS * layers + moe_all)
    )
    per_token = blocks * d + 3 * model_cfg.vocab_size
    return compute_dtype(precision).itemsize * micro_batch * seq_len * per_token


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the driver's count; CPU: MemAvailable); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if device.type == "cpu" and meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None
