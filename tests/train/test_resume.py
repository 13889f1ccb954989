"""Reliability: kill -9 and resume, atomic checkpoint writes, SIGTERM, non-finite guard,
and the resume/checkpoint input checks."""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from lmlab.config import CONF_DIR
from lmlab.errors import ConfigError
from lmlab.train.checkpointing import AtomicCheckpointIO
from lmlab.train.compose import compose_train
from lmlab.train.resume import check_same_run, resume_checkpoint, run_identity
from lmlab.train.run import train
from smoke import SHORT_ROWS, SMOKE

REPO = CONF_DIR.parent  # the repository root

# dropout > 0 so the RNG state must be restored too; 40 steps, a checkpoint every 10.
RUN = [
    "+debug=smoke",
    "trainer.max_steps=40",
    "checkpoint.every_n_steps=10",
    "logger=csv",
    "model.dropout=0.1",
    "trainer.val_check_interval=20",
]


class InjectNaN(L.Callback):
    """Test hook: poisons the gradients once, at ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad.fill_(float("nan"))


REMOVED_BUT_MAPPED: list[str] = []


class RemovedButMapped(L.Callback):
    """Test hook: the checkpoint files this process still maps once training ends that were
    removed since (their disk space is not freed while mapped), into ``REMOVED_BUT_MAPPED``."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        maps = Path("/proc/self/maps").read_text().splitlines()
        REMOVED_BUT_MAPPED[:] = [m for m in maps if ".ckpt" in m and m.endswith("(deleted)")]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.time() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.02)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def logged_steps(run_dir: Path, metric: str) -> list[int]:
    """The steps of the rows of csv/metrics.csv that hold ``metric``, in file order (none yet:
    empty; a running process may be appending the last line)."""
    path = run_dir / "csv" / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    complete = [line for line in lines if line.endswith("\n")]
    return [int(row["step"]) for row in csv.DictReader(complete) if row.get(metric)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """The uninterrupted run, same seed and overrides. It starts with no measured matmul peak
    in the cache (the Throughput callback measures it, running matmuls on random inputs) and
    the runs it is compared with find it cached: the training stream must not depend on that."""
    (cache_dir / "peak_flops.json").unlink(missing_ok=True)
    run_dir = tmp_path_factory.mktemp("reference")
    train(compose_train(RUN, run_dir, cache_dir))  # in this process: one Lightning import less
    return results(run_dir)


# A run of 2 smoke steps, no logger: what most input checks below start from.
SHORT = [*SMOKE, "trainer.max_steps=2", "logger=none"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Path]:
    """SHORT, trained once for this file's tests: one reads its checkpoint, or resumes in a
    copy of it (``copy_run``), never in it."""
    run_dir = tmp_path_factory.mktemp("short") / "run"
    train(compose_train(SHORT, run_dir, cache_dir))
    files = files_of(run_dir)
    yield run_dir
    assert files_of(run_dir) == files, "a test wrote in the shared run"


def files_of(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Each file under ``run_dir``: its size and modification time."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in run_dir.rglob("*")}


def copy_run(run_dir: Path, to: Path) -> Path:
    """A copy of ``run_dir`` at ``to`` to resume in (``last.ckpt`` stays a relative link)."""
    shutil.copytree(run_dir, to, symlinks=True)
    return to


def saved_step(path: Path) -> int:
    """The step of a checkpoint that a running process may replace at any moment (the rename
    is atomic, so a read sees the old file or the new one)."""
    return torch.load(path, weights_only=True)["global_step"]


@pytest.mark.e2e
def test_kill_9_then_sigterm_then_resume_matches_uninterrupted_run(
    tmp_path: Path, start_train, reference: dict, cache_dir: Path
) -> None:
    """Killed with -9 after the first checkpoint, resumed, stopped by SIGTERM (preemption saves
    a checkpoint at the next step boundary, exit code 143, status preempted), resumed again:
    bit-identical to the uninterrupted run on CPU (same rows, same RNG stream, same optimizer
    and schedule state), and csv/metrics.csv holds every step once, from the first run on."""
    last = tmp_path / "checkpoints" / "last.ckpt"

    def launch(*extra: str) -> subprocess.Popen:
        return start_train(*RUN, f"hydra.run.dir={tmp_path}", *extra)

    proc = launch()
    wait_for(last, proc)
    # step 10 has no validation: its checkpoint is saved before its row is logged, and a kill
    # in between loses the row (README). Here the kill comes once the row is written.
    while saved_step(last) - 1 not in logged_steps(tmp_path, "train/loss"):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = saved_step(last)
    assert killed_at < 40, "the kill came after training ended"

    proc = launch("resume=true")
    deadline = time.time() + 120
    while saved_step(last) == killed_at:  # the resumed run has saved once more
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint after resuming"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate()[0]
    if proc.returncode == 0:
        pytest.fail("the run ended before SIGTERM arrived; raise trainer.max_steps")
    assert proc.returncode == 143, out
    assert "preempted at step" in out and "resume=true" in out
    assert results(tmp_path)["status"] == "preempted"
    assert killed_at < saved_step(last) < 40

    train(compose_train([*RUN, "resume=true"], tmp_path, cache_dir))  # one import less
    r = results(tmp_path)
    assert r["status"] == "completed" and r["global_step"] == 40
    assert r["resumed_from"].endswith("last.ckpt")
    assert r["train_loss"] == reference["train_loss"]
    assert r["val_loss"] == reference["val_loss"]
    # one history across the three processes: the rows the killed run wrote after its last
    # checkpoint were replaced by the resumed run's, none lost or repeated
    assert logged_steps(tmp_path, "train/loss") == list(range(40))
    assert logged_steps(tmp_path, "val/loss") == [19, 39]  # validation every 20 steps


@pytest.mark.e2e
def test_ctrl_c_saves_records_interrupted_and_resumes_exactly(
    tmp_path: Path, start_train, reference: dict, cache_dir: Path
) -> None:
    """SIGINT (Ctrl-C) stops at the next step boundary like SIGTERM: a checkpoint there,
    ``status: interrupted``, exit code 130 and the resume command in the log. The resumed run
    matches the uninterrupted one, so the checkpoint was taken at a consistent point."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = start_train(*RUN, f"hydra.run.dir={tmp_path}")
    wait_for(last, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate()[0]
    if proc.returncode == 0:
        pytest.fail("the run ended before SIGINT arrived; raise trainer.max_steps")
    assert proc.returncode == 130, out
    r = results(tmp_path)
    assert r["status"] == "interrupted", r
    stopped_at = saved_step(last)
    assert 10 <= stopped_at < 40 and r["global_step"] == stopped_at
    assert f"interrupted at step {stopped_at}" in out and "resume=true" in out
    assert "Traceback" not in out

    train(compose_train([*RUN, "resume=true"], tmp_path, cache_dir))  # one import less
    r = results(tmp_path)
    assert r["status"] == "completed" and r["global_step"] == 40
    assert r["val_loss"] == reference["val_loss"]


@pytest.mark.parametrize(
    ("signum", "code", "status"),
    [(signal.SIGTERM, 143, "preempted"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_stopped_command_exits_with_its_signals_code_and_resumes(
    tmp_path: Path,
    cache_dir: Path,
    run_command,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
    code: int,
    status: str,
) -> None:
    """``lmlab train`` stopped by SIGTERM (preemption) or Ctrl-C, in this process (during the
    validation after step 2: the stop waits for its end): a checkpoint there, the shell's exit
    code for the signal (128 + its number), the status and the resume command on one line, no
    traceback; ``resume=true`` completes the run. The same through real processes and
    kill -9: the e2e tests above."""
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    hook = ["+callbacks.stop._target_=test_rundir.SignalAt", "+callbacks.stop.step=2"]
    argv = [*SMOKE, "trainer.max_steps=4", f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *argv, *hook, f"+callbacks.stop.signum={int(signum)}") == code
    out = "".join(capsys.readouterr())
    assert f"{status} at step 2" in out, out
    hint = f"resume with: python src/train.py <same overrides> resume=true hydra.run.dir={tmp_path}"
    assert hint in out, out
    assert "Traceback" not in out
    assert ("Received SIGTERM" in out) == (signum == signal.SIGTERM), out  # Ctrl-C says Ctrl-C
    r = results(tmp_path)
    assert r["status"] == status and r["global_step"] == 2
    assert saved_step(tmp_path / "checkpoints" / "last.ckpt") == 2
    assert run_command("train", *argv, "resume=true") == 0
    r = results(tmp_path)
    assert r["status"] == "completed" and r["global_step"] == 4


# a child process whose packing of the rows meets a stop signal, as a scheduler's would
STOPPED_WHILE_PACKING = """
import os, signal, sys
import lmlab.data.packing as packing
signum, argv, pack = signal.Signals[sys.argv[1]], sys.argv[2:], packing.pack
def stopped(*args, **kwargs):
    os.kill(os.getpid(), signum)
    return pack(*args, **kwargs)
packing.pack = stopped
from lmlab.cli.main import command
command("train", argv)
"""


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_while_the_data_is_prepared_leaves_no_partial_cache_entry(
    tmp_path: Path, name: str
) -> None:
    """SIGTERM (a scheduler's) or SIGUSR1 (SLURM's warning) before training, here while the
    rows are packed into an empty cache: the process died of the signal, said nothing, left
    its run folder, and the cache kept the half-built entry (``.tmp-*``, as large as the rows
    tokenized so far) for good. It now stops as Ctrl-C does there: one line, exit code 143,
    the folder it made and the partial entry removed."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    env = {**os.environ, "LMLAB_CACHE": str(cache), "WANDB_MODE": "offline"}
    argv = [*SMOKE, "logger=csv", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_PACKING, name, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 143, proc.stdout + proc.stderr
    said = f"preempted ({name}) before training: nothing was written to {run_dir}"
    assert proc.stderr.splitlines()[-1] == said, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not run_dir.exists()
    assert not [p.name for p in cache.iterdir() if p.name.startswith((".tmp-", "blocks-"))]


@pytest.mark.e2e
def test_a_second_run_into_a_live_directory_is_refused(
    tmp_path: Path, start_train, run_command, capsys: pytest.CaptureFixture
) -> None:
    """Two runs in one directory would mix their checkpoints: while one runs (stopped here with
    SIGSTOP, so it cannot finish first), another, even ``resume=true``, is refused before it
    writes anything; the first then completes. kill -9 leaves no live lock (see above)."""
    first = start_train(*RUN, "trainer.max_steps=12", f"hydra.run.dir={tmp_path}")
    wait_for(tmp_path / "checkpoints" / "last.ckpt", first)  # step 10's
    first.send_signal(signal.SIGSTOP)
    try:
        argv = [*RUN, "trainer.max_steps=12", f"hydra.run.dir={tmp_path}", "resume=true"]
        code = run_command("train", *argv)
    finally:
        first.send_signal(signal.SIGCONT)
    out = "".join(capsys.readouterr())
    assert code == 2, out
    assert f"{tmp_path} is in use by a live run (pid {first.pid})" in out
    assert first.wait() == 0, first.stdout.read()
    assert results(tmp_path)["status"] == "completed" and results(tmp_path)["global_step"] == 12
    assert "resume=true" not in (tmp_path / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.e2e
def test_kill_during_checkpoint_save_leaves_previous_loadable(tmp_path: Path) -> None:
    """A writer killed mid-save (a 400 MB checkpoint) never leaves a torn file behind."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    code = (
        "import sys, torch; from lmlab.train.checkpointing import AtomicCheckpointIO; "
        "print('ready', flush=True); "
        "AtomicCheckpointIO().save_checkpoint({'global_step': 2, 'w': torch.zeros(100_000_000)},"
        f" {str(path)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = AtomicCheckpointIO().load_checkpoint(path)
    assert ckpt["global_step"] in (1, 2)  # the old one, or the complete new one: never torn
    if ckpt["global_step"] == 1:
        assert torch.equal(ckpt["w"], torch.ones(3))


def test_nan_stops_the_run_naming_step_and_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    """The NaN at step 3, after step 2's checkpoint: the error names both."""
    cfg = compose_train(
        [*RUN, SHORT_ROWS, "checkpoint.every_n_steps=2"]
        + ["+callbacks.nan._target_=test_resume.InjectNaN", "+callbacks.nan.step=3"],
        tmp_path,
        cache_dir,
    )
    with pytest.raises(
        Exception,
        match=r"non-finite loss or gradient norm at step 3 .*"
        r"last good checkpoint: .*last.ckpt",
    ):
        train(cfg)
    r = results(tmp_path)
    assert r["status"] == "failed" and "step 3" in r["error"]


def test_nan_skip_mode_drops_the_update_and_finishes(tmp_path: Path, cache_dir: Path) -> None:
    cfg = compose_train(
        [
            *RUN,
            SHORT_ROWS,
            "trainer.max_steps=6",
            "guard.mode=skip",
            "+callbacks.nan._target_=test_resume.InjectNaN",
            "+callbacks.nan.step=3",
        ],
        tmp_path,
        cache_dir,
    )
    train(cfg)
    r = results(tmp_path)
    assert r["status"] == "completed" and r["val_loss"] == r["val_loss"]  # finite, not NaN


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (
            [],
            ["resume=true", "model.norm=rmsnorm"],
            r"cannot resume .*another config; differing fields: "
            r"model.norm: 'layernorm' \(saved\) vs 'rmsnorm' \(now\)",
        ),
        ([], [], r"already holds checkpoints of an earlier run: continue it with .* resume=true "),
        # a new folder, or one a run was killed in before training: what to do instead
        (
            None,
            ["resume=true"],
            r"resume=true but .*last.ckpt does not exist \(nothing to resume in hydra.run.dir="
            r".*\); no run trained there: start it without resume=true \(or resume=auto\)$",
        ),
    ],
)
def test_resume_input_errors(
    tmp_path: Path, cache_dir: Path, short_run: Path, first: list | None, second: list, message: str
) -> None:
    """``first``: the run trained in the folder before (a copy of ``short_run``), None: none."""
    run_dir = tmp_path / "run"
    if first is not None:
        copy_run(short_run, run_dir)
    with pytest.raises(ConfigError, match=message):
        train(compose_train([*SHORT, *second], run_dir, cache_dir))


NO_CHECKPOINT = "holds no checkpoint, whether they were removed or it stopped before its first"


WITHOUT_CHECKPOINTS = [
    ([], None, NO_CHECKPOINT),  # killed before its first save, or checkpoints/ removed
    (["checkpoints/"], None, "saved checkpoints into checkpoints/, since removed"),
    (["checkpoints/.step000002.ckpt.k2j4x9.tmp"], None, NO_CHECKPOINT),  # 1st save killed
    (["checkpoints/"], {"status": "preempted", "global_step": 13}, "at step 13, since removed"),
    # a second Ctrl-C stopped the first save: the folder stayed, the record says no step
    (["checkpoints/"], {"status": "interrupted"}, "stopped before its first checkpoint"),
]


def test_a_run_without_checkpoints_is_told_why(tmp_path: Path) -> None:
    """A run that did not complete and holds no checkpoint: stopped before its first one, or
    they were removed (``rm checkpoints/*``: the folder is left; a stop's record names the
    step it saved). ``resume=true`` and a plain rerun both say which, as far as the directory
    tells, and name ``resume=auto``. (The cases in one test, a folder each: the two configs
    are composed once; ``resume_checkpoint`` is given the folder to check.)"""
    configs = [compose_train([*SMOKE, *extra], tmp_path) for extra in (["resume=true"], [])]
    for num, (left, record, says) in enumerate(WITHOUT_CHECKPOINTS):
        run_dir = tmp_path / f"case{num}"
        run_dir.mkdir()
        (run_dir / "run_config.yaml").write_text("{}\n")  # what a run that trained writes
        (run_dir / "plan.json").write_text("{}")
        for name in left:
            (run_dir / "checkpoints").mkdir(exist_ok=True)
            if not name.endswith("/"):
                (run_dir / name).write_bytes(b"half a checkpoint")
        if record is not None:
            (run_dir / "results.json").write_text(json.dumps(record))
        for cfg in configs:
            case = f"case {num} ({left}, {record}) resume={cfg.resume}"
            try:
                resume_checkpoint(cfg, run_dir)
            except ConfigError as refused:
                message = str(refused)
            else:
                pytest.fail(f"{case}: not refused")
            assert says in message, case
            assert "resume=auto starts it again from step 0" in message, case
            assert ("stopped before" in message) == ("since removed" not in says), (case, message)


def no_data_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on a run that reaches its data preparation fails the test."""

    def prepared(*args: Any) -> None:
        raise AssertionError("the data was prepared before the refusal")

    monkeypatch.setattr("lmlab.train.run.prepared_data", prepared)


def test_checkpoint_from_another_architecture_is_refused(
    tmp_path: Path, cache_dir: Path, short_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before the data is prepared (a large corpus's tokenizer and packing first)."""
    ckpt = short_run / "checkpoints" / "last.ckpt"  # read only
    no_data_work(monkeypatch)
    with pytest.raises(
        ConfigError,
        match=r"trained with another model; differing fields: "
        r"model.activation: 'gelu' \(saved\) vs 'swiglu' \(now\)",
    ):
        train(
            compose_train(
                [*SHORT, "model.activation=swiglu", f"ckpt_path={ckpt}"], tmp_path / "b", cache_dir
            )
        )


def test_a_checkpoint_saved_before_a_model_field_existed_still_matches() -> None:
    """A saved model config without a field added since (the MoE block, RoPE scaling) had
    that field's default; a value other than the default is a real difference."""
    from lmlab.config import ModelConfig, model_config_dict
    from lmlab.train.checkpoint_check import check_checkpoint_model

    saved = model_config_dict(ModelConfig(vocab_size=50))
    for field in ("rope_scaling", "rope_factor", "rope_original_max_seq_len", "moe"):
        saved.pop(field)
    check_checkpoint_model({"model_config": saved}, Path("old.ckpt"), ModelConfig(vocab_size=50))
    with pytest.raises(ConfigError, match=r"model.rope_factor: 8.0 \(saved\) vs 4.0 \(now\)"):
        now = ModelConfig(vocab_size=50, rope_factor=4.0)
        check_checkpoint_model({"model_config": saved}, Path("old.ckpt"), now)


def test_a_weights_only_checkpoint_is_refused_as_one_to_continue(tmp_path: Path) -> None:
    """``ckpt_path=`` a ``consolidate`` output was Lightning's KeyError traceback ("contains
    only the model"): named, with init_from, which starts from its weights."""
    from lmlab.config import ModelConfig, model_config_dict
    from lmlab.train.checkpoint_check import check_checkpoint_model

    cfg = ModelConfig(vocab_size=50)
    weights = {"state_dict": {}, "model_config": model_config_dict(cfg)}
    path = tmp_path / "step4-consolidated.ckpt"
    with pytest.raises(ConfigError, match=re.escape(f"{path} holds weights only (as `lmlab con")):
        check_checkpoint_model(weights, path, cfg)
    check_checkpoint_model(weights | {"optimizer_states": []}, path, cfg)


@pytest.mark.parametrize("optimizer", [False, True], ids=["weights", "with-optimizer"])
def test_another_programs_lightning_checkpoint_is_refused_as_not_lmlabs(
    tmp_path: Path, run_command, capsys, optimizer: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ckpt_path=`` a Lightning checkpoint lmlab did not save (no ``model_config``) was
    called weights only, ``lmlab consolidate``'s, and sent to ``init_from``, which refuses
    it; with optimizer state, every model field was listed as differing from None."""
    path = tmp_path / "other.ckpt"
    ckpt = {"state_dict": {"layer.weight": torch.zeros(2, 2)}, "global_step": 3, "epoch": 0}
    torch.save(ckpt | ({"optimizer_states": [{}]} if optimizer else {}), path)
    run = ["+debug=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    no_data_work(monkeypatch)
    assert run_command("train", *run, f"ckpt_path={path}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {path} is not an lmlab checkpoint (no model_c"), err
    assert "consolidate" not in err and "model.d_model" not in err


@pytest.mark.slow
def test_ckpt_path_with_other_optimizer_settings_is_refused(
    tmp_path: Path, cache_dir: Path, short_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ckpt_path=`` in a new directory restores the checkpoint's optimizer, whose
    param_groups hold its learning rate, betas, eps and weight decay: ``optim.lr=0.01`` there
    trained at the checkpoint's 0.001 while ``run_config.yaml`` said 0.01. Each other
    setting is now named; the settings it was trained with pass."""
    from lmlab.train.checkpoint_check import check_checkpoint_optimizer

    quiet = [*SMOKE, "logger=none", "callbacks.sample=null"]
    path = short_run / "checkpoints" / "last.ckpt"  # read only
    ckpt, optim = torch.load(path, weights_only=True), compose_train(quiet).optim
    check_checkpoint_optimizer(ckpt, path, optim)
    for field, value, shown in [
        ("lr", 0.01, "0.001 (saved) vs 0.01"),
        ("weight_decay", 0.0, "0.1 (saved) vs 0.0"),
        ("betas", [0.9, 0.99], "(0.9, 0.95) (saved) vs [0.9, 0.99]"),
        ("eps", 1e-6, "1e-08 (saved) vs 1e-06"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(f"optim.{field}: {shown} (now)")):
            check_checkpoint_optimizer(ckpt, path, OmegaConf.merge(optim, {field: value}))
    run_dir = tmp_path / "new"
    with monkeypatch.context() as patch:  # refused before the data is prepared
        no_data_work(patch)
        with pytest.raises(ConfigError, match=r"continues its optimizer, .* optim.lr: 0.001 \("):
            train(compose_train([*quiet, f"ckpt_path={path}", "optim.lr=0.01"], run_dir, cache_dir))
    assert not (run_dir / "checkpoints").exists()


def test_ckpt_path_with_another_global_batch_is_refused(
    tmp_path: Path, cache_dir: Path, short_run: Path
) -> None:
    """``ckpt_path=`` continues the checkpoint's data position, its step x the global batch:
    at twice the batch of step 2's checkpoint, the run started at row 16 (rows 8 to 15 never
    trained) and its record counted 4 steps of the new batch as tokens trained. Refused, naming
    the field, as a resume of the run itself is; the same batch continues."""
    quiet = [*SMOKE, "logger=none", "callbacks.sample=null"]
    path = short_run / "checkpoints" / "last.ckpt"  # read only: the new run is in run_dir
    run_dir = tmp_path / "new"
    wider = [*quiet, f"ckpt_path={path}", "trainer.max_steps=4"]
    with pytest.raises(ConfigError, match=r"has global_batch_size=4, this run 8 \(the data pos"):
        train(compose_train([*wider, "data.batch_size=8"], run_dir, cache_dir))
    assert not (run_dir / "checkpoints").exists()
    train(compose_train(wider, run_dir, cache_dir))
    assert results(run_dir)["global_step"] == 4 and results(run_dir)["resumed_step"] == 2


def test_a_resume_on_another_device_count_may_name_the_global_batch_its_own_way(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A run that left the global batch to micro-batch x devices x accumulation (4 x 1 x 2)
    resumes where that product is named or split otherwise (``data.global_batch_size=8``,
    ``data.batch_size=8``): plan.json's global batch decides, not the config's fields. The
    error's own advice (``data.global_batch_size``) was refused as a config difference, so
    a run could not move to another device count. Another global batch is still refused."""
    run = [*SMOKE, "trainer.accumulate_grad_batches=2", "trainer.max_steps=2", "logger=none"]
    train(compose_train(run, tmp_path, cache_dir))
    resumed = [*SMOKE, "trainer.max_steps=3", "logger=none", "resume=true"]
    with pytest.raises(ConfigError, match=r"its plan.json has global_batch_size=8, this run 4"):
        train(compose_train(resumed, tmp_path, cache_dir))
    train(compose_train([*resumed, "data.global_batch_size=8"], tmp_path, cache_dir))
    resumed = [*resumed, "trainer.max_steps=4", "data.batch_size=8", "data.val_batch_size=2"]
    train(compose_train(resumed, tmp_path, cache_dir))
    assert json.loads((tmp_path / "results.json").read_text())["global_step"] == 4
    with pytest.raises(ConfigError, match=r"its plan.json has global_batch_size=8, this run 2"):
        train(compose_train([*resumed, "data.batch_size=2"], tmp_path, cache_dir))


def test_a_resume_at_another_accumulation_trains_the_steps_it_would_have(
    tmp_path: Path, cache_dir: Path, recwarn: pytest.WarningsRecorder
) -> None:
    """The same global batch on other devices is another gradient accumulation: resumed at a
    step saved with 1, a run with 2 trains the uninterrupted run's steps on its batches (it
    closed its first step after one micro-batch; with fewer micro-batches a step, the epoch
    ended early and batches were replayed: ``rebatch_progress``). Lightning's warning that a
    resume mid-epoch is unreliable is not shown: this one is exact."""
    run = [*SMOKE, "data.global_batch_size=8", "trainer.max_steps=6", "logger=csv"]
    run += ["checkpoint.every_n_steps=3", "callbacks.checkpoint.save_top_k=-1"]
    run += ["trainer.val_check_interval=100"]
    train(compose_train([*run, "data.batch_size=8"], tmp_path / "a", cache_dir))
    ckpt = tmp_path / "a" / "checkpoints" / "step000003.ckpt"
    resumed = [*run, "data.batch_size=4", f"ckpt_path={ckpt}"]
    train(compose_train(resumed, tmp_path / "b", cache_dir))

    def losses(run_dir: Path) -> dict[int, float]:
        with open(run_dir / "csv" / "metrics.csv") as f:
            return {
                int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]
            }

    whole, after = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert not [w for w in recwarn if "resuming from a checkpoint that ended" in str(w.message)]
    assert sorted(after) == [3, 4, 5]
    # fp32 losses near 8 from the same rows, summed in two halves: a few ulps (1e-6) apart
    for step, loss in after.items():
        assert loss == pytest.approx(whole[step], rel=1e-5), step


def test_a_resume_after_the_corpus_changed_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    """A changed corpus trains another tokenizer of the same size: the ids would no longer
    mean what the checkpoint's weights learnt, so the resume is refused, not trained. One
    that trains the same tokenizer is refused too: the data position would mean other rows."""
    corpus = tmp_path / "corpus.txt"
    words = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
    corpus.write_text("\n".join(" ".join(words[i % 12 :] + words[: i % 12]) for i in range(400)))
    run = [
        *SMOKE,
        "trainer.max_steps=2",
        "logger=none",
        "data=text",
        f"data.path={corpus}",
        "data.vocab_size=400",
        "data.seq_len=32",
    ]
    train(compose_train(run, tmp_path / "run", cache_dir))
    corpus.write_text(corpus.read_text().replace("e", "a").replace("o", "u"))
    with pytest.raises(ConfigError, match=r"trained with another tokenizer than the one"):
        train(
            compose_train([*run, "trainer.max_steps=4", "resume=true"], tmp_path / "run", cache_dir)
        )
    # a char tokenizer of the same letters is the same tokenizer: the corpus's own counts,
    # which plan.json keeps, tell the change (a relative data.path read from another folder)
    chars = [*run, "data.tokenizer=char"]
    train(compose_train(chars, tmp_path / "char", cache_dir))
    text = corpus.read_text()
    corpus.write_text(text + "\n" + text.splitlines()[5])  # one more line, the same letters
    with pytest.raises(ConfigError, match=r"its corpus changed since it started: plan.json "):
        train(
            compose_train(
                [*chars, "trainer.max_steps=4", "resume=true"], tmp_path / "char", cache_dir
            )
        )


def test_a_resume_by_an_lmlab_of_another_data_preparation_is_refused_before_the_data(
    tmp_path: Path, cache_dir: Path, short_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run records the data preparation version of the lmlab that started it, in plan.json
    and in its checkpoints; a resume by an lmlab of another one, older or newer, is refused
    before any data is prepared (it was refused only once the data was, where the split
    moved), naming both versions and, for an older run's, what changed since."""
    from lmlab.data.packing import PREPARATION_CHANGES, PREPARATION_VERSION

    run_dir = copy_run(short_run, tmp_path / "run")
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["data_preparation"] == PREPARATION_VERSION
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["run_state"]
    assert saved["data_preparation"] == PREPARATION_VERSION

    def no_data(*args: object) -> None:
        raise AssertionError("the data was prepared")

    monkeypatch.setattr("lmlab.train.run.prepared_data", no_data)
    resume = [*SHORT, "trainer.max_steps=4", "resume=true"]
    newest = PREPARATION_CHANGES[PREPARATION_VERSION]  # what an older run's refusal names last
    now = PREPARATION_VERSION
    for was, says in [(now - 1, newest), (now + 1, "a later lmlab")]:
        (run_dir / "plan.json").write_text(json.dumps(plan | {"data_preparation": was}))
        with pytest.raises(ConfigError, match="prepared its data otherwise") as refused:
            train(compose_train(resume, run_dir, cache_dir))
        words = str(refused.value)
        assert f"data_preparation={was}, this lmlab's is {PREPARATION_VERSION}: " in words
        assert says in words
        assert "init_from=<its checkpoint> data.tokenizer=checkpoint" in words


def test_a_completed_run_of_another_data_preparation_is_left_as_it_is(
    tmp_path: Path,
    cache_dir: Path,
    short_run: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A completed run resumed with no step left (a sweep resumed with ``resume=auto`` to add
    jobs, by a later lmlab whose data preparation changed) reads nothing of its data: it is
    reported done and its files are left as they were, where it was refused as a resume of
    another data preparation (and its sweep with it). The steps a ``flops`` budget sets are
    the completed model's (plan.json's parameter count). A sweep's check of the job passes
    the same way. Its global batch is still checked, and a resume with steps left is still
    refused before the data."""
    from lmlab.data.packing import PREPARATION_VERSION
    from lmlab.train.batch import resolve_global_batch
    from lmlab.train.completed import done_before_data
    from lmlab.train.preflight import check_job, check_run
    from lmlab.train.resume import check_continues

    run_dir = copy_run(short_run, tmp_path / "run")
    plan = json.loads((run_dir / "plan.json").read_text())
    (run_dir / "plan.json").write_text(json.dumps(plan | {"data_preparation": 0}))
    assert PREPARATION_VERSION > 0
    results = json.loads((run_dir / "results.json").read_text())
    before = files_of(run_dir)

    def no_data(*args: object) -> None:
        raise AssertionError("the data was prepared")

    monkeypatch.setattr("lmlab.train.run.prepared_data", no_data)
    for resume in ("true", "auto"):
        cfg = compose_train([*SHORT, f"resume={resume}"], run_dir, cache_dir)
        check_continues(cfg, check_job(cfg), run_dir)  # a resumed sweep's check of the job
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lmlab.train.completed"):
            assert train(cfg) == results["val_loss"]
        assert caplog.text.count("nothing to train") == 1  # said once, by the run
        assert files_of(run_dir) == before
    tokens = plan["batch"]["global_batch_tokens"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checked = check_run(cfg)
    batch = resolve_global_batch(cfg.trainer, checked.data_cfg, checked.seq_len)
    assert batch.tokens == tokens
    for steps, trained in ((1.5, results), (2.5, None)):  # 1.5 steps of tokens: 2 steps
        cfg.budget.kind, cfg.budget.flops = "flops", 6 * plan["active_params"] * tokens * steps
        assert done_before_data(cfg, batch, run_dir, ckpt, run_dir / "last.ckpt") == trained
    batch = plan["batch"]["global_batch_size"]
    with pytest.raises(ConfigError, match=rf"has global_batch_size={batch}, this run {2 * batch}"):
        train(compose_train([*SHORT, "resume=true", f"data.batch_size={2 * batch}"], run_dir))
    with pytest.raises(ConfigError, match="data_preparation=0, this lmlab's is"):
        train(compose_train([*SHORT, "resume=true", "trainer.max_steps=4"], run_dir, cache_dir))
    assert files_of(run_dir) == before


def test_a_checkpoint_of_the_same_corpus_with_an_older_tokenizer_says_lmlab_changed() -> None:
    """A checkpoint that records its corpus's text digest, resumed on that same text with
    another tokenizer, was saved by an lmlab that trained the tokenizer otherwise (a run
    started before BPE's trainer cut long words): the refusal says so, not that the user
    changed the corpus; either refusal names the init_from= that starts a run from it."""
    from lmlab.data.tokenizer import train_char
    from lmlab.train.checkpoint_check import check_same_tokenizer

    then, now = train_char(["abc"]), train_char(["abd"])
    path = Path("run/checkpoints/last.ckpt")
    ckpt = {"tokenizer": then.to_str(), "run_state": {"corpus": {"text_sha256": "0f1e"}}}
    with pytest.raises(
        ConfigError, match=r"the lmlab that saved it prepared the data otherwise"
    ) as same:
        check_same_tokenizer(ckpt, path, now, {"text_sha256": "0f1e"})
    with pytest.raises(ConfigError, match=r"changed since, or the lmlab that saved") as older:
        check_same_tokenizer({"tokenizer": then.to_str()}, path, now, {"text_sha256": "0f1e"})
    for refused in (same, older):
        assert f"init_from={path} data.tokenizer=checkpoint" in str(refused.value)
    with pytest.raises(ConfigError, match=r"another tokenizer than the one this run's data"):
        check_same_tokenizer(ckpt, path, now, {"text_sha256": "9a8b"})  # another text
    check_same_tokenizer(ckpt, path, train_char(["abc"]), {"text_sha256": "0f1e"})


def test_a_resume_after_a_same_size_edit_of_the_corpus_is_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    """An edit that keeps the corpus's size and characters (``sed -i s/fox/xof/``) trains the
    same char tokenizer into rows of the same counts: the text's digest in plan.json tells it,
    and without plan.json the checkpoint's copy of it. A character the corpus did not have
    changes the tokenizer, and the refusal says so, not that ``model.vocab_size`` differs (it
    follows the tokenizer)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(300))
    )
    run = [
        *SMOKE,
        "trainer.max_steps=2",
        "logger=none",
        "data=text",
        f"data.path={corpus}",
        "data.tokenizer=char",
        "data.seq_len=32",
    ]
    resume = [*run, "trainer.max_steps=4", "resume=true"]
    train(compose_train(run, tmp_path / "run", cache_dir))
    original = corpus.read_text()
    corpus.write_text(original.replace("fox", "xof", 1))
    with pytest.raises(ConfigError, match=r"its corpus changed since it started: the same size"):
        train(compose_train(resume, tmp_path / "run", cache_dir))
    plan = tmp_path / "run" / "plan.json"
    kept = plan.rename(tmp_path / "plan.json")  # deleted: the checkpoint's record tells it
    with pytest.raises(ConfigError, match=r"its corpus changed since it started: the same size"):
        train(compose_train(resume, tmp_path / "run", cache_dir))
    kept.rename(plan)
    corpus.write_text(original.replace("fox", "fo~", 1))  # ~: a character more
    with pytest.raises(ConfigError, match=r"another tokenizer .* \(144 tokens then, 145 now;"):
        train(compose_train(resume, tmp_path / "run", cache_dir))
    corpus.write_text(original)  # the text it trained on: the resume goes on
    train(compose_train(resume, tmp_path / "run", cache_dir))
    assert results(tmp_path / "run")["global_step"] == 4


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_a_resumed_run_lets_go_of_the_checkpoint_it_resumed_from(
    tmp_path: Path, cache_dir: Path
) -> None:
    """The resume's checks read the checkpoint memory-mapped, and the run kept that map to
    its end: the file it resumed from, removed by the next save's pruning (save_top_k=1),
    kept its disk space until the process exited. On a 40 MB tmpfs that held two of
    gpt_tiny's 16 MB checkpoints, the resumed run failed "no space left on device" with one
    checkpoint on the disk and 25 MB free."""
    run = [*SMOKE, "checkpoint.every_n_steps=2", "callbacks.checkpoint.save_top_k=1"]
    run += ["logger=none", "trainer.val_check_interval=100"]
    train(compose_train([*run, "trainer.max_steps=2"], tmp_path, cache_dir))
    hook = "+callbacks.mapped._target_=test_resume.RemovedButMapped"
    resumed = [*run, "trainer.max_steps=4", "resume=true", hook]
    train(compose_train(resumed, tmp_path, cache_dir))
    assert not (tmp_path / "checkpoints" / "step000002.ckpt").exists()  # pruned by step 4's
    assert REMOVED_BUT_MAPPED == []


def test_resume_checks_what_the_data_is_not_where_it_is_cached(
    tmp_path: Path, short_run: Path
) -> None:
    """``data.cache_dir`` (LMLAB_CACHE moved) is where the prepared data is kept, not what it
    is: the resume goes on. Without ``run_config.yaml`` nothing can be checked: refused,
    saying so."""
    run_dir = copy_run(short_run, tmp_path / "run")  # SHORT, trained with cache_dir
    moved = tmp_path / "new-cache"  # prepared again, identically
    longer = [*SHORT, "trainer.max_steps=3", "resume=true"]
    train(compose_train(longer, run_dir, moved))
    assert results(run_dir)["global_step"] == 3
    (run_dir / "run_config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"its run_config.yaml .* is missing"):
        train(compose_train([*SHORT, "trainer.max_steps=4", "resume=true"], run_dir, moved))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_checkpoint_gets_the_mode_a_plain_write_would(tmp_path: Path, umask: int) -> None:
    """The temporary file a checkpoint is written through is private (0o600); the checkpoint
    takes the mode ``open`` gives a new file under the process's umask, so a group that shares
    a run directory can read it (0o644 under umask 022), and a private umask keeps it 0o600."""
    old = os.umask(umask)
    try:
        path = tmp_path / "step000001.ckpt"
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# Each config field that names a local file, with the overrides that read it.
PATH_FIELDS = {
    "data.path": ["data=text"],
    "data.val_path": ["data=text", "data.path=/dev/null"],
    "data.name": ["data=hf"],
    "task.train": ["task=classify", "task.source=files", "model=bert_tiny"],
    "task.val": ["task=classify", "task.source=files", "model=bert_tiny", "task.train=/a.csv"],
}


@pytest.mark.parametrize("field", PATH_FIELDS)
def test_a_resume_compares_the_file_a_path_names_not_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """``./x.jsonl`` typed in the run's first folder is that folder's file: the resume from
    another folder naming it by its absolute path, or by a path relative to there, goes on.
    The same words from another folder name another file: refused, naming both files."""
    first, other, run_dir = tmp_path / "first", tmp_path / "other", tmp_path / "run"
    for folder in (first, other):
        folder.mkdir()
        (folder / "x.jsonl").write_text('{"text": "a", "label": "b"}\n')
    (run_dir / ".hydra").mkdir(parents=True)  # Hydra's record of the launch
    (run_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {first}\n")

    # composed once: the configs below differ in the field's words alone, set as an override
    # of them composes them (Hydra composes in no working directory: the words stay as typed)
    composed = compose_train([*PATH_FIELDS[field], f"{field}=./x.jsonl"], run_dir)

    def config(path: str):
        cfg = copy.deepcopy(composed)
        OmegaConf.update(cfg, field, path)
        return cfg

    monkeypatch.chdir(first)
    (run_dir / "run_config.yaml").write_text(OmegaConf.to_yaml(run_identity(config("./x.jsonl"))))
    monkeypatch.chdir(other)
    for same in (str(first / "x.jsonl"), "../first/x.jsonl", "../other/../first/x.jsonl"):
        check_same_run(config(same), run_dir, "saved")
    with pytest.raises(ConfigError, match=f"differing fields: {field}: ") as refused:
        check_same_run(config("./x.jsonl"), run_dir, "saved")
    assert str(first / "x.jsonl") in str(refused.value)
    assert str(other / "x.jsonl") in str(refused.value)
