"""Shared fixtures: one small data cache per session, the lmlab command line in-process, and
the records of an offline W&B run. Configs are composed from the real ``conf/`` tree by
``lmlab.train.compose.compose_train``, exactly as ``lmlab train <overrides>`` composes them."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config_files import read_once
from cores import usable_cores
from eval_tasks import GENERATING_TASK
from in_process import without_heap_work
from lmlab.cli.main import command
from lmlab.config import CONF_DIR

read_once()
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `make test`: a worker per usable core
    # Each worker, and the processes its tests start, gets its share of the cores: with
    # torch's default of a thread per core each, the workers' threads contend (measured on 2
    # cores: the suite took longer with 2 workers than with one). Read by torch at import.
    share = max(1, usable_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(share))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n logical`` (``make test``): a worker per core this process may use, its cgroup's
    quota included (pytest-xdist counts the host's cores)."""
    return usable_cores()


# The caches that Hugging Face and W&B keep under the user's home (or where HF_HOME,
# HF_HUB_CACHE, WANDB_CACHE_DIR... point): a model in the user's hub cache
# (openai-community/gpt2) was converted where a test expects the offline refusal, and every
# session left W&B's debug logs and artifact staging folders in ~/.cache/wandb and
# ~/.local/share/wandb. Each process of the session (each xdist worker, and the processes its
# tests start) gets its own, in its pytest temporary folder.
OWN_CACHES = {
    "HF_HOME": "huggingface",
    "WANDB_CACHE_DIR": "wandb-cache",
    "WANDB_DATA_DIR": "wandb-data",
    "WANDB_CONFIG_DIR": "wandb-config",
}
# set by a user, these would take precedence over HF_HOME
FOLLOW_HF_HOME = (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_DATASETS_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
)


@pytest.hookimpl(trylast=True)  # after pytest's own, which makes its temporary-folder factory
def pytest_configure(config: pytest.Config) -> None:
    """Before the test modules are collected: huggingface_hub reads HF_HOME at import."""
    home = config._tmp_path_factory.getbasetemp() / "home"
    for name in FOLLOW_HF_HOME:
        os.environ.pop(name, None)
    for name, folder in OWN_CACHES.items():
        os.environ[name] = str(home / folder)


# The repository itself: a test writes in its own temporary folders, never in the checkout. A
# DataConfig built in Python keeps its cache_dir default as the literal "${oc.env:...}" text,
# which a test once took for a folder and created in the working directory (the checkout). The
# files of the checkout are listed before the tests and after; a file added or removed fails
# the session, naming it. Left out: what tools write there themselves (caches, the venv, and
# bench/gpu_check.sh's default output folder, where it writes the log while the tests run).
REPOSITORY = Path(__file__).resolve().parent.parent
NOT_THE_CHECKOUTS = {".git", ".venv", ".whl", "__pycache__", ".pytest_cache", ".ruff_cache"}
NOT_THE_CHECKOUTS |= {"gpu-check"}


def checkout_files() -> set[str]:
    files = set()
    for folder, subfolders, names in os.walk(REPOSITORY):
        subfolders[:] = [
            d for d in subfolders if d not in NOT_THE_CHECKOUTS and not d.endswith(".egg-info")
        ]
        files.update(str(Path(folder, n).relative_to(REPOSITORY)) for n in names)
    return files


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller (or the only process)
        session.config.stash[CHECKOUT] = checkout_files()


