"""What lmlab reads of ``logger.wandb`` and what W&B itself refuses (a project's characters
and length, a tag's length), checked before any work: W&B refused them in ``wandb.init``, once
the run's data was prepared, through a traceback."""

from __future__ import annotations

import os
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ConfigError, spelled
from lmlab.train.wandb_mode import WANDB_MODES, wandb_disabled, wandb_offline_known


def check_wandb(cfg: DictConfig) -> None:
    """What lmlab reads of ``logger.wandb`` itself. ``offline``: null (offline unless a key is
    configured and its server answers), true or false; ``off`` or ``0`` were read as true and
    false. ``tags``: a list of strings (or null); W&B took ``tags=baseline`` for the tags b,
    a, s, e, l, i, n, e, and refused a number (``tags=[v1,2]``) once the data was prepared.
    ``name``, ``group``, ``project``, ``entity``: a string (or null); a number as Hydra reads
    ``name=2024`` failed the run after its data was prepared, through a traceback.
    ``log_model`` in a run known to log offline (``wandb_offline_known``), which Lightning
    refuses as the logger is built, once the data was prepared, through a traceback. A
    ``WANDB_MODE`` W&B refuses (``WANDB_MODES``): the run logged nothing to W&B, in one warning
    naming a pydantic ``ValidationError``."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(
            f"WANDB_MODE={mode!r}: allowed: {', '.join(WANDB_MODES[:3])} (W&B refuses any "
            "other, and the run would log nothing to W&B), or unset it"
        )
    offline = node.get("offline")
    if offline is not None and not isinstance(offline, bool):
        raise ConfigError(
            f"logger.wandb.offline={offline}: allowed: true, false, null (offline unless an "
            "API key is configured and its server answers)"
        )
    for key in ("name", "group", "project", "entity"):
        value = node.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"logger.wandb.{key}={spelled(value)}: allowed: a string or null (quote a "
                f"number as text: 'logger.wandb.{key}=\"{spelled(value)}\"')"
            )
    tags = node.get("tags")
    if tags is not None and not (
        OmegaConf.is_list(tags) and all(isinstance(tag, str) for tag in tags)
    ):
        shown = OmegaConf.to_container(tags) if OmegaConf.is_list(tags) else spelled(tags)
        raise ConfigError(
            f"logger.wandb.tags={shown}: allowed: a list of strings, such as "
            "logger.wandb.tags=[baseline] (quote a number: '[v1,\"2\"]'), or null"
        )
    check_wandb_words(node.get("project"), tags)
    if node.get("log_model") and not wandb_disabled() and wandb_offline_known(offline):
        raise ConfigError(
            f"logger.wandb.log_model={spelled(node.get('log_model'))}: this run logs to W&B "
            "offline (WANDB_MODE=offline, logger.wandb.offline=true, or no API key), which "
            "uploads no checkpoint: log in (wandb login, or WANDB_API_KEY), or leave log_model "
            "false (checkpoints stay in <run dir>/checkpoints)"
        )


# What W&B refuses in ``wandb.init`` (its settings' ``validate_project`` and
# ``validate_run_tags``), once the run's data was prepared, through a traceback
WANDB_PROJECT_CHARS = "/\\#?%:"
WANDB_PROJECT_MAX = 128
WANDB_TAG_MAX = 64


def check_wandb_words(project: str | None, tags: Iterable[str] | None) -> None:
    """``logger.wandb.project`` without any of ``/ \\ # ? % :``, at most 128 characters (a
    ``team/project`` is ``entity=team project=project``), and each of ``logger.wandb.tags`` 1
    to 64 characters: W&B refused them once the data was prepared, with a traceback."""
    if project is not None:
        found = [c for c in WANDB_PROJECT_CHARS if c in project]
        if found or len(project) > WANDB_PROJECT_MAX:
            why = f"it holds {' '.join(found)}" if found else f"{len(project)} characters"
            raise ConfigError(
                f"logger.wandb.project={project}: {why}; allowed: at most "
                f"{WANDB_PROJECT_MAX} characters, none of {' '.join(WANDB_PROJECT_CHARS)} (a "
                "team's project: logger.wandb.entity=<team> logger.wandb.project=<project>)"
            )
    for tag in tags or ():
        if not 1 <= len(tag) <= WANDB_TAG_MAX:
            raise ConfigError(
                f"logger.wandb.tags: {tag!r} has {len(tag)} characters; allowed: tags of 1 to "
                f"{WANDB_TAG_MAX} characters"
            )
