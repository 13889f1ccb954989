"""Many processes on CPU (gloo, 2 ranks): a 2-job multirun (trainer=ddp, trainer=fsdp) reaches
the single-process loss with the same global batch and gives one folder and one W&B run per
job; FSDP shards the parameters and its sharded checkpoints resume and consolidate; activation
checkpointing leaves the gradients unchanged; every trainer config composes.

Tolerance of the equivalence tests: relative 1e-5 on the validation loss after 6 steps. The
runs differ only in the order of fp32 sums (gradient all-reduce vs accumulation, 1 vs 2
threads per process), about 1e-7 relative per operation; measured on the 2-core machine, the
three runs agree to every printed digit. A real fault is far outside it: half the global batch
(a missing all-reduce or a wrong accumulation) changes this loss by 3.3e-3 relative.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.cli.consolidate import main as consolidate_main
from lmlab.config import CONF_DIR, Family, ModelConfig
from lmlab.errors import ConfigError
from lmlab.infer.pretrained import load
from lmlab.model import build_model
from lmlab.train.compose import compose_train
from lmlab.train.distributed import keyed_by_name
from lmlab.train.machine import resolve_precision
from lmlab.train.optimizer import decay_groups
from lmlab.train.parallel import layout
from lmlab.train.run import train

REPO = CONF_DIR.parent  # the repository root

REL = 1e-5
STEPS = 6
COMMON = [
    "+debug=smoke",
    f"trainer.max_steps={STEPS}",
    "data.global_batch_size=8",
    "data.val_batch_size=4",  # the same validation rows whatever the micro-batch
    "trainer.val_check_interval=3",
    "checkpoint.every_n_steps=3",
    "callbacks.checkpoint.save_top_k=-1",
    "callbacks.sample=null",
]
TWO_CPUS = ["trainer.devices=2", "trainer.accelerator=cpu"]


def launch(cache_dir: Path, *overrides: str, timeout: float = 300) -> str:
    """Run ``lmlab train`` with ``overrides`` to a successful end; its console output."""
    env = {**os.environ, "LMLAB_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(REPO / "src" / "train.py"), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One process, micro-batch 4, accumulation 2: the reference."""
    run_dir = tmp_path_factory.mktemp("single")
    train(compose_train([*COMMON, "data.batch_size=4"], run_dir, cache_dir))
    return run_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A 2-job Hydra multirun on 2 CPU processes per job: job 0 trainer=ddp, job 1
    trainer=fsdp, both micro-batch 4 on each of 2 ranks: the global batch of 8 that the
    single-process reference makes with micro-batch 4 x accumulation 2."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    console = launch(
        cache_dir,
        "-m",
        *COMMON,
        "trainer=ddp,fsdp",
        *TWO_CPUS,
        "data.batch_size=4",
        "logger=wandb",
        f"hydra.sweep.dir={sweep_dir}",
    )
    # the run's lines are rank 0's: the global batch once per job, not once per rank
    assert console.count("global batch 8 sequences") == 2, console[-3000:]
    return sweep_dir


@pytest.mark.e2e
def test_ddp_and_fsdp_multirun_jobs_match_single_process(
    sweep: Path, single: Path, wandb_records
) -> None:
    reference = results(single)
    assert reference["batch"]["accumulation"] == 2
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job, trainer in enumerate(["ddp", "fsdp"]):
        job_dir = sweep / str(job)
        r = results(job_dir)
        assert r["status"] == "completed" and r["global_step"] == STEPS
        assert r["batch"] == {
            "micro_batch": 4,
            "devices": 2,
            "accumulation": 1,
            "seq_len": 256,
            "global_batch_size": 8,
            "global_batch_tokens": 8 * 256,
        }
        plan = json.loads((job_dir / "plan.json").read_text())  # the frozen plan, saved once
        assert plan["batch"] == r["batch"] and plan["steps"] == STEPS
        assert plan["precision"] == "32-true"  # trainer.precision=auto on a CPU
        assert r["tokens"] == reference["tokens"]
        assert r["val_loss"] == pytest.approx(reference["val_loss"], rel=REL)
        assert r["val_tokens"] == reference["val_tokens"]  # every rank scores the same rows
        # train/loss is the global batch's: both micro-batches there, both ranks here
        assert r["train_loss"] == pytest.approx(reference["train_loss"], rel=REL)
        # rank 1 ran this job (its log is in the job's folder), and only rank 0 logged to W&B:
        # wandb_records unpacks exactly one offline run
        assert (job_dir / "rank1.log").exists()
        run = next(x["run"] for x in wandb_records(job_dir) if x["type"] == "run")
        assert run["display_name"] == f"trainer={trainer}"
    assert results(sweep / "0")["params_per_rank"] == reference["params"]  # DDP replicates


