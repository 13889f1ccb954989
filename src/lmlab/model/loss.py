"""The one loss of every family: cross-entropy of an output layer's logits over the positions
whose label is not ``IGNORE``, in two forms (``model.cross_entropy``).

``full`` computes the whole (tokens, vocab) logits, then the cross-entropy in fp32: under bf16
autocast that is an fp32 copy of the logits and of their gradient, gigabytes at GPT-2's vocab.
``chunked`` is torch's ``linear_cross_entropy``: the projection, the loss and both gradients
for a chunk of rows at a time, accumulated in fp32, so the whole logits never exist. Measured
on the 2-core CPU (fp32, forward and backward of the loss alone, BENCHMARKS.md "Cross-entropy
on the CPU"), chunked is faster where the vocabulary is much wider than the model and slower
where it is not, hence ``auto``'s rule. The op returns the loss in its inputs' dtype: under
bf16 the reported loss would be rounded to bf16 (steps of 1/64 at a loss of 2 to 4), so
``auto`` takes it for fp32 inputs only and ``chunked`` takes it for any. Under
``torch.compile`` (``compile=model``) the full form is traced, whatever the setting: Inductor
fuses it into the compiled graph, and the chunked op would break that graph.

A family calls ``output(layer, x, labels, chunking)`` last: logits without labels (validation,
generation, conversion), the loss with them (training), so the output layer runs inside the
model's ``forward`` and FSDP has gathered its weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import IGNORE, CrossEntropy, ModelConfig
from lmlab.config.knobs import Choice
from lmlab.errors import ConfigError

# torch 2.13 and later; older torch has no chunked form and ``auto`` takes the full one
CHUNKED_AVAILABLE = hasattr(nn, "LinearCrossEntropyOptions")
# auto: chunked once the output is this many times its input's width
AUTO_MIN_RATIO = 8
# rows per chunk on the CPU, measured (BENCHMARKS.md): torch's own pick there makes chunks of
# 32 to 64 rows at a GPT-2 vocab, whose weight-gradient updates are slower than the full form
CPU_CHUNK_ROWS = 1024


class Chunking(Choice):
    """Where an output layer takes the chunked form (resolved once, from the config)."""

    never = "never"
    fp32 = "fp32"  # for fp32 inputs outside autocast, where the loss keeps fp32 precision
    always = "always"


# model.cross_entropy -> (output width, input width) -> where the chunked form applies
CROSS_ENTROPY: dict[CrossEntropy, Callable[[int, int], Chunking]] = {
    CrossEntropy.auto: lambda out, d: (
        Chunking.fp32 if CHUNKED_AVAILABLE and out >= AUTO_MIN_RATIO * d else Chunking.never
    ),
    CrossEntropy.full: lambda out, d: Chunking.never,
    CrossEntropy.chunked: lambda out, d: Chunking.always,
}


def check_cross_entropy(cfg: ModelConfig) -> None:
    """``model.cross_entropy=chunked`` needs a torch that has it (before any data is read)."""
    if CrossEntropy(cfg.cross_entropy) == CrossEntropy.chunked and not CHUNKED_AVAILABLE:
        raise ConfigError(
            f"model.cross_entropy=chunked needs torch.nn.functional.linear_cross_entropy "
            f"(torch 2.13 or later); this torch is {torch.__version__}: use auto or full"
        )


def resolve_chunking(cfg: ModelConfig, out_features: int, in_features: int) -> Chunking:
    """Where an output layer of ``in_features`` -> ``out_features`` trains chunked."""
    check_cross_entropy(cfg)
    return CROSS_ENTROPY[CrossEntropy(cfg.cross_entropy)](out_features, in_features)


def logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The full form: mean cross-entropy of (..., V) logits against (...) labels, in fp32 (or
    the logits' own dtype where that is wider)."""
    logits_NV = logits.flatten(0, -2)
    logits_NV = logits_NV.to(torch.promote_types(logits_NV.dtype, torch.float32))
    return F.cross_entropy(logits_NV, labels.flatten(), ignore_index=IGNORE)


def linear_loss(layer: nn.Linear, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The chunked form of ``logits_loss(layer(x), labels)``. Under autocast the inputs take
    autocast's dtype, as ``layer(x)`` would; the op accumulates in fp32 either way."""
    weight, bias, x_ND = layer.weight, layer.bias, x.flatten(0, -2)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x_ND, weight = x_ND.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    rows = CPU_CHUNK_ROWS if device == "cpu" else None  # elsewhere torch's own choice
    options = nn.LinearCrossEntropyOptions(batch_chunk_size=rows)
    return F.linear_cross_entropy(
        x_ND, weight, labels.flatten(), linear_bias=bias, ignore_index=IGNORE, options=options
    )


def takes_chunked(chunking: Chunking, x: torch.Tensor) -> bool:
    """Whether this call takes the chunked form: never while being compiled."""
    if chunking == Chunking.never or torch.compiler.is_compiling():
        return False
    low_precision = x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type)
    return chunking == Chunking.always or not low_precision


def output(
    layer: nn.Linear, x: torch.Tensor, labels: torch.Tensor | None, chunking: Chunking
) -> torch.Tensor:
    """A family's last step: ``layer(x)``'s logits, or with ``labels`` their loss (the
    chunked form where ``chunking`` applies)."""
    if labels is None:
        return layer(x)
    if takes_chunked(chunking, x):
        return linear_loss(layer, x, labels)
    return logits_loss(layer(x), labels)
