"""The global batch: micro-batch x devices x accumulation, derived from the global batch size."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lmlab.config import DataConfig
from lmlab.errors import ConfigError
from lmlab.train.batch import device_count, resolve_global_batch


def batch_cfg(micro: int, devices: int, nodes: int = 1, accumulation: int = 1, **data) -> tuple:
    """(trainer config, data config) as composed for a run on ``devices`` x ``nodes`` CPUs."""
    trainer = OmegaConf.create(
        {
            "devices": devices,
            "num_nodes": nodes,
            "accelerator": "cpu",
            "accumulate_grad_batches": accumulation,
        }
    )
    return trainer, DataConfig(batch_size=micro, **data)


@pytest.mark.parametrize(
    "micro,devices,nodes,global_rows,accumulation",
    [(4, 1, 1, 64, 16), (4, 8, 1, 64, 2), (8, 4, 2, 64, 1), (2, 2, 2, 64, 8)],
)
def test_accumulation_follows_the_global_batch(
    micro: int, devices: int, nodes: int, global_rows: int, accumulation: int
) -> None:
    trainer, data = batch_cfg(micro, devices, nodes, global_batch_size=global_rows)
    batch = resolve_global_batch(trainer, data, seq_len=128)
    assert batch.accumulation == accumulation and batch.devices == devices * nodes
    assert batch.rows == global_rows == batch.as_dict()["global_batch_size"]
    assert batch.tokens == global_rows * 128 == batch.as_dict()["global_batch_tokens"]
    assert trainer.accumulate_grad_batches == 1  # the config is read, never written
    by_tokens = batch_cfg(micro, devices, nodes, global_batch_tokens=global_rows * 128)
    assert resolve_global_batch(*by_tokens, seq_len=128) == batch


@pytest.mark.parametrize(
    "cfg,message",
    [
        (batch_cfg(4, 3, global_batch_size=64), r"64 sequences is not a multiple of .*= 12"),
        (batch_cfg(4, 1, global_batch_tokens=1000), "global_batch_tokens=1000 is not a multiple"),
        (
            batch_cfg(4, 1, global_batch_size=64, global_batch_tokens=8192),
            "global_batch_size=64 and data.global_batch_tokens=8192 are both set",
        ),
        (
            batch_cfg(4, 1, accumulation=3, global_batch_size=64),
            r"accumulate_grad_batches=3 contradicts the global batch of 64 .*needs 16",
        ),
    ],
)
def test_bad_global_batch_is_a_clear_error(cfg: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_global_batch(*cfg, seq_len=128)


def test_without_a_global_batch_accumulation_is_kept() -> None:
    batch = resolve_global_batch(*batch_cfg(4, 2, accumulation=3), seq_len=128)
    assert (batch.rows, batch.accumulation, batch.tokens) == (24, 3, 24 * 128)
    assert "24 sequences = 3,072 tokens per step" in batch.describe()


def test_every_factor_of_the_batch_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=0 must be >= 1"):
        resolve_global_batch(*batch_cfg(4, 1, accumulation=0), seq_len=128)


def test_device_count_reads_lightning_values() -> None:
    assert device_count(4, "gpu") == 4
    assert device_count([0, 2], "gpu") == 2
    assert device_count("auto", "cpu") == 1 and device_count(-1, "cpu") == 1