@pytest.mark.e2e
def test_fsdp_shards_parameters_and_checkpoints(sweep: Path) -> None:
    r = results(sweep / "1")
    # each of 2 ranks holds its half of every tensor (dim-0 shards, the odd row on rank 0)
    assert 0.5 <= r["params_per_rank"] / r["params"] < 0.51
    last = sweep / "1" / "checkpoints" / "last.ckpt"
    assert (last / "meta.pt").is_file() and len(list(last.glob("*.distcp"))) == 2


@pytest.mark.e2e
def test_fsdp_sharded_checkpoint_resumes_exactly(
    sweep: Path, tmp_path: Path, cache_dir: Path
) -> None:
    step3 = sweep / "1" / "checkpoints" / "step000003.ckpt"
    console = launch(
        cache_dir,
        *COMMON,
        "trainer=fsdp",
        *TWO_CPUS,
        "data.batch_size=4",
        f"ckpt_path={step3}",
        f"hydra.run.dir={tmp_path}",
    )
    assert console.count("continuing from step 3") == 1, console[-3000:]  # rank 0's alone
    r, uninterrupted = results(tmp_path), results(sweep / "1")
    assert r["resumed_from"] == str(step3) and r["global_step"] == STEPS
    assert r["val_loss"] == uninterrupted["val_loss"]
    assert r["train_loss"] == uninterrupted["train_loss"]


