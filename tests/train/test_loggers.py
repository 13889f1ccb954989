"""The W&B run's end, its name and history across a resume, read from W&B's offline records
with its own ``wandb leet inspect`` (the ``wandb_log`` fixture; no server is reachable here),
and a run with an API key whose server does not answer or refuses it: offline, at once."""

from __future__ import annotations

import csv
import http.server
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmlab.train.compose import compose_train
from lmlab.train.guard import NonFiniteError
from lmlab.train.loggers import build_loggers, kept_run_name, run_name, run_tags, uses_wandb
from lmlab.train.run import train
from lmlab.train.wandb_mode import wandb_offline, wandb_unreachable
from lmlab.train.wandb_run import finish_wandb, recorded_wandb_name
from smoke import SMOKE

WANDB = [*SMOKE, "logger=wandb"]
KEY = "0123456789abcdef0123456789abcdef01234567"  # the form of a W&B API key, no account's
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Refusing(http.server.BaseHTTPRequestHandler):
    """A W&B server that answers, and refuses the key: 401 to every request."""

    def do_POST(self) -> None:
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"errors": [{"message": "user is not logged in"}]}')

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def with_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An API key in the environment and no ``WANDB_MODE`` (the tests' ``offline`` removed):
    what a user who ran ``wandb login`` has. W&B's init would wait 10 s (``WANDB_INIT_TIMEOUT``,
    90 by default) before it failed. W&B reads its variables once a process: its session is
    torn down before and after, so it reads these."""
    import wandb

    wandb.teardown()
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "10")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    wandb.teardown()


def test_a_key_whose_server_cannot_be_reached_means_offline_at_once(
    with_key: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a key, the W&B server is tried for a few seconds before online is chosen: one that
    cannot be reached means offline, said in one warning with the ``wandb sync`` that uploads
    the run later. ``WANDB_MODE`` set by the user is followed, without the check; no key:
    offline, without a warning."""
    url = f"http://127.0.0.1:{closed_port()}"
    with_key.setenv("WANDB_BASE_URL", url)
    with caplog.at_level(logging.WARNING, logger="lmlab.train"):
        assert wandb_offline(None, tmp_path) is True
    (record,) = caplog.records
    assert f"W&B: {url} cannot be reached" in record.getMessage()
    assert f"logging offline; upload later with: wandb sync {tmp_path}/wandb/offline-run-*" in (
        record.getMessage()
    )
    caplog.clear()
    with_key.setenv("WANDB_MODE", "online")  # the user's choice
    assert wandb_offline(None, tmp_path) is False
    with_key.setenv("WANDB_MODE", "offline")
    assert wandb_offline(None, tmp_path) is True
    with_key.delenv("WANDB_MODE")
    assert wandb_offline(True, tmp_path) is True and wandb_offline(False, tmp_path) is False
    with_key.delenv("WANDB_API_KEY")
    with_key.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert wandb_offline(None, tmp_path) is True
    assert not caplog.records


