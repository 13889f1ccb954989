"""Callbacks, one module each: throughput and MFU (``throughput``), the attention-kernel report
(``kernels``), the progress bar (``progress``), the end-of-run text sample (``sample``),
attention maps (``attention_maps``), evals during training (``evals``), and what the extra
forward passes among them share (``extras``). Checkpoint callbacks live in
``lmlab.train.checkpointing``, the non-finite guard in ``lmlab.train.guard``. The configs name
each callback here (``lmlab.train.callbacks.<Name>``), as runs' saved configs do."""

from lmlab.train.callbacks.attention_maps import AttentionMaps
from lmlab.train.callbacks.evals import EvalTasks
from lmlab.train.callbacks.kernels import SDPAKernelReport
from lmlab.train.callbacks.progress import ProgressBar
from lmlab.train.callbacks.sample import Sample
from lmlab.train.callbacks.throughput import Throughput, untimed

__all__ = [
    "AttentionMaps",
    "EvalTasks",
    "ProgressBar",
    "SDPAKernelReport",
    "Sample",
    "Throughput",
    "untimed",
]
