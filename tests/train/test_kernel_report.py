"""The kernel report names what the training step runs: SDPA's kernels, or FlexAttention where
``model.attention_kernel`` takes it, for every family; and the form of its cross-entropy."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmlab.config import AttentionKernel, Family, ModelConfig, Positional
from lmlab.model import build_model
from lmlab.model.loss import CHUNKED_AVAILABLE
from lmlab.train.callbacks import attention_kernels, cross_entropy_form, profiled_ops
from lmlab.train.estimate import SAMPLE_INPUTS


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
        kernels = attention_kernels(profiled_ops(build_model(cfg), inputs))
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
