"""The coarse memory of a training step, counted from the config alone (no model is built):
the state (fp32 weights, gradients and AdamW's moments, 16 bytes a parameter) and the
activations a step keeps for its backward (``activation_bytes``: d-wide tensors per token and
layer, T5's decoder over its own tokens, a Mixture of Experts' extra, the output layer's
vocabulary-wide ones, the attention scores of SDPA's unfused kernel, activation
checkpointing's saving), and the free memory of a device. The run planner
(``lmlab.train.estimate``) and the memory check (``lmlab.train.memory``) use them."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.config import Activation, ModelConfig, Norm, NormPlacement
from lmlab.data.collators import decoder_tokens
from lmlab.train.attention_scores import score_bytes
from lmlab.train.hardware import compute_dtype


def training_bytes(
    model_cfg: ModelConfig,
    n_params: int,
    micro_batch: int,
    seq_len: int,
    precision: str,
    device: torch.device | str = "cpu",
) -> int:
    """Coarse memory of the timed steps (``measure_tokens_per_second``): the whole model in one
    process, its fp32 weights, gradients and AdamW's two moments (16 bytes per parameter),
    plus ``activation_bytes`` at ``precision``, as the run's own step estimate counts them
    (``lmlab.train.memory``)."""
    return 16 * n_params + activation_bytes(model_cfg, micro_batch, seq_len, precision, device)


# d-wide tensors per token that one block's forward keeps for its backward, in two parts
# (measured with torch's MemTracker, fp32 and bf16 autocast, for every knob value: the
# per-layer growth of a step's peak). What the norms keep works on the residual stream, which
# autocast leaves in fp32 (its adds promote, and autocast runs layer_norm in fp32), so it is
# held in 4 bytes under a mixed precision; per norm, a block having two (pre, post) or four
# (sandwich). Measured per block: 2 LayerNorms 3 to 4 tensors, 2 RMSNorms 5 to 6, 4 RMSNorms
# 9 to 10.
NORM_ACTIVATIONS = {Norm.layernorm: 2, Norm.rmsnorm: 3}
NORMS_PER_BLOCK = {NormPlacement.pre: 2, NormPlacement.post: 2, NormPlacement.sandwich: 4}
# the rest (the attention's and the feed-forward's tensors) in the compute dtype: measured 6
# (ReLU), 10 (GELU, either form), 12 to 12.7 (SwiGLU, GeGLU; with RoPE the most); GELU's
# count also covers the backward's peak of a full cross-entropy at 8 x 1024 tokens (gpt_mini)
MATMUL_ACTIVATIONS = {
    Activation.relu: 7,
    Activation.gelu: 11,
    Activation.gelu_exact: 11,
    Activation.swiglu: 15,
    Activation.geglu: 15,
}
# of these, the feed-forward's: its output and its hidden layer's tensors (two of 4 d, or three
# of a gated 8/3 d), measured 9 and 9.25 with torch's MemTracker
FFN_ACTIVATIONS = 9
# what one expert a token passes through holds at the step's peak: a feed-forward's activations
# and its backward's temporaries of the same widths (measured 13.5 for GELU, 17.5 for SwiGLU
# d-wide tensors per token), and what the router and the dispatch add per MoE layer (1.6 to 2)
EXPERT_ACTIVATIONS, ROUTER_ACTIVATIONS = 18, 2
# vocabulary-wide tensors per token of the output layer (logits, softmax and its gradient);
# autocast runs the cross-entropy in fp32, so a mixed precision holds them in 4 bytes (measured
# 2.9 fp32 tensors under bf16 autocast, not 3 bf16 ones)
VOCAB_ACTIVATIONS = 3
# d-wide tensors per token outside the blocks, on the residual stream: the embeddings' output,
# the final norm's, the output layer's input and their backward's temporaries (measured 6.6
# in fp32, 3.7 fp32 ones under bf16 autocast)
OUTSIDE_ACTIVATIONS = 8


def _block_activations(model_cfg: ModelConfig) -> tuple[int, int]:
    """d-wide tensors per token one block keeps: (on the residual stream, in the compute
    dtype), as ``NORM_ACTIVATIONS`` and ``MATMUL_ACTIVATIONS`` count them."""
    norms = NORMS_PER_BLOCK[NormPlacement(model_cfg.norm_placement)]
    residual = norms * NORM_ACTIVATIONS[Norm(model_cfg.norm)]
    return residual, MATMUL_ACTIVATIONS[Activation(model_cfg.activation)]


def held_bytes(precision: str) -> tuple[int, int]:
    """Bytes of one element of (the residual stream and the loss, the matmuls' tensors) at
    ``precision``: a mixed precision (autocast) keeps the first in fp32, a true one in its
    dtype."""
    compute = compute_dtype(precision).itemsize
    return (4 if str(precision).endswith("-mixed") else compute), compute


# a T5 decoder block's cross-attention, beyond a block's: its queries, the attention's output
# and its projection's, per decoder token in the compute dtype (measured 4.7 d-wide, ReLU),
# and the keys and values it projects from the encoder's output, per encoder token: 2 x
# (kv_heads x head_dim) wide (measured 1.7 d-wide at d 128); its residual wrapper holds a
# third of the block's norms again
CROSS_ACTIVATIONS, CROSS_KV = 5, 2


def moe_extra_activations(model_cfg: ModelConfig, layers: int | None = None) -> tuple[int, int]:
    """d-wide tensors per token that the Mixture-of-Experts layers of a stack of ``layers``
    blocks (default ``n_layers``) hold beyond a dense feed-forward's ``FFN_ACTIVATIONS``: each
    token passes through ``top_k`` experts, each holding a feed-forward's activations and
    backward temporaries (MemTracker, one layer at d 256: 35.6 d-wide at k = 2 and 70.2 at
    k = 4, against a dense SwiGLU's 17.5). Returns (all MoE layers', one MoE layer's); (0, 0)
    for a dense model. Fine-grained experts (``moe.granularity`` > 1) are counted at the dense
    width: an overestimate."""
    moe = model_cfg.moe
    if not moe.num_experts:
        return 0, 0
    one = moe.top_k * EXPERT_ACTIVATIONS + ROUTER_ACTIVATIONS - FFN_ACTIVATIONS
    stack = model_cfg.n_layers if layers is None else layers
    return len(range(0, stack, moe.every_n_layers)) * one, one


def stack_bytes(
    model_cfg: ModelConfig, tokens: int, precision: str, decoder_of: int | None = None
) -> tuple[int, int, int]:
    """One row's (all blocks', one block's, the blocks' inputs') activations in a stack over
    ``tokens``: the encoder (GPT's, BERT's, T5's) or, with ``decoder_of`` (the encoder's
    tokens), T5's decoder, whose blocks cross-attend to them (``CROSS_ACTIVATIONS``)."""
    d, wide, narrow = model_cfg.d_model, *held_bytes(precision)
    residual, matmuls = _block_activations(model_cfg)
    layers, memory = model_cfg.n_layers, 0
    if decoder_of is not None:
        layers, residual, matmuls = (
            model_cfg.decoder_layers,
            residual * 3 // 2,
            matmuls + CROSS_ACTIVATIONS,
        )
        memory = narrow * CROSS_KV * model_cfg.kv_heads * model_cfg.head_dim * decoder_of
    moe_all, moe_one = moe_extra_activations(model_cfg, layers)
    block = (wide * residual + narrow * matmuls) * d * tokens + memory
    every = layers * block + narrow * moe_all * d * tokens
    return every, block + narrow * moe_one * d * tokens, wide * layers * d * tokens


def activation_bytes(
    model_cfg: ModelConfig,
    micro_batch: int,
    seq_len: int,
    precision: str = "32-true",
    device: torch.device | str = "cpu",
) -> int:
    """What an eager step keeps for its backward: each block's d-wide tensors per token
    (``NORM_ACTIVATIONS`` per norm on the residual stream, ``MATMUL_ACTIVATIONS`` for its
    activation), ``OUTSIDE_ACTIVATIONS`` outside the blocks, ``VOCAB_ACTIVATIONS``
    vocabulary-wide ones per scored token (logits, softmax and its gradient), and the
    attention scores of the calls that run SDPA's unfused kernel on ``device``
    (``lmlab.train.attention_scores``: B x H x T x S per such layer, on a CPU with attention
    dropout or T5's learned relative bias). T5 counts its two stacks apart: the encoder's
    blocks over ``seq_len`` tokens, the decoder's over span corruption's targets
    (``decoder_tokens``, about 0.2 x ``seq_len``), each cross-attending to the encoder's
    tokens (``CROSS_ACTIVATIONS``, ``CROSS_KV``), and the loss over the targets. The residual
    stream's and the loss's are in fp32 under a mixed precision (autocast leaves the residual
    in fp32 and runs norms and the cross-entropy in fp32), the matmuls' in the compute dtype;
    under a true precision all in its dtype. Measured against torch's ``MemTracker`` (the
    step's peak, forward, backward and AdamW) for every activation, norm and placement, in
    fp32 and bf16 autocast (a step at 2 bytes a tensor under bf16-mixed holds 18% to 37% more
    than that count; a Llama-style block 19 and a sandwich one 22 fp32 tensors, a GPT-2 one
    13: no one count fits every block). For gpt_mini at 8 x 1024 in fp32 that is 1,168 MiB;
    the measured growth of the step's peak memory, gradients (22 MiB) included, was 1,279 MiB
    with the full cross-entropy and 953 MiB with the chunked one (BENCHMARKS.md, memory case;
    the chunked one holds no vocabulary-wide tensor, an overestimate). With activation
    checkpointing (``model.activation_checkpointing``) a block keeps only its input (one
    d-wide tensor per token, on the residual stream) until the backward recomputes it, so the
    step holds every block's input, one block's activations at a time, and the output
    layer's, which no block holds; a real checkpointed step's tensors were within the count
    (tested). A Mixture of Experts keeps more (``moe_extra_activations``): counted as dense,
    an 8-expert top-2 gpt_mini's step was planned at 740 MiB against 835 MiB measured."""
    decoder = decoder_tokens(model_cfg.family, seq_len)
    stacks = [stack_bytes(model_cfg, seq_len, precision)]
    if decoder is not None:
        stacks.append(stack_bytes(model_cfg, decoder, precision, decoder_of=seq_len))
    if model_cfg.activation_checkpointing:  # every block's input, one block's activations
        blocks = sum(inputs for _, _, inputs in stacks) + max(one for _, one, _ in stacks)
    else:
        blocks = sum(every for every, _, _ in stacks)
    wide = held_bytes(precision)[0]
    outside = wide * OUTSIDE_ACTIVATIONS * model_cfg.d_model * (seq_len + (decoder or 0))
    loss = wide * VOCAB_ACTIVATIONS * model_cfg.vocab_size * (decoder or seq_len)
    rows = micro_batch * (blocks + outside + loss)
    return rows + score_bytes(model_cfg, micro_batch, seq_len, precision, device)


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
