"""The LightningModule: one loss path for every family, metrics, the schedule; the optimizer
is built by ``lmlab.train.optimizer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.utilities import GradClipAlgorithmType

from lmlab.config import (
    PRETRAINING,
    Compile,
    Family,
    ModelConfig,
    TaskSpec,
    compile_mode,
)
from lmlab.infer.declared import Declared
from lmlab.model import build_task_model
from lmlab.model.loss import IGNORE, logits_loss
from lmlab.model.moe import moe_layers
from lmlab.train.hardware import compute_dtype
from lmlab.train.loggers import ends_run
from lmlab.train.metrics import METRICS
from lmlab.train.optimizer import build_optimizer, decay_groups
from lmlab.train.parallel import layout
from lmlab.train.task_state import TRAIN_LOSSES, RunState, lowest

Guard = Callable[[L.Trainer, torch.optim.Optimizer, torch.Tensor], None]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from an FSDP2 DTensor (a sharded parameter's norm), as is otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class LMTask(RunState, L.LightningModule):
    """Wraps any family and task. The collator decides the objective; it is always the
    cross-entropy of the model's output layer against the batch's labels, skipping ``IGNORE``
    (``lmlab.model.loss``): over tokens for pre-training and seq2seq, over one position per
    row for classification (``ClassificationHead``). ``task``
    picks the model's head and the validation metrics (``lmlab.train.metrics``)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler],
        compile: bool | str = False,
        bytes_per_token: float | None = None,
        task: TaskSpec = PRETRAINING,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        self.model_cfg, self.task = model_cfg, task
        self.model = build_task_model(model_cfg, task)
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        # the optimizer partial's weight_decay applies to the decayed group only
        self.weight_decay = getattr(optimizer, "keywords", {}).get("weight_decay", 0.0)
        self.compile = compile_mode(compile)
        self.cuda_graphs = cuda_graphs  # compile=model's step as CUDA graphs (checked before)
        self.moe_layers = moe_layers(self.model)  # {block name: MoE feed-forward}
        self.train_loss = self.objective  # compile=model replaces it by its compiled graph
        self.laid_out = False
        self.params_per_rank: int | None = None  # this rank's share (FSDP: its shards)
        self.best_val_loss: float | None = None
        self.last_val_step = -1
        # (global step, its TRAIN_LOSSES: on the device, or restored from a checkpoint) of the
        # last step that logged them: a checkpoint of that step keeps them (``run_state``)
        self.logged_loss: tuple[int, torch.Tensor | list[float]] | None = None
        self.sdpa_kernels: list[str] | None = None  # SDPAKernelReport sets both
        self.cross_entropy: str | None = None
        # True for the validation that ends a resumed run with no step left to train
        # (``lmlab.train.run``): the extras of a run's end run around it
        self.finishing = False
        # the final validation scores other rows than training's (``final_val_batches``): its
        # loss is no candidate for ``best_val_loss``, a minimum over one set of rows
        self.rescoring = False
        self.val_tokens: int | None = None  # target tokens the last validation scored
        # called with (trainer, optimizer, gradient norm) every step, before the optimizer
        # step (set by lmlab.train.guard.NonFiniteGuard); None: no check
        self.nonfinite_guard: Guard | None = None
        # this step's micro-batches: (lm, aux, z) losses and each MoE layer's load
        self.step_losses: tuple[int, list[torch.Tensor]] = (-1, [])
        # whether micro-batches count by their targets (``token_weighted``): set when training
        # starts, from the collator (``equal_targets``)
        self.weighted = False
        self.step_targets: tuple[int, torch.Tensor | None] = (-1, None)  # this rank's, on device
        self.target_scale = 1.0  # R of ``token_weighted``: set when training starts
        self.step_loads: list[torch.Tensor] = []
        self.logging_now = True  # whether this step's train/* values reach a logger
        self.reads_now = True  # ... and this micro-batch makes its update (the last one)
        # the run plan's global batch and data (its corpus's counts and digest, a fine-tuning
        # run's examples: ``RunPlan.resume_record``, set by lmlab.train.run), kept in
        # checkpoints: a resume whose plan.json was lost still checks its data against them
        self.plan_record: dict[str, Any] = {"batch": None}
        # what the converted model it started from declares (init_from): its checkpoints keep it
        self.declared = Declared()
        # Bits per byte converts a next-token loss over the whole stream; an MLM or span loss
        # covers only the corrupted tokens, so it is not logged for BERT and T5.
        self.bytes_per_token = bytes_per_token if model_cfg.family == Family.gpt else None
        self.val_loss = torchmetrics.MeanMetric()
        self.val_metrics = METRICS[task.kind](model_cfg, task)

    def on_train_start(self) -> None:
        # Micro-batches of unequal target counts (BERT's masked LM, seq2seq fine-tuning) count
        # by their targets, not as one mean each; elsewhere the mean of means is the step's. A
        # MoE keeps the mean of means: its router losses are means of each micro-batch.
        trainer, data = self.trainer, self.trainer.datamodule
        collate = getattr(data, "collate", None)
        self.weighted = not self.moe_layers and not getattr(collate, "equal_targets", True)
        if self.weighted:  # R, a constant of the run: rows x positions of every micro-batch
            rows = trainer.accumulate_grad_batches * trainer.world_size * data.cfg.batch_size
            self.target_scale = float(rows * data.seq_len)
        self.restore_lr()

    def on_validation_start(self) -> None:
        """The validation loss is summed in float32, or float64 in a float64 run
        (``trainer.precision=64-true``), whatever the weights' dtype. torchmetrics keeps a
        metric's state through the module's ``.double()`` (a float64 run summed in float32),
        but Lightning's ``bf16-true`` and ``16-true`` convert the module with ``.to(dtype)``,
        which takes the state along: the weighted sum of a validation (loss x targets, about
        8 x 1,020 a batch at gpt_tiny) was rounded to bf16's 8 bits, or overflowed float16's
        65,504 after 8 batches. Here, after every conversion (``trainer.validate`` converts
        again), before the first batch."""
        wide = torch.promote_types(compute_dtype(str(self.trainer.precision)), torch.float32)
        self.val_loss.set_dtype(wide)

    def configure_model(self) -> None:
        """Activation checkpointing, compilation and (under ``FSDPStrategy``) FSDP2 sharding,
        per block; Lightning calls this before every fit/validate, it applies them once."""
        if self.laid_out:
            return
        self.laid_out = True
        mesh = self._device_mesh["data_parallel"] if self._device_mesh is not None else None
        layout(
            self.model,
            activation_checkpointing=self.model_cfg.activation_checkpointing,
            compile=self.compile == Compile.blocks,
            mesh=mesh,
            precision=str(self.trainer.precision) if self._trainer else "32-true",
        )
        if self.compile == Compile.model:
            mode = "reduce-overhead" if self.cuda_graphs else None  # None: torch's default
            self.train_loss = torch.compile(self.objective, mode=mode)
        # counted now: after a forward FSDP2 may leave the root and last block gathered
        self.params_per_rank = sum(
            (p.to_local() if hasattr(p, "to_local") else p).numel() for p in self.parameters()
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k != "labels"})

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The one loss of every family from the logits, and the logits (validation's metrics
        use them)."""
        logits_BTV = self(batch)
        return logits_loss(logits_BTV, batch["labels"]), logits_BTV

    def objective(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """What training minimises, and its parts (detached) for the logs. Dense: the LM loss,
        parts (lm,), which the model computes from its labels without handing the logits out
        (``model.cross_entropy``: chunked or full). Mixture of Experts: lm + aux_loss_coef *
        aux + z_loss_coef * z, where aux (load balancing, Switch) and z (router z-loss, ST-MoE)
        are each the mean over the MoE layers of what their forward recorded; parts (lm, aux,
        z)."""
        lm = self.model(**batch)
        if not self.moe_layers:
            return lm, lm.detach()[None]
        layers, moe = self.moe_layers.values(), self.model_cfg.moe
        aux = torch.stack([m.aux_loss for m in layers]).mean()
        z = torch.stack([m.z_loss for m in layers]).mean()
        total = lm + moe.aux_loss_coef * aux + moe.z_loss_coef * z
        return total, torch.stack([lm, aux, z]).detach()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.cuda_graphs:  # a new step: the graphs' outputs of the last one may be reused
            torch.compiler.cudagraph_mark_step_begin()
        loss, parts = self.train_loss(batch)
        if self.weighted:
            loss, parts = self.token_weighted(batch, loss)
        self.logging_now = self.metrics_due()
        # callbacks read device values (guard flag, progress bar, throughput) once a logging
        # step's update is made: on its last micro-batch, not on each it accumulates
        self.reads_now = self.logging_now and not self.trainer.fit_loop._should_accumulate()
        if self.logging_now:
            self.log_step_loss(parts)
        if self.reads_now:
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def token_weighted(
        self, batch: dict[str, torch.Tensor], mean: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss this micro-batch returns where micro-batches hold unequal numbers of
        targets, and its parts (the loss summed over its n targets, and n). Lightning divides
        the returned loss by the accumulation A and DDP (or FSDP) averages the W ranks'
        gradients, so returning sum x A x W / R, for the run's constant R, leaves the
        gradients of every target's loss over R; ``configure_gradient_clipping`` then scales
        them by R / N, N the step's targets on every rank (summed on the device: no host
        read). Each target token then weighs alike, however the global batch is split into
        micro-batches and ranks (tested), as one large batch weighs them."""
        n_targets = (batch["labels"] != IGNORE).sum()
        step, counted = self.step_targets
        if step != self.trainer.global_step or counted is None:
            counted = torch.zeros_like(n_targets)
        self.step_targets = (self.trainer.global_step, counted + n_targets)
        total = mean * n_targets
        ranks = self.trainer.accumulate_grad_batches * self.trainer.world_size
        parts = torch.stack([total.detach(), n_targets.to(total.dtype)])
        return total * (ranks / self.target_scale), parts

    def rescale_to_targets(self, grads: list[torch.Tensor]) -> None:
        """``token_weighted``'s gradients, over R until here, made over the step's N targets
        (all ranks'): one all-reduce and one multiply on the device."""
        step, counted = self.step_targets
        if counted is None or step != self.trainer.global_step:
            return
        wide = torch.float64 if grads and grads[0].dtype == torch.float64 else torch.float32
        targets = self.trainer.strategy.reduce(counted.to(wide), reduce_op="sum")
        scale = self.target_scale / targets.clamp(min=1.0)
        if grads and hasattr(grads[0], "to_local"):  # FSDP2's DTensor gradients
            from torch.distributed.tensor.experimental import implicit_replication

            with implicit_replication():
                torch._foreach_mul_(grads, scale)
        else:
            torch._foreach_mul_(grads, scale)

    def log_step_loss(self, parts: torch.Tensor) -> None:
        """``train/loss`` = the LM loss of this optimizer step: the mean over its accumulated
        micro-batches and over the ranks (one all-reduce, on logging steps only), or, where
        they hold unequal numbers of targets (``token_weighted``), the mean over all of the
        step's targets. The same global batch therefore logs the same loss on 1 or N devices.
        A MoE logs its router losses beside it, ``train/aux_loss`` and ``train/z_loss``
        (unweighted), and each MoE layer's load (``log_expert_load``)."""
        step = self.trainer.global_step
        if self.step_losses[0] != step:
            self.step_losses, self.step_loads = (step, []), []
        self.step_losses[1].append(parts)
        if self.moe_layers:
            loads = [torch.cat([m.load_E, m.dropped[None]]) for m in self.moe_layers.values()]
            self.step_loads.append(torch.stack(loads))
        if self.reads_now:  # the step's last micro-batch (an epoch's last step may be short)
            if self.weighted:  # (summed loss, targets): the step's mean over its targets
                sums = torch.stack(self.step_losses[1]).sum(0)
                sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # over the ranks
                mean = (sums[0] / sums[1].clamp(min=1.0))[None]
            else:
                mean = torch.stack(self.step_losses[1]).mean(0)
                mean = self.trainer.strategy.reduce(mean, reduce_op="mean")  # over the ranks
            self.logged_loss = (step + 1, mean)  # the step's count once its update is made
            # not prog_bar: Lightning converts progress-bar values to floats after every batch,
            # a host-device sync per step; lmlab's ProgressBar shows it on logging steps
            for name, value in zip(TRAIN_LOSSES, mean, strict=False):  # dense: train/loss only
                self.log(name, value)
            if self.moe_layers:
                self.log_expert_load(torch.stack(self.step_loads).mean(0))

    def log_expert_load(self, loads_LE1: torch.Tensor) -> None:
        """Per MoE layer, the fraction of the step's token-to-expert assignments each expert
        got (its max and min: 1/E each when balanced) and, with a capacity factor, the
        fraction dropped: ``moe/<block>/load_max``, ``load_min``, ``dropped``. Over the whole
        global batch: micro-batches averaged here, ranks in one all-reduce."""
        loads_LE1 = self.trainer.strategy.reduce(loads_LE1, reduce_op="mean")
        capacity = self.model_cfg.moe.capacity_factor is not None
        for name, load_E1 in zip(self.moe_layers, loads_LE1, strict=True):
            self.log(f"moe/{name}/load_max", load_E1[:-1].max())
            self.log(f"moe/{name}/load_min", load_E1[:-1].min())
            if capacity:
                self.log(f"moe/{name}/dropped", load_E1[-1])

    def metrics_due(self) -> bool:
        """Whether this step's ``train/*`` values reach a logger: Lightning writes them every
        ``log_every_n_steps`` steps (the check its own LearningRateMonitor makes), and lmlab
        logs the last step too (results.json's ``train_loss``). ``self.log`` on the other steps
        would cost time for nothing (BENCHMARKS.md, case ``profile``)."""
        trainer = self.trainer
        return trainer._logger_connector.should_update_logs or ends_run(
            trainer.global_step + 1, trainer.max_steps
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The last step's ``train/*`` values are written though it is no logging step:
        Lightning writes a step's logged values only every ``log_every_n_steps`` steps (a run
        of 3 steps at 10 wrote none). Its own write, after this hook, is left out then."""
        trainer = self.trainer
        connector = trainer._logger_connector
        stepped = not trainer.fit_loop._should_accumulate()
        if (
            ends_run(trainer.global_step, trainer.max_steps)
            and stepped
            and trainer.log_every_n_steps
            and not connector.should_update_logs
        ):
            connector.log_metrics(connector.metrics["log"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits_BTV = self.loss(batch)
        n_targets = (batch["labels"] != IGNORE).sum()
        self.val_loss.update(loss, weight=n_targets)
        self.val_metrics.update(batch, logits_BTV, self.model)

    def on_validation_epoch_end(self) -> None:
        # the metrics are already synced across ranks (torchmetrics); sync_dist averages
        # identical values, and tells Lightning so
        loss = self.val_loss.compute()
        self.log("val/loss", loss, sync_dist=True)
        metrics = {**self.val_metrics.of_loss(loss), **self.val_metrics.compute()}
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True)
        if self.bytes_per_token:
            # nats per token -> bits per byte: comparable across tokenizers and objectives
            bpb = loss / torch.log(torch.tensor(2.0)) / self.bytes_per_token
            self.log("val/bits_per_byte", bpb, sync_dist=True)
        # every rank scores the same rows (LMDataModule.val_dataloader): this rank's count
        self.val_tokens = int(self.val_loss.weight)  # once per validation, as the loss below
        self.val_loss.reset()
        self.val_metrics.reset()
        if self.trainer.sanity_checking or self.rescoring:  # no validation of training's rows
            return
        value = float(loss)  # once per validation, not per step
        self.best_val_loss = lowest(self.best_val_loss, value)
        self.last_val_step = self.trainer.global_step

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as ``trainer.gradient_clip_algorithm`` says (Lightning's: ``norm``, the
        default, scales the gradients to a global norm of at most ``gradient_clip_val``;
        ``value`` clamps each gradient element to [-val, val]), log the pre-clip global norm
        and hand a non-finite one to the guard: one pass over the gradients for the norm.

        Under a GradScaler (``16-mixed`` on CUDA) Lightning unscales the gradients before this,
        except for an optimizer that unscales inside its own step (fused AdamW): this unscales
        those, so clipping and the logged norm see the true gradients. An overflow step is
        then the scaler's to handle (it skips the update and lowers the scale), not the
        guard's."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)
        by_value = gradient_clip_algorithm == GradClipAlgorithmType.VALUE
        max_norm = gradient_clip_val if gradient_clip_val and not by_value else float("inf")
        # the optimizer's own list: walking the module tree (``self.parameters()``) took
        # 0.2 ms of host time a step at gpt_small's 172 tensors, this 2 us (2-core CPU)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.weighted:
            self.rescale_to_targets([p.grad for p in params if p.grad is not None])
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if by_value and gradient_clip_val:  # after the norm: the logged norm is the pre-clip one
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        if self.metrics_due():
            self.log("train/grad_norm", norm)
        if self.nonfinite_guard is not None and scaler is None:
            self.nonfinite_guard(self.trainer, optimizer, norm)

    def configure_optimizers(self) -> dict:
        groups = decay_groups(self.model, self.weight_decay)
        optimizer = build_optimizer(self.optimizer_fn, groups, self.device)
        scheduler = self.scheduler_fn(optimizer, total_steps=self.trainer.max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
