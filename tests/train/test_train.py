"""``train(cfg)`` end to end on the embedded corpus (a 1 MB slice): outputs, knobs, W&B, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from in_process import without_heap_work
from lmlab.cli.main import command
from lmlab.config import CONF_DIR, ModelConfig
from lmlab.errors import ConfigError
from lmlab.model import build_model
from lmlab.model.loss import CHUNKED_AVAILABLE
from lmlab.train.compose import compose_train
from lmlab.train.final_validation import final_val_limit
from lmlab.train.run import train
from smoke import SMOKE

REPO = CONF_DIR.parent  # the repository root

# gpt_tiny takes every experiment but BERT's recipe (segment embeddings are BERT's only).
# shakespeare_char_cpu trains on the Tiny Shakespeare text shipped in the repository; mixtral
# trains in test_moe_run_logs_router_signals_and_resumes_exactly (the suite's time budget).
SKIP = ("bert", "mixtral")
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if p.stem not in SKIP)
REQUIRED = [
    "status",
    "val_loss",
    "val_perplexity",
    "val_bits_per_byte",
    "train_loss",
    "params",
    "non_embedding_params",
    "tokens",
    "flops",
    "global_step",
    "tokens_per_second",
    "wall_seconds",
]


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run(tmp_path: Path, cache_dir: Path, *overrides: str) -> dict:
    cfg = compose_train([*SMOKE, *overrides], tmp_path, cache_dir)
    composed = OmegaConf.to_yaml(cfg)
    train(cfg)
    assert OmegaConf.to_yaml(cfg) == composed  # train() reads the config, never writes it
    return json.loads((tmp_path / "results.json").read_text())


# What logged_run trains (and test_validations_and_logs_are_counted_in_steps_whatever_the_
# accumulation at another batch): 7 steps, a validation every 2 and the train metrics logged
# every 3, so that the last step is neither a validation's nor a logging step.
LOGGED = ["trainer.max_steps=7", "trainer.val_check_interval=2", "trainer.log_every_n_steps=3"]


@dataclasses.dataclass
class LoggedRun:
    run_dir: Path
    results: dict
    messages: list[str]  # lmlab's log messages, INFO and above
    warnings: list[warnings.WarningMessage]  # every warning the run raised
    logged: list[tuple[str, int]]  # (name, global step) of each ``LMTask.log`` call
    losses: list[float]  # each training step's loss, as training_step returned it
    peaks: Path  # the Throughput callback's cache of measured peaks


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> LoggedRun:
    """A run of ``LOGGED`` (global batch 4, the CSV logger), trained once for the tests that
    read what a run wrote and logged: none writes under it. Its ``LMTask.log`` and
    ``training_step`` are spied on (what was logged at which step; each step's loss), and
    its CPU peak is taken as measured under load (the start's probe: 1 kFLOP/s, below what
    the run achieves), with a peak cache of its own: the spies and the low peak change no
    value the other tests read (the steps, losses and records)."""
    from lmlab.train.callbacks import Throughput
    from lmlab.train.task import LMTask

    base = tmp_path_factory.mktemp("logged")
    run_dir, peaks = base / "run", base / "peaks"
    logged: list[tuple[str, int]] = []
    losses: list[float] = []
    log, step, start = LMTask.log, LMTask.training_step, Throughput.on_train_start

    def spy_log(self, name, value, *args, **kwargs):
        logged.append((name, self.trainer.global_step))
        return log(self, name, value, *args, **kwargs)

    def spy_step(self, batch, batch_idx):
        losses.append(float((out := step(self, batch, batch_idx)).detach()))
        return out

    def measured_under_load(self, trainer, pl_module) -> None:
        start(self, trainer, pl_module)
        self.peak = 1e3

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    kept, lmlab_log = Kept(), logging.getLogger("lmlab")
    level = lmlab_log.level
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as pytest's recwarn
        patch.setattr(LMTask, "log", spy_log)
        patch.setattr(LMTask, "training_step", spy_step)
        patch.setattr(Throughput, "on_train_start", measured_under_load)
        lmlab_log.addHandler(kept)
        lmlab_log.setLevel(logging.INFO)
        try:
            overrides = [*LOGGED, "data.global_batch_size=4"]
            r = run(run_dir, cache_dir, *overrides, f"callbacks.throughput.cache_dir={peaks}")
        finally:
            lmlab_log.removeHandler(kept)
            lmlab_log.setLevel(level)
    return LoggedRun(run_dir, r, kept.messages, list(caught), logged, losses, peaks)


def test_the_validation_after_the_last_step_logs_the_training_rows_epoch(
    logged_run: LoggedRun,
) -> None:
    """A run of 7 steps validating every 2 validates its final weights after ``fit``. Its
    metrics.csv row said epoch 1 beside the training rows' 0: ``fit`` had counted the run's
    one epoch as ended. It logs the last step's epoch, and its step, as the others."""
    with (logged_run.run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    validations = [r for r in rows if r["val/loss"]]
    assert [r["step"] for r in validations] == ["1", "3", "5", "6"]  # after steps 2, 4, 6, 7
    assert {r["epoch"] for r in rows} == {"0"}


def test_a_run_a_callback_stopped_early_says_so(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lightning's EarlyStopping ended a 12-step run at its second validation (step 4: the
    first sets the best) and results.json said completed, as for 12 steps, its schedule
    unfinished in silence. It
    stays completed (the run did what it was configured to), with where, by what and why."""
    stop = "+callbacks.es._target_=lightning.pytorch.callbacks.EarlyStopping"
    knobs = ["+callbacks.es.monitor=val/loss", "+callbacks.es.patience=0"]
    knobs.append("+callbacks.es.min_delta=100")  # no validation improves by 100 nats
    with caplog.at_level("WARNING", logger="lmlab"):
        r = run(tmp_path, cache_dir, "trainer.max_steps=12", stop, *knobs)
    assert r["status"] == "completed" and r["global_step"] == 4
    early = r["stopped_early"]
    assert (early["step"], early["planned_steps"], early["by"]) == (4, 12, "EarlyStopping")
    assert "val/loss" in early["why"]
    assert any(
        m.startswith("stopped early at step 4 of 12 planned, by EarlyStopping (")
        for m in caplog.messages
    )


def test_smoke_run_writes_results_checkpoint_and_metrics(logged_run: LoggedRun) -> None:
    """The smoke recipe's run (``logged_run``: 7 steps) writes results.json with every
    required field, its final checkpoint alone, which loads into the model, and metrics.csv
    with the validation results.json reports."""
    r, run_dir = logged_run.results, logged_run.run_dir
    assert sum(m.startswith("global batch 4 sequences") for m in logged_run.messages) == 1
    # Lightning's deprecation of its own that every run met: not the user's to act on
    assert not [w for w in logged_run.warnings if "LeafSpec" in str(w.message)]
    assert r["status"] == "completed"
    # a run of its steps: no early stop (test_a_run_a_callback_stopped_early_says_so's control)
    assert "stopped_early" not in r, "a run that trained its steps says it stopped early"
    assert all(r[k] is not None for k in REQUIRED), {k: r.get(k) for k in REQUIRED}
    assert r["global_step"] == 7
    assert r["tokens"] == 7 * 4 * 64  # steps x batch x sequence length
    assert r["flops"] == 6 * r["params"] * r["tokens"]
    # exp of the loss itself: fp32's exp is within an ulp or two (1e-7 each)
    assert math.isclose(r["val_perplexity"], math.exp(r["val_loss"]), rel_tol=1e-6)
    assert r["val_bits_per_byte"] < r["val_loss"] / math.log(2)  # > 1 byte per BPE token
    # gpt_tiny's 4096-token vocabulary over d_model 128, fp32: auto's chunked loss
    assert r["cross_entropy"] == ("chunked" if CHUNKED_AVAILABLE else "full")
    # one checkpoint, the final one: a smoke run of gpt_medium wrote 7 GB of step files
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 7 and ckpt["model_config"]["positional"] == "learned"
    model = build_model(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    rows = read_csv(run_dir / "csv" / "metrics.csv")
    assert [float(x["val/loss"]) for x in rows if x.get("val/loss")][-1] == pytest.approx(
        r["val_loss"]
    )
    assert any(x.get("train/grad_norm") for x in rows) and any(x.get("train/lr") for x in rows)


def test_train_metrics_are_logged_only_when_a_logger_writes_them(logged_run: LoggedRun) -> None:
    """``self.log`` costs ~0.3 ms a call: the train/* values are logged on the steps Lightning
    writes (every log_every_n_steps) and at the last step, whose loss results.json reports
    (also when a final ``trainer.validate``, which drops train metrics, follows the fit), and
    metrics.csv holds those steps' rows: the last one's too, which Lightning leaves out."""
    logged, losses, r = logged_run.logged, logged_run.losses, logged_run.results
    train_steps = {name: sorted({s for n, s in logged if n == name}) for name, _ in logged}
    for name in ("train/loss", "train/lr", "train/grad_norm"):
        assert train_steps[name] == [2, 5, 6], name  # steps 3 and 6 (1-based), and the last
    for name in ("perf/tokens_per_second", "perf/mfu"):  # after the update: 1-based
        assert train_steps[name] == [3, 6, 7], name
    assert len(losses) == 7 and r["train_loss"] == pytest.approx(losses[-1])
    assert r["train_aux_loss"] is None and r["train_z_loss"] is None  # dense: no router
    with open(logged_run.run_dir / "csv" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/loss")]
    assert [int(row["step"]) for row in rows] == [2, 5, 6]
    assert float(rows[-1]["train/loss"]) == pytest.approx(losses[-1], rel=1e-6)
    assert all(row["train/lr"] and row["train/grad_norm"] for row in rows)
    assert all(row["perf/tokens_per_second"] and row["perf/mfu"] for row in rows)


def test_no_mfu_is_above_1_when_the_cached_peak_was_measured_under_load(
    logged_run: LoggedRun,
) -> None:
    """A CPU peak measured while other work ran (the cache's and the start's probe: 1 kFLOP/s
    here, ``logged_run``) is below what the run achieves: MFU was logged at 2.1 in QA. The
    run measures its linear layers again and takes at least its achieved rate, so every
    logged MFU and the recorded one are at most 1; the cache keeps measured matmuls only."""
    with open(logged_run.run_dir / "csv" / "metrics.csv") as f:
        mfu = [float(row["perf/mfu"]) for row in csv.DictReader(f) if row.get("perf/mfu")]
    assert mfu and max(mfu) <= 1.0 + 1e-9, mfu
    r = logged_run.results
    assert 0 < r["mfu"] <= 1.0 + 1e-9, r["mfu"]
    cached = json.loads((logged_run.peaks / "peak_flops.json").read_text())
    assert min(cached.values()) > 1e3  # measured matmuls, not the low figure


def test_throughput_times_each_batch_from_the_last_ones_end_but_not_across_other_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's time runs from the end of the batch before (the next batch's loading and the
    loop's hooks are a step's cost; on a GPU, which goes on working between a quiet step's
    hooks, timing each batch from its own start overstated tokens/s), except across a
    validation, a checkpoint's save or evals, which are no training step's time."""
    from types import SimpleNamespace

    from lmlab.train.callbacks import Throughput, untimed
    from lmlab.train.callbacks import throughput as callbacks

    clock = iter([0.0, 1.0, 4.0, 10.0, 11.0, 20.0, 21.5, 30.0, 32.0, 33.0])  # each read
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    throughput = Throughput(skip=0)
    throughput.flops_per_token = 6.0
    trainer = SimpleNamespace(world_size=1, callbacks=[throughput])
    module = SimpleNamespace(reads_now=False, device=torch.device("cpu"))
    batch = {"input_ids": torch.zeros(1, 10, dtype=torch.long)}
    between = [
        lambda: None,  # nothing: the 2 s before the next batch's end count from 1
        lambda: throughput.on_validation_start(trainer, module),
        lambda: throughput.on_save_checkpoint(trainer, module, {}),
        lambda: untimed(trainer),  # the evals
        lambda: None,
    ]
    seconds = []
    for work in between:
        throughput.on_train_batch_start(trainer, module, batch, 0)
        before = throughput.seconds
        throughput.on_train_batch_end(trainer, module, None, batch, 0)
        seconds.append(throughput.seconds - before)
        work()
    # batches [0, 1], [1, 4] (the time between them included), [10, 11], [20, 21.5] and
    # [30, 32] (each started afresh after the other work), then [32, 33]
    throughput.on_train_batch_start(trainer, module, batch, 0)
    throughput.on_train_batch_end(trainer, module, None, batch, 0)
    assert seconds == [1.0, 3.0, 1.0, 1.5, 2.0]
    assert throughput.seconds == 1.0 + 3.0 + 1.0 + 1.5 + 2.0 + 1.0
    assert throughput.tokens_per_second == 60 / throughput.seconds


@pytest.mark.parametrize("reads", [False, True])
def test_a_quiet_cuda_steps_queued_work_is_its_time_not_the_validations(
    monkeypatch: pytest.MonkeyPatch, reads: bool
) -> None:
    """On CUDA a step that logs nothing does not synchronise: its kernels may still run when
    validation (or a checkpoint's save) starts, and that time went to the untimed validation,
    overstating tokens/s. It is the step's: the device is synchronised there and the wait
    counted. A logging step synchronised already and a CPU step has nothing queued: neither
    waits again. The clock is fake: synchronising takes 5 s of it."""
    from types import SimpleNamespace

    from lmlab.train.callbacks import Throughput
    from lmlab.train.callbacks import throughput as callbacks

    now = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    syncs = []

    def synchronize() -> None:
        syncs.append(now[0])
        now[0] += 5.0

    monkeypatch.setattr(callbacks.torch.cuda, "synchronize", synchronize)
    for device in ("cuda", "cpu"):
        throughput = Throughput(skip=0)
        throughput.world_size, throughput.flops_per_token, syncs[:] = 2, 6.0, []
        trainer = SimpleNamespace(world_size=2)
        module = SimpleNamespace(reads_now=reads, device=torch.device(device), log=print)
        batch = {"input_ids": torch.zeros(1, 10, dtype=torch.long)}
        now[0] = 0.0
        throughput.on_train_batch_start(trainer, module, batch, 0)
        now[0] = 2.0 if device == "cpu" or not reads else -3.0  # a logging step syncs: 5 s
        throughput.on_train_batch_end(trainer, module, None, batch, 0)
        now[0] += 0.5  # Lightning's hooks before the validation
        throughput.on_validation_start(trainer, module)
        throughput.on_save_checkpoint(trainer, module, {})  # nothing queued any more
        queued = device == "cuda" and not reads
        assert throughput.seconds == (7.5 if queued else 2.0), (device, reads)
        assert throughput.window_seconds == throughput.seconds or reads
        assert throughput.device_seconds == 2 * throughput.seconds
        assert len(syncs) == (device == "cuda"), (device, reads)


def test_a_resumed_runs_mfu_divides_by_each_process_device_seconds(monkeypatch) -> None:
    """A run trained 10 s on 2 devices, then resumed on 1 for 10 s more: its MFU is every
    FLOP over the device-seconds of both (20 + 10), where it divided the whole run's tokens
    per second by the last process's device count (as if one device had done it all)."""
    from types import SimpleNamespace

    from lmlab.train.callbacks import Throughput
    from lmlab.train.callbacks import throughput as callbacks

    first = Throughput(skip=0)
    first.tokens, first.seconds, first.device_seconds = 4000.0, 10.0, 20.0
    first.flops_per_token, first.peak, first.world_size = 6.0, 100.0, 2
    first.flops = 4000 * 6.0
    resumed = Throughput(skip=0)
    resumed.load_state_dict(first.state_dict())
    resumed.world_size, resumed.t0 = 1, 0.0  # what on_train_start sets on one device
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: 10.0)  # a 10 s batch
    trainer = SimpleNamespace(world_size=1)
    module = SimpleNamespace(reads_now=False, device=torch.device("cpu"))
    batch = {"input_ids": torch.zeros(2, 50, dtype=torch.long)}  # 100 tokens
    resumed.on_train_batch_end(trainer, module, None, batch, 0)
    assert (resumed.tokens, resumed.seconds, resumed.device_seconds) == (4100.0, 20.0, 30.0)
    assert resumed.mfu == pytest.approx(4100 * 6 / 30 / 100, rel=1e-12)
    assert first.mfu == pytest.approx(4000 * 6 / 20 / 100, rel=1e-12)  # one process: as before
    older = {k: v for k, v in first.state_dict().items() if k not in ("device_seconds", "flops")}
    restored = Throughput()
    restored.load_state_dict(older)  # a checkpoint from before device_seconds and flops were kept
    assert restored.device_seconds == 20.0 and restored.mfu == first.mfu


def test_mfu_counts_each_batch_at_its_own_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fine-tuning pads each batch to its longest example (T5's targets to theirs), not to
    data.seq_len: MFU took every batch's FLOPs per token at data.seq_len and span corruption's
    target length (14 targets for 64 inputs), so a T5 seq2seq run whose targets are as long as
    its inputs was credited with about 1.46x too few FLOPs here (and one with short targets
    and wide inputs with too many). Each batch's FLOPs are now ``flops_per_token`` at its own
    input and target widths (that count equals torch's FlopCounterMode at any shape:
    tests/model/test_model.py)."""
    from types import SimpleNamespace

    from lmlab.config import Family, ModelConfig
    from lmlab.data.collators import decoder_tokens
    from lmlab.model import build_model, flops_per_token
    from lmlab.train.callbacks import Throughput
    from lmlab.train.callbacks import throughput as callbacks

    cfg = ModelConfig(family=Family.t5, d_model=32, n_layers=2, n_heads=4, vocab_size=97)
    model = build_model(cfg)
    monkeypatch.setattr(callbacks, "peak_flops", lambda *args: 1e9)
    data = SimpleNamespace(seq_len=64, cfg=SimpleNamespace(batch_size=2))
    trainer = SimpleNamespace(datamodule=data, world_size=1, precision="32-true")
    module = SimpleNamespace(model=model, model_cfg=cfg, device=torch.device("cpu"))
    throughput = Throughput(skip=0)
    throughput.on_train_start(trainer, module)
    assert throughput.flops_per_token == flops_per_token(model, 64, decoder_tokens("t5", 64))
    module.reads_now = False
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: 1.0)  # each batch takes 1 s
    shapes = [(20, 20), (16, 16)]  # (input, target) widths of two padded batches
    for width, target in shapes:
        throughput.t0 = 0.0
        batch = {
            "input_ids": torch.zeros(2, width, dtype=torch.long),
            "decoder_input_ids": torch.zeros(2, target, dtype=torch.long),
        }
        throughput.on_train_batch_end(trainer, module, None, batch, 0)
    flops = sum(2 * w * flops_per_token(model, w, s) for w, s in shapes)
    assert throughput.mfu == pytest.approx(flops / 2.0 / 1e9, rel=1e-12)  # 2 s at 1 GFLOP/s
    assert throughput.flops == pytest.approx(flops, rel=1e-12)
    at_seq_len = throughput.tokens * throughput.flops_per_token  # what MFU counted before
    assert flops > 1.4 * at_seq_len


@pytest.mark.parametrize("global_batch", [4, 12])
def test_validations_and_logs_are_counted_in_steps_whatever_the_accumulation(
    tmp_path: Path, cache_dir: Path, request: pytest.FixtureRequest, global_batch: int
) -> None:
    """``trainer.val_check_interval`` and ``log_every_n_steps`` count optimizer steps, so a
    run validates and logs at the same steps with 1 or 3 micro-batches a step (or with more
    devices). Lightning counts validation intervals in micro-batches: at accumulation 3,
    val_check_interval=2 validated every 2 micro-batches, some in the middle of a step's
    accumulation (rows at steps 0, 1, 1, 2, 3, 3, ...). At 1 micro-batch: ``logged_run``."""
    if global_batch == 4:
        logged_run = request.getfixturevalue("logged_run")
        run_dir, r = logged_run.run_dir, logged_run.results
    else:
        run_dir = tmp_path
        r = run(run_dir, cache_dir, *LOGGED, f"data.global_batch_size={global_batch}")
    assert r["batch"]["accumulation"] == global_batch // 4
    rows = read_csv(run_dir / "csv" / "metrics.csv")
    assert [int(x["step"]) for x in rows if x.get("val/loss")] == [1, 3, 5, 6]
    assert [int(x["step"]) for x in rows if x.get("train/loss")] == [2, 5, 6]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains(tmp_path: Path, cache_dir: Path, experiment: str) -> None:
    r = run(
        tmp_path,
        cache_dir,
        f"+experiment={experiment}",
        *(["data.seq_len=128"] if experiment == "sliding_window" else []),  # its 64 binds
        # shakespeare_char_cpu scores the whole held-out split after its last step (seconds)
        "final_val_batches=null",
        "trainer.max_steps=2",
        "logger=none",
        "callbacks.sample.max_new_tokens=2",
    )
    assert r["status"] == "completed" and math.isfinite(r["val_loss"])


# Llama blocks, 4 experts top-2 in block 0 of 2, capacity-limited: every MoE signal logged
MOE = [
    "+experiment=mixtral",
    "model.n_layers=2",
    "model.moe.num_experts=4",
    "model.moe.every_n_layers=2",
    "model.moe.capacity_factor=1.0",
    "checkpoint.every_n_steps=2",
    "callbacks.checkpoint.save_top_k=-1",
    "callbacks.sample.max_new_tokens=4",
]


def test_moe_run_logs_router_signals_and_resumes_exactly(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train/loss stays the LM loss, with train/aux_loss, train/z_loss and block 0's expert
    load (max, min, dropped) beside it at every logging step, and results.json keeps the last
    step's (``train_aux_loss``, ``train_z_loss``, as ``train_loss``); FLOPs and the budget use
    the active parameters; a run continued from the step-2 checkpoint ends where this one
    does, and one from the last step's checkpoint (nothing to train; named with a ``~``, as
    zsh passes it on) reports its losses."""
    r = run(tmp_path / "a", cache_dir, *MOE)
    assert r["status"] == "completed" and r["active_params"] < r["params"]
    assert r["flops"] == 6 * r["active_params"] * r["tokens"]
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["active_params"] == r["active_params"] and plan["params"] == r["params"]
    assert (plan["budget"]["params"], plan["budget"]["n_params"]) == ("active", r["active_params"])
    rows = [x for x in read_csv(tmp_path / "a" / "csv" / "metrics.csv") if x.get("train/loss")]
    assert len(rows) == 4  # +debug=smoke logs every step
    for row in rows:
        assert float(row["train/aux_loss"]) > 0 and float(row["train/z_loss"]) > 0
        load_max, load_min = (
            float(row["moe/blocks.0/load_max"]),
            float(row["moe/blocks.0/load_min"]),
        )
        assert load_max >= 1 / 4 >= load_min >= 0 and 0 <= float(row["moe/blocks.0/dropped"]) < 1
    assert not any(key.startswith("moe/blocks.1/") for key in rows[0])  # block 1 is dense
    losses = ("train_loss", "train_aux_loss", "train_z_loss")
    for key in losses:  # float32 values, each as the CSV wrote it
        assert r[key] == pytest.approx(float(rows[-1][key.replace("_", "/", 1)]), rel=1e-6)
    step2 = tmp_path / "a" / "checkpoints" / "step000002.ckpt"
    resumed = run(tmp_path / "b", cache_dir, *MOE, f"ckpt_path={step2}")
    assert resumed["global_step"] == 4
    ended = [r[key] for key in (*losses, "val_loss")]
    assert [resumed[key] for key in (*losses, "val_loss")] == ended
    monkeypatch.setenv("HOME", str(tmp_path))  # zsh, or quoted: the ~ reaches lmlab
    finished = run(tmp_path / "c", cache_dir, *MOE, "ckpt_path='~/a/checkpoints/step000004.ckpt'")
    assert [finished[key] for key in losses] == ended[:3]


def test_validation_loss_falls_and_the_last_scores_final_val_batches(
    tmp_path: Path, cache_dir: Path
) -> None:
    """An untrained model scores about ln(4096) = 8.3 nats; 30 steps of 8 x 64 tokens must
    go 1 nat below. Validations during training score trainer.limit_val_batches (2 batches);
    the one after the last step scores final_val_batches (5), and results.json reports it."""
    r = run(
        tmp_path,
        cache_dir,
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        "data.batch_size=8",
        "optim.lr=3e-3",
        "scheduler.warmup_steps=3",
        "logger=csv",
        "final_val_batches=5",
    )
    rows = read_csv(tmp_path / "csv" / "metrics.csv")
    losses = [float(x["val/loss"]) for x in rows if x.get("val/loss")]
    assert len(losses) == 4 and losses[0] > losses[2], losses  # steps 10, 20, 30; then final
    # measured 6.96 vs 7.32 (6.81 on 256-token rows: 30 steps learn about as much from 64)
    assert r["val_loss"] < math.log(4096) - 1.0, losses
    assert r["val_tokens"] == 5 * 8 * 64  # 5 batches of 8 rows, 64 targets each
    # the same weights on more rows: another mean (equal only by a coincidence of floats)
    assert r["val_loss"] == pytest.approx(losses[3]) and losses[3] != losses[2]


def test_final_validation_rescores_only_when_its_rows_differ() -> None:
    assert final_val_limit(None, 20) is None  # the default: the rows validated during training
    assert final_val_limit(20, 20) is None and final_val_limit(1.0, 1.0) is None
    assert final_val_limit(1.0, 20) == 1.0 and final_val_limit(5, 2) == 5
    assert type(final_val_limit(1, 1.0)) is int  # one batch, not the whole split


def test_wandb_offline_run_records_config_and_metrics(
    tmp_path: Path, cache_dir: Path, wandb_records
) -> None:
    # 8 sequences a step of 4-row micro-batches: the plan accumulates 2, the config says 1
    results = run(tmp_path, cache_dir, "logger=wandb", "data.global_batch_size=8")
    records = wandb_records(tmp_path)
    run_rec = next(r["run"] for r in records if r["type"] == "run")
    assert run_rec["project"] == "lmlab" and run_rec["display_name"] == ",".join(
        sorted([*SMOKE, "logger=wandb", "data.global_batch_size=8"])
    )
    config = {
        k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()
    }
    assert config["model.norm_placement"] == "pre" and config["data.source"] == "stdlib"
    # the groups' options too: a sweep over a preset or +experiment is a column to group by
    assert (config["choices.model"], config["choices.debug"]) == ("gpt_tiny", "smoke")
    assert not any(k.startswith("choices.hydra") for k in config)
    # what the run trained with, beside the config's fields it did not use
    assert config["trainer.accumulate_grad_batches"] == 1
    assert config["plan.batch.accumulation"] == results["batch"]["accumulation"] == 2
    assert config["plan.steps"] == results["global_step"]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert config["plan.vocab_size"] == plan["vocab_size"]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert any("train/loss" in h for h in history) and any("val/loss" in h for h in history)
    # the parameter table as a W&B table, with the same numbers as results.json
    (table_file,) = tmp_path.glob("wandb/offline-run-*/files/media/table/parameters_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["kind", "count"]
    counts = json.loads((tmp_path / "results.json").read_text())["param_breakdown"]
    assert dict(table["data"]) == counts


def test_compiled_blocks_keep_clean_checkpoint_keys() -> None:
    model = build_model(ModelConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=2))
    keys = list(model.state_dict())
    for block in model.blocks:
        block.compile()
    assert list(model.state_dict()) == keys
    assert not any("_orig_mod" in k for k in keys)


def test_vocab_smaller_than_tokenizer_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    below = r"model.vocab_size=300 is below the tokenizer's 4096"
    with pytest.raises(ConfigError, match=below):
        run(tmp_path, cache_dir, "model.vocab_size=300")
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    # the run cached its tokenizer: a dry run, which planned a 300-token model that the run
    # refuses, refuses it too, and plans a vocabulary above the tokenizer's as asked
    with pytest.raises(ConfigError, match=below):
        run(tmp_path / "dry", cache_dir, "model.vocab_size=300", "dry_run=true")
    cfg = compose_train(
        [*SMOKE, "model.vocab_size=5000", "dry_run=true"], tmp_path / "up", cache_dir
    )
    train(cfg)
    assert json.loads((tmp_path / "up" / "plan.json").read_text())["vocab_size"] == 5000


def test_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "src" / "train.py"),
            "model.d_model=100",
            "model.n_heads=7",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "error: model.d_model=100 is not divisible by model.n_heads=7" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_secrets_from_the_environment_never_reach_logs_or_results(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_SERVICE_API_KEY", secret)
    run(tmp_path, cache_dir, "+notes=${oc.env:MY_SERVICE_API_KEY}", "trainer.max_steps=1")
    written = [
        p.read_text()
        for p in tmp_path.rglob("*")
        if p.is_file() and p.suffix in (".json", ".yaml", ".csv") and ".hydra" not in p.parts
    ]
    assert written and not any(secret in text for text in written)
    hparams = (tmp_path / "csv" / "hparams.yaml").read_text()
    assert "<redacted:MY_SERVICE_API_KEY>" in hparams


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=gpt_huge"], "Could not find 'model/gpt_huge'"),
        (["+experiment=prenrom"], "Could not find 'experiment/prenrom'"),
        (["+sweeps=norm_x_activaton"], "Could not find 'sweeps/norm_x_activaton'"),
    ],
)
def test_unknown_preset_experiment_or_sweep(overrides: list[str], message: str) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=message):
        compose_train(overrides)


