"""Evals during training, every ``every_n_steps`` and at the end."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

from lmlab.config import MAX_GEN_TOKS
from lmlab.config.prompts import CHAT_SETTINGS
from lmlab.errors import first_line
from lmlab.files import CHECKPOINTS
from lmlab.infer import task_folders
from lmlab.train.callbacks.extras import eager, finishing, forward_here, optional, stop_check
from lmlab.train.callbacks.throughput import untimed
from lmlab.train.guard import stop_if_nonfinite
from lmlab.train.loggers import ends_run, log_step

log = logging.getLogger(__name__)


class EvalTasks(L.Callback):
    """Runs lm-eval ``tasks`` on the model being trained, every ``every_n_steps`` steps and at
    the last step, through ``lmlab evaluate``'s model class (``lmlab.infer.evaluate``), and
    logs ``eval/<task>/<metric>`` to every logger at the step the validation of the same
    weights carries (``log_step``: N - 1 for the weights after N steps); the last values go
    into results.json, with each task's item count and shots (``n_samples``, ``n_shot``:
    ``compare`` warns where runs ranked by a task scored different counts or shots). Rank 0
    runs them (every rank when the weights are sharded); the model is put back in training
    mode and the random state is left as it was. The last step's evals run after its
    checkpoint is saved (``on_train_end``), so a kill or a second Ctrl-C during them loses no
    training. A stop asked while evals run (a Ctrl-C, a cluster's SIGTERM, ``stop_check``)
    ends them between two batches instead of minutes later; the cut is recorded like a
    failure, with how to run them again (``redo``).
    A failure is logged and the run goes on; ``failures`` keeps its step and error for
    results.json (``eval_failures``), which otherwise would not say why its eval metrics are
    missing (``metrics`` are the last evals' or none, never an earlier step's); they are kept
    in the checkpoints, so a resumed run's results.json lists the earlier processes' too (an
    eval of a step run again replaces the failures from that step on). The task names were
    checked before training started."""

    def __init__(
        self,
        tasks: list[str] | None = None,
        include_path: str | None = None,
        every_n_steps: int = 0,
        limit: int | None = None,
        batch_size: int = 16,
        bootstrap_iters: int = 1000,
        max_gen_toks: int = MAX_GEN_TOKS,
        apply_chat_template: bool = False,
        chat_template: str | None = None,
        fewshot_as_multiturn: bool = True,
        system_instruction: str | None = None,
    ) -> None:
        self.tasks = [str(t) for t in (tasks or [])]
        # the chat format (``harness.ChatFormat``'s arguments; checked before training that
        # the model declares the template), None for plain prompts
        self.chat = (
            (chat_template or True, fewshot_as_multiturn, system_instruction)
            if apply_chat_template
            else None
        )
        # the user's task folder as the command's working directory names it (checked with
        # the config, before training: ``preflight.check_evals``)
        self.folders = task_folders.folders_of(include_path)
        self.every_n_steps, self.limit = every_n_steps, limit
        self.batch_size, self.bootstrap_iters = batch_size, bootstrap_iters
        self.max_gen_toks = max_gen_toks  # a generating task's answers, where it sets none
        self.metrics: dict[str, float] = {}
        self.n_samples: dict[str, Any] = {}  # task -> the harness's item counts for metrics
        self.n_shot: dict[str, Any] = {}  # task -> the few-shot examples per item it used
        # how the last evals formatted their prompts (the harness's ``CHAT_SETTINGS``, as an
        # eval record holds them): results.json's ``eval_prompts``, which ``compare`` reads
        self.prompts: dict[str, Any] = {}
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

    def check_answers(self, tokenizer: Any, model_cfg: Any) -> None:
        """Every task's answers fit the model whole (``harness.check_answers``): checked once
        the run's tokenizer exists and before its first step, where each eval would fail."""
        if self.tasks:
            from lmlab.infer import harness

            harness.check_answers(
                self.tasks, self.limit, tokenizer, model_cfg, "eval.tasks", self.folders
            )

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
        self.metrics, self.n_samples, self.n_shot = {}, {}, {}
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
            self.n_shot = dict((results or {}).get("n-shot", {}))
            config = (results or {}).get("config") or {}
            self.prompts = {k: config.get(k) for k in CHAT_SETTINGS}  # as a record holds them
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
        words = [f"ckpt={ckpt}", f"tasks={','.join(self.tasks)}"]
        words += [f"include_path={folder}" for folder in self.folders]
        words += [f"limit={self.limit}"] if self.limit else []
        if self.max_gen_toks != MAX_GEN_TOKS:
            words.append(f"max_gen_toks={self.max_gen_toks}")
        if self.chat:
            template, multiturn, system = self.chat
            words.append("apply_chat_template=true")
            words += [f"chat_template={template}"] if template is not True else []
            words += [] if multiturn else ["fewshot_as_multiturn=false"]
            words += [f"system_instruction={system}"] if system else []
        command = " ".join(shlex.quote(word) for word in words)  # as a shell reads it
        return f"training has ended; python src/evaluate.py {command} scores its last checkpoint"

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
            declared=pl_module.declared,
        )
        was_training = model.training
        model.eval()
        try:
            with trainer.precision_plugin.forward_context():
                lm = LmlabLM(
                    pre,
                    self.batch_size,
                    max_gen_toks=self.max_gen_toks,
                    should_stop=stop,
                    length_option="eval.max_gen_toks",
                )
                chat = harness.ChatFormat(*self.chat) if self.chat else None
                results = harness.run_tasks(
                    lm,
                    self.tasks,
                    self.limit,
                    None,
                    self.bootstrap_iters,
                    folders=self.folders,
                    chat=chat,
                )
        finally:
            model.train(was_training)
        return results