@pytest.mark.e2e
def test_sharded_checkpoint_consolidates_into_a_single_process_model(
    sweep: Path, single: Path, tmp_path: Path
) -> None:
    sharded = sweep / "1" / "checkpoints" / "last.ckpt"
    out = tmp_path / "one.ckpt"
    consolidate_main([f"ckpt={sharded}", f"out={out}"])
    # the file holds exactly the sharded folder's weights (read and consolidated in memory)
    folder = load(sharded).model.state_dict()
    assert all(torch.equal(v, folder[k]) for k, v in load(out).model.state_dict().items())
    reference = load(single / "checkpoints" / "last.ckpt").model.state_dict()
    for path in (out, sweep / "0" / "checkpoints" / "last.ckpt"):
        model = load(path).model  # strict load: no wrapper prefixes, nothing missing
        state = model.state_dict()
        assert list(state) == list(reference)
        for key, value in state.items():
            # The same 6 AdamW steps as one process; only the order of the fp32 gradient sums
            # differs. Adam scales each update to about lr (1e-3) whatever the gradient's
            # size, so where a gradient is near its rounding noise the two orders can move a
            # weight differently by up to about lr a step (1.08e-5 seen, past an atol of 1e-5
            # that held on another machine): STEPS x lr bounds it. A wrong shard or key
            # differs by the init scale (std 0.02: a tensor's largest difference is > 0.05).
            torch.testing.assert_close(value, reference[key], rtol=0, atol=STEPS * 1e-3, msg=key)
    with pytest.raises(ConfigError, match="not a sharded checkpoint folder"):
        consolidate_main([f"ckpt={out}"])


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("hook", "signum", "status", "code", "step"),
    [
        (["+callbacks.stop.rank=0", "+callbacks.stop.step=3"], signal.SIGTERM, "preempted", 143, 3),
        (
            ["+callbacks.stop.rank=1", "+callbacks.stop.batch=3"],
            signal.SIGINT,
            "interrupted",
            130,
            5,
        ),
    ],
    ids=["sigterm-rank0-in-validation", "ctrl-c-rank1-in-training"],
)
def test_a_signal_to_one_rank_stops_every_rank_at_one_step(
    sweep: Path,
    tmp_path: Path,
    cache_dir: Path,
    hook: list[str],
    signum: int,
    status: str,
    code: int,
    step: int,
) -> None:
    """A signal that reaches one rank of a DDP run (the launcher's process during step 3's
    validation; rank 1 alone after step 4) stops both at one step boundary: the validation's
    end, or the step after the one the signal came in. Lightning's handler ran a broadcast
    inside the signal handler and hung the run until killed. The stop's record is rank 0's
    (status by the signal, whichever rank had it); the resume matches the uninterrupted DDP
    job of the sweep."""
    run = [*COMMON, "trainer=ddp", *TWO_CPUS, "data.batch_size=4", f"hydra.run.dir={tmp_path}"]
    here = Path(__file__).parent
    env = {
        **os.environ,
        "LMLAB_CACHE": str(cache_dir),
        "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)]),
    }
    stop = [
        "+callbacks.stop._target_=test_rundir.SignalAt",
        *hook,
        f"+callbacks.stop.signum={signum}",
    ]
    cmd = [sys.executable, str(REPO / "src" / "train.py"), *run, *stop]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out = proc.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks too
        pytest.fail(f"the stopped run hung:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == code, out[-3000:]
    r = results(tmp_path)
    assert r["status"] == status and r["global_step"] == step, r
    assert "resume with" in out and "resume with" not in (tmp_path / "rank1.log").read_text()
    launch(cache_dir, *run, "resume=true")
    again, uninterrupted = results(tmp_path), results(sweep / "0")
    assert again["status"] == "completed" and again["global_step"] == STEPS
    assert again["val_loss"] == uninterrupted["val_loss"]
    assert again["train_loss"] == uninterrupted["train_loss"]


@pytest.mark.e2e
def test_a_single_process_checkpoint_continues_sharded(
    single: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """A run of one process (or DDP), continued with trainer=fsdp from its step-3 file: the
    same steps 4-6 as the run itself. Lightning keyed the file's Adam moments by the module's
    parameter order, not the optimizer's: a size-mismatch traceback."""
    step3 = single / "checkpoints" / "step000003.ckpt"
    run = [*COMMON, "trainer=fsdp", *TWO_CPUS, "data.batch_size=4", f"ckpt_path={step3}"]
    launch(cache_dir, *run, f"hydra.run.dir={tmp_path}")
    r, uninterrupted = results(tmp_path), results(single)
    assert r["resumed_from"] == str(step3) and r["global_step"] == STEPS
    assert r["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=REL)
    assert r["train_loss"] == pytest.approx(uninterrupted["train_loss"], rel=REL)


def test_optimizer_states_are_named_in_the_optimizers_order() -> None:
    """lmlab's AdamW has two groups (weight decay on matrices, none on norms and biases), so
    its parameter numbers do not follow the module's order: each name gets its own moments."""
    model = build_model(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2))
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1))
    model(torch.randint(0, 64, (2, 8)))[0].float().sum().backward()
    optimizer.step()
    named = keyed_by_name(optimizer.state_dict(), optimizer, model)
    params = dict(model.named_parameters())
    assert sorted(named["state"]) == sorted(params)
    for name, state in named["state"].items():
        assert torch.equal(state["exp_avg"], optimizer.state[params[name]]["exp_avg"]), name
    assert [len(g["params"]) for g in named["param_groups"]] == [
        len(g["params"]) for g in optimizer.param_groups
    ]
    other = torch.optim.AdamW(model.parameters())  # one group: refused, named
    with pytest.raises(ConfigError, match="other parameter groups than this run's"):
        keyed_by_name(optimizer.state_dict(), other, model)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_lmlabs_lines_of_a_run_are_said_by_rank_0_alone(
    rank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rank plans the run, so each said the plan's warnings (a cut warm-up, validation
    off, bf16-true) and init_from's source: twice on the console of a 2-process run. A rank
    other than 0 now leaves lmlab's info and warnings to rank 0 and keeps its own errors and
    Lightning's lines (which say their rank where it matters)."""
    import logging

    from lmlab.train.lightning_logs import route_lightning_logs

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(f"{record.name} {record.getMessage()}")

    kept = Kept()
    monkeypatch.setattr(logging.getLogger(), "handlers", [kept])  # Hydra's, as a rank has
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", rank)
    route_lightning_logs()
    route_lightning_logs()  # a multirun's next job: one filter of each kind
    assert len(kept.filters) == (1 if rank == "0" else 2)
    logging.getLogger("lmlab.train.build").warning("warm-up cut")
    logging.getLogger("lmlab").warning("weights from init_from")
    logging.getLogger("lmlab.train.run").error("results.json not written")
    logging.getLogger("lightning.fabric.utilities.distributed").warning("GLOBAL_RANK: 1")
    said = ["lmlab.train.build warm-up cut", "lmlab weights from init_from"]
    always = [
        "lmlab.train.run results.json not written",
        "lightning.fabric.utilities.distributed GLOBAL_RANK: 1",
    ]
    assert kept.lines == (said if rank == "0" else []) + always


