"""The training step's hot path: no host-device synchronisation in a step that logs nothing,
the optimizer's implementation by device, TF32 on CUDA, and the guard deciding on the device."""

from __future__ import annotations

import collections
import csv
import functools
import json
import math
import os
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch._dynamo.utils import counters

from finished import finished_fsdp_run
from lmlab.config import IGNORE, Activation, Compile, Family, ModelConfig, MoEConfig, compile_mode
from lmlab.data.collators import COLLATORS
from lmlab.data.datamodule import loader_settings
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.guard import NonFiniteError
from lmlab.train.optimizer import build_optimizer, decay_groups, optimizer_from
from lmlab.train.run import train
from lmlab.train.task import LMTask
from smoke import SMOKE
from syncs import HOST_READS, SyncingOps

# Code whose tensors live on the host on every device, so its reads wait for nothing: the data
# loader and lmlab's sampler (CPU index tensors), and torch.optim's step counters (kept on the
# CPU unless capturable; the fused CUDA AdamW reads none).
HOST_SIDE = ("torch/utils/data/", "lmlab/data/", "torch/optim/")


def on_host_side(stack: traceback.StackSummary) -> bool:
    return any(part in frame.filename for frame in stack for part in HOST_SIDE)


class CountHostReads(L.Callback):
    """Counts host reads per optimizer step, from one step's start to the next one's, and per
    micro-batch (counted from 0 over the run) with the values logged there: the Tensor
    methods of ``HOST_READS`` and, from the first step to validation or the end, the aten ops
    that would wait for a GPU (``SyncingOps``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.per_step: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.per_batch: dict[int, collections.Counter] = collections.defaultdict(
            collections.Counter
        )
        self.step: int | None = None
        self.batch = -1
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self.counting(name, original))
        log = LMTask.log

        def logging(task: LMTask, name: str, *args, **kwargs) -> None:
            if self.step is not None:
                self.per_batch[self.batch][f"log {name}"] += 1
            log(task, name, *args, **kwargs)

        monkeypatch.setattr(LMTask, "log", logging)
        self.ops: SyncingOps | None = None

    def count(self, name: str) -> None:
        # the innermost frames: the whole stack of a step runs inside torch.optim (the closure)
        if self.step is not None and not on_host_side(traceback.extract_stack(limit=13)):
            self.per_step[self.step][name] += 1
            self.per_batch[self.batch][name] += 1

    def counting(self, name: str, original):
        def read(tensor: torch.Tensor, *args, **kwargs):
            self.count(name)
            return original(tensor, *args, **kwargs)

        return read

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = trainer.global_step
        self.batch += 1
        if self.ops is None:
            self.ops = SyncingOps(self.count)
            self.ops.__enter__()

    def stop(self) -> None:
        self.step = None
        if self.ops is not None:
            self.ops.__exit__(None, None, None)
            self.ops = None

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.stop()  # validation reads its results: not a training step

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.stop()


def test_the_syncing_op_counter_sees_what_a_cuda_device_waits_for() -> None:
    """Boolean indexing (read and write), ``nonzero``, a read of a value, ``repeat_interleave``
    without ``output_size``, ``unique`` and ``equal``; not integer indexing, ``where``, a
    reduction, a sort or ``repeat_interleave`` given its size."""
    seen: list[str] = []
    x = torch.arange(6.0)
    with SyncingOps(seen.append):
        x[x > 2]
        x.nonzero()
        x[torch.tensor([0, 1])]
        x[torch.tensor([0, 1])] = 1.0
        x[x > 4] = 0.0
        bool(x[0] > 1)
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.repeat_interleave(x, torch.ones(6, dtype=torch.long), output_size=6)
        x.unique()
        torch.equal(x, x)
        torch.where(x > 1, 3, x), x.max(), x.sort(), x.topk(2)
    assert seen == [
        "aten.index",
        "aten.nonzero",
        "aten.index_put_",
        "aten._local_scalar_dense",
        "aten.repeat_interleave",
        "aten._unique2",
        "aten.equal",
    ]


@pytest.mark.parametrize(
    ("family", "guard"), [("gpt", "stop"), ("gpt", "off"), ("bert", "stop"), ("t5", "stop")]
)
def test_a_step_that_logs_nothing_reads_nothing_on_the_host(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, family: str, guard: str
) -> None:
    """Every family: BERT's and T5's steps differ from GPT's in their collators (host side),
    attention masks and T5's relative bias."""
    cfg = compose_train(
        [
            *SMOKE,
            f"model={family}_tiny",
            "trainer.max_steps=8",
            "trainer.log_every_n_steps=5",
            "trainer.val_check_interval=100",
            "checkpoint.every_n_steps=100",
            "callbacks.sample=null",
            "logger=csv",
            f"guard.mode={guard}",
        ],
        tmp_path,
        cache_dir,
    )
    counter = CountHostReads(monkeypatch)
    monkeypatch.setattr(LMTask, "configure_callbacks", lambda self: [counter])
    train(cfg)
    # not a logging step (4), nor the first two, nor the last (7): 2, 3, 5 and 6, before and
    # after a logging step
    quiet = [s for s in range(2, 7) if (s + 1) % 5]
    assert quiet, "no quiet steps to check"
    assert {s: dict(counter.per_step[s]) for s in quiet} == {s: {} for s in quiet}


