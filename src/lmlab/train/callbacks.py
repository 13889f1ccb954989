"""Callbacks: throughput and MFU, the SDPA kernel report, the progress bar, a text sample,
attention maps, evals during training (checkpoint callbacks live in ``checkpointing.py``, the
non-finite guard in ``guard.py``)."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from lmlab.config import Compile, Family, TaskKind, check_sampling
from lmlab.data.collators import decoder_tokens
from lmlab.data.tokenizer import document_end_id, prompt_ids
from lmlab.errors import ConfigError, first_line
from lmlab.files import CHECKPOINTS
from lmlab.infer.generation import generate
from lmlab.infer.probe import attention_maps, plot_attention, probe_ids, token_labels
from lmlab.model import flops_per_token
from lmlab.model.positional import PositionalScheme
from lmlab.train.estimate import SAMPLE_INPUTS
from lmlab.train.guard import stop_if_nonfinite
from lmlab.train.hardware import largest_linears, peak_flops, raised_peak
from lmlab.train.kernel_probe import attention_kernels, cross_entropy_form, profiled_ops
from lmlab.train.loggers import ends_run, log_step
from lmlab.train.preemption import Preemption

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Tokens/s and MFU over the time training batches take, each from the end of the one
    before (the next batch's loading and the loop's own hooks are a step's cost too), where
    no validation, checkpoint save or evals came between (those are left out: ``untimed``).
    The first ``skip`` batches of each process (allocation, compilation) are left out. Logs
    every ``log_every_n_steps`` and at the last step; on CUDA it synchronises only then, so
    a quiet step's time is the host's and the logging step's takes what the device had left:
    timing each batch from its own start left the time between batches out, during which a
    GPU goes on working, and overstated tokens/s by that gap over the step time. Checkpoints
    keep the totals, so a resumed run's figures cover every process that trained it: its MFU
    divides by the device-seconds of each (a run resumed on another device count too).
    FLOPs are counted at each batch's own shape: a fine-tuning batch is padded to its longest
    example (and T5's targets to theirs), not to ``data.seq_len`` and span corruption's
    target length, which pre-training batches have (``flops_per_token`` is theirs)."""

    def __init__(self, skip: int = 2, cache_dir: str = "~/.cache/lmlab") -> None:
        self.skip, self.cache_dir = skip, cache_dir
        self.tokens = self.seconds = 0.0
        self.device_seconds = 0.0  # seconds x devices: what MFU divides by (per device)
        self.window_tokens = self.window_seconds = 0.0
        self.batches = 0
        self.flops_per_token = self.peak = None
        self.flops = self.window_flops = 0.0
        self.shape_flops: Callable[[int, int | None], float] | None = None
        self.shapes: list[tuple[int, int, int]] = []
        self.world_size = 1
        self.t_end: float | None = None  # the last timed batch's end, if nothing ran since

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seq_len = trainer.datamodule.seq_len
        # FLOPs per input token at (input length, decoder length), once per shape
        self.shape_flops = functools.cache(functools.partial(flops_per_token, pl_module.model))
        self.flops_per_token = self.shape_flops(
            seq_len, decoder_tokens(pl_module.model_cfg.family, seq_len)
        )
        rows = trainer.datamodule.cfg.batch_size * seq_len
        self.shapes = largest_linears(pl_module.model, rows)
        self.peak = peak_flops(pl_module.device, trainer.precision, self.cache_dir, self.shapes)
        self.world_size = trainer.world_size  # tokens are counted over all ranks, MFU per device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t0 = time.perf_counter() if self.t_end is None else self.t_end

    def untimed(self) -> None:
        """What runs from here to the next batch (validation, a checkpoint's save, evals) is
        no training step's time."""
        self.t_end = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.untimed()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.untimed()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        logs = pl_module.reads_now  # a logging step's last micro-batch: its update is made
        if pl_module.device.type == "cuda" and logs:
            torch.cuda.synchronize()
        self.t_end = t1 = time.perf_counter()
        if self.batches <= self.skip:
            return
        n_tokens = batch["input_ids"].numel() * trainer.world_size
        dt = t1 - self.t0
        flops = n_tokens * self.batch_flops_per_token(batch)
        self.tokens += n_tokens
        self.flops += flops
        self.window_flops += flops
        self.seconds += dt
        self.device_seconds += dt * trainer.world_size
        self.window_tokens += n_tokens
        self.window_seconds += dt
        if logs and self.window_seconds > 0:  # the last step's row: LMTask writes it
            tps = self.window_tokens / self.window_seconds
            pl_module.log("perf/tokens_per_second", tps)
            achieved = self.window_flops / self.window_seconds / self.world_size  # per device
            if self.peak and pl_module.device.type == "cpu":
                self.raise_peak(achieved, trainer.precision)
            if self.peak:
                pl_module.log("perf/mfu", achieved / self.peak)
            self.window_tokens = self.window_seconds = self.window_flops = 0.0

    def batch_flops_per_token(self, batch: dict[str, torch.Tensor]) -> float:
        """Training FLOPs per input token at this batch's shape; ``flops_per_token`` where the
        training start has not run (a state restored alone)."""
        if self.shape_flops is None:
            return self.flops_per_token
        decoder = batch.get("decoder_input_ids")
        return self.shape_flops(
            batch["input_ids"].shape[1], None if decoder is None else decoder.shape[1]
        )

    def raise_peak(self, achieved: float, precision: str) -> None:
        """A CPU peak below what the run achieves (FLOP/s per device) is raised
        (``raised_peak``), so no MFU logged or recorded is above 1."""
        if achieved > self.peak:
            self.peak = raised_peak(self.peak, achieved, precision, self.cache_dir, self.shapes)

    def state_dict(self) -> dict[str, Any]:
        # the peak and FLOPs per token too: a resume with no step left to train measures none
        keep = (
            *("tokens", "seconds", "device_seconds", "flops", "flops_per_token", "peak"),
            "world_size",
        )
        return {name: getattr(self, name) for name in keep}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)  # a training start measures the peak afresh
        if "device_seconds" not in state_dict:  # a checkpoint from before it was kept
            self.device_seconds = self.seconds * self.world_size
        if "flops" not in state_dict:  # before it was kept: every batch at the run's shape
            self.flops = self.tokens * (self.flops_per_token or 0.0)

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    @property
    def mfu(self) -> float | None:
        if not (self.tokens and self.device_seconds and self.peak):
            return None
        return self.flops / self.device_seconds / self.peak


