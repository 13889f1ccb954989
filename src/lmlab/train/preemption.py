"""A clean stop on SIGTERM, SIGUSR1 (outside SLURM's auto-requeue) and Ctrl-C: a checkpoint at
the next step boundary, the same step on every rank.

Lightning's own SIGTERM handler runs a ``broadcast`` inside the signal handler, at whatever
point the signal interrupts each rank, and forwards the signal to its child ranks. A rank that
is inside another collective then (the gradient all-reduce, a checkpoint's barrier) waits for
a peer that waits for it: a 2-process run stopped during its validation hung until killed.
Here a signal handler only notes the request. The ranks agree on it at fixed points that every
rank reaches in the same order, with one all-reduce (on a CPU ``gloo`` group, so a GPU run
adds no host-device synchronisation): after each optimizer step, and at the end of each
validation. The agreed stop then goes through Lightning's ``received_sigterm``, which ends the
step on every rank at the same place, and its ``SIGTERMException``."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lmlab.train.checkpointing import Checkpoint

log = logging.getLogger(__name__)

# What a rank asks for, ordered: the all-reduce takes the largest (a Ctrl-C anywhere wins).
NOTHING, PREEMPT, INTERRUPT = 0, 1, 2


class Preemption(L.Callback):
    """On SIGTERM (or SIGUSR1 when SLURM auto-requeue is off) the run stops after the current
    optimizer step with ``SIGTERMException``, saving ``last.ckpt`` there, so nothing is lost.

    Ctrl-C (SIGINT) takes the same path: a KeyboardInterrupt in the middle of a step would
    leave no consistent state to save, so the first Ctrl-C asks for that stop, and
    ``interrupted`` tells ``train()`` to record ``status: interrupted``. A second Ctrl-C stops
    at once (Lightning's KeyboardInterrupt handling), keeping the checkpoints already saved.

    A stop takes effect at the end of a validation, never between two of its batches:
    Lightning's resume from a checkpoint saved mid-validation runs a partial validation and
    logs every later step one step off (Lightning issue #19549). The checkpoint of a stop at a
    validation step is saved at the validation's end, the point Lightning's resume expects
    (validation done, not run again; the step not yet counted).

    In a run of many processes a signal that reaches one rank (the launcher's process, a
    cluster's kill of one task) stops every rank at the same step (module docstring)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None
        self.saved_step = -1
        self.interrupted = False
        self._asked = NOTHING  # what this rank's signal handlers noted, not yet agreed
        self._held = False  # an agreed stop hidden from the validation that follows its step
        self._stepped = -1  # the optimizer step of the last agreement after a step
        self._group: Any = None  # the CPU group the ranks agree on (None: the default one)
        self._sigint: list[Any] = []  # the SIGINT handler to restore after fit, once installed
        self._fit_loop: Any = None  # the trainer's: whether training has ended
        self._cut = False  # a Ctrl-C once training ended: the evals end early

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._group = agreement_group(trainer)
        self._fit_loop = trainer.fit_loop
        if threading.current_thread() is not threading.main_thread():
            return  # signals arrive in the main thread only
        # Lightning registers its SIGTERM handlers after this hook (and puts the earlier ones
        # back at its teardown): this one in place of its notifier, which broadcasts.
        trainer._signal_connector._sigterm_notifier_fn = self._on_sigterm
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            # Not taken by Lightning's SLURM requeue handler: treat it like SIGTERM.
            signal.signal(signal.SIGUSR1, self._on_sigterm)
        self._sigint = [signal.signal(signal.SIGINT, self._on_sigint)]

    def _on_sigterm(self, signum: int, _: Any) -> None:
        name = signal.Signals(signum).name
        if self._fit_loop is not None and trained_to_the_end(self._fit_loop):
            # no step is left to stop after (it said so, and the sample went on for minutes)
            log.warning(
                "Received %s: training has ended; the run ends with its final checkpoint and "
                "results.json, the end-of-run sample and evals cut short",
                name,
            )
        else:
            log.info("Received %s: stopping after this step", name)
        self._asked = max(self._asked, PREEMPT)

    def _on_sigint(self, *_: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one: stop now
        if self._fit_loop is not None and trained_to_the_end(self._fit_loop):  # its extras run
            self._cut = True
            log.warning(
                "Ctrl-C: training has ended; the final checkpoint and results.json are written "
                "first, the end-of-run sample and evals during training cut short (Ctrl-C "
                "again: stop at once, recorded interrupted)"
            )
            return
        log.warning("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again: at once)")
        self._asked = INTERRUPT

    def stop_asked(self) -> bool:
        """Whether this process was asked to stop (a signal, not yet agreed with the other
        ranks), or Ctrl-C came once training had ended: what the evals during training ask
        between two batches, and the end-of-run sample between two tokens, to end early
        (``EvalTasks``, ``Sample``)."""
        return self._asked != NOTHING or self._cut

    def _agree(self, trainer: L.Trainer) -> int:
        """What every rank asked for, the largest: the same answer on every rank."""
        asked = self._asked
        if self._group is not None or trainer.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([asked], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            asked = int(flag.item())  # a CPU tensor: no device synchronisation
        if asked:
            self._asked = asked
            self.interrupted = asked == INTERRUPT
        return asked

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stepped = trainer.global_step  # a resumed run: its first step is still to come

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After each optimizer step (not between the micro-batches of one), every rank."""
        if trainer.global_step == self._stepped:
            return
        self._stepped = trainer.global_step
        if self._agree(trainer):
            # Lightning ends this step on every rank (after its validation, if one follows)
            trainer._signal_connector.received_sigterm = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Hide a stop agreed after this step from Lightning's validation loop, which would
        stop between two batches (the flag has no public setter): it takes effect at the
        validation's end."""
        self._held = trainer._signal_connector.received_sigterm
        trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        held, self._held = self._held, False
        if not (self._agree(trainer) or held):
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._save_at_validation_end(trainer)
        trainer._signal_connector.received_sigterm = True  # Lightning stops after this step

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted = True
        if isinstance(exception, SIGTERMException) and self.saved_step != trainer.global_step:
            self._save(trainer)

    def _save_at_validation_end(self, trainer: L.Trainer) -> None:
        """A periodic save waiting for this validation (``Checkpoint.waits_for_validation``)
        is made now, once: ``last.ckpt`` links to it. Otherwise ``last.ckpt`` is written."""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, Checkpoint) and callback.pending_step == trainer.global_step:
                saved = callback.save_now(trainer)
                if saved:
                    self._saved(trainer, Path(saved))
                    return
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` of this step, unless a checkpoint of it is saved already (a stop in
        the validation or the evals after the step's save): that one is the stop's, not a
        second full copy of it."""
        ours = [c for c in trainer.checkpoint_callbacks if isinstance(c, Checkpoint)]
        saved = next((p for c in ours if (p := c.saved_at(trainer.global_step))), None)
        if saved:
            self._saved(trainer, Path(saved))
            return
        path = self.dirpath / "last.ckpt"
        # the whole training state, said so: left unset, Lightning logs that it defaults to it
        trainer.save_checkpoint(path, weights_only=False)
        self._saved(trainer, path)

    def _saved(self, trainer: L.Trainer, path: Path) -> None:
        self.saved, self.saved_step = path, trainer.global_step
        if trainer.is_global_zero:
            what = "interrupted" if self.interrupted else "preempted"
            log.warning("%s at step %d: saved %s", what, trainer.global_step, path)

    def _restore_sigint(self) -> None:
        if self._sigint:
            signal.signal(signal.SIGINT, self._sigint.pop() or signal.default_int_handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()


class StopBeforeFit:
    """SIGTERM or SIGUSR1 before ``fit`` (the run's checks, the data's preparation, the
    model's build) raises ``SIGTERMException`` where it arrives, as Ctrl-C raises
    KeyboardInterrupt there: the half-built data cache entry is removed and the command says
    what it left, exit code 143. Left to the signal, the process died at once, silent, and
    the cache kept the partial entry (``.tmp-*``, the size of the rows tokenized so far) for
    good. ``release`` puts the handlers back before ``fit``: Lightning keeps a SIGTERM handler
    it finds (it would raise mid-step), and ``Preemption`` takes SIGUSR1 only where none is
    set. Installed only where the signal has its default action (not SLURM's requeue)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals arrive in the main thread only
        for signum in self.SIGNALS:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                self._previous[signum] = signal.signal(signum, self._stop)

    def _stop(self, signum: int, _: Any) -> None:
        self.release()  # a second signal meets its default action
        raise SIGTERMException(signal.Signals(signum).name)

    def release(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class HandlersFound:
    """The handlers of the signals a run takes (Ctrl-C, SIGTERM, SIGUSR1) as the run began,
    put back as it ends, however it ends (``put_back``). Lightning's teardown puts back those
    it found as ``fit`` began, which are ``Preemption``'s (its ``on_fit_start`` runs first),
    so they outlived the run in a process that goes on (a sweep's next job under Hydra's
    basic launcher, a notebook): SIGUSR1 still reached the finished run's callback, and the
    next run, which takes SIGUSR1 only where no handler is set, trained through it to the
    end; after a stopped run a Ctrl-C only logged."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        main = threading.current_thread() is threading.main_thread()  # signals' only thread
        self.found = {signum: signal.getsignal(signum) for signum in self.SIGNALS} if main else {}

    def put_back(self) -> None:
        for signum, handler in self.found.items():
            if handler is not None:  # None: set outside Python, cannot be set again
                signal.signal(signum, handler)


def trained_to_the_end(fit_loop: Any) -> bool:
    """Whether Lightning's fit loop has taken its last step (``max_steps``) or epoch
    (``max_epochs``): read without its ``done``, which logs and updates the loop's progress,
    as a signal handler must not."""
    steps, epochs = fit_loop.max_steps, fit_loop.max_epochs
    if steps is not None and steps >= 0 and fit_loop.epoch_loop.global_step >= steps:
        return True
    processed = fit_loop.epoch_progress.current.processed
    return epochs is not None and epochs >= 0 and processed >= epochs


def agreement_group(trainer: L.Trainer) -> Any:
    """A ``gloo`` group of every rank, for the stop's all-reduce on a CPU tensor; None in a
    single process or where the default group is gloo already (made by every rank at once)."""
    import torch.distributed as dist

    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")
