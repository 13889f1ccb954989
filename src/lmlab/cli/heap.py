"""Python's cyclic garbage collector at start-up and at exit.

An lmlab command imports torch, Lightning, torchmetrics and their dependencies: millions of
objects that live as long as the process. While they are created, the collector runs full
collections over all of them again and again, and the interpreter's shutdown scans them once
more. Both are wasted work: these objects are never garbage before the process ends. So heavy
imports run with the collector paused and their objects go to its permanent generation
(``gc.freeze``), out of every later scan; objects created afterwards are collected as usual.
Measured on the 2-core development CPU (BENCHMARKS.md, "Start-up and exit").
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived() -> Iterator[None]:
    """Import what lives as long as the process with the collector paused, then keep it out
    of the collector's scans. A block that imports nothing new (a second run in the same
    process) freezes nothing: whatever else is alive then may still become garbage."""
    enabled, modules = gc.isenabled(), len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:
            gc.freeze()
        if enabled:
            gc.enable()


def before_exit() -> None:
    """The process is about to exit: collect the garbage there is (its finalizers run, as at a
    normal exit), then freeze what is left, so that the interpreter's shutdown does not scan
    the whole heap again. What is still reachable is freed as usual, by reference count, and
    atexit handlers (logging's flush, W&B's) run as usual."""
    gc.collect()
    gc.freeze()
