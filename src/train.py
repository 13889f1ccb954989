"""Train one run: ``python src/train.py [overrides]``; ``-m`` for a sweep.

A thin wrapper: Hydra composes ``conf/``, ``lmlab.run.train`` does the work. Bad input
(``lmlab.errors.ConfigError``) is reported in one line and exits with code 2; set
``HYDRA_FULL_ERROR=1`` for the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent
if str(SRC) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(SRC))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lmlab.config import register_configs  # noqa: E402
from lmlab.errors import ConfigError  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from lmlab.run import train  # heavy imports only once the config composed

    try:
        return train(cfg)
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
