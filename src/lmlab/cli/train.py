"""``lmlab train [overrides]`` = ``python src/train.py [overrides]``; ``-m`` for a sweep.

Hydra composes ``conf/`` and ``lmlab.train.run.train`` does the work. The config is checked
before torch and Lightning are imported, so bad input is reported at once (one line, exit
code 2). A preempted run (SIGTERM/SIGUSR1) exits with 143 after saving its checkpoint, an
interrupted one (Ctrl-C) with 130. In a multirun a failed job is logged and the sweep goes on
(its results.json says ``failed``; Optuna sees NaN, a failed trial).

``RunDirCallback`` (``hydra.callbacks`` in ``conf/train.yaml``) guards the run directory of a
single run before Hydra writes into it: see ``lmlab.train.rundir``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lmlab.cli.main import fail
from lmlab.config import CONF_DIR, register_configs, resolve_configs
from lmlab.errors import ConfigError
from lmlab.train.rundir import hold_hydra_writes, launch_rank_is_zero, lock_run_dir

register_configs()


class RunDirCallback(Callback):
    """Hydra calls ``on_run_start`` with the composed config before ``run_job`` creates the
    run directory, saves ``.hydra/`` and opens ``train.log``. Here a single run takes the
    directory's lock (a live run there: refused, nothing written) and, if the directory is
    not empty, holds Hydra's writes until training starts. Hydra turns a callback's exception
    into a warning, so a refusal exits here. Multirun jobs are guarded in ``train()``, after
    Hydra wrote their ``.hydra/``."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not launch_rank_is_zero():
            return  # a DDP/FSDP rank of a run that rank 0 guards
        HydraConfig.instance().set_config(config)  # what run_job does first: ${hydra:...} resolve
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir")).absolute()
        try:
            lock_run_dir(run_dir)
        except ConfigError as err:
            fail(err)
        hold_hydra_writes(config, run_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    if not in_multirun():
        try:  # before torch and Lightning load; train() checks again
            resolve_configs(cfg)
        except ConfigError as err:
            fail(err)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lmlab.train.run import train  # heavy imports only once the config composed

    try:
        return train(cfg)
    except SIGTERMException:
        sys.exit(143)  # preempted: checkpoint saved, results.json says so
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C: results.json says interrupted, the log how to resume
    except Exception as err:
        if in_multirun():
            # One failed job must not sink the sweep: results.json already says "failed".
            logging.getLogger("lmlab").error("job failed: %s: %s", type(err).__name__, err)
            return float("nan")
        if isinstance(err, ConfigError):
            fail(err)
        raise


def in_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def main(argv: list[str]) -> int:
    """Hydra reads the command line itself: ``argv`` becomes ``sys.argv[1:]``."""
    sys.argv = [sys.argv[0], *argv]
    hydra_main()
    return 0


if __name__ == "__main__":  # the per-rank command of DDP/FSDP children (distributed.job_command)
    main(sys.argv[1:])
