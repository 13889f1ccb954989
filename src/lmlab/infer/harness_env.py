"""lm-eval run inside lmlab: quiet (its INFO lines and notices off, its progress bars and
prints dropped unless asked for) and leaving the global random state as it was, so a
training run with evals draws the same numbers as one without (``harness.run_tasks``)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

NOTICE_LOGGERS = ("lm_eval", "lm_eval.api.task", "lm_eval.evaluator", "lm_eval.api.model")


class _DropNotices(logging.Filter):
    """The harness's notices that say nothing about lmlab's use of it."""

    NOTICES = ("Custom kwargs can be passed", "No chat template", "chat_template")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOTICES)


@contextlib.contextmanager
def quiet_harness(progress: bool = False) -> Iterator[None]:
    """lm-eval at WARNING (its INFO lines would fill a training log) and without its notices;
    without ``progress``, its progress bars and prints (to stderr and stdout) are dropped
    (logging's handlers keep their streams). Bootstrapped standard errors are computed in
    this process: a pool of worker processes inside a training run is not worth starting."""
    harness_log = logging.getLogger("lm_eval")
    level, notices = harness_log.level, _DropNotices()
    harness_log.setLevel(logging.WARNING)
    for name in NOTICE_LOGGERS:  # a logger's filter sees its own records only
        logging.getLogger(name).addFilter(notices)
    saved = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        with contextlib.ExitStack() as stack:
            if not progress:
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            yield
    finally:
        harness_log.setLevel(level)
        for name in NOTICE_LOGGERS:
            logging.getLogger(name).removeFilter(notices)
        if saved is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = saved


@contextlib.contextmanager
def kept_random_state() -> Iterator[None]:
    """The harness seeds Python's, NumPy's and torch's global generators; inside a training
    run they are put back afterwards, so a run with evals draws the same numbers as one
    without (and resumes exactly)."""
    py, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):  # the harness seeds the GPUs' generators too
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