def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(CHECKOUT, None)
    if before is None:
        return
    after = checkout_files()
    changed = [f"added {f}" for f in sorted(after - before)]
    changed += [f"removed {f}" for f in sorted(before - after)]
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["the tests changed the checkout (a test must write in its tmp_path):", *changed]
        reporter.write_line("\n".join(lines[:21]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


CHECKOUT = pytest.StashKey[set[str]]()


# Fixtures that prepare data or train: a test using one is marked slow (`-m "not slow"`).
SLOW_FIXTURES = {"cache_dir", "sweep", "single", "smoke_ckpts", "counting"}


def pytest_collection_finish(session: pytest.Session) -> None:
    """What is alive once the tests are collected (torch, Lightning, transformers: millions of
    objects) lives as long as the session: out of the collector's scans, as an lmlab command
    keeps its imports (``lmlab.cli.heap``). A full collection of it took about 0.6 s, 26 times
    in test_rundir and test_train alone."""
    gc.collect()
    gc.freeze()


# The files that take longest in `make test`, longest first (seconds of test time on the 2-core
# machine, 2026-12-07, pytest's junit times): `make test` runs them first
# (`--no-loadscope-reorder`: xdist hands out files in this order), and the small ones last, so
# that both workers finish at about the same time. Out of date, the order only balances the
# workers less well.
LONGEST_FIRST = [
    "train/test_rundir.py",  # 100
    "train/test_train.py",  # 60
    "analysis/test_scaling.py",  # 47
    "infer/test_generation.py",  # 44
    "test_config.py",  # 37
    "model/test_one_graph.py",  # 35
    "train/test_resume.py",  # 33
    "train/test_disk_full.py",  # 28
    "train/test_loggers.py",  # 26
    "train/test_evals.py",  # 26
    "train/test_hot_path.py",  # 25
    "cli/test_cli.py",  # 25
    "test_sweeps.py",  # 24
    "train/test_memory.py",  # 23
    "train/test_preflight.py",  # 22
    "cli/test_sweep.py",  # 20
    "analysis/test_compare.py",  # 19
    "train/test_finetune.py",  # 18
    "infer/test_evaluate.py",  # 18
    "infer/test_hf.py",  # 17
    "infer/test_hflm.py",  # 17
]


RANK = {Path(__file__).parent / name: i for i, name in enumerate(LONGEST_FIRST)}


def longest_first(item: pytest.Item) -> int:
    """The item's file's place in LONGEST_FIRST; the other files (outside tests/ too) after."""
    return RANK.get(item.path, len(RANK))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=longest_first)  # stable: each file's tests keep their order
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs CUDA (make test-gpu on a GPU)")
            for item in gpu_tests:
                item.add_marker(skip)
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def root_handlers_kept() -> Iterator[None]:
    """Each test ends with the root logger's handlers it began with (pytest's own aside). A
    command run in this process (``run_command("train", ...)``: Hydra's job logging) adds
    handlers that write to the test's captured streams, which pytest closes after it; a later
    test's warning went there too, and through a W&B console wrapper left on such a stream,
    whose error landed in that test's ``caplog``."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before and type(handler).__module__ != "_pytest.logging":
            root.removeHandler(handler)


@pytest.fixture(autouse=True)
def wandb_console_kept() -> Iterator[None]:
    """Each test ends with the W&B console callbacks it began with. A W&B run hooks this
    process's stdout and stderr and unhooks them when it finishes; a test that replaces
    ``Run.finish`` (W&B lost at the run's end) left its run's hooks on streams pytest closed
    after it, and a later test's output went through them: "error in stderr callback"
    (AlreadyJoinedError, then "I/O operation on closed file") in that test's ``caplog``. In
    W&B's own failure path ``Run.finish`` unhooks them (``_console_stop``)."""
    try:
        from wandb.sdk.lib import console_capture
    except ImportError:  # pragma: no cover - W&B is a dependency
        yield
        return
    hooks = [getattr(console_capture, n, {}) for n in ("_stdout_callbacks", "_stderr_callbacks")]
    before = [set(h) for h in hooks]
    yield
    for h, kept in zip(hooks, before, strict=True):
        for key in set(h) - kept:
            h.pop(key, None)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data cache of every test that names none (``LMLAB_CACHE``, which the default
    ``paths.cache_dir`` reads): one for the test session, shared by its xdist workers. Tests
    wrote tokenizers, packed rows and the peak-FLOP/s measurement into the user's
    ``~/.cache/lmlab``, and read what was there from before."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "lmlab-session-cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMLAB_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session", autouse=True)
def brief_peak_probe() -> Iterator[None]:
    """The CPU peak probe every run starts with (``lmlab.train.hardware.cpu_peak_flops``) runs
    as it is, timed briefly: the square matmul for a twentieth of a second where a cache has
    no peak yet (a user's first run: a second), a run's own layers twice (a user's: 16 times).
    The suite's runs spent 44 s of CPU in it (255 probes, 12 of them the square's second);
    test_hardware.py tests what the probe's timings give, and a user's run measures as before."""
    from lmlab.train import hardware

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hardware, "SQUARE_SECONDS", 0.05)
        patch.setattr(hardware, "SHAPE_TIMINGS", 2)
        yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lmlab-cache")


@pytest.fixture
def start_train(cache_dir: Path) -> Callable[..., subprocess.Popen]:
    """``start_train(*overrides)``: ``python src/train.py OVERRIDES`` in a child process, as a
    user types it, with this session's data cache and W&B offline. Returns the process; its
    stdout and stderr come merged as text (``proc.stdout``, ``proc.communicate()[0]``)."""
    env = {**os.environ, "LMLAB_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    script = CONF_DIR.parent / "src" / "train.py"

    def start(*overrides: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), *overrides],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    return start


@pytest.fixture
def run_command(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``run_command("compare", DIR, "--metric", "mfu")``: ``lmlab compare DIR ...`` in this
    process; returns its exit code (output through capsys). The process's heap work is left
    out (``in_process.without_heap_work``)."""
    without_heap_work(monkeypatch)

    def run(name: str, *argv: str) -> int:
        with pytest.raises(SystemExit) as exited:
            command(name, [str(a) for a in argv])
        return exited.value.code

    return run


@pytest.fixture
def multirun_config() -> Iterator[Callable[..., Any]]:
    """``multirun_config(*overrides)``: the primary config of ``lmlab train -m OVERRIDES``,
    inside the Hydra that composed it (its config loader composes the jobs)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from lmlab.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):

        def compose(*overrides: str) -> Any:
            loader = GlobalHydra.instance().config_loader()
            return loader.load_configuration("train", list(overrides), RunMode.MULTIRUN)

        yield compose
    GlobalHydra.instance().clear()


@pytest.fixture
def refused_jobs(tmp_path: Path, multirun_config) -> Callable[..., list[str]]:
    """``refused_jobs(*argv)``: why each job of ``lmlab train ARGV`` (``-m``: every job of the
    sweep, as Hydra's sweeper composes it; Optuna's: the corners of its search space) would be
    refused before any work, the machine's own checks aside; [] when none is. Nothing is
    written."""
    from hydra.core.hydra_config import HydraConfig

    from lmlab.cli.sweep import job_config, search_corners, sweep_jobs
    from lmlab.errors import ConfigError
    from lmlab.train.preflight import check_job

    def refused(*argv: str) -> list[str]:
        overrides = [a for a in argv if a != "-m"]
        dirs = [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'run'}"]
        config = multirun_config(*overrides, *dirs)
        multirun = "-m" in argv
        jobs = (multirun and (sweep_jobs(config) or search_corners(config))) or [overrides]
        reasons = []
        for num, job_overrides in enumerate(jobs):
            job = job_config(config, job_overrides, num)
            HydraConfig.instance().set_config(job)
            try:
                check_job(job, machine=False)
            except ConfigError as err:
                reasons.append(f"#{num} {' '.join(job_overrides)}: {err}")
        assert not any(tmp_path.iterdir()), "the checks wrote something"
        return reasons

    return refused


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of every host read (``syncs.HOST_READS``) of any tensor, and of every aten op
    that would wait for a GPU (``syncs.SyncingOps``), from now on until ``monkeypatch.undo()``
    or the test's end."""
    import types

    import torch  # not at the top: the thread settings above must come first

    from syncs import HOST_READS, SyncingOps

    reads: list[str] = []
    recording = types.SimpleNamespace(on=False)
    monkeypatch.setattr(recording, "on", True)  # undone with the Tensor methods below
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def read(tensor: torch.Tensor, *args, name=name, original=original, **kwargs):
            reads.append(name)
            return original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    with SyncingOps(lambda op: recording.on and reads.append(op)):
        yield reads


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hugging Face hub offline for this test: the environment variables, and the constants
    datasets and huggingface_hub read at import, so a lookup fails at once instead of retrying
    an unreachable hub."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def read_wandb_log(log_file: Path) -> list[dict]:
    """The records of one offline W&B log (``run-<id>.wandb``), read with W&B's own ``wandb
    leet inspect``."""
    out = subprocess.run(
        [Path(sys.executable).parent / "wandb", "leet", "inspect", "--json", str(log_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def wandb_log() -> Callable[[Path], list[dict]]:
    """``read_wandb_log``: the records of one offline W&B log file."""
    return read_wandb_log


@pytest.fixture(scope="session")
def wandb_records() -> Callable[[Path], list[dict]]:
    """The records of a run's one offline W&B log (a run directory holding exactly one)."""

    def read(run_dir: Path) -> list[dict]:
        (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        return read_wandb_log(log_file)

    return read


@pytest.fixture
def own_tasks(tmp_path: Path) -> Path:
    """A user's folder of lm-eval tasks (``include_path``): ``my_nextline``, the shipped
    ``stdlib_nextline`` under another name, its items and few-shot examples copied, and the
    loader its YAML names (lm-eval finds a ``!function`` in the YAML's own folder)."""
    from lmlab.infer import harness

    folder = tmp_path / "my_tasks"
    folder.mkdir()
    shipped = harness.TASKS_DIR
    (folder / "loaders.py").write_bytes((shipped / "loaders.py").read_bytes())
    for suffix in (".jsonl", ".fewshot.jsonl"):
        (folder / f"my_nextline{suffix}").write_bytes(
            (shipped / f"stdlib_nextline{suffix}").read_bytes()
        )
    text = (shipped / "stdlib_nextline.yaml").read_text(encoding="utf-8")
    assert text.count("stdlib_nextline") == 2  # task: and dataset_kwargs.name:
    (folder / "my_nextline.yaml").write_text(text.replace("stdlib_nextline", "my_nextline"))
    return folder


@pytest.fixture
def generating_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., str]]:
    """``make(name, **generation_kwargs)``: a generating task named ``name`` (what a hub task
    is to lmlab: not shipped), in a folder whose lm-eval task index stands for the hub's;
    offline, as the hub is here."""
    from lm_eval.tasks import TaskManager

    from lmlab.infer import harness

    folder = tmp_path / "hub_tasks"
    folder.mkdir()
    (folder / "loaders.py").write_bytes((harness.TASKS_DIR / "loaders.py").read_bytes())
    monkeypatch.setattr(harness, "hub_reachable", lambda: False)
    monkeypatch.setattr(
        harness,
        "task_manager",
        lambda hub, folders=(): TaskManager(include_path=str(folder), include_defaults=False),
    )
    harness._task_generation_args.cache_clear()  # names are the same in every test's folder

    def make(name: str, **kwargs: Any) -> str:
        items = (harness.TASKS_DIR / "stdlib_cloze.jsonl").read_bytes()
        (folder / f"{name}.jsonl").write_bytes(items)
        asked = json.dumps({"until": ["\n"], **kwargs})
        (folder / f"{name}.yaml").write_text(GENERATING_TASK.format(name=name, kwargs=asked))
        return name

    yield make
    harness._task_generation_args.cache_clear()
