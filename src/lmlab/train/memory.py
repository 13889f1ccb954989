"""Whether a run's training state fits the memory it will have, checked from the plan before
the model is built: a model too large for the machine is refused in one line instead of being
killed by the kernel (CPU) or by an out-of-memory error (GPU) minutes later.

The check is a lower bound, so it refuses no run that could fit: the weights, their gradients
and the optimizer's state, nothing else (activations, the data and the framework come on top).
Per parameter that is the parameter's bytes (4 under ``32-true`` and the mixed precisions,
which keep fp32 weights; 2 under ``bf16-true``), twice, plus two moments of that size for Adam
and AdamW. FSDP shards it over every process; DDP gives every process all of it. On the CPU
the processes of a node share its memory (``MemAvailable``); on a GPU each process has its
own device's free memory. A dry run prints both figures (``memory_needs``).

A whole step needs activations too: where the dry run's coarse estimate of them (in the
compute dtype; with activation checkpointing, every block's input and one block's
activations) takes the step past the free memory, the run starts with a warning that names
the micro-batch and what needs less.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError
from lmlab.train.activations import activation_bytes, free_memory_bytes
from lmlab.train.machine import on_cuda
from lmlab.train.plan import RunPlan

log = logging.getLogger(__name__)

# Lightning's precision -> bytes of one parameter (the others: 4, fp32 weights)
PARAM_BYTES = {"64-true": 8, "64": 8, "bf16-true": 2, "16-true": 2}
# optimizers that keep two moment buffers the size of each parameter
TWO_MOMENTS = ("Adam", "AdamW")


def state_bytes_per_param(precision: str, optimizer_target: str) -> int:
    """Weights, gradients and optimizer state of one parameter, in bytes."""
    param = PARAM_BYTES.get(precision, 4)
    moments = 2 if optimizer_target.rpartition(".")[2] in TWO_MOMENTS else 0
    return param * (2 + moments)


def step_activations(plan: RunPlan, model_cfg: ModelConfig, trainer_cfg: Mapping[str, Any]) -> int:
    """The dry run's coarse activation memory of one micro-batch (``activation_bytes``) at
    the plan's compute precision on the run's device (which attention kernels run depends on
    it), activation checkpointing's included."""
    device = "cuda" if on_cuda(trainer_cfg) else "cpu"
    batch = plan.batch
    return activation_bytes(model_cfg, batch.micro_batch, batch.seq_len, plan.precision, device)


def sharded(trainer_cfg: Mapping[str, Any]) -> bool:
    """Whether the strategy shards the training state over the processes (FSDP)."""
    strategy = trainer_cfg.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, Mapping) else str(strategy or "")
    return "fsdp" in name.lower()


def available_bytes(trainer_cfg: Mapping[str, Any]) -> tuple[int | None, str]:
    """The memory one process's share is compared with, and where it is: this process's GPU
    (``LOCAL_RANK``): what the driver has free plus what this process's caching allocator
    holds unused (an earlier run in the same process, a multirun's or a benchmark's); or the
    node's ``MemAvailable`` (None where unknown)."""
    if on_cuda(trainer_cfg):
        index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        free = torch.cuda.mem_get_info(index)[0] + cached
        return free, f"GPU {index} ({torch.cuda.get_device_name(index)}) has"
    return free_memory_bytes(torch.device("cpu")), "this machine has"


@dataclass(frozen=True)
class MemoryNeeds:
    """What the processes that share one memory (a node's CPU, or one GPU) need, and have."""

    per_param: int  # bytes of weights, gradients and optimizer state per parameter
    shards: int  # processes the state is sharded over (FSDP), else 1
    processes: int  # processes that share this memory: a node's on its CPU, 1 on a GPU
    state: int  # weights, gradients and optimizer state: the lower bound
    step: int  # the state plus the coarse activation estimate of one micro-batch
    free: int | None  # None: unknown
    where: str  # "this machine has", "GPU 0 (NVIDIA H200) has"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def memory_needs(
    plan: RunPlan,
    model_cfg: ModelConfig,
    trainer_cfg: Mapping[str, Any],
    optim_cfg: Mapping[str, Any],
    available: tuple[int | None, str] | None = None,
) -> MemoryNeeds:
    """The lower bound and the coarse step estimate for ``plan``, and the free memory."""
    free, where = available or available_bytes(trainer_cfg)
    per_param = state_bytes_per_param(plan.precision, str(optim_cfg.get("_target_", "")))
    processes, nodes = plan.batch.devices, int(trainer_cfg.get("num_nodes") or 1)
    shards = processes if sharded(trainer_cfg) else 1
    per_process = math.ceil(per_param * plan.params / shards)
    # the processes of one node share the CPU's memory; a GPU is one process's
    sharing = 1 if on_cuda(trainer_cfg) else max(processes // nodes, 1)
    step = (per_process + step_activations(plan, model_cfg, trainer_cfg)) * sharing
    return MemoryNeeds(per_param, shards, sharing, per_process * sharing, step, free, where)


def check_state_fits(
    plan: RunPlan,
    model_cfg: ModelConfig,
    trainer_cfg: Mapping[str, Any],
    optim_cfg: Mapping[str, Any],
    available: tuple[int | None, str] | None = None,
    warn: bool = True,
) -> None:
    """Refuse the run when the lower bound above exceeds the memory it will have; warn when
    the dry run's coarse estimate of a whole step does (``step_activations``), unless
    ``warn`` is False (a sweep's check of its jobs: each job warns when it starts)."""
    needs = memory_needs(plan, model_cfg, trainer_cfg, optim_cfg, available)
    if needs.free is None:
        return
    gib = 2**30
    if needs.state <= needs.free:
        if warn and needs.step > needs.free:
            less = (
                ""
                if model_cfg.activation_checkpointing
                else (" or model.activation_checkpointing=true")
            )
            log.warning(
                "a training step needs about %.1f GiB by a coarse estimate (activations of "
                "data.batch_size=%d x %d tokens included), and %s %.1f GiB free: it may run "
                "out of memory; a smaller data.batch_size (with data.global_batch_size set, the "
                "batch stays the same through accumulation)%s needs less",
                needs.step / gib,
                plan.batch.micro_batch,
                plan.batch.seq_len,
                needs.where,
                needs.free / gib,
                less,
            )
        return
    optimizer = str(optim_cfg.get("_target_", "")).rpartition(".")[2] or "optimizer"
    how = (
        f"sharded over {needs.shards} FSDP processes"
        if needs.shards > 1
        else "whole in each process"
    )
    raise ConfigError(
        f"the model's {plan.params:,} parameters need at least {needs.state / gib:.1f} GiB for "
        f"weights, gradients and {optimizer} state ({needs.per_param} bytes each in "
        f"{plan.precision}, {how}; activations not counted), and {needs.where} "
        f"{needs.free / gib:.1f} GiB free: use a smaller model, trainer=fsdp over more "
        "devices, or a machine with more memory (dry_run=true plans any size)"
    )
