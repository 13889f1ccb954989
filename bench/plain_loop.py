"""The same training as ``lmlab.train.run.train`` in a plain PyTorch loop, written for the
benchmark.

Same model (``build_model``, same seed), same AdamW groups (``decay_groups``), same LR
schedule, same clipping, the same batches (the ``LMDataModule``'s own DataLoader) and the same
loss. What it leaves out is Lightning: hooks, logging, metrics, callbacks, progress bar. Its
step time is the floor that lmlab's overhead is measured against, and its losses must equal
lmlab's step for step (``tests/test_bench.py`` checks that), or the comparison is not fair.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.harness import StepLog
from lmlab.config import resolve_configs
from lmlab.data.collators import decoder_tokens
from lmlab.data.datamodule import LMDataModule
from lmlab.model import build_model, flops_per_token
from lmlab.train.optimizer import build_optimizer, decay_groups, optimizer_from


def autocast_for(precision: str) -> contextlib.AbstractContextManager:
    """What Lightning's ``bf16-mixed`` does on CPU: autocast around forward and loss."""
    if "bf16" in str(precision):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_fit(cfg: DictConfig) -> StepLog:
    """Train ``cfg.trainer.max_steps`` steps of ``cfg`` (CPU, one device, no accumulation)."""
    model_cfg, data_cfg, seq_len = resolve_configs(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as train(): the same init
    dm = LMDataModule(data_cfg, model_cfg.family, seq_len, cfg.seed)
    dm.setup()
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=dm.vocab_size)
    steps, clip = cfg.trainer.max_steps, cfg.trainer.gradient_clip_val
    dm.num_train_samples = steps * data_cfg.batch_size
    model = build_model(model_cfg)
    model.train()
    groups = decay_groups(model, cfg.optim.weight_decay)
    optimizer = build_optimizer(optimizer_from(cfg.optim), groups, torch.device("cpu"))
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=steps)
    torch.manual_seed(cfg.seed)  # lmlab's RNGState seeds dropout's stream before step 0
    starts: list[float] = []
    cpu_starts: list[float] = []
    losses: list[torch.Tensor] = []
    tokens_per_step = 0
    for batch in dm.train_dataloader():
        starts.append(time.perf_counter())
        cpu_starts.append(time.process_time())
        tokens_per_step = batch["input_ids"].numel()
        with autocast_for(cfg.trainer.precision):
            loss = model(**batch)  # with its labels: the loss, as lmlab's training step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    losses_ = [float(x) for x in losses]
    return StepLog(
        starts,
        cpu_starts,
        losses_,
        tokens_per_step,
        flops_per_token(model, seq_len, decoder_tokens(model.cfg.family, seq_len)),
    )
