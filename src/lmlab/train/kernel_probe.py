"""Which kernels a training step runs, read from the profiler over one forward of the
training shape: the attention kernels (SDPA's flash, efficient, cuDNN, math; FlexAttention)
and the form of the cross-entropy. ``lmlab.train.callbacks.SDPAKernelReport`` logs them when
training starts. ``attention_calls`` records which SDPA calls of a forward take the unfused
math kernel, block by block, for the step's memory estimate (``lmlab.train.attention_scores``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode

from lmlab.config import Family
from lmlab.data.collators import SpanCorruptionCollator
from lmlab.model.layers import Block


def _t5_inputs(ids_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder ids plus decoder ids as long as span corruption's targets for this length; no
    padding mask, as its collator sends none (its inputs fill the row), so attention runs as
    in training."""
    decoder_len = SpanCorruptionCollator.decoder_len(ids_BT.shape[1])
    return {"input_ids": ids_BT, "decoder_input_ids": ids_BT[:, :decoder_len]}


# A random batch's model inputs per family, as its collator shapes them (labels aside).
SAMPLE_INPUTS: dict[Family, Callable[[torch.Tensor], dict[str, torch.Tensor]]] = {
    Family.gpt: lambda ids_BT: {"input_ids": ids_BT},
    Family.bert: lambda ids_BT: {"input_ids": ids_BT},
    Family.t5: _t5_inputs,
}


def profiled_ops(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], grad: bool = True
) -> set[str]:
    """Names of the ops one training-mode forward of ``inputs`` (with ``labels``: the loss)
    runs, read from the profiler. As the training step runs it: in train mode, where dropout
    takes SDPA's math kernel, and with gradients on, where a trainable bias (T5's relative
    positions) does too; an eval-mode probe under ``no_grad`` named the flash kernel for both.
    The RNG is forked, so the probe draws nothing from the training stream (a resumed run
    continues it exactly); the graph is dropped unused, and no gradient is written.
    ``grad=False``: without gradients (FlexAttention on a CPU, which has no backward there)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # silence the profiler's start/stop lines
    from torch.profiler import profile

    was_training = model.training
    model.train()
    rng = torch.random.fork_rng(devices=probe_devices(inputs))
    try:
        with rng, torch.set_grad_enabled(grad), profile() as prof:
            model(**inputs)
    finally:
        model.train(was_training)
    return {e.key for e in prof.key_averages()}


def probe_devices(inputs: dict[str, torch.Tensor]) -> list[int]:
    """The CUDA devices whose RNG a probe on ``inputs`` draws from (dropout on the GPU)."""
    return sorted({t.device.index or 0 for t in inputs.values() if t.device.type == "cuda"})


def attention_kernels(ops: set[str]) -> list[str]:
    """The attention kernels among the ops a forward ran: SDPA's (flash, efficient, cudnn,
    math) and ``flex_attention``."""
    kernels = {n.removeprefix("aten::") for n in ops if "scaled_dot_product" in n}
    if any(n.startswith("FlexAttention") for n in ops):  # its autograd op, fused or not
        kernels.add("flex_attention")
    return sorted(kernels)


def cross_entropy_form(ops: set[str], compiled_loss: bool) -> str:
    """Which form of the loss the training step runs (``model.cross_entropy``): ``chunked``
    where the probe ran torch's chunked op, ``full`` otherwise; under ``compile=model`` the
    full form, fused by Inductor."""
    if compiled_loss:
        return "full (compiled)"
    return "chunked" if any("linear_cross_entropy" in n for n in ops) else "full"


@dataclass(frozen=True)
class AttentionCall:
    """One SDPA call of a forward: its block (index among the model's blocks, encoder first),
    query heads, query and key lengths, and whether it ran the math kernel, which
    materialises the (B, H, T, S) scores and keeps them for the backward."""

    block: int
    heads: int
    q_len: int
    k_len: int
    unfused: bool
    dropout: bool


class _SDPARecorder(TorchFunctionMode):
    """Records every ``scaled_dot_product_attention`` call with the kernel torch's own
    dispatcher picks for its arguments (``torch._fused_sdp_choice``, the choice the call
    makes): so the estimate follows torch's rules (on a CPU: the math kernel with attention
    dropout, or with an additive mask that needs a gradient, T5's learned relative bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = -1
        self.calls: list[AttentionCall] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q_BHTd, k_BHSd = args[0], args[1]
            dropout = float(args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)) > 0
            kernel = SDPBackend(torch._fused_sdp_choice(*args, **kwargs))
            self.calls.append(
                AttentionCall(
                    self.block,
                    q_BHTd.shape[1],
                    q_BHTd.shape[2],
                    k_BHSd.shape[2],
                    kernel == SDPBackend.MATH,
                    dropout,
                )
            )
        return func(*args, **kwargs)


def attention_calls(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[AttentionCall]:
    """The SDPA calls of one training-mode forward of ``inputs`` with gradients on, as the
    training step runs them (dropout on, a learned bias needing its gradient), each with its
    block and kernel (``AttentionCall``). The RNG is forked (``profiled_ops``); run it under
    the training precision's autocast for its dtypes."""
    recorder = _SDPARecorder()
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    hooks = [
        block.register_forward_pre_hook(lambda module, args, i=i: setattr(recorder, "block", i))
        for i, block in enumerate(blocks)
    ]
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=probe_devices(inputs)), torch.enable_grad(), recorder:
            model(**inputs)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return recorder.calls
