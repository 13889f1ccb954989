"""The test harness itself: under ``make test`` (pytest-xdist) each worker runs torch on its
share of the cores, as ``tests/conftest.py`` sets before torch is imported. A worker on more
threads slows the suite down, and the tests that compare a run in this process with one in a
child process (which inherits the share) would sum in another order and lose bit equality."""

from __future__ import annotations

import os

import pytest
import torch


def test_a_worker_runs_torch_on_its_share_of_the_cores() -> None:
    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        pytest.skip("not under pytest-xdist: torch keeps its own thread count")
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
