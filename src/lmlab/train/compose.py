"""The config ``python src/train.py <overrides>`` would run, composed from Python (tests,
benchmarks): the real ``conf/`` tree, the Hydra runtime config set, test paths applied."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lmlab.config import CONF_DIR, register_configs

CONF = CONF_DIR
register_configs()


def compose_train(
    overrides: list[str], output_dir: Path | None = None, cache_dir: Path | None = None
) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``; ``output_dir``/``cache_dir`` replace the run
    and cache paths (Hydra's own node is dropped once its runtime config is set). Without
    ``output_dir`` the run goes where the command line's would: ``hydra.run.dir``
    (``outputs/<date>/<time>`` under the working directory, or the override), as
    ``${hydra:runtime.output_dir}`` is only set inside a Hydra job (``train()`` failed on
    None)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(cfg.hydra.run.dir if output_dir is None else output_dir)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        del cfg.hydra
    return cfg
