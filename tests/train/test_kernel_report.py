"""The kernel report names what the training step runs: SDPA's kernels, or FlexAttention where
``model.attention_kernel`` takes it, for every family; and the form of its cross-entropy."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmlab.config import AttentionKernel, Family, ModelConfig, Positional
from lmlab.model import build_model
from lmlab.model.loss import CHUNKED_AVAILABLE
from lmlab.train.estimate import SAMPLE_INPUTS
from lmlab.train.kernel_probe import attention_kernels, cross_entropy_form, profiled_ops


@pytest.mark.parametrize("family", list(Family))
@pytest.mark.parametrize("kernel", [AttentionKernel.sdpa, AttentionKernel.flex])
def test_report_names_the_kernel_every_attention_runs(
    family: Family, kernel: AttentionKernel
) -> None:
    cfg = ModelConfig(
        family=family,
        vocab_size=50,
        positional=Positional.relative,
        attention_window=8,
        attention_kernel=kernel,
    )
    # T5's sample inputs are shaped as its collator's, which pads no input (no mask): its
    # cross-attention, unwindowed and unbiased, is plain attention and takes SDPA, as in training
    inputs = SAMPLE_INPUTS[family](torch.zeros(1, 32, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without")
        # FlexAttention has no backward on a CPU (a run refuses it there): no gradients
        grad = kernel != AttentionKernel.flex
        kernels = attention_kernels(profiled_ops(build_model(cfg), inputs, grad=grad))
    if kernel == AttentionKernel.flex:
        plain = [k for k in kernels if k != "flex_attention"]
        assert "flex_attention" in kernels and bool(plain) == (family == Family.t5), kernels
        assert all("scaled_dot_product" in k for k in plain), kernels
    else:
        assert kernels and all("scaled_dot_product" in k for k in kernels)


@pytest.mark.parametrize(
    ("vocab", "autocast", "compiled", "expected"),
    [
        (1024, False, False, "chunked"),  # 8 x d_model in fp32: auto's chunked form
        (64, False, False, "full"),  # a narrow output
        (1024, True, False, "full"),  # bf16 autocast: auto keeps the loss in fp32
        (1024, False, True, "full (compiled)"),  # compile=model traces the full form
    ],
)
def test_report_names_the_cross_entropy_form(
    vocab: int, autocast: bool, compiled: bool, expected: str
) -> None:
    """The probe's forward with labels runs the loss as the training step does, and the
    report reads the form from the ops that ran."""
    if expected == "chunked" and not CHUNKED_AVAILABLE:
        pytest.skip(f"torch {torch.__version__} has no linear_cross_entropy")
    model = build_model(ModelConfig(d_model=128, vocab_size=vocab))
    ids = torch.zeros(1, 32, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ops = profiled_ops(model, {"input_ids": ids, "labels": ids})
    assert cross_entropy_form(ops, compiled) == expected


@pytest.mark.parametrize(
    ("family", "fields"),
    [
        (Family.gpt, {"dropout": 0.1}),  # dropout in training: SDPA's math kernel on CPU
        (Family.gpt, {"positional": Positional.relative}),  # a trainable bias: math too
        (Family.t5, {}),  # T5's relative bias in self-attention, plain cross-attention
        (Family.gpt, {"positional": Positional.alibi}),  # a fixed bias: flash on CPU
        (Family.bert, {"dropout": 0.1}),
    ],
)
def test_report_names_the_kernels_of_a_training_step(family: Family, fields: dict) -> None:
    """The kernels the probe names are those a training step (forward and backward, in train
    mode) runs, read from the profiler: an eval-mode probe without gradients named the flash
    kernel where dropout or a trainable bias takes the math one. The probe draws nothing
    from the random stream and leaves the model as it was (its mode, no gradients)."""
    from torch.profiler import profile

    model = build_model(ModelConfig(family=family, vocab_size=50, **fields))
    inputs = SAMPLE_INPUTS[family](torch.zeros(1, 32, dtype=torch.long))
    inputs["labels"] = inputs.get("decoder_input_ids", inputs["input_ids"])
    model.eval()
    torch.manual_seed(0)
    reported = attention_kernels(profiled_ops(model, inputs))
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))  # the probe drew nothing
    assert not model.training and all(p.grad is None for p in model.parameters())
    model.train()
    with profile() as prof:
        model(**inputs).backward()
    forward = {e.key.removeprefix("aten::") for e in prof.key_averages()}
    ran = sorted(k for k in forward if "scaled_dot_product" in k and "backward" not in k)
    assert reported == ran
