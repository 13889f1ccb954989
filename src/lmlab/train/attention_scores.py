"""The attention scores a training step keeps where SDPA runs its unfused (math) kernel.

A fused kernel (flash, memory-efficient, cuDNN) keeps one row statistic per query; the math
kernel materialises the (B, H, T, S) scores, their softmax and, with attention dropout, the
dropout's mask and the dropped weights, and keeps them for the backward: per layer, B x H x T x
S where the other activations grow as B x T x d. Which calls take it is torch's choice
(``torch._fused_sdp_choice``) for the arguments lmlab's attention passes; on a CPU the math
kernel runs with attention dropout (``model.dropout`` > 0) and with an additive mask that
needs a gradient (T5's learned relative bias, ``model.positional=relative``), while ALiBi's
fixed bias, a window and causality take the fused one. The estimate does not restate those
rules: it runs one training-mode forward of a twin of the model (every layer, every head at
its real head dimension, the real positional scheme, dropout, window and kernel; d_model 8,
no experts, a 16-token vocabulary) on the run's device, under its autocast, and records the
calls (``lmlab.train.kernel_probe.attention_calls``). The twin runs at most ``PROBE_LEN``
tokens (longer ones as 48 plus their remainder mod 16, the alignment the fused kernels
check); T5's decoder at span corruption's target length of that (``decoder_tokens``).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import torch

from lmlab.config import ModelConfig
from lmlab.config.moe import MoEConfig
from lmlab.data.collators import decoder_tokens
from lmlab.model import build_model
from lmlab.train.hardware import autocast, compute_dtype
from lmlab.train.kernel_probe import SAMPLE_INPUTS, AttentionCall, attention_calls

# (B, H, T, S) tensors an unfused call keeps for its backward, in the math kernel's dtype
# (fp32 for 16-bit inputs too: it upcasts them), with and without attention dropout: the
# softmax, the dropout's mask and the dropped weights; the softmax alone (measured on a CPU:
# 3.45 to 3.58 and 1.44, the mask's sum and select included)
KEPT_SCORES = {True: 3.5, False: 1.5}
# and what one call's backward adds while it runs (the gradients of the weights and of the
# scores; measured 1.08 to 1.2): one call at a time
BACKWARD_SCORES = 1.25
PROBE_LEN = 64  # the twin's longest input: longer ones keep their length mod 16


def probe_len(seq_len: int) -> int:
    """The twin's input length for ``seq_len``: itself up to ``PROBE_LEN``, else 48 plus its
    remainder mod 16."""
    return seq_len if seq_len <= PROBE_LEN else 48 + seq_len % 16


def probe_twin(model_cfg: ModelConfig) -> ModelConfig:
    """``model_cfg`` with everything attention does not read shrunk: d_model 8 (the heads keep
    their dimension), an 8-wide dense feed-forward, a 16-token vocabulary, no checkpointing."""
    return dataclasses.replace(
        model_cfg,
        d_model=8,
        d_head=model_cfg.head_dim,
        d_ff=8,
        vocab_size=16,
        moe=MoEConfig(),
        activation_checkpointing=False,
    )


@functools.lru_cache(maxsize=64)
def _twin_calls(twin: str, seq_len: int, precision: str, device: str) -> tuple[AttentionCall, ...]:
    """The twin's calls (``attention_calls``), cached by its config as JSON: a sweep's jobs
    and a plan's figures ask for the same twin again."""
    model_cfg = ModelConfig(**json.loads(twin))
    where = torch.device(device)
    cuda = [where.index or 0] if where.type == "cuda" else []
    # the twin's initialisation draws nothing from the run's stream: its weights come next
    with torch.random.fork_rng(devices=cuda), where:
        model = build_model(model_cfg)
        ids_BT = torch.zeros(1, seq_len, dtype=torch.long)
        with autocast(where, precision):
            return tuple(attention_calls(model, SAMPLE_INPUTS[model_cfg.family](ids_BT)))


def unfused_calls(
    model_cfg: ModelConfig, seq_len: int, precision: str, device: torch.device | str
) -> list[AttentionCall]:
    """The calls of a training forward at ``seq_len`` that run the math kernel, at the real
    lengths (T5's decoder at span corruption's target length)."""
    short = probe_len(seq_len)
    real = {short: seq_len}
    if (decoder := decoder_tokens(model_cfg.family, seq_len)) is not None:
        real[decoder_tokens(model_cfg.family, short) or 0] = decoder
    fields = dataclasses.asdict(probe_twin(model_cfg))
    key = json.dumps(fields, sort_keys=True, default=lambda v: v.value)
    calls = _twin_calls(key, short, str(precision), str(torch.device(device)))
    return [
        dataclasses.replace(c, q_len=real[c.q_len], k_len=real[c.k_len]) for c in calls if c.unfused
    ]


def score_bytes(
    model_cfg: ModelConfig,
    micro_batch: int,
    seq_len: int,
    precision: str,
    device: torch.device | str = "cpu",
) -> int:
    """What the unfused calls of a step keep (``KEPT_SCORES`` per call) and one call's
    backward adds (``BACKWARD_SCORES``): B x H x T x S elements each, in the math kernel's
    dtype (fp32 at least). With activation checkpointing a block's are kept only while its
    backward recomputes it: one block's at a time. 0 where every call is fused."""
    calls = unfused_calls(model_cfg, seq_len, precision, device)
    if not calls:
        return 0
    blocks: dict[int, float] = {}
    for c in calls:
        blocks[c.block] = (
            blocks.get(c.block, 0.0) + KEPT_SCORES[c.dropout] * c.heads * c.q_len * c.k_len
        )
    kept = max(blocks.values()) if model_cfg.activation_checkpointing else sum(blocks.values())
    running = BACKWARD_SCORES * max(c.heads * c.q_len * c.k_len for c in calls)
    itemsize = torch.promote_types(compute_dtype(precision), torch.float32).itemsize
    return int(micro_batch * itemsize * (kept + running))