def test_sequence_longer_than_the_context_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.seq_len=512 is above model.max_seq_len=256"):
        run(tmp_path, cache_dir, "data.seq_len=512")


def test_unknown_hf_dataset_is_a_clear_error(
    tmp_path: Path, cache_dir: Path, hf_offline: None
) -> None:
    with pytest.raises(
        ConfigError,
        match=r"data.name='no-such/dataset-xyz' .* could not be "
        r"loaded with datasets.load_dataset",
    ):
        run(tmp_path, cache_dir, "data=hf", "data.name=no-such/dataset-xyz")


# what the init_from tests below start from (each reads its checkpoint, none writes to it)
INIT_SOURCE = [*SMOKE, "logger=none", "callbacks.sample=null"]


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run (no logger, no sample), trained once for this module's init_from tests:
    they read its ``checkpoints/last.ckpt`` and never write under it."""
    run_dir = tmp_path_factory.mktemp("first")
    train(compose_train(INIT_SOURCE, run_dir))  # the session's data cache, as the CLI's
    return run_dir


@dataclasses.dataclass
class InitRun:
    source: Path  # its init_from file: a copy of first's checkpoint, as trained
    run_dir: Path
    init: list[str]  # the command line that trained it, less hydra.run.dir
    code: int  # its exit code


@pytest.fixture(scope="module")
def init_run(tmp_path_factory: pytest.TempPathFactory, first: Path) -> InitRun:
    """``lmlab train model=gpt_tiny init_from=<source> data.tokenizer=checkpoint``, 2 steps,
    run once in this process as ``run_command`` runs it (``source``: a copy of ``first``'s
    checkpoint). The init_from tests below resume in copies of it (``copy_of_init_run``),
    never in it; a copy names the same ``source``, which a test may remove or replace (each
    puts there what it needs), as the run is trained already."""
    base = tmp_path_factory.mktemp("init")
    source, run_dir = base / "source.ckpt", base / "run"
    shutil.copy(first / "checkpoints" / "last.ckpt", source)
    init = [*INIT_SOURCE, f"init_from={source}", "data.tokenizer=checkpoint", "model=gpt_tiny"]
    root = logging.getLogger()
    handlers = list(root.handlers)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exited:
        without_heap_work(patch)
        command("train", [*init, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"])
    for handler in [h for h in root.handlers if h not in handlers]:  # Hydra's job logging:
        root.removeHandler(handler)  # its file handler would append to the run's train.log
        handler.close()
    return InitRun(source, run_dir, init, exited.value.code)


def copy_of_init_run(init_run: InitRun, run_dir: Path) -> list[str]:
    """``init_run`` copied into ``run_dir`` (links kept as links); the command line that
    trained it there."""
    shutil.copytree(init_run.run_dir, run_dir, symlinks=True)
    return [*init_run.init, f"hydra.run.dir={run_dir}"]


def test_init_from_takes_the_checkpoints_own_preset_and_names_what_may_differ(
    tmp_path: Path, first: Path, init_run: InitRun, run_command, capsys: pytest.CaptureFixture
) -> None:
    """``model=gpt_tiny`` with a gpt_tiny checkpoint asks for its architecture: the preset's
    null fields (the vocabulary, d_ff) are derived, not a conflict (``init_run`` trained).
    Another preset is refused, naming the model fields a run may still set."""
    assert init_run.code == 0
    smoke = INIT_SOURCE
    init = [*smoke, f"init_from={first / 'checkpoints' / 'last.ckpt'}", "data.tokenizer=checkpoint"]
    assert run_command("train", *init, "model=gpt_mini", f"hydra.run.dir={tmp_path / 'b'}") == 2
    err = capsys.readouterr().err
    assert "model.d_model=256 (from model=gpt_mini) but the checkpoint has 128" in err, err
    assert "model.vocab_size" not in err and "model.cache_dir" not in err
    assert "Only model.dropout, model.activation_checkpointing" in err, err


def test_an_init_from_run_resumes_after_its_source_is_gone(
    tmp_path: Path, first: Path, init_run: InitRun, run_command, capsys: pytest.CaptureFixture
) -> None:
    """The run's own checkpoint holds the architecture and tokenizer it took from
    ``init_from``: a resume needs the source file no longer (it was refused for good, with
    no way to name the run's checkpoint instead). ``ckpt_path`` with ``init_from`` is
    refused: one continues a run, the other starts one."""
    smoke = INIT_SOURCE
    source, run_dir = init_run.source, tmp_path / "run"
    init = copy_of_init_run(init_run, run_dir)  # trained 2 steps from source
    assert init_run.code == 0
    source.unlink(missing_ok=True)  # gone (another test may have replaced it, or removed it)
    capsys.readouterr()
    assert run_command("train", *init, "trainer.max_steps=2") == 2  # a new run needs it
    assert f"init_from={source}: no such file" in capsys.readouterr().err
    assert run_command("train", *init, "trainer.max_steps=4", "resume=true") == 0
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 4
    assert run_command("train", *init, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}") == 2
    assert "exclude each other" in capsys.readouterr().err
    # resume=true took the directory's newest checkpoint and ignored ckpt_path, saying nothing
    older = run_dir / "checkpoints" / "step000002.ckpt"
    again = [*smoke, f"hydra.run.dir={run_dir}", "trainer.max_steps=6", "resume=true"]
    assert run_command("train", *again, f"ckpt_path={older}") == 2
    err = capsys.readouterr().err
    assert f"error: resume=true and ckpt_path={older} exclude each other" in err, err
    assert json.loads((run_dir / "results.json").read_text()) == record


def test_an_init_from_run_resumes_after_its_source_was_replaced(
    tmp_path: Path, first: Path, init_run: InitRun, run_command, capsys: pytest.CaptureFixture
) -> None:
    """The ``init_from`` file replaced by another model (a name reused for a newer
    checkpoint): the resume read the file and refused the run's own checkpoint as "trained
    with another model", naming fields the command had not changed. The run's checkpoint
    holds the architecture and tokenizer it took, as when the file is gone."""
    run_dir = tmp_path / "run"
    init = copy_of_init_run(init_run, run_dir)  # trained 2 steps from source
    assert init_run.code == 0
    other = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)  # source's
    other["model_config"]["activation"] = "relu"  # another model now under that name
    torch.save(other, init_run.source)
    capsys.readouterr()
    assert run_command("train", *init, "trainer.max_steps=4", "resume=true") == 0, (
        capsys.readouterr()
    )
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 4
    assert json.loads((run_dir / "plan.json").read_text())["model"]["activation"] == "gelu"


def test_an_init_from_run_resumes_from_its_sharded_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An FSDP run started with ``init_from=<file>`` resumes from its own sharded checkpoint,
    whose ``meta.pt`` holds the architecture and tokenizer but no weights (the shards do): the
    file's sharding was asked for instead of that checkpoint's, and the resume refused as
    "not an lmlab checkpoint (no model_config/weights)". The shards' index is not checked
    here (``check_shards``): the folder holds ``meta.pt`` alone."""
    from lmlab.config import DataConfig, model_config_dict, to_schema
    from lmlab.train.init_from import resolve_init_from

    monkeypatch.setattr("lmlab.infer.checkpoint.check_shards", lambda path: None)
    run_dir, source = tmp_path / "run", tmp_path / "gone.ckpt"
    sharded = run_dir / "checkpoints" / "step000002.ckpt"
    sharded.mkdir(parents=True)
    saved = ModelConfig(vocab_size=300)
    meta = {"model_config": model_config_dict(saved), "tokenizer": "{}", "global_step": 2}
    torch.save(meta, sharded / "meta.pt")
    (run_dir / "run_config.yaml").write_text(f"init_from: {source}\n")
    overrides = [*SMOKE, f"init_from={source}", "data.tokenizer=checkpoint", "resume=true"]
    cfg = compose_train(overrides, run_dir, tmp_path)
    composed = to_schema(ModelConfig, cfg.model)
    init = resolve_init_from(cfg, composed, to_schema(DataConfig, cfg.data))
    assert init is not None and init.model_cfg == saved


def test_the_w_and_b_id_record_is_checked_and_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``wandb_id`` is what reopens the run's W&B run on a resume: an id W&B would refuse
    is named before any work; a lost file is recovered from results.json (a new id would
    split the run's history in two); a new run gets one, written whole."""
    from lmlab.train.wandb_run import recorded_wandb_id, wandb_run_id

    assert recorded_wandb_id(tmp_path) is None
    new = wandb_run_id(tmp_path)
    assert (tmp_path / "wandb_id").read_text() == new and recorded_wandb_id(tmp_path) == new
    for bad in ("not a valid/id with spaces!\n", "", "  \n"):
        (tmp_path / "wandb_id").write_text(bad)
        with pytest.raises(ConfigError, match=r"wandb_id holds .*, not a W&B run id"):
            recorded_wandb_id(tmp_path)
    (tmp_path / "wandb_id").unlink()
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "wandb_id": "ab12"}))
    with caplog.at_level("WARNING"):
        assert wandb_run_id(tmp_path) == "ab12"
    assert (tmp_path / "wandb_id").read_text() == "ab12"
    assert any("was missing" in m for m in caplog.messages), caplog.messages


