"""Checkpoints that survive crashes: atomic writes, safe loads, RNG state (a stop on a signal:
``lmlab.train.preemption``).

- ``AtomicCheckpointIO`` writes to a temporary file in the same folder, fsyncs it and renames
  it into place, so a kill during a save leaves the previous checkpoint intact; it loads with
  ``torch.load(weights_only=True)``, never unpickling arbitrary objects.
- ``Checkpoint`` saves a periodic step whose validation follows at that validation's end
  (the checkpoint holds it), also saves when training ends between two periodic saves, and
  keeps ``last.ckpt`` a link to the newest step checkpoint (``save_last: link``), replaced
  atomically: one copy on disk, never absent. ``save_top_k`` keeps the newest k step
  checkpoints of the folder, whichever process saved them (``Checkpoint.prune``).
- ``RNGState`` carries the torch and Python RNG states in the checkpoint (dropout draws from
  them; the masking collators seed their own from the batch), so a resumed run continues the
  same random stream.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lmlab.config.locks import LOCK_FILE
from lmlab.errors import refused_save

log = logging.getLogger(__name__)


def new_file_mode() -> int:
    """The mode ``open`` gives a new file, 0o666 less the umask (``mkstemp``'s is 0o600: a
    checkpoint only its owner could read, on a cluster whose group shares runs). The umask
    is read from /proc where Linux has it (``os.umask`` sets it too, for every thread)."""
    try:
        status = Path("/proc/self/status").read_text()
        umask = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8
        )
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write-to-temp, fsync, rename; load with ``weights_only=True``. The file gets the mode
    a plain write would (``new_file_mode``)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), new_file_mode())
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            refused = refused_save(err, path)  # not the temporary file's name
            if refused is not None:
                raise refused from err
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


MARK = "\0"  # no file name holds it


class MarkedFields(dict):
    """Metrics for Lightning's ``format_checkpoint_name`` that format every field of the name
    as its own name between two ``MARK``s, whatever its format spec (``{step:06d}``): the
    name with its fields marked, by Lightning's own rules (``auto_insert_metric_name``, the
    extension)."""

    def __contains__(self, key: object) -> bool:
        return True  # Lightning sets a missing field to 0 otherwise

    def __missing__(self, key: str) -> MarkedField:
        return MarkedField(key)


class MarkedField:
    """One field of a checkpoint name, marked (``MarkedFields``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        return f"{MARK}{self.name}{MARK}"


def step_name_pattern(marked: str) -> re.Pattern[str] | None:
    """What matches the names that ``marked`` (a name formatted from ``MarkedFields``) stands
    for: its first ``step`` field in group ``step``, its other fields anything. None where
    the name holds no step."""
    pattern, named = "", False
    pieces = os.path.basename(marked).split(MARK)  # text, field, text, ..., field, text
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            pattern += re.escape(piece)
        elif piece == "step":
            pattern += r"\d+" if named else r"(?P<step>\d+)"
            named = True
        else:
            pattern += ".*?"
    return re.compile(pattern) if named else None


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves when training ends between two ``every_n_train_steps``
    saves, so the final weights are always on disk and ``last.ckpt`` points at them.

    ``conf/callbacks/default.yaml`` sets ``save_last: link`` (``last.ckpt`` is a relative link
    to the newest step checkpoint, file or sharded folder, so it costs no second copy and
    survives copying the directory) and ``enable_version_counter: false`` (in a copied or
    moved directory Lightning does not recognise its own ``last.ckpt`` and would write
    ``last-v1.ckpt`` beside it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``save_top_k`` keeps the newest k step checkpoints (Lightning keeps k only of a
        monitored value, and refuses k > 1 without one: here the value is the step)."""
        k = kwargs.get("save_top_k", 1)
        if isinstance(k, bool) or not isinstance(k, int) or k < -1:
            raise ValueError(f"save_top_k={k!r}: allowed an int >= 1 (the newest k), 0 or -1 (all)")
        if kwargs.get("monitor") is None and k > 1:
            kwargs |= {"monitor": "step", "mode": "max"}
        super().__init__(*args, **kwargs)
        self._step_name = step_name_pattern(self.format_checkpoint_name(MarkedFields()))

    def step_of(self, path: str | Path) -> int | None:
        """The step in ``path``'s name where ``filename`` names it a step checkpoint (its
        folder aside); None for another name (``last.ckpt``, a save's temporary file), or
        where ``filename`` holds no ``{step}``."""
        match = self._step_name.fullmatch(Path(path).name) if self._step_name else None
        return int(match["step"]) if match else None

    def _in_dirpath(self, path: str | Path) -> bool:
        """Whether ``path`` lies in ``dirpath`` itself (links resolved)."""
        folder = os.path.realpath(os.path.dirname(path))
        return bool(self.dirpath) and folder == os.path.realpath(self.dirpath or "")

    def prune(self, trainer: L.Trainer, saved: str) -> None:
        """Keep the newest ``save_top_k`` step checkpoints of ``dirpath`` up to ``saved`` (the
        one just written), removing the older ones: read from the folder, not from the
        callback's state, which lists only what its own process saved or the checkpoint it
        resumed from held (a resume that passed over an unreadable ``last.ckpt`` for an older
        step knew nothing of the steps in between; a copied directory's state names the
        original's files). Lightning never removes the file a run resumed from: that one
        then stayed for good beside k newer ones. Here it goes once k newer are on disk.
        Steps past ``saved`` (left by an earlier process, passed over as unreadable) are
        kept: the save of that step replaces them. Removing more than one at once (a resume
        with a smaller ``save_top_k``) is said, naming them."""
        step = self.step_of(saved)
        if step is None or self.save_top_k < 1 or not trainer.is_global_zero:
            return
        found = sorted(
            (s, path)
            for path in Path(self.dirpath or "").iterdir()
            if (s := self.step_of(path)) is not None and s <= step
        )
        older = [path for _, path in found[: -self.save_top_k]]
        if len(older) > 1:  # more than the one a save replaces: a resume with a smaller k
            log.warning(
                "save_top_k=%d: removing %d older step checkpoints of %s (%s)",
                self.save_top_k,
                len(older),
                self.dirpath,
                ", ".join(path.name for path in older),
            )
        for path in older:
            self._remove_checkpoint(trainer, str(path))

    def _should_remove_checkpoint(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        """Lightning's removal of the step checkpoints of ``dirpath`` is left to ``prune``;
        any other file (one named without ``{step}``) goes Lightning's way."""
        if self._in_dirpath(previous) and self.step_of(previous) is not None:
            return False
        return super()._should_remove_checkpoint(trainer, previous, current)

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

    run_lock: Path | None = None  # the run directory's lock file, where train() took one

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        lock = Path(self.dirpath or "").parent / LOCK_FILE
        self.run_lock = lock if lock.is_file() else None

    def check_run_dir(self, trainer: L.Trainer) -> None:
        """Before a save: a run directory removed while the run trained (its lock file gone)
        stops the run, on every rank, rather than saving into a folder made anew without its
        config, plan and record."""
        removed = self.run_lock is not None and not self.run_lock.is_file()
        if trainer.strategy.broadcast(removed, src=0):
            raise FileNotFoundError(f"{self.run_lock} is gone: the run directory was removed")

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Link ``last.ckpt`` to a step checkpoint as soon as it is written: Lightning links it
        only after ``save_top_k`` has removed the previous step checkpoint, the one
        ``last.ckpt`` pointed to, so a kill in between left a dangling link."""
        self.check_run_dir(trainer)
        super()._save_checkpoint(trainer, filepath)
        last = os.path.join(self.dirpath or "", self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        if self.save_last == "link" and os.path.abspath(filepath) != os.path.abspath(last):
            self._link_checkpoint(trainer, filepath, last)
        self.prune(trainer, filepath)  # once the new one is written and linked

    pending_step: int | None = None  # a periodic save waiting for its step's validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pending_step is not None and trainer.global_step > self.pending_step:
            self.save_now(trainer)  # its validation did not run: saved one step later
        if self.waits_for_validation(trainer):
            self.pending_step = trainer.global_step
        else:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if 0 < trainer.max_steps <= trainer.global_step:
            # the last step is saved here, inside its epoch like every periodic save (a run
            # resumed from it logs on the right steps), and before the end-of-run extras
            self.save_now(trainer)

    def waits_for_validation(self, trainer: L.Trainer) -> bool:
        """A periodic save is due at this step and a validation follows it: the save waits
        for the validation's end, so the checkpoint holds that validation (the best
        validation loss so far; a resume does not run it again), as nanoGPT and litgpt save
        after their evaluation. The last step is saved at once: its validation is the run's
        end, which a resume from that checkpoint runs again."""
        step = trainer.global_step
        due = self._every_n_train_steps >= 1 and step % self._every_n_train_steps == 0
        if not due or step >= trainer.max_steps > 0 or self._should_skip_saving_checkpoint(trainer):
            return False
        if step == self.pending_step:  # still waiting: no save amid the next accumulation
            return True
        loop = trainer.fit_loop
        try:  # the test Lightning's epoch loop makes after this hook (private: if it is gone,
            # the save is made now, before the validation, as Lightning's own)
            return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
        except AttributeError:
            return False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pending_step == trainer.global_step and not trainer.sanity_checking:
            self.save_now(trainer)
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_now(trainer)  # training ended another way (max_epochs, a stop)
        super().on_train_end(trainer, pl_module)

    def saved_at(self, step: int) -> str | None:
        """The checkpoint this callback saved of ``step`` (``last.ckpt`` where it is kept),
        if its newest save is of that step; else None."""
        if step != self._last_global_step_saved:
            return None
        path = self.last_model_path or self.best_model_path
        return path if path and os.path.lexists(path) else None

    def save_now(self, trainer: L.Trainer) -> str | None:
        """Save this step (top-k and ``last.ckpt``) unless it is saved already; the path
        saved (``last.ckpt`` where it is kept), None if nothing was."""
        self.pending_step = None
        if trainer.global_step <= self._last_global_step_saved:
            return None
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        if self._last_global_step_saved != trainer.global_step:  # save_top_k=0, no last
            return None
        return self.last_model_path or self.best_model_path


def dropout_seed(seed: int, rank: int, step: int = 0) -> int:
    """The torch seed of ``rank``'s dropout stream in a run of ``seed`` (0 to 2**32-1),
    from ``step`` on: ``seed`` itself on rank 0 from the start, so one process's stream is
    its seed's; on the other ranks (or from a later step) a seed above 2**32, which no run's
    ``seed`` is, so no rank of one run draws another run's stream (``seed + rank`` gave rank 1
    of seed 1 the stream of rank 0 of seed 2). torch takes seeds up to 2**64-1."""
    if rank == 0 and step == 0:
        return seed
    key = hashlib.sha256(f"lmlab dropout {seed} {rank} {step}".encode()).digest()
    return 2**32 + int.from_bytes(key[:7], "big")  # 2**32 to 2**32 + 2**56 - 1


class RNGState(L.Callback):
    """Saves the torch (CPU, CUDA) and Python RNG states with the checkpoint, and restores them
    right before the first training batch of the resumed run. A fresh run is seeded there
    from ``seed`` (each rank its own stream: ``dropout_seed``). Whatever runs between seeding
    and that batch (a peak-FLOP/s measurement that only a cold cache runs, probes, DataLoader
    iterators) then cannot shift the random stream that dropout draws from (masking draws
    from generators seeded per row, ``row_seeds``): the stream depends on
    the seed and the step only, so an interrupted and resumed run matches an uninterrupted
    one bit for bit."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Every rank's states (rank 0 writes the checkpoint, so they are gathered to it):
        each rank draws its own dropout stream."""
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
            self.pending = {"seed": dropout_seed(self.seed, rank)}
        elif "ranks" in self.pending:
            ranks = self.pending["ranks"]
            if len(ranks) == trainer.world_size:
                self.pending = ranks[rank]
            else:  # another world size: the data order is the same, the dropout stream is not
                log.warning(
                    "checkpoint has the RNG states of %d ranks, this run has %d: reseeding "
                    "dropout from seed, rank and step",
                    len(ranks),
                    trainer.world_size,
                )
                self.pending = {"seed": dropout_seed(self.seed, rank, trainer.global_step)}

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
