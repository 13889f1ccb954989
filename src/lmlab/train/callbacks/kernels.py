"""The attention kernel and cross-entropy form the training step runs, logged once."""

from __future__ import annotations

import logging

import lightning as L

from lmlab.config import Compile
from lmlab.model.positional import PositionalScheme
from lmlab.train.callbacks.extras import eager, forward_here, optional
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
        # a batch of the training data, as its collator makes it: a fine-tuning batch's
        # padding mask, T5's decoder inputs, the labels of the task
        batch = trainer.datamodule.probe_batch()
        inputs = {key: value.to(pl_module.device) for key, value in batch.items()}
        with trainer.precision_plugin.forward_context(), eager():
            ops = profiled_ops(pl_module.model, inputs)
        kernels = attention_kernels(ops)
        loss_form = cross_entropy_form(ops, pl_module.compile == Compile.model)
        schemes = [m for m in pl_module.model.modules() if isinstance(m, PositionalScheme)]
        masks = [
            ("a padding mask", "attention_mask" in inputs),
            ("an additive bias", any(scheme.has_bias for scheme in schemes)),
            ("a window", bool(pl_module.model_cfg.attention_window)),
        ]
        reasons = [name for name, present in masks if present]
        note = ""
        if "flex_attention" not in kernels and reasons:
            note = f" ({', '.join(reasons)}: no flash kernel on a GPU)"
        if trainer.is_global_zero:
            log.info("attention kernel: %s%s", ", ".join(kernels) or "none found", note)
            log.info("cross-entropy: %s", loss_form)
        pl_module.sdpa_kernels, pl_module.cross_entropy = kernels, loss_form