def test_only_global_rank_0_records_the_w_and_b_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks that torchrun or srun start together each made an id and wrote it: the file kept
    the last rank's, not the id of rank 0's W&B run, so results.json and a resume named a W&B
    run that does not exist. Another rank reads the record and writes none."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from lmlab.train.wandb_run import record_wandb_name, wandb_run_id

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    wandb_run_id(tmp_path)
    record_wandb_name(tmp_path, "rank 1's name")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    kept = wandb_run_id(tmp_path)
    record_wandb_name(tmp_path, "the run")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert wandb_run_id(tmp_path) == kept  # rank 0's, read from its record
    record_wandb_name(tmp_path, "rank 1's name")
    assert (tmp_path / "wandb_id").read_text() == kept
    assert (tmp_path / "wandb_name").read_text() == "the run"


def test_init_from_keeps_the_checkpoints_moe_training_weights_unless_asked(tmp_path) -> None:
    """The MoE fields that only weigh or limit routing in training (the router losses'
    weights, the capacity) carry no weights: ``init_from`` takes the checkpoint's, or the
    value the command asks for (a converted Mixtral fine-tuned without a z-loss). The
    routing's architecture (experts, top-k) stays the checkpoint's: asking for another
    names that field alone."""
    from lmlab.config import ModelConfig, MoEConfig, model_config_dict
    from lmlab.train.preflight import check_run

    moe = MoEConfig(num_experts=4, aux_loss_coef=0.03, z_loss_coef=0.002, capacity_factor=1.5)
    ckpt = tmp_path / "moe.ckpt"
    saved = model_config_dict(ModelConfig(vocab_size=300, moe=moe))
    torch.save({"model_config": saved, "state_dict": {}, "tokenizer": "{}"}, ckpt)
    init = ["+debug=smoke", f"init_from={ckpt}", "data.tokenizer=checkpoint", "dry_run=true"]

    def routing(*overrides: str) -> MoEConfig:
        cfg = compose_train([*init, *overrides], tmp_path / "run", tmp_path)
        return check_run(cfg).init.model_cfg.moe

    assert routing() == moe
    assert routing("model.moe.z_loss_coef=0", "model.moe.capacity_factor=null") == MoEConfig(
        num_experts=4, aux_loss_coef=0.03, z_loss_coef=0.0, capacity_factor=None
    )
    assert routing("model.moe={z_loss_coef:0,capacity_factor:null}") == MoEConfig(
        num_experts=4, aux_loss_coef=0.03, z_loss_coef=0.0, capacity_factor=None
    )  # the same asked as a dict: its fields, not every MoE field
    with pytest.raises(ConfigError) as err:
        routing("model.moe.top_k=1", "model.moe.aux_loss_coef=0.5")
    assert str(err.value).startswith(
        f"init_from={ckpt} takes the architecture from the checkpoint: model.moe.top_k=1 but "
        "the checkpoint has 2. Only model.dropout"
    ), err.value
    assert "num_experts" not in str(err.value)


