"""The attention-kernel report names what the training step runs: SDPA's kernels, or
FlexAttention where ``model.attention_kernel`` takes it, for every family."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmlab.config import AttentionKernel, Family, ModelConfig, Positional
from lmlab.model import build_model
from lmlab.train.callbacks import sdpa_kernels
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
    # T5's sample inputs carry the padding mask its collator always passes, so its
    # cross-attention takes the same kernel as in training
    inputs = SAMPLE_INPUTS[family](torch.zeros(1, 32, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without")
        kernels = sdpa_kernels(build_model(cfg), inputs)
    if kernel == AttentionKernel.flex:
        assert kernels == ["flex_attention"]
    else:
        assert kernels and all("scaled_dot_product" in k for k in kernels)
