"""Compose the real ``conf/`` tree; share one small data cache across the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.compose import CONF, compose_train

ROOT = CONF.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


compose_cfg = compose_train  # the config ``python src/train.py <overrides>`` would run


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lmlab-cache")


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of the run's offline W&B log, read with W&B's own ``wandb leet inspect``."""
    (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = subprocess.run(
        [Path(sys.executable).parent / "wandb", "leet", "inspect", "--json", str(log_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]