def test_accumulated_micro_batches_read_and_log_only_where_a_logging_step_ends(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 2 micro-batches a step, the guard and the progress bar read the device on both
    micro-batches of a logging step, and the throughput callback logged (and synchronised
    CUDA) on the first micro-batch after one too, its window cut there: every micro-batch but
    the one that makes a logging step's update reads nothing and logs nothing."""
    cfg = compose_train(
        [
            *SMOKE,
            "trainer.max_steps=8",
            "trainer.accumulate_grad_batches=2",
            "trainer.log_every_n_steps=3",
            "trainer.val_check_interval=100",
            "checkpoint.every_n_steps=100",
            "callbacks.sample=null",
            "logger=csv",
        ],
        tmp_path,
        cache_dir,
    )
    counter = CountHostReads(monkeypatch)
    monkeypatch.setattr(LMTask, "configure_callbacks", lambda self: [counter])
    train(cfg)
    assert counter.batch == 15  # 8 steps of 2 micro-batches
    ends = {2 * step - 1 for step in (3, 6, 8)}  # the last micro-batch of steps 3, 6 and 8
    quiet = [b for b in range(4, 16) if b not in ends]  # after Throughput's first two batches
    assert {b: dict(counter.per_batch[b]) for b in quiet} == {b: {} for b in quiet}
    for b in ends:
        assert counter.per_batch[b]["log perf/tokens_per_second"] == 1, b
        assert counter.per_batch[b]["log train/loss"] == 1, b


@pytest.mark.parametrize("family", [Family.gpt, Family.t5])
@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_the_moe_objective_reads_nothing_on_the_host(
    monkeypatch: pytest.MonkeyPatch,
    host_reads: list[str],
    capacity_factor: float | None,
    family: Family,
) -> None:
    """What a Mixture of Experts adds to every step (routing, dispatch in float32, the router
    losses joining the LM loss, the recorded load) reads no tensor on the host: the loads are
    read on logging steps only (``LMTask.log_expert_load``). T5's batch is padded, as
    fine-tuning's are: its MoE layers count real tokens only, on the device too."""
    model_cfg = ModelConfig(
        family=family,
        d_model=32,
        n_layers=2,
        n_heads=4,
        vocab_size=64,
        activation=Activation.swiglu,
        moe=MoEConfig(num_experts=4, top_k=2, capacity_factor=capacity_factor),
    )
    task = LMTask(model_cfg, adamw(), functools.partial(torch.optim.lr_scheduler.LambdaLR))
    ids = torch.randint(0, 64, (2, 17))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    if family == Family.t5:  # rows of 16 and 11 tokens, targets of 6 and 4
        targets = torch.randint(0, 64, (2, 6))
        batch = {
            "input_ids": ids[:, :-1],
            "attention_mask": torch.arange(16) < torch.tensor([16, 11])[:, None],
            "decoder_input_ids": targets,
            "labels": targets.masked_fill(torch.arange(6) >= torch.tensor([6, 4])[:, None], IGNORE),
        }
    host_reads.clear()  # from here on
    loss, parts = task.objective(batch)
    loss.backward()
    monkeypatch.undo()
    assert host_reads == [] and parts.shape == (3,)
    assert loss.item() == pytest.approx(
        parts[0].item() + 0.01 * parts[1].item() + 0.001 * parts[2].item(), rel=1e-6
    )


def test_the_guard_reads_late_but_never_saves_a_non_finite_checkpoint(
    tmp_path: Path, cache_dir: Path
) -> None:
    """NaN at step 4 with logs every 10 steps: the device flag is read at the step-6 save,
    which is refused; the run stops naming step 4, and the newest checkpoint (step 3's) is
    finite."""
    cfg = compose_train(
        [
            *SMOKE,
            "trainer.max_steps=12",
            "trainer.log_every_n_steps=10",
            "trainer.val_check_interval=100",
            "checkpoint.every_n_steps=3",
            "callbacks.sample=null",
            "logger=csv",
            "+callbacks.nan._target_=test_resume.InjectNaN",
            "+callbacks.nan.step=4",
        ],
        tmp_path,
        cache_dir,
    )
    with pytest.raises(NonFiniteError, match=r"at step 4 .*last good checkpoint: .*last.ckpt"):
        train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (tmp_path / "checkpoints" / "step000006.ckpt").exists()


@pytest.mark.parametrize(
    "due",
    [
        ["trainer.val_check_interval=2"],
        ["trainer.val_check_interval=null", "eval.tasks=[stdlib_nextline]", "eval.every_n_steps=2"],
    ],
    ids=["validation", "evals"],
)
def test_the_guard_reads_before_a_validation_or_evals_score_non_finite_weights(
    tmp_path: Path, cache_dir: Path, due: list[str]
) -> None:
    """NaN at step 0 with logs every 10 steps: the validation (or the evals) due after step 2
    read the device anyway, so the guard reads its flag first and the run stops there, naming
    step 0. They scored the NaN weights instead (``val/loss`` NaN, ``eval/*/acc`` 0.0 in the
    logs, as if a model had been measured) and the run stopped only at its last step."""
    cfg = compose_train(
        [
            *SMOKE,
            *due,
            "trainer.max_steps=6",
            "trainer.log_every_n_steps=10",
            "eval.limit=4",
            "callbacks.sample=null",
            "logger=csv",
            "+callbacks.nan._target_=test_resume.InjectNaN",
            "+callbacks.nan.step=0",
        ],
        tmp_path,
        cache_dir,
    )
    with pytest.raises(NonFiniteError, match=r"at step 0 "):
        train(cfg)
    metrics = tmp_path / "csv" / "metrics.csv"
    logged = metrics.read_text().splitlines()[0].split(",") if metrics.exists() else []
    assert not any(k.startswith(("val/", "eval/")) for k in logged), logged


def test_with_the_guard_off_a_nan_validation_is_no_best(tmp_path: Path, cache_dir: Path) -> None:
    """``guard.mode=off`` trains on through a non-finite update: the validations after it
    score NaN, and ``best_val_loss`` stays the best finite one (``min`` with a NaN first gave
    the NaN)."""
    cfg = compose_train(
        [
            *SMOKE,
            "guard.mode=off",
            "trainer.max_steps=6",
            "trainer.val_check_interval=2",
            "callbacks.sample=null",
            "logger=csv",
            "+callbacks.nan._target_=test_resume.InjectNaN",
            "+callbacks.nan.step=2",
        ],
        tmp_path,
        cache_dir,
    )
    train(cfg)
    record = json.loads((tmp_path / "results.json").read_text())
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    val = {int(r["step"]): float(r["val/loss"]) for r in rows if r.get("val/loss")}
    # after steps 2, 4 and 6 (the CSV's rows count from 0); the NaN came in step 3's update
    assert math.isfinite(val[1]) and math.isnan(val[3]) and math.isnan(val[5])
    assert record["best_val_loss"] == pytest.approx(val[1], rel=1e-6)


def adamw(**setting: object) -> functools.partial:
    return functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1, **setting)


