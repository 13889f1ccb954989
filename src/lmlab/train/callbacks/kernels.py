"""The attention kernel and cross-entropy form the training step runs, logged once."""

from __future__ import annotations

import logging

import lightning as L
import torch

from lmlab.config import Compile, TaskKind
from lmlab.model.positional import PositionalScheme
from lmlab.train.callbacks.extras import eager, forward_here, optional
from lmlab.train.estimate import SAMPLE_INPUTS
from lmlab.train.kernel_probe import attention_kernels, cross_entropy_form, profiled_ops

log = logging.getLogger(__name__)


class SDPAKernelReport(L.Callback):
    """Logs once which attention kernel the training step runs (flash, memory-efficient, math,
    cuDNN) and which form of the cross-entropy: a forward and loss of the training shape,
    under the training precision's autocast."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not forward_here(trainer, pl_module):
            return
        with optional("the attention-kernel report"):
            self.report(trainer, pl_module)

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seq_len = trainer.datamodule.seq_len
        ids = torch.zeros(1, seq_len, dtype=torch.long, device=pl_module.device)
        inputs = SAMPLE_INPUTS[pl_module.model_cfg.family](ids)
        targets = inputs.get("decoder_input_ids", ids)
        classify = pl_module.task.kind == TaskKind.classify
        labels = torch.zeros_like(targets[:, :1]) if classify else targets
        with trainer.precision_plugin.forward_context(), eager():
            ops = profiled_ops(pl_module.model, inputs | {"labels": labels})
        kernels = attention_kernels(ops)
        loss_form = cross_entropy_form(ops, pl_module.compile == Compile.model)
        note = ""
        schemes = [m for m in pl_module.model.modules() if isinstance(m, PositionalScheme)]
        biased = any(scheme.has_bias for scheme in schemes)
        if "flex_attention" not in kernels and (biased or pl_module.model_cfg.attention_window):
            note = " (an additive bias or window mask rules out the flash kernel on GPU)"
        if trainer.is_global_zero:
            log.info("attention kernel: %s%s", ", ".join(kernels) or "none found", note)
            log.info("cross-entropy: %s", loss_form)
        pl_module.sdpa_kernels, pl_module.cross_entropy = kernels, loss_form
