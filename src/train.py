"""Train one run: ``python src/train.py [overrides]``; ``-m`` for a sweep.

A thin wrapper: Hydra composes ``conf/``, ``lmlab.run.train`` does the work. Bad input
(``lmlab.errors.ConfigError``) is reported in one line and exits with code 2; set
``HYDRA_FULL_ERROR=1`` for the traceback. A preempted run (SIGTERM/SIGUSR1) exits with 143
after saving its checkpoint. In a multirun a failed job is logged and the sweep goes on
(its results.json says ``failed``; Optuna sees NaN, a failed trial).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent
if str(SRC) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(SRC))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lmlab.budget import register_budget_configs  # noqa: E402
from lmlab.config import register_configs, resolve_configs  # noqa: E402
from lmlab.errors import ConfigError  # noqa: E402

register_configs()
register_budget_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    if not in_multirun():
        try:  # bad input in ~3 s, before torch and Lightning load (~8 s); train() checks again
            resolve_configs(cfg)
        except ConfigError as err:
            fail(err)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lmlab.run import train  # heavy imports only once the config composed

    try:
        return train(cfg)
    except SIGTERMException:
        sys.exit(143)  # preempted: checkpoint saved, results.json says so
    except Exception as err:
        if in_multirun():
            # One failed job must not sink the sweep: results.json already says "failed".
            logging.getLogger("lmlab").error("job failed: %s: %s", type(err).__name__, err)
            return float("nan")
        if isinstance(err, ConfigError):
            fail(err)
        raise


def fail(err: ConfigError) -> None:
    """Bad input: one line on stderr and exit code 2 (``HYDRA_FULL_ERROR=1``: the traceback)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def in_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    main()
