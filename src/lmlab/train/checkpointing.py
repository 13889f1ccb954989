"""Checkpoints that survive crashes: atomic writes, safe loads, preemption, RNG state.

- ``AtomicCheckpointIO`` writes to a temporary file in the same folder, fsyncs it and renames
  it into place, so a kill during a save leaves the previous checkpoint intact; it loads with
  ``torch.load(weights_only=True)``, never unpickling arbitrary objects.
- ``Checkpoint`` also saves when training ends between two periodic saves, and keeps
  ``last.ckpt`` a link to the newest step checkpoint (``save_last: link``), replaced
  atomically: one copy on disk, never absent.
- ``Preemption`` turns SIGTERM (and SIGUSR1 outside SLURM's auto-requeue, which Lightning
  handles itself) into a checkpoint at the next step boundary and a clean stop.
- ``RNGState`` carries the torch and Python RNG states in the checkpoint (dropout and the
  masking collators draw from them), so a resumed run continues the same random stream.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write-to-temp, fsync, rename; load with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power loss
        finally:
            os.close(dir_fd)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves when training ends between two ``every_n_train_steps``
    saves, so the final weights are always on disk and ``last.ckpt`` points at them.

    ``conf/callbacks/default.yaml`` sets ``save_last: link`` (``last.ckpt`` is a relative link
    to the newest step checkpoint, file or sharded folder, so it costs no second copy and
    survives copying the directory) and ``enable_version_counter: false`` (in a copied or
    moved directory Lightning does not recognise its own ``last.ckpt`` and would write
    ``last-v1.ckpt`` beside it)."""

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        """Lightning removes ``last.ckpt`` and then links it: a kill in between leaves none.
        Here the new link is made under a temporary name and renamed over the old one."""
        link = Path(linkpath)
        if trainer.is_global_zero and link.absolute() != Path(filepath).absolute():
            tmp = link.with_name(f".{link.name}.link.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(os.path.relpath(filepath, link.parent))
            if link.is_dir() and not link.is_symlink():  # a sharded save by Preemption
                shutil.rmtree(link)
            os.replace(tmp, link)
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if 0 < trainer.max_steps <= trainer.global_step:
            # the last step is saved here, inside its epoch like every periodic save (a run
            # resumed from it logs on the right steps), and before the end-of-run extras
            self.save_final(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_final(trainer)  # training ended another way (max_epochs, a stop)
        super().on_train_end(trainer, pl_module)

    def save_final(self, trainer: L.Trainer) -> None:
        if trainer.global_step > self._last_global_step_saved:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


class Preemption(L.Callback):
    """On SIGTERM (or SIGUSR1 when SLURM auto-requeue is off) Lightning stops after the current
    step with ``SIGTERMException``; this saves ``last.ckpt`` there, so nothing is lost."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            # Not taken by Lightning's SLURM requeue handler: treat it like SIGTERM.
            signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self.saved = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(self.saved)
            log.warning("preempted at step %d: saved %s", trainer.global_step, self.saved)


class RNGState(L.Callback):
    """Saves the torch (CPU, CUDA) and Python RNG states with the checkpoint, and restores them
    right before the first training batch of the resumed run. A fresh run is seeded there
    from ``seed``. Whatever runs between seeding and that batch (a peak-FLOP/s measurement
    that only a cold cache runs, probes, DataLoader iterators) then cannot shift the random
    stream that dropout and masking draw from: the stream depends on the seed and the step
    only, so an interrupted and resumed run matches an uninterrupted one bit for bit."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Every rank's states (rank 0 writes the checkpoint, so they are gathered to it):
        each rank draws its own dropout and masking stream."""
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return {"ranks": [state]}
        ranks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, state)
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank = trainer.global_rank
        if self.pending is None:  # a fresh run (a resumed one has its saved states pending)
            self.pending = {"seed": self.seed + rank}
        elif "ranks" in self.pending:
            ranks = self.pending["ranks"]
            if len(ranks) == trainer.world_size:
                self.pending = ranks[rank]
            else:  # another world size: the data order is the same, the dropout stream is not
                log.warning(
                    "checkpoint has the RNG states of %d ranks, this run has %d: reseeding "
                    "dropout and masking from seed + rank + step",
                    len(ranks),
                    trainer.world_size,
                )
                self.pending = {"seed": self.seed + rank + 1_000_003 * trainer.global_step}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.pending is None:
            return
        if "seed" in self.pending:
            torch.manual_seed(self.pending["seed"])  # CPU and CUDA
            random.seed(self.pending["seed"])
            self.pending = None
            return
        torch.set_rng_state(self.pending["torch"])
        random.setstate(self.pending["python"])
        if "cuda" in self.pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.pending["cuda"])
        self.pending = None