def test_wandb_offline_typed_in_its_settings_file_is_followed(
    with_key: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``wandb offline`` writes ``mode = offline`` to W&B's settings file: with a key, the run
    logs offline as the user asked, without trying the server (lmlab read only
    ``WANDB_MODE``, then passed W&B ``mode=online``, overruling it); ``wandb online`` alike."""
    with_key.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    with_key.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    for mode, offline in (("offline", True), ("online", False)):
        (tmp_path / "settings").write_text(f"[default]\nmode = {mode}\n")
        with caplog.at_level(logging.WARNING, logger="lmlab.train"):
            assert wandb_offline(None, tmp_path) is offline
    assert not caplog.records  # the server was not tried


def test_log_model_in_a_run_that_falls_back_offline_keeps_its_checkpoints_local(
    with_key: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``logger.wandb.log_model=true`` with a key (the checks pass) whose server cannot be
    reached: Lightning refuses ``log_model`` offline, and the offline fallback failed the run
    once its data was prepared. It goes on offline, its checkpoints local, in one warning."""
    with_key.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    cfg = compose_train([*WANDB, "logger.wandb.log_model=true"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="lmlab.train"):
        try:
            loggers = build_loggers(cfg, tmp_path)
        finally:
            finish_wandb({"status": "completed"})
    assert "WandbLogger" in [type(lg).__name__ for lg in loggers]
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    warned = [r.getMessage() for r in caplog.records if "log_model=" in r.getMessage()]
    assert warned == [
        f"W&B: offline, no checkpoint is uploaded (logger.wandb.log_model=true): they stay in "
        f"{tmp_path}/checkpoints"
    ]


def test_a_server_that_never_answers_is_given_up_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name lookup or connection that hangs (it takes no timeout of its own) does not hold
    the run: the check stops waiting after its timeout and names it."""
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    released = threading.Event()

    def hangs(*args: object, **kwargs: object) -> None:
        released.wait()  # until the test ends: the probe thread is a daemon
        raise OSError("released")  # as a connection that gave up: the probe thread ends

    monkeypatch.setattr(socket, "create_connection", hangs)
    try:
        why = wandb_unreachable("https://api.wandb.ai", timeout=0.01)
    finally:
        released.set()
    assert why == "api.wandb.ai:443: no answer within 0.01 s"


@pytest.mark.parametrize("server", ["closed", "refusing"])
def test_a_run_with_a_key_whose_wandb_does_not_start_online_trains_offline(
    server: str,
    with_key: pytest.MonkeyPatch,
    tmp_path: Path,
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    wandb_records,
) -> None:
    """QA's run: a key, no server (it waited 1 min 47 s for W&B, then ended in W&B's
    ``CommError`` traceback, results.json ``failed``): it trains offline, with one warning.
    A server that answers passes the check and W&B's init then fails (here it refuses the
    key): the run goes on offline under its id, with one warning naming W&B's error. Both
    name the ``wandb sync`` that uploads the run."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1] if server == "refusing" else closed_port()
    try:
        with_key.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        with caplog.at_level(logging.WARNING, logger="lmlab.train"):
            train(compose_train(WANDB, tmp_path, cache_dir))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"
    (warning,) = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    if server == "closed":
        assert "cannot be reached" in warning
    else:
        assert warning.startswith("W&B: the online run did not start (CommError: ")
        assert "401" in warning
    assert f"wandb sync {tmp_path}/wandb/offline-run-*" in warning
    recs = wandb_records(tmp_path)
    (run,) = [r["run"] for r in recs if r["type"] == "run"]
    assert run["run_id"] == (tmp_path / "wandb_id").read_text()
    assert any(r["type"] == "history" for r in recs)


def test_an_offline_wandb_run_leaves_the_next_run_online_where_it_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's next job or a notebook's next run in this process: an offline W&B run
    (``logger.wandb.offline=true``, no key, a server that did not answer) left
    ``WANDB_MODE=dryrun`` in the process's environment and in W&B's session, so a later run
    that asked for online (``offline=false``, or a key and a server that answers) logged
    offline, without the warning and ``wandb sync`` hint that an offline fallback says."""
    import wandb

    wandb.teardown()  # W&B's session reads the environment once a process: read it here
    monkeypatch.delenv("WANDB_MODE", raising=False)  # a user's: no mode set
    cfg = compose_train([*WANDB, "logger.wandb.offline=true"], tmp_path)
    try:
        build_loggers(cfg, tmp_path)  # the W&B run starts with the hyperparameters
        finish_wandb({"status": "completed"})
        assert "WANDB_MODE" not in os.environ
        assert wandb.setup().settings.mode == "online"  # what a wandb.init without mode takes
    finally:
        wandb.teardown()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # the run itself offline
    assert wandb_offline(False) is False


@pytest.mark.parametrize("how", ["WANDB_MODE", "wandb disabled"])
def test_w_and_b_disabled_by_the_user_starts_no_wandb_run(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``WANDB_MODE=disabled``, or ``wandb disabled`` (its settings file's ``mode``), W&B's
    documented off switch: lmlab passed ``mode=offline`` to ``wandb.init``, which overruled
    it, and every run wrote ``wandb/offline-run-*`` records and a ``wandb_id``."""
    run_dir = tmp_path / "run"
    if how == "WANDB_MODE":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "settings").write_text("[default]\nmode = disabled\n")
    cfg = compose_train(WANDB, run_dir)
    try:
        loggers = build_loggers(cfg, run_dir)
    finally:
        finish_wandb({"status": "completed"})
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]
    assert not uses_wandb(cfg)
    assert not (run_dir / "wandb").exists() and not (run_dir / "wandb_id").exists()