def test_every_fsdp_rank_runs_on_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child rank of trainer=fsdp (which Lightning gives no launcher) takes the same thread
    count as rank 0 and every DDP rank: cores // processes. It ran on every core while rank 0
    ran on its share, or on the share where the environment held it already (a multirun's
    later jobs), so a run resumed from a multirun job summed in another order than the job."""
    import lightning.fabric.utilities.distributed as fabric_distributed
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lmlab.train.distributed import FSDPStrategy

    # the process group is not what is tested: no world to join
    monkeypatch.setattr(ModelParallelStrategy, "setup_environment", lambda self: None)
    monkeypatch.setattr(fabric_distributed, "_num_cpus_available", lambda: 6)
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # recorded, so the run's own is undone after
    monkeypatch.delenv("OMP_NUM_THREADS")  # a child rank's environment: not set
    strategy = FSDPStrategy()
    strategy.parallel_devices = [torch.device("cpu")] * 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # not the share: the strategy has to set it
        strategy.setup_environment()
        assert torch.get_num_threads() == 3  # 6 cores, 2 processes
        assert os.environ["OMP_NUM_THREADS"] == "3"  # what its own children inherit
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "5")  # a user's setting: left to torch
        strategy.setup_environment()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("family", [Family.gpt, Family.t5])
def test_activation_checkpointing_same_gradients_and_keys(family: Family) -> None:
    cfg = ModelConfig(family=family, vocab_size=64, d_model=32, n_heads=4, n_layers=2)
    torch.manual_seed(0)
    plain = build_model(cfg)
    checkpointed = build_model(cfg)
    checkpointed.load_state_dict(plain.state_dict())
    layout(checkpointed, activation_checkpointing=True)
    wrapped = [
        n for n, m in checkpointed.named_modules() if n.endswith("_checkpoint_wrapped_module")
    ]
    assert len(wrapped) == cfg.n_layers * (2 if family == Family.t5 else 1)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    ids = torch.randint(0, 64, (2, 16))
    inputs = {"input_ids": ids}
    if family == Family.t5:
        inputs["decoder_input_ids"] = ids[:, :8]
    for model in (plain, checkpointed):
        model(**inputs).float().pow(2).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "trainer").glob("*.yaml")))
def test_every_trainer_config_composes(name: str, tmp_path: Path, cache_dir: Path) -> None:
    from lmlab.train.trainer import build_trainer

    many = name in ("ddp", "fsdp")
    cfg = compose_train([f"trainer={name}", *(TWO_CPUS if many else [])], tmp_path, cache_dir)
    if name == "gpu":
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
        return  # building a GPU trainer needs a GPU
    assert resolve_precision(cfg.trainer) == "32-true"  # auto on a CPU: fp32
    trainer = build_trainer(cfg, precision=resolve_precision(cfg.trainer))  # as a run does
    expected = {"cpu": "SingleDeviceStrategy", "ddp": "DDPStrategy", "fsdp": "FSDPStrategy"}
    assert type(trainer.strategy).__name__ == expected[name]
    assert trainer.num_devices == (2 if many else 1) and trainer.num_nodes == 1


def test_slurm_launcher_config_follows_the_trainer() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def test_resume_auto_takes_the_newest_checkpoint_or_starts_fresh(
    tmp_path: Path, cache_dir: Path
) -> None:
    from omegaconf import OmegaConf

    from lmlab.train.resume import resume_checkpoint, run_identity
    from lmlab.train.runfiles import RUN_CONFIG

    cfg = compose_train(["+debug=smoke", "resume=auto"], tmp_path, cache_dir)
    assert resume_checkpoint(cfg, tmp_path) is None  # nothing yet: a fresh run
    OmegaConf.save(run_identity(cfg), tmp_path / RUN_CONFIG)  # what the run saved on starting
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 3}, tmp_path / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 5}, tmp_path / "hpc_ckpt_1.ckpt")  # Lightning's, on SIGUSR1
    assert resume_checkpoint(cfg, tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    cfg.resume = "maybe"
    with pytest.raises(ConfigError, match="resume='maybe': allowed true, false, auto"):
        resume_checkpoint(cfg, tmp_path)


@pytest.mark.e2e
def test_fsdp_resume_passes_over_a_checkpoint_missing_a_shard(
    sweep: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """QA's case: rank 1's shard of the newest checkpoint deleted. That folder was chosen
    (only its meta.pt was read) and both ranks failed loading it; now it is passed over for
    step 3, which resumes into the uninterrupted run's losses. Resuming the FSDP run with
    trainer=ddp is one line before the data is prepared, not an IsADirectoryError after."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(sweep / "1", run_dir, symlinks=True)  # last.ckpt stays a link
    ckpts = run_dir / "checkpoints"
    (ckpts / "step000006.ckpt" / "__1_0.distcp").unlink()
    resume = [*COMMON, *TWO_CPUS, "data.batch_size=4", "resume=true", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(REPO / "src" / "train.py"), *resume, "trainer=ddp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert proc.stderr.startswith(f"error: checkpoint {ckpts / 'step000003.ckpt'} is sharded")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "cache").exists()
    launch(cache_dir, *resume, "trainer=fsdp")
    r, uninterrupted = results(run_dir), results(sweep / "1")
    assert r["resumed_from"] == str(ckpts / "step000003.ckpt") and r["global_step"] == STEPS
    assert r["val_loss"] == uninterrupted["val_loss"]
    assert (
        "step000006.ckpt is unreadable (shard __1_0.distcp is missing"
        in (run_dir / "train.log").read_text()
    )


def test_no_rank_of_one_seed_draws_the_dropout_stream_of_another_seed() -> None:
    """Each rank seeds its dropout stream (``RNGState``) with ``dropout_seed``: rank 0 of a
    fresh run with the run's seed itself (one process's stream is unchanged), every other
    (rank, step) with a seed no run's ``seed`` can be (above 2**32 - 1). It was seed + rank,
    so rank 1 of ``seed=1`` drew rank 0 of ``seed=2``'s stream, and a DDP seed sweep's runs
    shared streams."""
    from lmlab.config.run import MAX_SEED
    from lmlab.train.checkpointing import dropout_seed

    seeds = (0, 1, 2, 3, MAX_SEED)
    streams = {
        (s, r, step): dropout_seed(s, r, step) for s in seeds for r in range(4) for step in (0, 7)
    }
    assert all(dropout_seed(s, 0) == s for s in seeds)
    assert len(set(streams.values())) == len(streams)  # every (seed, rank, step) its own
    others = [v for (s, r, step), v in streams.items() if (r, step) != (0, 0)]
    assert min(others) > MAX_SEED and max(others) < 2**64  # torch.manual_seed's range
    torch.manual_seed(max(others))  # accepted
    assert dropout_seed(5, 3, 2) == dropout_seed(5, 3, 2)  # the same every process
