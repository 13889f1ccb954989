"""lmlab's benchmark suite: ``make bench`` (``python bench/run.py``) rewrites BENCHMARKS.md."""
