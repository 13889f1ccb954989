"""``train(cfg)``: the whole run, importable (tests, sweeps) behind the thin ``src/train.py``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lmlab.callbacks import Sample, Throughput
from lmlab.config import DataConfig, ModelConfig
from lmlab.data.datamodule import LMDataModule
from lmlab.errors import ConfigError
from lmlab.loggers import build_loggers, run_name
from lmlab.model import param_breakdown
from lmlab.task import LMTask

log = logging.getLogger(__name__)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def route_lightning_logs() -> None:
    """Lightning's messages go through Hydra's handlers (console and train.log) once, not
    twice, and without its product tips."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        for handler in list(lightning_log.handlers):
            lightning_log.removeHandler(handler)
        lightning_log.propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropTips())


def resolve_configs(cfg: DictConfig) -> tuple[ModelConfig, DataConfig, int]:
    """Validate the structured configs (``__post_init__`` checks) before any work starts."""
    model_cfg: ModelConfig = OmegaConf.to_object(cfg.model)
    data_cfg: DataConfig = OmegaConf.to_object(cfg.data)
    seq_len = data_cfg.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} is above model.max_seq_len={model_cfg.max_seq_len}"
        )
    return model_cfg, data_cfg, seq_len


def param_table(counts: dict[str, int]) -> Table:
    table = Table(title="parameters", show_header=True)
    table.add_column("kind")
    table.add_column("count", justify="right")
    for kind, n in counts.items():
        if n or kind in ("total", "non_embedding"):
            table.add_row(kind, f"{n:,}")
    return table


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(path)


def train(cfg: DictConfig) -> float:
    """Train one run; write ``results.json`` (completed or failed); return the final val loss."""
    start = time.time()
    route_lightning_logs()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg, data_cfg, seq_len = resolve_configs(cfg)
    results: dict[str, Any] = {"status": "running", "run_name": run_name(cfg), "seed": cfg.seed}
    try:
        return _fit(cfg, model_cfg, data_cfg, seq_len, out_dir, results, start)
    except BaseException as err:
        results.update(
            status="failed", error=f"{type(err).__name__}: {err}", wall_seconds=time.time() - start
        )
        write_results(out_dir, results)
        raise
    finally:
        finish_wandb()


def finish_wandb() -> None:
    """Close the W&B run, so each job of a sweep is its own run and offline files are flushed."""
    import sys

    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


def _fit(
    cfg: DictConfig,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    seq_len: int,
    out_dir: Path,
    results: dict[str, Any],
    start: float,
) -> float:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = LMDataModule(data_cfg, model_cfg.family, seq_len, cfg.seed)
    dm.prepare_data()
    dm.setup()
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=dm.vocab_size)
    elif model_cfg.vocab_size < dm.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is below the tokenizer's {dm.vocab_size} "
            "tokens (leave it null to follow the tokenizer)"
        )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg) or False
    )
    batch_rows = data_cfg.batch_size * trainer.accumulate_grad_batches * trainer.world_size
    dm.num_train_samples = trainer.max_steps * batch_rows
    task = LMTask(
        model_cfg,
        instantiate(cfg.optim),
        instantiate(cfg.scheduler),
        compile=cfg.compile,
        bytes_per_token=dm.val_bytes_per_token,
    )
    counts = param_breakdown(task.model)
    if trainer.is_global_zero:
        Console().print(param_table(counts))
    trainer.fit(task, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    if task.last_val_step != trainer.global_step:
        trainer.validate(task, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    sample = next((c for c in callbacks if isinstance(c, Sample)), None)
    tokens = trainer.global_step * batch_rows * seq_len
    results.update(
        status="completed",
        val_loss=metrics.get("val/loss"),
        best_val_loss=task.best_val_loss,
        val_perplexity=metrics.get("val/perplexity"),
        val_bits_per_byte=metrics.get("val/bits_per_byte"),
        train_loss=metrics.get("train/loss"),
        params=counts["total"],
        non_embedding_params=counts["non_embedding"],
        param_breakdown=counts,
        tokens=tokens,
        flops=6.0 * counts["total"] * tokens,
        global_step=trainer.global_step,
        tokens_per_second=throughput.tokens_per_second if throughput else None,
        mfu=throughput.mfu if throughput else None,
        sdpa_kernels=getattr(task, "sdpa_kernels", None),
        wall_seconds=time.time() - start,
        device=str(task.device),
        precision=str(trainer.precision),
        torch_threads=torch.get_num_threads(),
        sample=sample.text if sample else None,
    )
    if trainer.is_global_zero:
        write_results(out_dir, results)
        log.info("results: %s", out_dir / "results.json")
    return results["val_loss"]