@pytest.mark.parametrize(
    ("setting", "device", "fused", "foreach"),
    [
        ("auto", "cuda", True, False),  # one fused kernel for every parameter
        ("auto", "cpu", True, False),  # 3-5x faster than foreach on the CPU too
        ("auto", "meta", False, True),  # a device without a fused kernel in lmlab's list
        (False, "cuda", False, True),
        (False, "cpu", False, True),
    ],
)
def test_adamw_is_fused_on_cuda_and_cpu_and_foreach_elsewhere(
    setting: object, device: str, fused: bool, foreach: bool
) -> None:
    groups = [{"params": [torch.nn.Parameter(torch.randn(3, 3))], "weight_decay": 0.1}]
    opt = build_optimizer(adamw(fused=setting), groups, torch.device(device))
    assert bool(opt.defaults["fused"]) == fused and bool(opt.defaults["foreach"]) == foreach
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.defaults["lr"] == 1e-3
    plain = build_optimizer(
        functools.partial(torch.optim.SGD, lr=0.1), groups, torch.device(device)
    )
    assert plain.defaults["foreach"] is None  # an optimizer without the setting: as configured
    with pytest.raises(ConfigError, match="optim.fused='yes': allowed auto, true, false"):
        build_optimizer(adamw(fused="yes"), groups, torch.device("cpu"))