def test_a_sequence_longer_than_the_checkpoints_positions_names_the_checkpoint(
    tmp_path: Path,
) -> None:
    """Under ``init_from`` the positions are the checkpoint's: the refusal named
    ``model.max_seq_len``, which the command may not set (the architecture is the
    checkpoint's), as if it came from the run's own preset."""
    from lmlab.config import ModelConfig, model_config_dict
    from lmlab.train.preflight import check_run

    ckpt = tmp_path / "short.ckpt"
    saved = model_config_dict(ModelConfig(vocab_size=300, max_seq_len=64))
    torch.save({"model_config": saved, "state_dict": {}, "tokenizer": "{}"}, ckpt)
    init = ["+debug=smoke", f"init_from={ckpt}", "data.tokenizer=checkpoint", "dry_run=true"]
    cfg = compose_train([*init, "data.seq_len=128"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError) as err:
        check_run(cfg)
    assert str(err.value) == (
        f"data.seq_len=128 is above the max_seq_len of init_from={ckpt}'s checkpoint, 64, the "
        "positions the model has; allowed: 1 to 64"
    )


def test_init_from_a_converted_t5_takes_its_recipe(tmp_path: Path) -> None:
    """``from_hf`` cannot read lmlab's ``init`` from a transformers T5, so a converted T5
    holds the default (gpt2); ``model=t5_tiny +experiment=t5``, the recipe the conversion
    names, asks for ``init=t5`` and was refused over it. ``init`` and ``init_std`` start only
    the weights a checkpoint lacks: the run's own are taken, the architecture stays the
    checkpoint's."""
    from lmlab.config import Init, model_config_dict, to_schema
    from lmlab.train.preflight import check_run

    recipe = ["model=t5_tiny", "+experiment=t5"]
    composed = to_schema(ModelConfig, compose_train(recipe).model)
    converted = dataclasses.replace(composed, vocab_size=300, d_ff=composed.ffn_dim, init=Init.gpt2)
    ckpt = tmp_path / "t5.ckpt"
    torch.save(
        {"model_config": model_config_dict(converted), "state_dict": {}, "tokenizer": "{}"}, ckpt
    )
    init = ["+debug=smoke", f"init_from={ckpt}", "data.tokenizer=checkpoint", "dry_run=true"]
    cfg = compose_train([*init, *recipe], tmp_path / "run", tmp_path)
    assert check_run(cfg).init.model_cfg == dataclasses.replace(converted, init=Init.t5)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_every_target_token_weighs_alike_however_the_batch_is_split(
    tmp_path: Path, cache_dir: Path, family: str
) -> None:
    """BERT's micro-batches hold unequal numbers of masked tokens: averaging each micro-batch's
    mean weighed a token of a sparse one more, so the same global batch of 8 rows made
    another update at 4 x 2 micro-batches than at 8 (gradient norm 1.79216 against 1.78272
    at bert_tiny's step 0). Each target now counts alike (``LMTask.token_weighted``). In
    float64 the two splits' logged losses and gradient norms agree to the summation order's
    rounding (the terms are O(1), a few thousand of them: 1e-12 relative is far above it).
    Rows are masked alike at both splits (each seeded by its sample number, ``row_seeds``:
    seeded by the whole micro-batch, the splits drew other masks). GPT, whose micro-batches
    hold as many targets, is the control."""
    logged = {}
    for micro in (8, 4):
        out = tmp_path / str(micro)
        overrides = [f"model={family}_tiny", "trainer.precision=64-true", "logger=csv"]
        overrides += ["data.global_batch_size=8", f"data.batch_size={micro}"]
        overrides += ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "~callbacks.sample"]
        run(out, cache_dir, *overrides)
        rows = [r for r in read_csv(out / "csv" / "metrics.csv") if r.get("train/loss")]
        logged[micro] = [(float(r["train/loss"]), float(r["train/grad_norm"])) for r in rows]
    assert len(logged[8]) == 2
    for (loss8, norm8), (loss4, norm4) in zip(logged[8], logged[4], strict=True):
        assert loss4 == pytest.approx(loss8, rel=1e-12) and norm4 == pytest.approx(norm8, rel=1e-12)