def test_a_run_directory_before_wandb_name_keeps_its_results_name(tmp_path: Path) -> None:
    """A run directory from before ``wandb_name`` was written: its W&B run (``wandb_id``) is
    named as results.json says; a directory without a W&B run has no name to keep."""
    (tmp_path / "results.json").write_text(json.dumps({"run_name": "model=gpt_small"}))
    assert recorded_wandb_name(tmp_path) is None
    (tmp_path / "wandb_id").write_text("ab12")
    assert recorded_wandb_name(tmp_path) == "model=gpt_small"
    (tmp_path / "wandb_name").write_text("+debug=smoke,logger=wandb\n")
    assert recorded_wandb_name(tmp_path) == "+debug=smoke,logger=wandb"


@pytest.mark.parametrize(
    ("resume", "found", "checkpointed", "name"),
    [
        # extended with trainer.max_steps=8: its overrides would rename it
        (True, {"status": "completed", "run_name": "model=gpt_small"}, True, "model=gpt_small"),
        ("auto", {"status": "preempted", "run_name": "model=gpt_small"}, True, "model=gpt_small"),
        # out of memory after a checkpoint, resumed with a smaller batch
        (True, {"status": "failed", "run_name": "model=gpt_small"}, True, "model=gpt_small"),
        ("auto", {"status": "running", "run_name": "model=gpt_small"}, True, "model=gpt_small"),
        # refused before its first checkpoint: resume=auto starts a run of its own
        ("auto", {"status": "failed", "run_name": "model.n_layer=-1"}, False, "own"),
        (False, {"status": "completed", "run_name": "model=gpt_small"}, True, "own"),
        (True, None, True, "own"),  # nothing to continue: its own overrides
        (True, {"status": "completed"}, True, "own"),
        (True, {"status": "failed", "previous": "x"}, True, "own"),  # damaged by hand
        (True, ["not", "a", "record"], True, "own"),
    ],
)
def test_a_resume_keeps_the_name_of_the_run_it_continues(
    resume: bool | str, found: object, checkpointed: bool, name: str
) -> None:
    """results.json's ``run_name`` is the overrides' (``run_name``; "own" below); a resume
    of the run whose checkpoints the folder holds keeps its run's, as its W&B run keeps its
    own, whatever that run's status."""
    cfg = OmegaConf.create({"resume": resume})
    kept = kept_run_name(cfg, found, checkpointed)
    assert kept == (run_name(cfg) if name == "own" else name)