def test_the_configured_run_builds_fused_adamw_on_cpu(tmp_path: Path) -> None:
    cfg = compose_train(["optim.lr=3e-4"], tmp_path)
    assert cfg.optim.fused == "auto"
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(optimizer_from(cfg.optim), decay_groups(model, 0.1), torch.device("cpu"))
    assert opt.defaults["fused"] and not opt.defaults["foreach"] and opt.defaults["lr"] == 3e-4


def test_the_configured_optimizer_holds_plain_values_only(tmp_path: Path) -> None:
    """torch 2.6's AdamW keeps ``betas`` as given: a ListConfig there made every checkpoint
    unreadable with ``weights_only=True``. The configured arguments are plain on any torch,
    and the optimizer's state round-trips through a weights-only load."""
    from omegaconf import Container

    factory = optimizer_from(compose_train([], tmp_path).optim)
    assert not any(isinstance(v, Container) for v in factory.keywords.values())
    assert factory.keywords["betas"] == [0.9, 0.95]
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(factory, decay_groups(model, 0.1), torch.device("cpu"))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded["param_groups"][0]["betas"]) == [0.9, 0.95]


def fp16_trainer(tmp_path: Path, guard, scaler, max_steps: int) -> L.Trainer:
    from lightning.pytorch.plugins.precision import MixedPrecision

    return L.Trainer(
        accelerator="cpu",
        plugins=[MixedPrecision(precision="16-mixed", device="cpu", scaler=scaler)],
        callbacks=[guard],
        max_steps=max_steps,
        gradient_clip_val=1.0,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_fused_adamw_under_a_grad_scaler_clips_the_true_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 with a GradScaler (16-mixed on CUDA; a CPU scaler here). Fused AdamW unscales
    inside its step, so Lightning leaves the gradients scaled by 65536 for clipping. lmlab
    unscales them first: the norm is the true one, so no step overflows, the scale keeps its
    start value, and the guard (stop) lets the run finish."""
    from lmlab.train.guard import NonFiniteGuard

    cfg = compose_train(["optim.lr=1e-3"], tmp_path)
    task = LMTask(
        ModelConfig(d_model=32, n_layers=2, n_heads=4, vocab_size=64),
        instantiate(cfg.optim),  # fused=auto: fused on the CPU
        instantiate(cfg.scheduler),
    )
    scaler = torch.amp.GradScaler("cpu")
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        norm = clip(*args, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    guard = NonFiniteGuard("stop", dirpath=str(tmp_path))
    trainer = fp16_trainer(tmp_path, guard, scaler, max_steps=3)
    ids = torch.randint(0, 64, (12, 17))
    rows = [{"input_ids": r[:-1], "labels": r[1:]} for r in ids]
    trainer.fit(task, torch.utils.data.DataLoader(rows, batch_size=4))
    assert task.optimizers().optimizer.defaults["fused"]
    assert trainer.global_step == 3 and len(norms) == 3
    # a freshly initialised model's gradient norm is of order 1; scaled, it would be ~65536x
    # that (fp16 overflows to inf), and the scaler would halve its scale at each step
    assert all(0 < n < 100 for n in norms), norms
    assert scaler.get_scale() == 65536.0


class GradientsAround(L.Callback):
    """Each step's gradients before clipping (``on_before_optimizer_step``, which Lightning
    calls before it clips) and after the step (the clipped ones the update used)."""

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        self.before.append([p.grad.clone() for p in pl_module.parameters()])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, idx) -> None:
        self.after.append([p.grad.clone() for p in pl_module.parameters()])


@pytest.mark.parametrize("algorithm", ["value", "norm"])
def test_gradients_are_clipped_as_gradient_clip_algorithm_says(
    tmp_path: Path, algorithm: str
) -> None:
    """``trainer.gradient_clip_algorithm=value`` clamps each gradient element to
    [-gradient_clip_val, gradient_clip_val] (it was clipped by global norm, the same update as
    ``norm``); ``norm`` scales them to that global norm. ``train/grad_norm`` is the pre-clip
    norm either way. Clamping is exact; the norm and its scale differ from these only in
    float32 summation order and rounding: a blocked sum of squares over a tensor of at most
    4,096 gradients errs by up to log2(4096) = 12 unit roundoffs (u = 6e-8), the norms of the
    ~20 tensors by 5 more, the square root halves that, and the scale and product add a few:
    under 16 u, relative 1e-6; 2e-6 allowed."""
    cfg = compose_train([], tmp_path)
    task = LMTask(
        ModelConfig(d_model=32, n_layers=2, n_heads=4, vocab_size=64),
        instantiate(cfg.optim),
        instantiate(cfg.scheduler),
    )
    seen, clip = GradientsAround(), 1e-3
    trainer = L.Trainer(
        accelerator="cpu",
        callbacks=[seen],
        max_steps=2,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    ids = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": r[:-1], "labels": r[1:]} for r in ids]
    trainer.fit(task, torch.utils.data.DataLoader(rows, batch_size=4))
    before, after = seen.before[-1], seen.after[-1]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before]))
    assert float(trainer.logged_metrics["train/grad_norm"]) == pytest.approx(float(norm), rel=2e-6)
    assert norm > 10 * clip  # so that either clip changes the gradients
    if algorithm == "value":
        for g, clipped in zip(before, after, strict=True):
            assert torch.equal(clipped, g.clamp(-clip, clip))
    else:
        for g, clipped in zip(before, after, strict=True):
            torch.testing.assert_close(clipped, g * (clip / (norm + 1e-6)), rtol=2e-6, atol=0)


def test_fp16_stops_once_the_loss_scale_collapses(tmp_path: Path) -> None:
    """Every step's loss is inf, so every step's gradients overflow: the GradScaler skips each
    update and halves its scale, 65536 -> 32768 -> 16384 -> 8192. With
    guard.min_loss_scale=16384 the run stops at the step whose scale falls below it, naming
    the scale and the step, instead of running its 20 steps without one update."""
    from lmlab.train.guard import NonFiniteError, NonFiniteGuard

    cfg = compose_train(["optim.lr=1e-3"], tmp_path)
    task = LMTask(
        ModelConfig(d_model=32, n_layers=2, n_heads=4, vocab_size=64),
        instantiate(cfg.optim),
        instantiate(cfg.scheduler),
    )
    objective = task.train_loss
    task.train_loss = lambda batch: (lambda out: (out[0] * float("inf"), out[1]))(objective(batch))
    weights = [p.detach().clone() for p in task.parameters()]
    scaler = torch.amp.GradScaler("cpu")
    guard = NonFiniteGuard("stop", dirpath=str(tmp_path), min_loss_scale=16384.0)
    trainer = fp16_trainer(tmp_path, guard, scaler, max_steps=20)
    ids = torch.randint(0, 64, (80, 17))
    rows = [{"input_ids": r[:-1], "labels": r[1:]} for r in ids]
    with pytest.raises(NonFiniteError, match=r"loss scale fell to 8192 by step 3, below guard"):
        trainer.fit(task, torch.utils.data.DataLoader(rows, batch_size=4))
    assert all(torch.equal(p, w) for p, w in zip(task.parameters(), weights, strict=True))


def compile_with(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """lmlab's ``torch.compile`` calls use ``backend`` (Inductor, lmlab's, by default)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))


