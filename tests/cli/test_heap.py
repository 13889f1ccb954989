"""The collector at start-up and exit (``lmlab.cli.heap``): heavy imports are kept out of its
scans, the collector is left as it was, and the exit still finalizes unreachable objects."""

from __future__ import annotations

import gc
import sys
import types

import pytest

from lmlab.cli.heap import before_exit, long_lived


@pytest.fixture(autouse=True)
def session_heap_frozen_again():
    """These tests unfreeze the heap; the session's is frozen again after each
    (``pytest_collection_finish``)."""
    yield
    gc.collect()
    gc.freeze()


def test_what_an_import_creates_is_frozen_and_the_collector_restored() -> None:
    gc.unfreeze()
    try:
        with long_lived():
            assert not gc.isenabled()  # no full collections while the import runs
            sys.modules["lmlab_test_fake_import"] = types.ModuleType("lmlab_test_fake_import")
            made = [[i] for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(made)
        gc.unfreeze()
        with long_lived():  # nothing imported: nothing frozen
            made = [[i] for i in range(1000)]
        assert gc.get_freeze_count() == 0
        gc.disable()
        with long_lived():
            pass
        assert not gc.isenabled()  # a collector the caller had off stays off
    finally:
        sys.modules.pop("lmlab_test_fake_import", None)
        gc.unfreeze()
        gc.enable()


class Node:
    finalized: list[str] = []

    def __init__(self, name: str) -> None:
        self.name, self.me = name, self  # a reference cycle: only the collector frees it

    def __del__(self) -> None:
        Node.finalized.append(self.name)


def test_before_exit_finalizes_what_is_unreachable_and_freezes_the_rest() -> None:
    gc.disable()  # no automatic collection between here and before_exit()
    try:
        kept = Node("kept")
        Node("dropped")
        assert Node.finalized == []  # only a collection frees a cycle
        before_exit()
        assert Node.finalized == ["dropped"]
        assert gc.get_freeze_count() > 0  # the shutdown will not scan what is left
    finally:
        gc.unfreeze()
        gc.enable()
    del kept
