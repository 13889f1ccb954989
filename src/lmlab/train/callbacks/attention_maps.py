"""Attention maps drawn during training."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from lmlab.infer.probe import attention_maps, plot_attention, probe_ids, token_labels
from lmlab.train.callbacks.extras import eager, forward_here, optional

log = logging.getLogger(__name__)


class AttentionMaps(L.Callback):
    """At each validation, draws the attention maps of ``text`` into
    ``<run dir>/attention/step<N>.png`` and logs the image to W&B when W&B is on, so heads
    can be watched specialising (previous-token heads, induction heads) as training goes."""

    def __init__(self, text: str = "def add(a, b):\n    return a + b\n", dirpath: str = "") -> None:
        self.text, self.dirpath = text, Path(dirpath)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not forward_here(trainer, pl_module):
            return
        with optional("the attention maps"), eager():
            self.draw(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tokenizer = trainer.datamodule.tokenizer
        model = pl_module.model
        ids = probe_ids(model, tokenizer, self.text)
        maps = attention_maps(model, ids)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        path = plot_attention(
            maps,
            token_labels(tokenizer, ids),
            self.dirpath / f"step{step:06d}.png",
            f"attention at step {step}",
        )
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                lg.log_image("attention", [str(path)], step=step)
