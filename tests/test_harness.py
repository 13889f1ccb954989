"""The test harness itself: under ``make test`` (pytest-xdist) each worker runs torch on its
share of the cores, as ``tests/conftest.py`` sets before torch is imported. A worker on more
threads slows the suite down, and the tests that compare a run in this process with one in a
child process (which inherits the share) would sum in another order and lose bit equality.
The caches of Hugging Face and W&B are the session's own (``pytest_configure``), not the
user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def test_a_worker_runs_torch_on_its_share_of_the_cores() -> None:
    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        pytest.skip("not under pytest-xdist: torch keeps its own thread count")
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


def test_the_hugging_face_and_wandb_caches_are_the_sessions_own(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Not the user's: a model in their hub cache changed what a test saw, and the suite left
    W&B's logs in their home."""
    import huggingface_hub.constants
    import wandb.env

    base = tmp_path_factory.getbasetemp()
    for folder in (
        huggingface_hub.constants.HF_HUB_CACHE,
        wandb.env.get_cache_dir(),
        wandb.env.get_data_dir(),
    ):
        assert Path(folder).is_relative_to(base), folder


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_workers_are_sized_by_the_cgroups_cpu_quota(
    tmp_path: Path, files: dict[str, str], cores: int | None
) -> None:
    """A container's CPU quota bounds the cores the suite counts (its affinity shows every
    core of the host), in cgroup v2's and v1's files."""
    from cores import quota_cores, usable_cores

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert quota_cores(tmp_path) == cores
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == min(affinity, cores or affinity)