def untimed(trainer: L.Trainer) -> None:
    """The run's ``Throughput`` leaves what runs from here to the next batch out."""
    for callback in trainer.callbacks:
        if isinstance(callback, Throughput):
            callback.untimed()


@contextlib.contextmanager
def optional(what: str) -> Iterator[None]:
    """An extra a run can do without (a sample, attention maps, the kernel report) never fails
    it: an error is logged and the run goes on to its final checkpoint and results.json."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 (any failure of an extra: log it, keep the run)
        log.warning("%s failed, the run goes on: %s: %s", what, type(err).__name__, err)


def eager() -> contextlib.AbstractContextManager:
    """Extra forwards run the modules eagerly: compiled blocks would recompile for every new
    shape and KV-cache index (a generated sample), where eager costs nothing to start."""
    return torch.compiler.set_stance("force_eager")


def stop_check(trainer: L.Trainer, pl_module: L.LightningModule) -> Callable[[], bool]:
    """What extra forwards ask between two batches: whether the run was asked to stop
    (``Preemption.stop_asked``), so that a Ctrl-C or a cluster's SIGTERM does not wait for
    minutes of evals. Never where every rank runs them (sharded weights): a rank that ended
    its forwards early would leave the others waiting in theirs."""
    stops = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, Preemption)]
    if not stops or getattr(pl_module, "_device_mesh", None) is not None:
        return lambda: False
    return stops[0].stop_asked


def finishing(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """Whether this validation ends a resumed run that had no step left to train (stopped
    after its last checkpoint): Lightning then starts and ends no training, so the extras of
    a run's start and end (the last step's evals, the sample) run around this validation."""
    return getattr(pl_module, "finishing", False) and not trainer.sanity_checking


def forward_here(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """Whether this rank runs a callback's extra forward passes: rank 0 alone, or every rank
    when the weights are sharded (under FSDP a forward is a collective all ranks join)."""
    return trainer.is_global_zero or getattr(pl_module, "_device_mesh", None) is not None


class SDPAKernelReport(L.Callback):
    """Logs once which attention kernel the training step runs (flash, memory-efficient, math,
    cuDNN) and which form of the cross-entropy: a forward and loss of the training shape,
    under the training precision's autocast."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not forward_here(trainer, pl_module):
            return
        with optional("the attention-kernel report"):
            self.report(trainer, pl_module)

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seq_len = trainer.datamodule.seq_len
        ids = torch.zeros(1, seq_len, dtype=torch.long, device=pl_module.device)
        inputs = SAMPLE_INPUTS[pl_module.model_cfg.family](ids)
        targets = inputs.get("decoder_input_ids", ids)
        classify = pl_module.task.kind == TaskKind.classify
        labels = torch.zeros_like(targets[:, :1]) if classify else targets
        with trainer.precision_plugin.forward_context(), eager():
            ops = profiled_ops(pl_module.model, inputs | {"labels": labels})
        kernels = attention_kernels(ops)
        loss_form = cross_entropy_form(ops, pl_module.compile == Compile.model)
        note = ""
        schemes = [m for m in pl_module.model.modules() if isinstance(m, PositionalScheme)]
        biased = any(scheme.has_bias for scheme in schemes)
        if "flex_attention" not in kernels and (biased or pl_module.model_cfg.attention_window):
            note = " (an additive bias or window mask rules out the flash kernel on GPU)"
        if trainer.is_global_zero:
            log.info("attention kernel: %s%s", ", ".join(kernels) or "none found", note)
            log.info("cross-entropy: %s", loss_form)
        pl_module.sdpa_kernels, pl_module.cross_entropy = kernels, loss_form


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar with ``train/loss`` and ``val/loss``, read from the device only
    on logging steps and after validation. (A value logged with ``prog_bar=True`` is converted
    to a float after every batch: one host-device synchronisation per training step.)"""

    SHOWN = ("train/loss", "val/loss")

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.shown: dict[str, float] = {}

    @property
    def total_train_batches(self) -> int | float:
        """The micro-batches of the run's one epoch (the whole plan's, resumed too). Lightning's
        bar takes the lesser of those and the optimizer steps left, which under gradient
        accumulation ran out half-way (``6/6``, then ``7/?``)."""
        return self.trainer.num_training_batches

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run resumed mid-epoch (every resume: the run is one Lightning epoch) gets no
        ``on_train_epoch_start``, where Lightning's bar takes its total: it showed ``70/?``
        under "Training" where a fresh run shows ``Epoch 0: 70/100``. Here it takes the total,
        the epoch and the batches the checkpoint trained."""
        super().on_train_start(trainer, pl_module)
        if trainer.fit_loop.restarted_mid_epoch:
            self.on_train_epoch_start(trainer, pl_module)
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            self.train_progress_bar.initial = self.train_progress_bar.n = done

    def read(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics
        self.shown.update({k: round(float(metrics[k]), 3) for k in self.SHOWN if k in metrics})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if getattr(pl_module, "reads_now", True):
            self.read(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read(trainer)
        super().on_validation_end(trainer, pl_module)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **self.shown}


class Sample(L.Callback):
    """Generates a short text from ``prompt`` when training ends and logs it; it ends at the
    model's EOS, as `generate.py`'s samples do."""

    def __init__(
        self,
        prompt: str = "def ",
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int | None = 40,
        seed: int = 0,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(
                f"callbacks.sample.max_new_tokens={max_new_tokens} must be >= 1 "
                "(callbacks.sample=null: no sample)"
            )
        check_sampling("callbacks.sample.", temperature, top_k)
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.text: str | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.model_cfg.family != Family.gpt or not forward_here(trainer, pl_module):
            return  # left-to-right sampling needs a decoder
        if stop_check(trainer, pl_module)():
            log.warning("the end-of-run sample is left out: the run was asked to stop")
            return
        with optional("the end-of-run sample"), eager():
            self.sample(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if finishing(trainer, pl_module):  # a resumed run's end: no training ended here
            self.on_train_end(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tok = trainer.datamodule.tokenizer
        ids = torch.tensor([prompt_ids(tok, self.prompt)], device=pl_module.device)
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        model = pl_module.model
        was_training = model.training
        model.eval()
        asked = stop_check(trainer, pl_module)  # a stop signal ends the sample where it is
        out = generate(
            model,
            ids,
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            generator=gen,
            eos_id=document_end_id(tok),  # a sample ends with its document, as generate.py's
            n_vocab=tok.get_vocab_size(),  # model.vocab_size may pad past the tokenizer
            stop=lambda ids_BT: torch.full_like(ids_BT[:, 0], asked(), dtype=torch.bool),
        )
        model.train(was_training)
        self.text = tok.decode(out[0].tolist())
        if trainer.is_global_zero:
            cut = " (cut short: the run was asked to stop)" if asked() else ""
            log.info("sample (prompt %r)%s:\n%s", self.prompt, cut, self.text)


class AttentionMaps(L.Callback):
    """At each validation, draws the attention maps of ``text`` into
    ``<run dir>/attention/step<N>.png`` and logs the image to W&B when W&B is on, so heads
    can be watched specialising (previous-token heads, induction heads) as training goes."""

    def __init__(self, text: str = "def add(a, b):\n    return a + b\n", dirpath: str = "") -> None:
        self.text, self.dirpath = text, Path(dirpath)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not forward_here(trainer, pl_module):
            return
        with optional("the attention maps"), eager():
            self.draw(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tokenizer = trainer.datamodule.tokenizer
        model = pl_module.model
        ids = probe_ids(model, tokenizer, self.text)
        maps = attention_maps(model, ids)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        path = plot_attention(
            maps,
            token_labels(tokenizer, ids),
            self.dirpath / f"step{step:06d}.png",
            f"attention at step {step}",
        )
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                lg.log_image("attention", [str(path)], step=step)


class EvalTasks(L.Callback):
    """Runs lm-eval ``tasks`` on the model being trained, every ``every_n_steps`` steps and at
    the last step, through ``lmlab evaluate``'s model class (``lmlab.infer.evaluate``), and
    logs ``eval/<task>/<metric>`` to every logger at the step the validation of the same
    weights carries (``log_step``: N - 1 for the weights after N steps); the last values go
    into results.json, with each task's item count (``n_samples``: ``compare`` warns where
    runs ranked by a task scored different counts). Rank 0 runs them (every rank when the
    weights are sharded); the model is put back in training mode and the random state is left
    as it was. The last step's evals run after its checkpoint is saved (``on_train_end``), so
    a kill or a second Ctrl-C during them loses no training. A stop asked while evals run (a
    Ctrl-C, a cluster's SIGTERM, ``stop_check``) ends them between two batches instead of
    minutes later; the cut is recorded like a failure, with how to run them again (``redo``).
    A failure is logged and the run goes on; ``failures`` keeps its step and error for
    results.json (``eval_failures``), which otherwise would not say why its eval metrics are
    missing (``metrics`` are the last evals' or none, never an earlier step's); they are kept
    in the checkpoints, so a resumed run's results.json lists the earlier processes' too (an
    eval of a step run again replaces the failures from that step on). The task names were
    checked before training started."""

    def __init__(
        self,
        tasks: list[str] | None = None,
        every_n_steps: int = 0,
        limit: int | None = None,
        batch_size: int = 16,
        bootstrap_iters: int = 1000,
    ) -> None:
        self.tasks = [str(t) for t in (tasks or [])]
        self.every_n_steps, self.limit = every_n_steps, limit
        self.batch_size, self.bootstrap_iters = batch_size, bootstrap_iters
        self.metrics: dict[str, float] = {}
        self.n_samples: dict[str, Any] = {}  # task -> the harness's item counts for metrics
        self.failures: list[dict[str, Any]] = []  # {"step", "tasks", "error"} (``failure``)
        self.last_step = -1

    def state_dict(self) -> dict[str, Any]:
        return {"failures": [dict(f) for f in self.failures]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._keep([dict(f) for f in state_dict.get("failures", [])])

    def carry(self, failures: Any, step: int) -> None:
        """The failures of step ``step`` from an earlier process's record (``results.json``'s
        ``eval_failures``): the evals of a checkpoint's step run after it is saved, so the
        checkpoint does not hold theirs."""
        if isinstance(failures, list):
            self._keep([dict(f) for f in failures if isinstance(f, dict) and f.get("step") == step])

    def _keep(self, failures: list[dict[str, Any]]) -> None:
        """``failures`` with those kept already, each (step, error) once, by step."""
        both = {(f.get("step"), str(f.get("error"))): f for f in [*self.failures, *failures]}
        self.failures = sorted(both.values(), key=lambda f: f.get("step") or 0)

    def due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        return step != self.last_step and self.due_at(step, trainer.max_steps)

    def due_at(self, step: int, max_steps: int) -> bool:
        """Whether the weights after ``step`` of ``max_steps`` are evaluated: every
        ``every_n_steps`` steps and at the last."""
        every = self.every_n_steps > 0 and step % self.every_n_steps == 0
        return bool(self.tasks) and step > 0 and (ends_run(step, max_steps) or every)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run evaluates its checkpoint's weights again where evals were due:
        # metrics.csv dropped their rows (a kill can come after the checkpoint and before the
        # CSV writer wrote them), and a run with no step left to train reports them.
        if self.due(trainer):
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the last step's evals wait for on_train_end, after the step's checkpoint is saved
        # (``Checkpoint.on_train_batch_end``, which Lightning calls after this callback's)
        if self.due(trainer) and not ends_run(trainer.global_step, trainer.max_steps):
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer):
            self.evaluate(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if finishing(trainer, pl_module):  # a resumed run's end: its last step's evals
            self.on_train_start(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_step = trainer.global_step
        untimed(trainer)  # no training step's time, however it ends
        # a resumed run evaluates these steps' weights again: their earlier outcome is past
        self.failures = [f for f in self.failures if f["step"] < trainer.global_step]
        # results.json's eval metrics are these weights' or none: an earlier step's, kept
        # where these evals fail or are cut, would read as the final model's
        self.metrics, self.n_samples = {}, {}
        stop_if_nonfinite(trainer)  # not inside ``optional``: a non-finite update ends the run
        if not forward_here(trainer, pl_module):
            return
        from lmlab.infer import harness
        from lmlab.infer.evaluate import EvalStopped

        stop = stop_check(trainer, pl_module)
        with optional(f"the evals at step {trainer.global_step}"), eager():
            try:
                if stop():
                    raise EvalStopped("the run was asked to stop")
                results = self.run(trainer, pl_module, stop)
                # lm-eval returns its results on rank 0 only (every rank evaluates sharded
                # weights)
                metrics = harness.flat_metrics(results) if results is not None else {}
                for lg in trainer.loggers:  # loggers write on rank 0 only
                    lg.log_metrics(metrics, step=log_step(trainer.global_step))
            except EvalStopped:
                step = trainer.global_step
                self.failures.append(self.failure(step, "cut short: the run was stopping"))
                log.warning("the evals at step %d were cut short: %s", step, self.redo(trainer))
                return
            except Exception as err:
                error = f"{type(err).__name__}: {first_line(err, 300)}"
                self.failures.append(self.failure(trainer.global_step, error))
                raise  # logged by optional(); the run goes on
            self.metrics = metrics
            self.n_samples = dict((results or {}).get("n-samples", {}))
            if trainer.is_global_zero and metrics:
                shown = {k: round(v, 4) for k, v in metrics.items() if "_stderr" not in k}
                log.info("evals at step %d: %s", trainer.global_step, shown)

    def failure(self, step: int, error: str) -> dict[str, Any]:
        """results.json's ``eval_failures`` entry of the evals at ``step``: the tasks they were
        scoring (one harness call scores them all, so an error is every task's) and the
        error."""
        return {"step": step, "tasks": list(self.tasks), "error": error}

    def redo(self, trainer: L.Trainer) -> str:
        """How the evals a stop cut short are run again: a resume does, where training goes on;
        the last step's, ``lmlab evaluate`` on its checkpoint."""
        if not ends_run(trainer.global_step, trainer.max_steps):
            return "the run is stopping (a resume evaluates them again)"
        saved = getattr(getattr(trainer, "checkpoint_callback", None), "last_model_path", "")
        ckpt = saved or Path(trainer.default_root_dir) / CHECKPOINTS / "last.ckpt"
        limit = f" limit={self.limit}" if self.limit else ""
        return (
            f"training has ended; python src/evaluate.py ckpt={ckpt} "
            f"tasks={','.join(self.tasks)}{limit} scores its last checkpoint"
        )

    def run(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any] | None:
        """The harness's results for the model as it is now; None on a rank that lm-eval
        gives none. ``stop`` is asked between two batches (``EvalStopped``)."""
        from lmlab.infer import harness
        from lmlab.infer.evaluate import LmlabLM
        from lmlab.infer.pretrained import Pretrained

        model = pl_module.model
        pre = Pretrained(
            model,
            trainer.datamodule.tokenizer,
            pl_module.model_cfg,
            Path(trainer.default_root_dir),
            trainer.global_step,
        )
        was_training = model.training
        model.eval()
        try:
            with trainer.precision_plugin.forward_context():
                lm = LmlabLM(pre, self.batch_size, should_stop=stop)
                results = harness.run_tasks(lm, self.tasks, self.limit, None, self.bootstrap_iters)
        finally:
            model.train(was_training)
        return results
