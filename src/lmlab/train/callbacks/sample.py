"""The end-of-run text sample."""

from __future__ import annotations

import logging

import lightning as L
import torch

from lmlab.config import Family, check_sampling
from lmlab.data.tokenizer import prompt_ids
from lmlab.errors import ConfigError
from lmlab.infer.generation import generate
from lmlab.train.callbacks.extras import eager, finishing, forward_here, optional, stop_check

log = logging.getLogger(__name__)


class Sample(L.Callback):
    """Generates a short text from ``prompt`` when training ends and logs it; it ends at the
    model's EOS, as `generate.py`'s samples do."""

    def __init__(
        self,
        prompt: str = "def ",
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int | None = 40,
        seed: int = 0,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(
                f"callbacks.sample.max_new_tokens={max_new_tokens} must be >= 1 "
                "(callbacks.sample=null: no sample)"
            )
        check_sampling("callbacks.sample.", temperature, top_k)
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.text: str | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.model_cfg.family != Family.gpt or not forward_here(trainer, pl_module):
            return  # left-to-right sampling needs a decoder
        if stop_check(trainer, pl_module)():
            log.warning("the end-of-run sample is left out: the run was asked to stop")
            return
        with optional("the end-of-run sample"), eager():
            self.sample(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if finishing(trainer, pl_module):  # a resumed run's end: no training ended here
            self.on_train_end(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tok = trainer.datamodule.tokenizer
        ids = torch.tensor([prompt_ids(tok, self.prompt)], device=pl_module.device)
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        model = pl_module.model
        was_training = model.training
        model.eval()
        asked = stop_check(trainer, pl_module)  # a stop signal ends the sample where it is
        out = generate(
            model,
            ids,
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            generator=gen,
            eos_id=pl_module.declared.end_ids(tok),  # as generate.py ends the checkpoint's
            n_vocab=tok.get_vocab_size(),  # model.vocab_size may pad past the tokenizer
            stop=lambda ids_BT: torch.full_like(ids_BT[:, 0], asked(), dtype=torch.bool),
        )
        model.train(was_training)
        self.text = tok.decode(out[0].tolist())
        if trainer.is_global_zero:
            cut = " (cut short: the run was asked to stop)" if asked() else ""
            log.info("sample (prompt %r)%s:\n%s", self.prompt, cut, self.text)
