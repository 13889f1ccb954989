"""Lightning's log messages and warnings in a run: through Hydra's handlers (the console and
train.log) once, without those that tell a user nothing they can act on; lmlab's own lines of
a DDP/FSDP run said once, by global rank 0."""

from __future__ import annotations

import logging
import warnings

from lmlab.train.runfiles import launch_rank_is_zero


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


class _RankZeroSays(logging.Filter):
    """lmlab's info and warnings left to global rank 0: every rank plans the run (its
    warnings: a cut warm-up, validation off, bf16-true's rounding, a partial validation) and
    loads ``init_from``, and each said it on the console once per rank (8 times on 8 GPUs;
    under torchrun, where the ranks share ``train.log``, there too). A rank's errors stay: a
    failure may be its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "lmlab" or record.name.startswith("lmlab.")
        return not own or record.levelno >= logging.ERROR


# Lightning warns on every resume mid-epoch that a dataloader without ``state_dict`` cannot
# resume. lmlab's can: ``ResumableSampler`` starts at the checkpoint's step x global batch,
# the rows the run would have drawn (tests/train/test_resume.py compares their losses).
NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"
# Lightning's own pytree code (2.6.6) meets a deprecation of torch (2.13) on every run, once per
# rank (Lightning's issue 21326): nothing a user can act on.
LEAF_SPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# ModelCheckpoint's warning on every resume: the folder holds the run's own checkpoints, and a
# new run into a folder that holds a run's is refused before (``resume_checkpoint``).
CKPT_DIR_NOT_EMPTY = r"Checkpoint directory .* exists and is not empty"


def route_lightning_logs() -> None:
    """Lightning's messages go through Hydra's handlers (console and train.log) once, not
    twice, and without its product tips or its warning that a resume mid-epoch is inexact
    (``NOT_RESUMABLE``), nor the deprecation its own code meets in torch (``LEAF_SPEC``), nor
    that a resumed run's checkpoints folder holds checkpoints (``CKPT_DIR_NOT_EMPTY``). On a
    rank other than global 0, lmlab's lines below errors are rank 0's to say
    (``_RankZeroSays``)."""
    warnings.filterwarnings("ignore", message=NOT_RESUMABLE)
    warnings.filterwarnings("ignore", message=CKPT_DIR_NOT_EMPTY)
    warnings.filterwarnings("ignore", message=LEAF_SPEC, category=FutureWarning)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        for handler in list(lightning_log.handlers):
            lightning_log.removeHandler(handler)
        lightning_log.propagate = True
    others = () if launch_rank_is_zero() else (_RankZeroSays(),)
    for handler in logging.getLogger().handlers:
        for kind in (_DropTips(), *others):
            if not any(type(f) is type(kind) for f in handler.filters):  # a multirun's jobs
                handler.addFilter(kind)
