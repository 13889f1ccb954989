"""Experiment loggers from ``conf/logger``: W&B (offline unless a key is configured) and CSV."""

from __future__ import annotations

import netrc
import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

WANDB_HOST = "api.wandb.ai"


def wandb_has_credentials() -> bool:
    """True when an API key is in the environment or in ~/.netrc (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_offline(requested: bool | None) -> bool:
    """``logger.wandb.offline=null`` (default): offline unless credentials exist, so a run
    never blocks on a login prompt. ``WANDB_MODE=offline`` always wins."""
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
        return True
    return (not wandb_has_credentials()) if requested is None else requested


def run_name(cfg: DictConfig) -> str:
    """The run's overrides (``model=gpt_medium,+experiment=prenorm``), or ``default``."""
    if HydraConfig.initialized():
        name = HydraConfig.get().job.override_dirname
        return name or "default"
    return "default"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"norm": "rmsnorm"}} -> {"model.norm": "rmsnorm"} (W&B groups on these keys)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            loggers.append(
                instantiate(
                    lcfg,
                    name=lcfg.get("name") or run_name(cfg),
                    offline=wandb_offline(lcfg.get("offline")),
                )
            )
        else:
            loggers.append(instantiate(lcfg))
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    for lg in loggers:
        lg.log_hyperparams(flat)
    return loggers