def offline_runs(run_dir: Path, read: Callable[[Path], list[dict]]) -> list[list[dict]]:
    """The records of each offline W&B run under a run directory, oldest first."""
    return [read(f) for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def exit_code(recs: list[dict]) -> int:
    (code,) = [r["exit"].get("exit_code", 0) for r in recs if r["type"] == "exit"]
    return code


def summary(recs: list[dict]) -> dict:
    """The summary as W&B's updates leave it."""
    out: dict = {}
    for r in recs:
        if r["type"] == "summary":
            out.update(r["summary"].get("update", {}))
    return out


def history(recs: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in recs if r["type"] == "history"]


@pytest.mark.slow  # W&B's service process, and its reader's
@pytest.mark.parametrize(
    ("status", "code"), [("completed", 0), ("failed", 1), ("preempted", 143), ("interrupted", 130)]
)
def test_the_wandb_run_ends_with_the_runs_status_error_and_exit_code(
    tmp_path: Path, status: str, code: int, wandb_log
) -> None:
    """W&B calls a run that exits 0 finished: only a completed run does; a stopped one exits as
    the process does (143, 130). The summary holds results.json's status and its error's
    first line (null once completed)."""
    import wandb

    error = None if status == "completed" else "RuntimeError: CUDA out of memory.\nTried more"
    run = wandb.init(mode="offline", dir=tmp_path, project="lmlab-test")
    try:
        finish_wandb({"status": status, "error": error})
        assert wandb.run is None
    finally:
        run.finish()  # no open run left to the next test, whatever happened (a no-op once done)
    (recs,) = offline_runs(tmp_path, wandb_log)
    assert exit_code(recs) == code
    expected = None if error is None else "RuntimeError: CUDA out of memory."
    assert {k: summary(recs).get(k) for k in ("status", "error")} == {
        "status": status,
        "error": expected,
    }


def test_a_failed_run_marks_its_wandb_run_failed(
    tmp_path: Path, cache_dir: Path, wandb_log
) -> None:
    """A run the non-finite guard stops: results.json says failed, and so does its W&B run
    (it said finished, exit code 0, with no status in its summary)."""
    with pytest.raises(NonFiniteError):
        train(compose_train([*WANDB, "optim.lr=1e6"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    (recs,) = offline_runs(tmp_path, wandb_log)
    assert results["status"] == "failed" and exit_code(recs) == 1
    assert summary(recs)["status"] == "failed"
    assert summary(recs)["error"] == results["error"].splitlines()[0]
    assert summary(recs)["error"].startswith("NonFiniteError: non-finite loss")
    # its size, as a completed run's summary has it (a W&B table filtered by size lost it)
    assert summary(recs)["params"] == results["params"] > 0


@pytest.mark.slow  # trains
def test_a_logger_turned_off_with_null_is_left_out(tmp_path: Path, cache_dir: Path) -> None:
    """``logger.wandb=null``, as ``callbacks.<name>=null`` turns a callback off, failed the run
    once its data was prepared (``'NoneType' object has no attribute 'get'``): now the run
    logs to CSV alone, and records no W&B run."""
    train(compose_train([*WANDB, "logger.wandb=null"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["status"], results["wandb_id"]) == ("completed", None)
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_id").exists()


def test_a_resumed_run_continues_its_wandb_run_from_the_checkpoints_step(
    tmp_path: Path, cache_dir: Path, wandb_log
) -> None:
    """Offline, each start writes its own folder under the run's one W&B id and name (the
    first start's overrides: an extension's new ``trainer.max_steps`` renamed it), with the
    intent to resume recorded for ``wandb sync``. W&B's own ``_step`` starts at 0 in each
    (only the server knows the run's last one); the x axis, ``trainer/global_step``, goes on
    from the checkpoint's step in every row of the resumed run, its parameter table's too (it
    was 0)."""
    train(compose_train([*WANDB, "trainer.max_steps=2"], tmp_path, cache_dir))
    train(compose_train([*WANDB, "trainer.max_steps=3", "resume=true"], tmp_path, cache_dir))
    first, resumed = offline_runs(tmp_path, wandb_log)
    run_id = (tmp_path / "wandb_id").read_text()
    name = "+debug=smoke,data.seq_len=64,logger=wandb,trainer.max_steps=2"
    for recs in (first, resumed):
        (run,) = [r["run"] for r in recs if r["type"] == "run"]
        assert run["run_id"] == run_id and run["resume"] is True
        assert run["display_name"] == name
    steps = [row["trainer/global_step"] for row in history(resumed)]
    assert steps and min(steps) == 2, steps  # resumed from the step-2 checkpoint
    assert steps == sorted(steps)
    assert any("parameters._type" in row for row in history(resumed))
    assert max(row["trainer/global_step"] for row in history(first)) <= min(steps)


def test_evaluate_s_wandb_start_goes_offline_where_w_and_b_refuses_it(
    with_key: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``lmlab evaluate`` logs into a run's W&B run after its record is written: an online
    start W&B refuses (a server that answers 401) goes on offline with one warning, as a
    training run's does, instead of a traceback after the record."""
    from lmlab.train.wandb_run import init_wandb

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with_key.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
        with caplog.at_level(logging.WARNING, logger="lmlab.train.wandb_run"):
            run = init_wandb(False, tmp_path, project="p", id="abcd1234", dir=str(tmp_path))
        run.finish()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert run.id == "abcd1234" and run.settings.mode == "offline"
    (warning,) = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert warning.startswith("W&B: the online run did not start (")
    assert f"wandb sync {tmp_path}/wandb/offline-run-*" in warning


@pytest.fixture
def multirun_job(tmp_path: Path) -> Iterator[Callable[[list[str], list[str]], None]]:
    """Set Hydra's config as a multirun's job sees it: the sweep's command line in its
    folder's ``multirun.yaml``, and the job's own overrides; unset afterwards."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def as_job(sweep: list[str], job: list[str]) -> None:
        record = {"hydra": {"overrides": {"task": sweep}}}
        (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(record))
        cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
        cfg.hydra.mode, cfg.hydra.sweep.dir = RunMode.MULTIRUN, str(tmp_path)
        cfg.hydra.sweeper, cfg.hydra.overrides.task, cfg.hydra.job.num = {"params": None}, job, 1
        HydraConfig.instance().set_config(cfg)

    yield as_job
    HydraConfig.instance().cfg = None


def test_a_multirun_job_is_named_by_every_key_its_sweep_varies(multirun_job) -> None:
    """A sweep was a value with a comma, so the jobs of ``model.activation=relu,gelu
    seed=range(2)`` (W&B's name, results.json's ``run_name``) were named
    ``model.activation=relu`` alike, whatever their seed, and a list or dict value with
    commas was named as swept. Hydra's parser says which overrides sweep."""
    cfg = OmegaConf.create({})
    constant = ["+debug=smoke", "eval.tasks=[stdlib_nextline,stdlib_cloze]"]
    multirun_job(
        [*constant, "model.activation=relu,gelu", "seed=range(2)"],
        [*constant, "model.activation=relu", "seed=1"],
    )
    assert run_name(cfg) == "model.activation=relu,seed=1"
    multirun_job(
        ["+experiment=choice(llama,gpt2)", "model={d_model:32,n_layers:1}"],
        ["+experiment=gpt2", "model={d_model:32,n_layers:1}"],
    )
    assert run_name(cfg) == "+experiment=gpt2"


SIZE_TAGS = [
    (["model.activation=swiglu", "seed=1"], "size:tiny"),
    (["model.d_model=64", "model.n_layers=2"], "size:custom"),
    (["+model.moe.num_experts=4"], "size:custom"),
    (["model={d_model:32,n_layers:1}", "budget.flops=2e12"], "size:custom"),
    (["model=gpt_tiny", "model.norm=rmsnorm"], "size:tiny"),
    (["data.vocab_size=512", "model.vocab_size=600", "model.n_heads=2"], "size:tiny"),
    (["+experiment=mixtral"], "size:custom"),  # its block sets the experts
    (["+experiment=llama"], "size:tiny"),
]


def test_the_size_tag_is_the_preset_s_only_where_its_shape_is_kept(multirun_job) -> None:
    """Every job of an isoflop sweep (152k to 3.5M parameters through ``model.d_model`` and
    ``model.n_layers``) was tagged ``size:tiny`` after its preset, while the other tags say
    what the run trained. (The jobs in one test: the config they read is composed once.)"""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    cfg = compose_train(["model=gpt_tiny"])
    for job, size in SIZE_TAGS:
        multirun_job(job, job)
        with read_write(HydraConfig.get()):
            HydraConfig.get().runtime.choices["model"] = "gpt_tiny"
        assert [t for t in run_tags(cfg) if t.startswith("size:")] == [size], job


def test_a_history_row_cut_short_is_dropped_on_resume(tmp_path: Path) -> None:
    """A full disk (or a kill) while Lightning appended a row left ``\\r\\n0,0`` at the end of
    metrics.csv: every resume then failed in ``int(None)``, a TypeError naming no file."""
    from lmlab.train.loggers import HistoryWriter

    rows = "epoch,step,train/loss,val/loss\r\n0,0,9.1,\r\n0,1,8.5,\r\n0,1,,8.7\r\n0,2,8.0,\r\n"
    (tmp_path / "metrics.csv").write_text(rows + "0,0")
    HistoryWriter(str(tmp_path), resume_step=3)
    assert (tmp_path / "metrics.csv").read_bytes() == rows.encode()
    (tmp_path / "metrics.csv").write_text(rows + "0,x,7.9,\r\n0,3,7.5,,extra\r\n")
    HistoryWriter(str(tmp_path), resume_step=3)
    assert (tmp_path / "metrics.csv").read_bytes() == rows.encode()


@pytest.mark.slow  # trains twice
def test_w_and_b_lost_once_the_run_trained_leaves_it_completed(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture, wandb_log
) -> None:
    """W&B's service process gone at the run's end (killed by hand: ``ConnectionResetError``
    from the summary and ``run.finish``): the completed run ended in a traceback with exit
    code 1 (or its summary, written before results.json, recorded it failed), and a sweep's
    next job reused the broken W&B run and failed. Now two warnings; results.json says
    completed; the next run starts a W&B run of its own and finishes it."""
    from wandb.sdk.wandb_run import Run
    from wandb.sdk.wandb_summary import SummaryDict

    def lost(*args: object, **kwargs: object) -> None:
        raise ConnectionResetError("Connection lost")  # W&B's words, its service gone

    first, after = tmp_path / "first", tmp_path / "after"
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(SummaryDict, "update", lost)
        patch.setattr(Run, "finish", lost)
        train(compose_train(WANDB, first, cache_dir))
    assert json.loads((first / "results.json").read_text())["status"] == "completed"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B:")]
    assert said == [
        f"W&B: {what} failed (ConnectionResetError: Connection lost); the run's record is "
        "results.json"
        for what in ("writing the summary", "finishing the run")
    ]
    train(compose_train(WANDB, after, cache_dir))
    (recs,) = offline_runs(after, wandb_log)
    (run,) = [r["run"] for r in recs if r["type"] == "run"]
    assert run["run_id"] == (after / "wandb_id").read_text() != (first / "wandb_id").read_text()
    assert summary(recs)["status"] == "completed" and exit_code(recs) == 0


@pytest.mark.slow  # trains
def test_w_and_b_lost_mid_run_leaves_training_and_its_csv_history_going(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """W&B's service gone mid-run (``ConnectionResetError`` from each ``run.log`` once its
    first metrics were logged) failed the run with a traceback mid-training. Now one warning:
    W&B logs nothing more, and the run completes with every step in csv/metrics.csv."""
    from wandb.sdk.wandb_run import Run

    log_once = Run.log
    calls: list[int] = []

    def lost_after_one(self: Run, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionResetError("Connection lost")  # W&B's words, its service gone
        return log_once(self, *args, **kwargs)

    steps = ["trainer.max_steps=6", "trainer.log_every_n_steps=1"]
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(Run, "log", lost_after_one)
        train(compose_train([*WANDB, *steps], tmp_path, cache_dir))
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B:")]
    assert len(said) == 1 and "failed (ConnectionResetError: Connection lost)" in said[0], said
    assert "W&B logs nothing more in this run" in said[0]
    assert len(calls) == 2  # nothing more was sent to the lost service
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    logged = {int(r["step"]) for r in rows if r.get("train/loss")}
    assert logged == set(range(6)), logged
