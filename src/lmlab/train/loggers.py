"""Experiment loggers from ``conf/logger``: W&B (offline unless a key is configured) and CSV."""

from __future__ import annotations

import netrc
import os
import re
import secrets
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from lmlab.config import flatten

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


def _multirun_dir() -> Path | None:
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def swept_keys() -> set[str]:
    """Keys a multirun varies: the sweeper's ``params`` and command-line overrides with a
    comma list (read from the sweep's ``multirun.yaml``, which Hydra writes before any job)."""
    hc = HydraConfig.get()
    keys = set((hc.sweeper.get("params") or {}).keys())
    multirun_yaml = _multirun_dir() / "multirun.yaml"
    if multirun_yaml.exists():
        task = OmegaConf.load(multirun_yaml).hydra.overrides.task
        keys |= {o.split("=", 1)[0] for o in task if "," in o.split("=", 1)[-1]}
    return {k.lstrip("+~") for k in keys}


def run_name(cfg: DictConfig) -> str:
    """A single run: its overrides (``model=gpt_medium,+experiment=prenorm``) or ``default``.
    A multirun job: only the overrides that vary within the sweep (``model.activation=gelu``)."""
    if not HydraConfig.initialized():
        return "default"
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        varying = swept_keys()
        parts = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in varying]
        return ",".join(parts) or f"job{hc.job.num}"
    return hc.job.override_dirname or "default"


def run_group() -> str | None:
    """One W&B group per multirun: the sweep's name (``+sweeps=NAME``) and its timestamp."""
    if not HydraConfig.initialized() or _multirun_dir() is None:
        return None
    sweep = HydraConfig.get().runtime.choices.get("sweeps") or "multirun"
    return f"{sweep}-{'_'.join(_multirun_dir().parts[-2:])}"


def run_tags(cfg: DictConfig) -> list[str]:
    """Tags from the config choices: family, size, the model knobs, experiment and sweep."""
    model = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    knobs = ("family", "norm_placement", "norm", "activation", "positional")
    tags = [f"{k}:{model[k]}" for k in knobs]
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        preset = choices.get("model") or ""
        tags.append(f"size:{preset.split('_', 1)[-1]}")
        tags += [f"{g}:{choices[g]}" for g in ("experiment", "sweeps") if choices.get(g)]
    return tags


SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Replace the value of any secret-looking environment variable (``WANDB_API_KEY``,
    ``HF_TOKEN``, ...) inside ``value`` by ``<redacted:NAME>``: a config interpolating
    ``${oc.env:...}`` must not leak it into W&B, CSV hparams or results.json."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        for name, secret in os.environ.items():
            if len(secret) >= 8 and SECRET_NAME.search(name) and secret in value:
                value = value.replace(secret, f"<redacted:{name}>")
    return value


def wandb_run_id(out_dir: Path) -> str:
    """The run directory's W&B id, created once and kept in ``wandb_id``: a resumed run
    reopens the same W&B run, so the dashboard shows one continuous curve."""
    path = out_dir / "wandb_id"
    if not path.exists():
        path.write_text(secrets.token_hex(4))  # W&B run ids: short, lowercase alphanumeric
    return path.read_text().strip()


def build_loggers(cfg: DictConfig, out_dir: Path) -> list[Logger]:
    """Instantiate ``cfg.logger``'s entries and log the resolved config with dotted keys."""
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            loggers.append(
                instantiate(
                    lcfg,
                    name=lcfg.get("name") or run_name(cfg),
                    offline=wandb_offline(lcfg.get("offline")),
                    id=wandb_run_id(out_dir),
                    resume="allow",
                    group=lcfg.get("group") or run_group(),
                    tags=list(lcfg.get("tags") or []) + run_tags(cfg),
                )
            )
        else:
            loggers.append(instantiate(lcfg))
    flat = redact(flatten(OmegaConf.to_container(cfg, resolve=True)))
    for lg in loggers:
        lg.log_hyperparams(flat)
    return loggers


def log_param_table(loggers: list[Logger], counts: dict[str, int]) -> None:
    """The parameter table (embeddings, attention, feed-forward, norms, head, total,
    non-embedding) as a W&B table named ``parameters``."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            rows = [[kind, n] for kind, n in counts.items()]
            lg.log_table(key="parameters", columns=["kind", "count"], data=rows)
