"""Bad multi-process inputs refused in one line before any data or rank: a MASTER_PORT another
program holds, a strategy Lightning cannot build, an accelerator this machine lacks, a global
batch that does not divide (naming the field given), ``trainer=cpu`` asked for many
processes, Lightning's distributed sampler around lmlab's, and the stop's save that said
nothing it needed to."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cases import case
from lmlab.config import DataConfig
from lmlab.config.resolve import LAUNCHER_VARIABLES
from lmlab.errors import ConfigError
from lmlab.train.batch import resolve_global_batch
from lmlab.train.compose import compose_train
from lmlab.train.machine import check_accelerator
from lmlab.train.preflight import check_run
from lmlab.train.rank_check import check_master_port

TWO_CPUS = ["+debug=smoke", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No launcher, no rank, no port: a command typed in a shell."""
    for name in (*LAUNCHER_VARIABLES, "LOCAL_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port another program listens on, on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_a_master_port_in_use_is_refused_by_the_process_that_starts_the_ranks(
    listening: int, plain_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Rank 0 failed to bind it (said only in results.json) and rank 1 waited forever."""
    cfg = compose_train(TWO_CPUS, tmp_path / "run", tmp_path)
    monkeypatch.setenv("MASTER_PORT", str(listening))
    message = rf"^MASTER_PORT={listening} is in use on this machine \(another run, or another"
    with pytest.raises(ConfigError, match=message) as refused:
        check_run(cfg)
    assert "unset it (a free port is chosen) or pick another" in str(refused.value)
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    with pytest.raises(ConfigError, match=message):
        check_master_port(cfg.trainer)
    assert list(tmp_path.iterdir()) == []
    check_run(cfg, machine=False)  # a sweep's jobs, checked where it is started
    check_run(compose_train([*TWO_CPUS, "dry_run=true"], tmp_path / "run", tmp_path))
    check_run(compose_train(["+debug=smoke"], tmp_path / "run", tmp_path))  # one process


@pytest.mark.parametrize(
    "env",
    [
        {"LOCAL_RANK": "1"},  # a rank Lightning started: the store is rank 0's
        {"MASTER_ADDR": "192.0.2.1"},  # another machine's store (TEST-NET-1)
        {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0"},
        {"SLURM_NTASKS": "2"},
    ],
)
def test_a_master_port_is_left_alone_where_this_process_does_not_bind_it(
    env: dict[str, str], listening: int, plain_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASTER_PORT", str(listening))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    trainer = OmegaConf.create({"accelerator": "cpu", "devices": 2, "num_nodes": 1})
    check_master_port(trainer)


def test_a_free_or_unset_master_port_passes(
    plain_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = OmegaConf.create({"accelerator": "cpu", "devices": 2, "num_nodes": 1})
    check_master_port(trainer)  # unset: Lightning chooses a free one
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    monkeypatch.setenv("MASTER_PORT", str(free))
    check_master_port(trainer)
    monkeypatch.setenv("MASTER_PORT", "http")
    with pytest.raises(ConfigError, match=r"^MASTER_PORT=http: not a port number; allowed: 1 "):
        check_master_port(trainer)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.strategy=foo", "trainer.strategy=foo: not a strategy Lightning knows; allowed: "),
        (
            "trainer.strategy._target_=foo.Bar",
            "trainer.strategy._target_=foo.Bar: cannot be imported (ModuleNotFoundError: No modu",
        ),
        (
            "trainer.strategy._target_=torch.nn.Linear",
            "trainer.strategy._target_=torch.nn.Linear: not a Lightning Strategy class",
        ),
        (
            "trainer.strategy.find_unused_parameters=maybe",
            "trainer.strategy.find_unused_parameters='maybe': not a value DDPStrategy takes for "
            "find_unused_parameters; allowed: true, false",
        ),
        (
            "+trainer.strategy.start_method=thread",
            "trainer.strategy.start_method='thread': not a value DDPStrategy takes for start_meth"
            "od; allowed: popen, spawn, fork, forkserver",
        ),
        (
            "+trainer.strategy.find_unused=true",
            "trainer.strategy.find_unused=True: unknown key (lightning.pytorch.strategies.DDPStr",
        ),
    ],
)
def test_a_strategy_lightning_cannot_build_is_refused_before_any_data(
    override: str, message: str, tmp_path: Path
) -> None:
    """A bad name or _target_ was a traceback when the Trainer was built; a bad field of
    DDP's started both ranks and failed 18 s later with a TypeError."""
    for dry in ([], ["dry_run=true"]):
        cfg = compose_train([*TWO_CPUS, override, *dry], tmp_path / "run", tmp_path)
        with pytest.raises(ConfigError, match=r"^" + re.escape(message)) as refused:
            check_run(cfg, machine=False)
    if override == "trainer.strategy=foo":  # Lightning's names, listed
        assert "ddp, ddp_spawn" in str(refused.value) and "fsdp" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_an_argument_fsdp_passes_itself_is_refused_not_listed(tmp_path: Path) -> None:
    """Both were listed as allowed keys of trainer=fsdp, then failed once the data was
    prepared: a TypeError traceback, ``got multiple values for keyword argument``. (Both keys
    in one test: the unknown key's config, whose message lists the keys, is composed once.)"""
    fsdp = ["+debug=smoke", "trainer=fsdp", "trainer.devices=2", "trainer.accelerator=cpu"]
    cfg = compose_train([*fsdp, "+trainer.strategy.foo=1"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.strategy.foo=1: unknown key") as unknown:
        check_run(cfg, machine=False)
    allowed = str(unknown.value).rpartition("allowed: ")[2].split(", ")
    assert "save_distributed_checkpoint" in allowed
    for key, value in [("tensor_parallel_size", "2"), ("data_parallel_size", "1")]:
        override = f"+trainer.strategy.{key}={value}"
        cfg = compose_train([*fsdp, override], tmp_path / "run", tmp_path)
        message = rf"^trainer.strategy.{key}={value}: not a setting of "
        with case(override), pytest.raises(ConfigError, match=message):
            check_run(cfg, machine=False)
        assert key not in allowed, key
    assert list(tmp_path.iterdir()) == []


def test_a_ddp_that_starts_its_ranks_by_multiprocessing_is_refused_before_any_data(
    tmp_path: Path,
) -> None:
    """ddp_spawn was built and started, then failed at the first logged step (its ranks' CSV
    logger: ``dict contains fields not in fieldnames``) and ended in a traceback
    (``'SpawnProcess' object has no attribute 'wait'``). (The cases in one test: the popen
    start that passes is composed once.)"""
    for override, given, method in [
        ("trainer.strategy=ddp_spawn", "trainer.strategy=ddp_spawn", "spawn"),
        ("trainer.strategy=ddp_notebook", "trainer.strategy=ddp_notebook", "fork"),
        ("+trainer.strategy.start_method=forkserver", "trainer.strategy.start_method", "forkse"),
    ]:
        cfg = compose_train([*TWO_CPUS, override], tmp_path / "run", tmp_path)
        message = rf"^{re.escape(given)}.*multiprocessing's {method}"
        with case(override), pytest.raises(ConfigError, match=message):
            check_run(cfg, machine=False)
    cfg = compose_train([*TWO_CPUS, "+trainer.strategy.start_method=popen"], tmp_path, tmp_path)
    check_run(cfg, machine=False)


def test_lightnings_distributed_sampler_is_refused_before_any_data(tmp_path: Path) -> None:
    """Lightning wrapped lmlab's sampler, which gives each rank its share itself, in its own:
    each rank took every other row of its share, the epoch ended halfway and the next
    restarted the sampler, so a 2-rank run trained half its rows twice and the rest never,
    in silence (``~``: Lightning's default, true). A dry run plans such a run too. (Both
    spellings in one test: the run that passes is composed once.)"""
    message = r"^trainer.use_distributed_sampler=true: .*allowed: false$"
    for override in ["trainer.use_distributed_sampler=true", "~trainer.use_distributed_sampler"]:
        for dry in ([], ["dry_run=true"]):
            cfg = compose_train([*TWO_CPUS, override, *dry], tmp_path / "run", tmp_path)
            with case(" ".join([override, *dry])), pytest.raises(ConfigError, match=message):
                check_run(cfg, machine=False)
    check_run(compose_train([*TWO_CPUS, "trainer.use_distributed_sampler=false"]), machine=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer=ddp", "trainer.strategy.find_unused_parameters=true", "trainer.devices=2"],
        ["trainer=ddp", "+trainer.strategy.bucket_cap_mb=25", "trainer.devices=2"],
        ["trainer=ddp", "trainer.strategy=ddp_find_unused_parameters_true", "trainer.devices=2"],
        ["trainer=fsdp", "trainer.strategy.save_distributed_checkpoint=false", "trainer.devices=2"],
        ["trainer=cpu"],
    ],
)
def test_strategies_lightning_builds_pass(overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_train(["+debug=smoke", "trainer.accelerator=cpu", *overrides], tmp_path, tmp_path)
    check_run(cfg, machine=False)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+trainer.strategy=fsdp"],
        ["+trainer.strategy=fsdp_cpu_offload"],
        ["trainer=ddp", "trainer.strategy=fsdp", "trainer.accelerator=cpu"],
    ],
)
def test_lightnings_fsdp_without_a_gpu_accelerator_is_refused_before_any_data(
    overrides: list[str], plain_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lightning's Trainer refused it (``requires a GPU accelerator``) once the data was
    prepared, through a traceback; lmlab's trainer=fsdp is the FSDP that runs on CPU. With
    ``trainer.accelerator=auto`` it is refused on a machine without CUDA only: a dry run or a
    sweep's pre-checks may plan for a GPU elsewhere."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train(["+debug=smoke", "trainer.devices=2", *overrides], tmp_path, tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.strategy=fsdp.* is Lightning's FSDP") as no:
        check_run(cfg, machine=False)
    assert "trainer=fsdp (trainer.devices=2 trainer.accelerator=cpu)" in str(no.value)
    check_run(compose_train([*overrides, "trainer.accelerator=gpu"]), machine=False)
    auto = compose_train(
        ["+debug=smoke", *overrides, "trainer.accelerator=auto"], tmp_path, tmp_path
    )
    check_run(auto, machine=False)
    with pytest.raises(ConfigError, match=r"got auto, and this machine has no CUDA GPU"):
        check_run(auto)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("strategy", "package"), [("deepspeed", "deepspeed"), ("xla_debug", "torch_xla")]
)
def test_a_strategy_whose_package_is_missing_is_refused_before_any_data(
    strategy: str, package: str, plain_env: None, tmp_path: Path
) -> None:
    """``+trainer.strategy=deepspeed`` without DeepSpeed, or ``xla_debug`` without torch_xla,
    prepared the data and then failed in a traceback (MisconfigurationException,
    ModuleNotFoundError). Refused at once, by Lightning's own check of the package; a dry run
    plans for another machine, which may have it."""
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    cfg = compose_train(
        ["+debug=smoke", f"+trainer.strategy={strategy}"], tmp_path / "run", tmp_path
    )
    with pytest.raises(
        ConfigError,
        match=rf"^trainer.strategy={strategy} needs a package this "
        rf"machine lacks \(Requirement '{package}.*; lmlab's own: trainer=ddp",
    ):
        check_run(cfg)
    check_run(cfg, machine=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_a_process_group_backend_the_run_cannot_use_is_refused_before_any_data(
    trainer: str, plain_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """nccl on the CPU started both ranks and failed in each, once the data was prepared, with
    a traceback (``Distributed package doesn't have NCCL built in``)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    two = ["+debug=smoke", f"trainer={trainer}", "trainer.devices=2", "trainer.accelerator=cpu"]
    for backend in ("nccl", "foo"):
        override = f"+trainer.strategy.process_group_backend={backend}"
        cfg = compose_train([*two, override], tmp_path / "run", tmp_path)
        with pytest.raises(ConfigError, match=rf"^{re.escape(override[1:])}: ") as refused:
            check_run(cfg)
        assert "allowed here: gloo" in str(refused.value)
        check_run(cfg, machine=False)  # a sweep's jobs may train on GPUs elsewhere
    check_run(compose_train([*two, "+trainer.strategy.process_group_backend=gloo"]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("accelerator", ["tpu", "mps"])
def test_an_accelerator_this_machine_lacks_is_refused_in_one_line(
    accelerator: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """They were listed as allowed, then crashed in the Trainer (torch_xla not met, "MPSAccel
    erator can not run on your system"); a dry run and a sweep's checks plan for any machine."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    found = AcceleratorRegistry[accelerator]["accelerator"]
    monkeypatch.setattr(found, "is_available", staticmethod(lambda: False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train(
        ["+debug=smoke", f"trainer.accelerator={accelerator}"], tmp_path / "run", tmp_path
    )
    message = (
        rf"^trainer.accelerator={accelerator}: not available on this machine \(Lightning's "
        rf"{found.__name__} finds none here\); allowed here: auto, cpu$"
    )
    with pytest.raises(ConfigError, match=message):
        check_run(cfg)
    check_run(cfg, machine=False)
    check_run(compose_train(["+debug=smoke", f"trainer.accelerator={accelerator}", "dry_run=true"]))
    monkeypatch.setattr(found, "is_available", staticmethod(lambda: True))
    check_accelerator(cfg.trainer)  # where it is there, it is taken
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"global_batch_size": 7},
            "data.global_batch_size=7: 7 sequences is not a multiple of data.batch_size=4 x 2 "
            "device(s) (trainer.devices x trainer.num_nodes) = 8; allowed: a multiple of 8, or",
        ),
        (
            {"global_batch_tokens": 7 * 256},
            "data.global_batch_tokens=1792 (of 256-token sequences): 7 sequences is not a "
            "multiple of data.batch_size=4 x 2 device(s) (trainer.devices x trainer.num_nodes) "
            "= 8; allowed: a multiple of 2048 tokens, or",
        ),
    ],
)
def test_a_global_batch_that_does_not_divide_names_the_field_given(
    given: dict[str, int], message: str
) -> None:
    trainer = OmegaConf.create(
        {"devices": 2, "accelerator": "cpu", "num_nodes": 1, "accumulate_grad_batches": 1}
    )
    data = DataConfig(batch_size=4, **given)
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
        resolve_global_batch(trainer, data, seq_len=256)


def test_trainer_cpu_asked_for_many_processes_points_to_trainer_ddp(tmp_path: Path) -> None:
    """Lightning ran its own DDP, quietly, where the README says trainer=cpu is one process.
    (Both counts in one test: the runs that pass are composed once.)"""
    for devices in ("2", "4"):
        for dry in ([], ["dry_run=true"]):
            cfg = compose_train(
                ["+debug=smoke", f"trainer.devices={devices}", *dry], tmp_path / "run", tmp_path
            )
            message = rf"^trainer.devices={devices}: trainer=cpu"
            with case(" ".join([devices, *dry])), pytest.raises(ConfigError, match=message) as no:
                check_run(cfg, machine=False)
        hint = f"trainer=ddp trainer.devices={devices} trainer.accelerator=cpu"
        assert hint in str(no.value) and str(no.value).endswith("allowed: 1 or auto"), devices
    for fine in (
        ["trainer.devices=1"],
        ["trainer.devices=auto"],
        ["trainer.devices=2", "+trainer.strategy=ddp"],
    ):
        check_run(compose_train(["+debug=smoke", *fine]), machine=False)
    assert list(tmp_path.iterdir()) == []


def test_a_sharded_checkpoint_refusal_names_the_trainer_preset(tmp_path: Path) -> None:
    """It said "this run's strategy (auto)" for trainer=cpu, a word the user never typed."""
    folder = tmp_path / "step000004.ckpt"
    folder.mkdir()
    torch.save({"global_step": 4}, folder / "meta.pt")
    cfg = compose_train(["+debug=smoke", f"ckpt_path={folder}"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"this run's trainer=cpu \(strategy auto\) cannot lo"):
        check_run(cfg, machine=False)


def test_a_stop_signal_save_says_nothing_about_weights_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every stop's save logged Lightning's "`weights_only` was not set, defaulting to
    `False`": the stop saves the whole training state, and says so."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lmlab.train.preemption import Preemption

    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    stop = Preemption(str(tmp_path / "checkpoints"))
    source = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    source.addHandler(caplog.handler)  # Lightning's loggers may not propagate to the root
    try:
        with caplog.at_level(logging.INFO):
            stop._save(trainer)
    finally:
        source.removeHandler(caplog.handler)
    assert stop.saved == tmp_path / "checkpoints" / "last.ckpt" and stop.saved.is_file()
    assert "optimizer_states" in torch.load(stop.saved, weights_only=False)  # a full state
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]


@pytest.mark.parametrize(
    ("override", "shown"),
    [("trainer.devices=x", "x"), ("trainer.devices=1.5", "1.5"), ("trainer.devices=true", "true")],
)
def test_a_device_count_that_is_not_one_is_named_as_typed(
    override: str, shown: str, tmp_path: Path
) -> None:
    """``trainer.devices=true`` was named ``True``, a value nobody typed."""
    cfg = compose_train(["+debug=smoke", "trainer=ddp", override], tmp_path / "run", tmp_path)
    message = f"trainer.devices={shown}: allowed an int >= 1 (that many devices), -1 or auto"
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
        check_run(cfg, machine=False)


GLOO_PEER_GONE = (
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:41234: "
    "Connection reset by peer\nException raised from ... (most recent call first):\nframe #0"
)


def peer_gone_at_step_2(
    tmp_path: Path, cache_dir: Path, run_command, monkeypatch, before=lambda: None
) -> int:
    """A smoke run (a checkpoint every step) whose collective after step 2 finds its peer
    gone, as gloo says it; ``before()`` runs first (what the other rank did before it
    exited). The command's exit code."""
    from lmlab.train.task import LMTask

    real = LMTask.training_step

    def step(self, batch, batch_idx):
        if self.trainer.global_step == 2:
            before()
            raise RuntimeError(GLOO_PEER_GONE)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(LMTask, "training_step", step)
    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    run = ["+debug=smoke", "logger=csv", "callbacks.sample=null", "trainer.max_steps=4"]
    run += ["checkpoint.every_n_steps=1", f"hydra.run.dir={tmp_path}"]
    return run_command("train", *run)


def test_a_rank_whose_peer_died_stops_in_one_line_with_the_resume_command(
    tmp_path: Path,
    cache_dir: Path,
    run_command,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another rank killed (``kill -9``, out of memory) fails this rank's next collective: a
    gloo traceback of about 190 lines, and results.json held gloo's words. Now: one line that
    says another rank stopped, with the resume command where a checkpoint was saved, exit 1,
    and results.json says the same."""
    import json

    assert peer_gone_at_step_2(tmp_path, cache_dir, run_command, monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: another rank of this run stopped (its process was killed"), err
    assert "Connection reset by peer" in err and "Traceback" not in err, err
    assert re.search(r"; resume with: python src/train.py .* resume=true", err), err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"].startswith("another rank of this run stopped"), results["error"]


def test_a_rank_that_failed_alone_keeps_its_error_in_the_record(
    tmp_path: Path,
    cache_dir: Path,
    run_command,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rank that fails alone (its own error: a non-finite norm, an exception in its data)
    records it in results.json and exits; rank 0's next collective then finds it gone, and
    wrote "another rank of this run stopped (its process was killed, or ran out of memory"
    over that record, so the error was nowhere but on the console (rank1.log does not hold
    it). Rank 0 now keeps the record and names the other rank's error."""
    import json

    from lmlab.files import write_json

    told = "NonFiniteError: non-finite loss or gradient norm at step 2 (guard.mode=stop, ...)"
    record = lambda: write_json(tmp_path / "results.json", {"status": "failed", "error": told})  # noqa: E731
    assert peer_gone_at_step_2(tmp_path, cache_dir, run_command, monkeypatch, record) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: another rank of this run failed: {told}; resume with: "), err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == {"status": "failed", "error": told}


class FakeChild:
    """A child rank's ``Popen`` as the observer reads it: its exit code, None while alive."""

    def __init__(self, code: int | None) -> None:
        self.returncode, self.pid, self.signals = code, 4242, []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


@pytest.mark.parametrize(
    ("codes", "killed"),
    [
        ([143], False),  # preempted after its save: rank 0 ends the run itself, with 143
        ([130], False),  # interrupted (Ctrl-C) likewise
        ([0], False),
        ([None], False),  # still running
        ([1], True),  # crashed: every process ended, as Lightning ends them
        ([-9], True),  # killed by a signal
        ([143, 1], True),
    ],
)
def test_a_child_rank_that_stopped_as_agreed_does_not_get_rank_0_killed(
    codes: list[int | None], killed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's observer SIGKILLed rank 0 (and every rank) once a child exited with any
    code but 0: a child that stopped as the run agreed (143 after a SIGTERM save) often exits
    before rank 0 has written results.json, and the run ended 137, not 143. A crash still ends
    them all, and so does a stop that rank 0 does not end within ``STOP_GRACE_S``."""
    import os

    from lmlab.train import distributed

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    children = [FakeChild(code) for code in codes]
    observer = distributed.StopAwareObserver(main_pid=1234, child_processes=children)
    finished = observer._run()
    assert bool(sent) is killed, (codes, sent)
    assert finished is (killed or codes == [0])  # a stop: watched until rank 0 has ended
    if codes == [143]:  # rank 0 never ends: after the grace period, ended as Lightning would
        monkeypatch.setattr(distributed, "STOP_GRACE_S", 0.0)
        assert observer._run() is True and sent == [(1234, 9)]


def test_rank_0_failed_alone_ends_its_waiting_children_without_being_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rank 0 failing alone (its CSV log's folder removed mid-run) left the other rank in its
    next collective, and the run ended only when ``JobScope.close`` had waited 300 s for it.
    Now the children are given ``FAILED_GRACE_S``, then ended; Lightning's watcher, which
    SIGKILLs rank 0 once a child exits that way, stands down first."""
    import signal
    import subprocess
    import sys
    from types import SimpleNamespace

    from lmlab.train import distributed

    monkeypatch.setattr(distributed, "FAILED_GRACE_S", 0.5, raising=False)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    waits: list[float | None] = []  # the timeout of each wait for the child
    wait = child.wait
    monkeypatch.setattr(child, "wait", lambda timeout=None: waits.append(timeout) or wait(timeout))
    monkeypatch.setattr(distributed, "OBSERVERS", [], raising=False)
    observer = distributed.StopAwareObserver(main_pid=1234, child_processes=[child])
    sent = []
    observer._terminate_all = lambda: sent.append("SIGKILL to rank 0 and every child")
    distributed.OBSERVERS.append(observer)
    scope = distributed.JobScope()
    scope.trainer = SimpleNamespace(
        strategy=SimpleNamespace(launcher=SimpleNamespace(procs=[child]))
    )
    scope.failed = True
    try:
        scope.close(timeout=30.0)
        ended = child.poll()
    finally:
        child.kill()
    # waited the grace period, not the 30 s, then killed by close()
    assert waits[0] <= distributed.FAILED_GRACE_S and ended == -signal.SIGKILL
    assert observer._run() is True and not sent  # the child's end kills no rank 0


def test_a_multirun_job_leaves_the_next_one_its_thread_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lightning's launcher sets a DDP job's share of the cores (OMP_NUM_THREADS and torch's
    thread count) in the multirun's own process: the sweep's next job, of one process, ran on
    that share (1 thread of 2 in ``trainer.devices=2,1``) where the same run alone takes
    every core. ``JobScope.close`` puts both back."""
    from lightning.fabric.utilities.distributed import _set_num_threads_if_needed

    from lmlab.train import distributed

    monkeypatch.setattr(distributed, "OBSERVERS", [], raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # recorded, so whatever the test sets is undone
    monkeypatch.delenv("OMP_NUM_THREADS")  # a multirun started without one
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # the multirun's own thread count
        scope = distributed.JobScope()
        _set_num_threads_if_needed(num_processes=1000)  # the launcher: 1 thread per rank
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        scope.close()
        assert torch.get_num_threads() == 3 and "OMP_NUM_THREADS" not in os.environ
    finally:
        torch.set_num_threads(threads)
