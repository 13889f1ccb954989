"""The dry run: parameters, budget, FLOPs and an estimated wall time, before spending compute.

The model is built on the meta device (shapes, no storage), so every preset up to ``gpt_7b``
plans on a CPU without allocating its weights. Throughput comes from one of two places:

* ``measured``: when one training step of a micro-batch is cheap, i.e. its FLOPs
  (``flops_per_token`` x micro_batch x seq_len) at the device peak x ``ASSUMED_MFU`` take less
  than ``MEASURE_MAX_STEP_SECONDS``, and weights, gradients, AdamW state and activations fit
  in half the free memory, the real model is built on the device and 1 warm-up + 3 timed
  forward+backward+AdamW steps on random tokens are run (eager, fp32 or bf16 autocast, with
  activation checkpointing where the model has it, so a checkpointed run's recomputation is
  timed); the median step gives tokens/s.
* ``estimated``: otherwise, tokens/s = peak FLOP/s x ``ASSUMED_MFU`` / ``flops_per_token``;
  with activation checkpointing the device also runs every block's forward again
  (``recompute_flops_per_token``) at that rate, so tokens/s is lower and MFU, which counts the
  model's FLOPs alone, below ``ASSUMED_MFU``.

The budget's FLOPs are 6 N D (Kaplan et al. 2020; Hoffmann et al. 2022), as in
``results.json``; the wall time uses ``flops_per_token`` (matmuls incl. the output head, plus
attention scores), the same count that MFU uses. Validation, data preparation and
checkpointing are not included.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lmlab.config import BudgetConfig, DataConfig, ModelConfig
from lmlab.data.collators import decoder_tokens
from lmlab.data.packing import prepared_vocab_size
from lmlab.errors import ConfigError
from lmlab.model import build_model, flops_per_token, param_breakdown, recompute_flops_per_token
from lmlab.train.activations import free_memory_bytes, training_bytes
from lmlab.train.budget import Budget, budget_params, resolve_budget
from lmlab.train.hardware import autocast, largest_linears, peak_flops, raised_peak
from lmlab.train.kernel_probe import SAMPLE_INPUTS
from lmlab.train.machine import on_cuda
from lmlab.train.parallel import layout
from lmlab.train.plan import make_plan, meta_model

ASSUMED_MFU = 0.4  # typical of well-run dense training (measured figures: BENCHMARKS.md)
MEASURE_MAX_STEP_SECONDS = 5.0  # measure only when one step should take less than this
MEASURE_MEMORY_FRACTION = 0.5  # and the training state fits in this share of free memory
WARMUP_STEPS, TIMED_STEPS = 1, 3


def planning_vocab(model_cfg: ModelConfig, data_cfg: DataConfig) -> tuple[int, str]:
    """The vocabulary a plan sizes the model at, and where it comes from: ``model.vocab_size``
    if set; else the size of this data's tokenizer where an earlier run cached it (BPE stops
    below ``data.vocab_size`` on a small corpus, and a char tokenizer's size is its corpus's
    characters); else the target ``data.vocab_size``, said to be one: a plan prepares no data."""
    prepared = prepared_vocab_size(data_cfg)
    if model_cfg.vocab_size:
        if prepared is not None:  # the tokenizer a run would train with: the run's own check
            check_model_vocab(model_cfg.vocab_size, prepared)
        return model_cfg.vocab_size, "model.vocab_size"
    if prepared is not None:
        return prepared, "this data's tokenizer, cached"
    return data_cfg.vocab_size, (
        f"data.vocab_size, the target: the data is not prepared yet, and its "
        f"{data_cfg.tokenizer.value} tokenizer may have fewer; after any run of this data, a "
        "dry run reads the true size"
    )


def check_model_vocab(model_vocab: int, tokenizer_vocab: int) -> None:
    """``model.vocab_size`` below the tokenizer's size leaves token ids past the embedding:
    refused, by a run once its data is prepared and by a plan where the tokenizer is cached."""
    if model_vocab < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={model_vocab} is below the tokenizer's {tokenizer_vocab} "
            "tokens (leave it null to follow the tokenizer)"
        )


def planning_model_config(model_cfg: ModelConfig, data_cfg: DataConfig) -> ModelConfig:
    """``model_cfg`` at the vocabulary a plan sizes it at (``planning_vocab``)."""
    return dataclasses.replace(model_cfg, vocab_size=planning_vocab(model_cfg, data_cfg)[0])


def choose_method(
    step_flops: float, peak: float | None, needed_bytes: int, free_bytes: int | None
) -> tuple[str, str]:
    """``("measured" | "estimated" | "unavailable", why)`` as in the module docstring."""
    if free_bytes is not None and needed_bytes > MEASURE_MEMORY_FRACTION * free_bytes:
        why = (  # not the run's step (sharded, or one per GPU): the timing's, here
            f"not timed: timing a step of the whole model in this process would take "
            f"~{needed_bytes / 2**30:.1f} GiB, over {MEASURE_MEMORY_FRACTION:.0%} of the "
            f"{free_bytes / 2**30:.1f} GiB free"
        )
        return ("estimated" if peak else "unavailable"), why
    if peak is None:
        return "measured", "timed: unknown device peak, and the step fits in memory"
    step_seconds = step_flops / (peak * ASSUMED_MFU)
    if step_seconds < MEASURE_MAX_STEP_SECONDS:
        return "measured", (  # why it was timed, not a prediction: the table has the rate
            f"timed, as a step at the assumed {ASSUMED_MFU:.0%} MFU was expected to take "
            f"~{step_seconds:.2g} s (under {MEASURE_MAX_STEP_SECONDS:g} s)"
        )
    why = (
        f"not timed: a step at the assumed {ASSUMED_MFU:.0%} MFU would take "
        f"~{step_seconds:.3g} s (> {MEASURE_MAX_STEP_SECONDS:g} s)"
    )
    return "estimated", why


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_tokens_per_second(
    model_cfg: ModelConfig, micro_batch: int, seq_len: int, device: torch.device, precision: str
) -> tuple[float, list[float]]:
    """Tokens/s of eager forward+backward+AdamW steps on random tokens, and the timed steps'
    seconds: the real model on ``device``, ``WARMUP_STEPS`` untimed, then ``TIMED_STEPS``
    timed one by one; the median step is used, so one step slowed by a busy machine does not
    set the estimate. Tokens are input tokens (the encoder's for T5), as ``Throughput`` counts
    them."""
    with torch.device(device):
        model = build_model(model_cfg)
    layout(model, activation_checkpointing=model_cfg.activation_checkpointing)  # as the run's
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids_BT = torch.randint(0, model_cfg.vocab_size, (micro_batch, seq_len), device=device)
    inputs = SAMPLE_INPUTS[model_cfg.family](ids_BT)
    targets = inputs.get("decoder_input_ids", ids_BT)  # the positions the loss scores
    labels = torch.randint_like(targets, model_cfg.vocab_size)
    seconds: list[float] = []
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = model(**inputs, labels=labels)  # as training computes it
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - start)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return micro_batch * seq_len / statistics.median(seconds), seconds


def format_duration(seconds: float | None) -> str:
    """``"3 min 55 s"``, ``"2 h 05 min"``, ``"3.2 days"``; ``"unknown"`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds < 365 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365 * 86400):.3g} years"


def _throughput(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    counts: dict[str, int],
    fpt: float,
    shape: tuple[int, int],
    device: torch.device,
    precision: str,
    cache_dir: str | Path,
    recompute: float = 0.0,
) -> dict[str, Any]:
    """Tokens/s per device, measured or estimated, and how; a CPU peak that the timed steps
    beat is raised as a run raises it (``raised_peak``), so the MFU is at most 1. ``recompute``
    is the FLOPs per token that activation checkpointing adds: an estimate runs them too."""
    micro_batch, seq_len = shape
    peak = peak_flops(device, precision, cache_dir)
    needed = training_bytes(model_cfg, counts["total"], micro_batch, seq_len, precision, device)
    method, why = choose_method(
        (fpt + recompute) * micro_batch * seq_len, peak, needed, free_memory_bytes(device)
    )
    tps = mfu = None
    step_seconds: list[float] = []
    if method == "measured":
        tps, step_seconds = measure_tokens_per_second(
            model_cfg, micro_batch, seq_len, device, precision
        )
        if peak and device.type == "cpu":
            shapes = largest_linears(model, micro_batch * seq_len)
            peak = raised_peak(peak, tps * fpt, precision, cache_dir, shapes)
        mfu = tps * fpt / peak if peak else None
    elif method == "estimated":  # the recompute at the same rate; MFU counts the model's
        tps = peak * ASSUMED_MFU / (fpt + recompute)
        mfu = tps * fpt / peak
        if recompute:
            why += (
                f"; activation checkpointing's recompute adds {recompute / fpt:.0%} to the "
                f"model's FLOPs, at that rate (MFU {mfu:.0%})"
            )
    return {
        "method": method,
        "reason": why,
        "tokens_per_second": tps,
        "mfu": mfu,
        "peak_flops": peak,
        "device": str(device),
        "precision": str(precision),
        "step_seconds": step_seconds,
    }


def plan_run(
    model_cfg: ModelConfig,
    seq_len: int,
    micro_batch: int,
    tokens_per_step: int,
    budget_cfg: BudgetConfig,
    max_steps: int,
    device: torch.device | str,
    precision: str,
    cache_dir: str | Path,
    n_devices: int = 1,
) -> dict[str, Any]:
    """Parameters (meta-device build), the resolved budget and the estimated wall time of a
    run. Tokens/s is per device; the wall time assumes ``n_devices`` accelerators scale
    linearly, but not processes on a CPU: they share its cores, which the one measured
    process already used."""
    device = torch.device(device)
    model = meta_model(model_cfg)
    counts = param_breakdown(model)
    decoder_len = decoder_tokens(model_cfg.family, seq_len)
    fpt = flops_per_token(model, seq_len, decoder_len)
    recompute = (
        recompute_flops_per_token(model, seq_len, decoder_len)
        if model_cfg.activation_checkpointing
        else 0.0
    )
    n = budget_params(budget_cfg, counts)
    budget: Budget = resolve_budget(budget_cfg, n, tokens_per_step, max_steps)
    speed = _throughput(
        model,
        model_cfg,
        counts,
        fpt,
        (micro_batch, seq_len),
        device,
        precision,
        cache_dir,
        recompute,
    )
    tps = speed["tokens_per_second"]
    parallel = 1 if device.type == "cpu" else n_devices
    wall = budget.tokens / (tps * parallel) if tps else None
    return {
        "model": {
            k: v.value if isinstance(v, Enum) else v
            for k, v in dataclasses.asdict(model_cfg).items()
        },
        "params": counts["total"],
        "active_params": counts["active"],
        "non_embedding_params": counts["non_embedding"],
        "param_breakdown": counts,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "n_devices": n_devices,
        "budget": budget.as_dict(),
        "budget_flops": budget.nominal_flops,
        "tokens": budget.tokens,
        "steps": budget.steps,
        "flops": budget.flops,
        "tokens_per_step": budget.tokens_per_step,
        "flops_per_token": fpt,
        "recompute_flops_per_token": recompute,
        "throughput": speed,
        "tokens_per_second": tps,
        "wall_seconds": wall,
        "wall_time": format_duration(wall),
    }


def plan_from_cfg(
    cfg: DictConfig, model_cfg: ModelConfig, data_cfg: DataConfig, seq_len: int
) -> dict[str, Any]:
    """The dry run: ``plan_run`` for the run ``cfg`` describes, without preparing any data (the
    vocabulary is ``planning_model_config``'s), with the run plan's batch and precision."""
    vocab_size, vocab_from = planning_vocab(model_cfg, data_cfg)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab_size)
    run_plan = make_plan(cfg, model_cfg, data_cfg, seq_len)
    use_cuda = on_cuda(cfg.trainer)
    estimate = plan_run(
        model_cfg,
        seq_len,
        run_plan.batch.micro_batch,
        run_plan.batch.tokens,
        OmegaConf.to_object(cfg.budget),
        int(cfg.trainer.max_steps),
        torch.device("cuda" if use_cuda else "cpu"),
        run_plan.precision,
        cfg.paths.cache_dir,
        n_devices=run_plan.batch.devices,
    )
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda") and not use_cuda:  # a GPU run planned where none is
        speed = estimate["throughput"]
        speed["reason"] = (
            f"no CUDA GPU visible here for trainer.accelerator={accelerator}: planned on this "
            "machine's CPU, its speed and memory, not a GPU's (a dry run where the GPU is "
            f"plans for it); {speed['reason']}"
        )
    return run_plan.as_dict() | estimate | {"vocab_from": vocab_from}
