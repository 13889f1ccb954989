"""Which kernels a training step runs, read from the profiler over one forward of the
training shape: the attention kernels (SDPA's flash, efficient, cuDNN, math; FlexAttention)
and the form of the cross-entropy. ``lmlab.train.callbacks.SDPAKernelReport`` logs them when
training starts."""

from __future__ import annotations

import os

import torch


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
