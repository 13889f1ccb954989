"""The composed config's top level: every group a run is built from is there
(``check_groups``), and no new top-level key misspells one of lmlab's or names a group's field
without its group (``check_top_level``)."""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig

from lmlab.config.run import RunConfig
from lmlab.errors import ConfigError

# The config groups every run is built from. Hydra's ``~model`` removes a group from the
# defaults list; the run then failed on the missing node with OmegaConf's traceback (``~data``
# and ``~task`` fall back to their schemas' defaults, ``~logger`` is ``logger=none``).
REQUIRED_GROUPS = ("model", "trainer", "optim", "scheduler", "budget", "callbacks")


def check_groups(cfg: DictConfig) -> None:
    """Each of ``REQUIRED_GROUPS`` is in the composed config."""
    from lmlab.config import group_options  # the package imports this module

    for group in REQUIRED_GROUPS:
        if group not in cfg:
            raise ConfigError(
                f"~{group}: a run needs the {group} group, so it cannot be removed; choose "
                f"an option with {group}=<name>; allowed: {', '.join(group_options(group))}"
            )


# Top-level keys that are neither a field of RunConfig nor a config group of ``conf/``.
OTHER_TOP_LEVEL = ("paths",)
# The groups whose fields a free-form top-level key must not be named as (``+lr=1e-3``).
FIELD_GROUPS = ("model", "data", "trainer", "optim", "scheduler", "budget")
# How close a free-form top-level key may come to one of lmlab's (difflib's ratio): ``sed``
# to ``seed`` is 0.86, ``dryrun`` to ``dry_run`` 0.92; ``tags`` to ``task`` 0.75 is free-form.
NEAR_MISS = 0.8


def check_top_level(cfg: DictConfig) -> None:
    """A new top-level key (``+notes=...``) is free-form, logged with the config and read by
    nothing: one that misspells a top-level key (``+sed=1`` for ``seed=1``) or names a group's
    field without its group (``+lr=1e-3`` for ``optim.lr``) is refused, naming the key meant,
    where the run trained as if it had not been given, in silence."""
    from lmlab.config import CONF_DIR  # the package imports this module
    from lmlab.config.asked import DELTA_GROUPS

    # a group's node (model, trainer, ..., hydra: Hydra's own, in a config composed with it);
    # +experiment=, +debug= and +sweeps= add none
    nodes = [p.name for p in CONF_DIR.iterdir() if p.is_dir()]
    known = {f.name for f in dataclasses.fields(RunConfig)} | {*nodes, *OTHER_TOP_LEVEL}
    known -= set(DELTA_GROUPS)
    fields = {
        str(name): f"{group}.{name}"
        for group in reversed(FIELD_GROUPS)  # the first group's field where two share a name
        if isinstance(cfg.get(group), DictConfig)
        for name in cfg[group]
    }
    for key in map(str, cfg):
        if key in known:
            continue
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=NEAR_MISS)
        meant = fields.get(key) or (near[0] if near else None)
        if meant is not None:
            raise ConfigError(
                f"+{key}: not a key lmlab reads, so it would change nothing; did you mean "
                f"{meant}? (a new top-level key is free-form, logged with the config only: "
                "name it apart from lmlab's keys)"
            )