@pytest.mark.parametrize(
    "backend",
    # Inductor's C++ build of the step, 30 s more with a cold cache (as CI's always is), in
    # its compile worker processes: with the e2e tests, `make test-all`
    ["aot_eager", pytest.param("inductor", marks=pytest.mark.e2e)],
)
@torch._dynamo.config.patch(error_on_recompile=True)  # one graph for the 3 steps
def test_compile_model_trains_the_eager_loss_with_clean_keys(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """compile=model: embeddings, blocks, head and cross-entropy as one graph, forward and
    backward (AOTAutograd's joint graph; then Inductor's kernels, or aten's ops one by one).
    Its losses are the eager ones: each is a mean over 256 tokens of a log-softmax over 4,096
    logits, where a fused fp32 graph sums in another order (about 1e-6 relative), and three
    AdamW steps of lr <= 1e-3 keep that well below 1e-4; a graph that computed something else
    (no ignore mask, a shifted label) would be off by more than 1e-2."""
    compile_with(monkeypatch, backend)
    losses = {}
    torch._dynamo.reset()  # what earlier tests in this process compiled would recompile
    counters.clear()
    for mode in ("false", "model"):
        out = tmp_path / mode
        cfg = compose_train(
            [
                *SMOKE,
                "trainer.max_steps=3",
                "trainer.limit_val_batches=0",
                "callbacks.sample=null",
                "callbacks.sdpa_kernel=null",
                "model.n_layers=1",  # Inductor's build grows with the blocks; one shows it
                f"compile={mode}",
            ],
            out,
            cache_dir,
        )
        train(cfg)
        rows = (out / "csv" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        column = header.index("train/loss")
        losses[mode] = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
        losses[mode + " keys"] = list(ckpt["state_dict"])
    assert len(losses["model"]) == 3 and losses["model"] == pytest.approx(losses["false"], rel=1e-4)
    assert counters["stats"]["unique_graphs"] >= 1  # the model run did run a compiled graph
    assert losses["model keys"] == losses["false keys"]
    assert not any("_orig_mod" in k for k in losses["model keys"])
    with pytest.raises(ConfigError, match="compile='graph': allowed false, blocks, model"):
        compile_mode("graph")
    assert compile_mode(True) == Compile.blocks and compile_mode(False) == Compile.none


def test_cuda_graphs_compile_the_step_for_replay_and_start_each_step_anew(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cuda_graphs=true``: the step compiled with ``mode="reduce-overhead"`` and each
    training step a new generation of graph outputs (``cudagraph_mark_step_begin``), so a
    step never reads what the previous one's replay wrote. Here on a CPU (the machine check is
    told it has a GPU), the step traced by dynamo and AOTAutograd as Inductor would take it
    and run without Inductor: the mode is Inductor's, and on a CPU it builds no graph, only
    the C++ step that ``test_compile_model_trains_the_eager_loss_with_clean_keys[inductor]``
    builds (30 s more with a cold cache, as CI's is: an e2e test).
    ``tests/train/test_gpu.py`` checks the graphs themselves."""
    import lmlab.train.machine

    modes, marks = [], []
    compile_fn, mark = torch.compile, torch.compiler.cudagraph_mark_step_begin

    def compiling(fn, *args, mode=None, **kwargs):
        modes.append(mode)
        return compile_fn(fn, *args, backend="aot_eager", **kwargs)

    monkeypatch.setattr(lmlab.train.machine, "on_cuda", lambda trainer_cfg: True)
    monkeypatch.setattr(torch, "compile", compiling)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(mark()))
    overrides = ["compile=model", "cuda_graphs=true", "trainer.precision=32-true"]
    train(compose_train([*SMOKE, *overrides, "logger=csv"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["global_step"] == 4
    assert modes == ["reduce-overhead"] and len(marks) == 4  # one per training step


@torch._dynamo.config.patch(error_on_recompile=True)
def test_each_run_of_a_multirun_compiles_afresh(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multirun's jobs share one process. Two compile=model runs of different widths:
    the second compiles LMTask.objective afresh instead of recompiling it (past dynamo's
    limit of 8 recompiles, later jobs of a sweep would have run eagerly without a word).
    Recompiling is dynamo's decision, whatever the backend: the graphs run eagerly here,
    sparing two Inductor builds (a minute of CPU; the test above runs Inductor's)."""
    compile_with(monkeypatch, "eager")
    for width in (64, 96):
        overrides = [
            *SMOKE,
            "trainer.max_steps=2",
            "trainer.limit_val_batches=0",
            "callbacks.sample=null",
            "callbacks.sdpa_kernel=null",
            "compile=model",
            f"model.d_model={width}",
        ]
        train(compose_train(overrides, tmp_path / str(width), cache_dir))
        results = json.loads((tmp_path / str(width) / "results.json").read_text())
        assert results["status"] == "completed"


@pytest.mark.e2e
def test_fsdp_in_bf16_samples_and_keeps_its_final_checkpoint(
    tmp_path: Path, start_train: Callable[..., subprocess.Popen]
) -> None:
    """FSDP's bf16 policy computes in bf16 over fp32 shards; the end-of-run sample decodes
    through a KV cache made from those shards (on a GPU it crashed the finished run and lost
    its results). Two CPU processes over gloo."""
    proc = start_train(
        "+debug=smoke",
        "trainer=fsdp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.precision=bf16-mixed",
        "callbacks.sample.max_new_tokens=4",
        "trainer.max_steps=2",  # bf16 runs 17-32x slower than fp32 on CPUs without it
        "data.batch_size=1",  # a row per rank: the two steps took 8.8 s with 4, 2.8 s with 1
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={tmp_path}",
    )
    results, _ = finished_fsdp_run(proc, tmp_path)
    assert results["sample"].startswith("def ")


def test_a_failing_extra_never_fails_the_run(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("Expected query, key, and value to have the same dtype")

    monkeypatch.setattr("lmlab.train.callbacks.sample.generate", broken)
    cfg = compose_train([*SMOKE, "logger=csv"], tmp_path, cache_dir)
    train(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["sample"] is None
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.parametrize(
    ("setting", "device", "processes", "family", "expected"),
    [
        (
            None,
            "cpu",
            1,
            "bert",
            (0, False),
        ),  # the main process collates: workers would take its cores
        (None, "cuda", 1, "bert", (min(4, len(os.sched_getaffinity(0))), True)),
        (None, "cuda", 1, "t5", (min(4, len(os.sched_getaffinity(0))), True)),
        (None, "cuda", 64, "t5", (1, True)),  # at least one worker per process
        (None, "cuda", 1, "gpt", (0, True)),  # a slice: cheaper here than a worker's hand-over
        (2, "cpu", 1, "gpt", (2, False)),
        (2, "cuda", 1, "gpt", (2, True)),  # as asked
        (0, "cuda", 1, "t5", (0, True)),
    ],
)
def test_gpu_runs_collate_in_workers_into_pinned_memory(
    setting: int | None, device: str, processes: int, family: str, expected: tuple[int, bool]
) -> None:
    """Workers for the collators whose work is worth one (``in_workers``): BERT's masking and
    T5's span corruption, not GPT's slice of the rows."""
    in_workers = COLLATORS[Family(family)].in_workers
    assert loader_settings(setting, torch.device(device), processes, in_workers) == expected


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("64-true", torch.float64),
        ("32-true", torch.float32),
        ("bf16-mixed", torch.float32),
        ("bf16-true", torch.float32),
        ("16-true", torch.float32),
    ],
)
def test_the_validation_loss_is_summed_in_float32_or_wider_at_every_precision(
    precision: str, dtype: torch.dtype
) -> None:
    """``val/loss`` is the target-weighted mean of each batch's loss (fp32, or fp64 in a
    float64 run), summed in float32 or wider whatever the weights' dtype. torchmetrics keeps
    its state's dtype through ``.double()`` (a ``64-true`` run summed in float32), and
    Lightning's ``.to(dtype)`` of a ``bf16-true`` or ``16-true`` module took it along: the
    sum was rounded to bf16 (this validation logged 3.453125 where the batches' mean is
    3.4644) or float16 (3.4668). Six batches of 64 targets: the sum rounds 12 times at the
    state's 2^-24 (float32), under 1e-6 of the mean; bf16's 2^-9 rounds the mean itself."""
    model_cfg = ModelConfig(family=Family.gpt, d_model=16, n_layers=1, n_heads=2, vocab_size=32)
    torch.manual_seed(0)
    task = LMTask(model_cfg, adamw(), functools.partial(torch.optim.lr_scheduler.LambdaLR))
    ids = torch.randint(0, 32, (24, 17))
    rows = [{"input_ids": r[:-1], "labels": r[1:]} for r in ids]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (logged,) = trainer.validate(task, loader, verbose=False)
    assert task.val_loss.mean_value.dtype == dtype
    with torch.no_grad(), trainer.precision_plugin.forward_context():
        batches = [(task.loss(b)[0].double(), (b["labels"] != IGNORE).sum()) for b in loader]
    mean = sum(loss * n for loss, n in batches) / sum(n for _, n in batches)
    assert logged["val/loss"] == pytest.approx(mean.item(), rel=1e-6)
