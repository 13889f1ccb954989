"""The global batch: how many sequences one optimizer step trains on, and how that splits into
micro-batches, devices and gradient accumulation. The one place for this arithmetic.

rows per step = micro-batch (``data.batch_size``) x devices (``trainer.devices`` x
``trainer.num_nodes``) x accumulation. When ``data.global_batch_size`` (sequences) or
``data.global_batch_tokens`` is set, accumulation is derived from it, so 1 device and 8 train on
the same batches with the same schedule; otherwise ``trainer.accumulate_grad_batches`` is used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.config import DataConfig
from lmlab.errors import ConfigError


@dataclass(frozen=True)
class GlobalBatch:
    micro_batch: int  # sequences per device per forward (data.batch_size)
    devices: int  # processes: devices per node x nodes
    accumulation: int  # micro-batches per optimizer step on each device
    seq_len: int

    @property
    def rows(self) -> int:
        """Sequences per optimizer step, over all devices."""
        return self.micro_batch * self.devices * self.accumulation

    @property
    def tokens(self) -> int:
        """Tokens per optimizer step, over all devices."""
        return self.rows * self.seq_len

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "global_batch_size": self.rows, "global_batch_tokens": self.tokens}

    def describe(self) -> str:
        return (
            f"global batch {self.rows:,} sequences = {self.tokens:,} tokens per step (micro-batch "
            f"{self.micro_batch} x {self.devices} device(s) x {self.accumulation} accumulation)"
        )


def device_count(devices: Any, accelerator: str) -> int:
    """Lightning's ``trainer.devices`` as a number: an int, a list of ids, or "auto"/-1
    (all visible GPUs for a GPU accelerator, 1 on CPU)."""
    if isinstance(devices, list | tuple) or OmegaConf.is_list(devices):
        return len(devices)
    if str(devices).lstrip("-").isdigit() and int(devices) > 0:
        return int(devices)
    if str(accelerator) in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    return 1


def world_size(trainer_cfg: DictConfig) -> int:
    """Processes of the run: devices per node x nodes."""
    return device_count(trainer_cfg.devices, trainer_cfg.accelerator) * int(trainer_cfg.num_nodes)


def check_rank_sharding(trainer_cfg: DictConfig) -> None:
    """``trainer.use_distributed_sampler`` stays false: lmlab's sampler gives each rank its
    share of the global batch itself (``ResumableSampler``), and Lightning's, wrapped around
    it, would give each rank every other row of that share, so the epoch would end halfway and
    the next restart the sampler: half the rows trained twice, the other half never."""
    given = trainer_cfg.get("use_distributed_sampler", True)  # absent: Lightning's true
    if given is False:
        return
    raise ConfigError(
        f"trainer.use_distributed_sampler={str(given).lower()}: lmlab's resumable sampler "
        "gives each rank its share of the rows itself, and Lightning's sampler around it would "
        "train half of them twice and skip the rest; allowed: false"
    )


def resolve_global_batch(
    trainer_cfg: DictConfig, data_cfg: DataConfig, seq_len: int
) -> GlobalBatch:
    """The global batch of the run: accumulation = global batch / (micro-batch x devices), which
    must be a whole number, or ``trainer.accumulate_grad_batches`` when no global batch is set."""
    world, micro = world_size(trainer_cfg), int(data_cfg.batch_size)
    given = int(trainer_cfg.accumulate_grad_batches)
    for name, value in {"data.batch_size": micro, "trainer.accumulate_grad_batches": given}.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
    by_rows, by_tokens = data_cfg.global_batch_size, data_cfg.global_batch_tokens
    if by_rows is not None and by_tokens is not None:
        raise ConfigError(
            f"data.global_batch_size={by_rows} and data.global_batch_tokens={by_tokens} are "
            "both set: give the global batch one way (sequences or tokens)"
        )
    if by_tokens is not None:
        if by_tokens % seq_len:
            raise ConfigError(
                f"data.global_batch_tokens={by_tokens} is not a multiple of the sequence length "
                f"{seq_len}"
            )
        by_rows = by_tokens // seq_len
    if by_rows is None:
        return GlobalBatch(micro, world, given, seq_len)
    per_pass = micro * world
    if by_rows < 1 or by_rows % per_pass:
        given, multiple = (
            (f"data.global_batch_size={by_rows}", f"{per_pass}")
            if by_tokens is None
            else (
                f"data.global_batch_tokens={by_tokens} (of {seq_len}-token sequences)",
                f"{per_pass * seq_len} tokens",
            )
        )
        raise ConfigError(
            f"{given}: {by_rows} sequences is not a multiple of data.batch_size={micro} x "
            f"{world} device(s) (trainer.devices x trainer.num_nodes) = {per_pass}; allowed: "
            f"a multiple of {multiple}, or another data.batch_size"
        )
    derived = by_rows // per_pass
    if given not in (1, derived):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={given} contradicts the global batch of "
            f"{by_rows} sequences (which needs {derived}): set one of them"
        )
    return GlobalBatch(micro, world, derived, seq_len)
