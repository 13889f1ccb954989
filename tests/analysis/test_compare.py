"""Tests for lmlab.analysis.compare (with lmlab.analysis.multirun and lmlab.analysis.ranking)
on synthetic Hydra multirun directories (no training involved)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from lmlab.analysis import compare as cmp
from lmlab.analysis import multirun as mrun
from lmlab.analysis import ranking, stat
from lmlab.analysis.runs import dry_runs, load_runs, not_runs
from lmlab.cli.compare import main as compare_main
from lmlab.config import CONF_DIR
from lmlab.config.locks import LOCK_FILE, SWEEP_LOCK_FILE
from lmlab.files import PLAN

CSV_COLUMNS = [
    "epoch",
    "step",
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "perf/tokens_per_second",
    "val/loss",
    "val/perplexity",
    "val/bits_per_byte",
]
MAX_STEPS = 200
OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)" * 2

# (norm_placement, activation, seed, final val_loss or None if failed, tokens_per_second)
JOBS = [
    ("pre", "gelu", 1, 3.10, 2000.0),
    ("pre", "gelu", 2, 3.12, 2100.0),
    ("pre", "gelu", 3, 3.14, 1900.0),
    ("post", "relu", 1, 3.30, 3000.0),
    ("pre", "swiglu", 1, 3.05, 1000.0),
    ("post", "gelu", 1, None, None),
]


def loss_at(step: int, final: float) -> float:
    """Exponential decay from ~10 to exactly ``final`` at MAX_STEPS."""
    return final + 7.0 * (math.exp(-step / 40) - math.exp(-MAX_STEPS / 40))


def write_metrics_csv(path: Path, final: float, tps: float, last_step: int = MAX_STEPS) -> None:
    """Lightning CSVLogger layout: sparse rows, train every 10 steps, validation every 50."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for step in range(10, last_step + 1, 10):
            loss = loss_at(step, final) + 0.05
            writer.writerow(
                {
                    "epoch": 0,
                    "step": step,
                    "train/loss": loss,
                    "train/lr": 3e-4,
                    "train/grad_norm": 1.0 / step,
                    "perf/tokens_per_second": tps,
                }
            )
            if step % 50 == 0:
                val = loss_at(step, final)
                writer.writerow(
                    {
                        "epoch": 0,
                        "step": step,
                        "val/loss": val,
                        "val/perplexity": math.exp(val),
                        "val/bits_per_byte": val / math.log(2) / 4,
                    }
                )


def results_for(final: float | None, tps: float | None, seed: int, name: str) -> dict:
    done = final is not None
    return {
        "status": "completed" if done else "failed",
        "error": None if done else OOM,
        "val_loss": final,
        "best_val_loss": final,
        "val_perplexity": math.exp(final) if done else None,
        "val_bits_per_byte": final / math.log(2) / 4 if done else None,
        "train_loss": final + 0.05 if done else None,
        "params": 1_234_567,
        "non_embedding_params": 234_567,
        "tokens": 819_200 if done else 409_600,
        "flops": 6.0 * 1_234_567 * 819_200,
        "global_step": MAX_STEPS if done else 100,
        "tokens_per_second": tps,
        "mfu": 0.31 if done else None,
        "wall_seconds": 12.5,
        "seed": seed,
        "run_name": name,
    }


def write_job(
    job: Path, overrides: list[str], config: dict, results: dict, curve: tuple | None
) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "results.json").write_text(json.dumps(results))
    if curve is not None:
        write_metrics_csv(job / "csv" / "metrics.csv", *curve)


def make_multirun(root: Path, jobs: list[tuple] = JOBS) -> Path:
    for i, (norm, act, seed, final, tps) in enumerate(jobs):
        name = f"gpt-{norm}-{act}-s{seed}"
        overrides = [
            f"model.norm_placement={norm}",
            f"model.activation={act}",
            f"seed={seed}",
            "+debug=smoke",
            f"trainer.max_steps={MAX_STEPS}",
        ]
        config = {
            "model": {"norm_placement": norm, "activation": act, "d_model": 64, "n_layer": 2},
            "trainer": {"max_steps": MAX_STEPS},
            "debug": "smoke",
            "seed": seed,
            "run_name": name,
            "paths": {"output_dir": f"/tmp/multirun/{i}"},
        }
        # the failed job dies at step 100 with a diverging partial curve
        curve = (final, tps) if final is not None else (4.0, 500.0, 100)
        write_job(root / str(i), overrides, config, results_for(final, tps, seed, name), curve)
    return root


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    return make_multirun(tmp_path / "multirun")


def render(table, width: int = 250) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    return console.file.getvalue()


def table_cells(text: str) -> list[list[str]]:
    """The body cells of a rendered Rich table (the header uses ┃, the body │)."""
    body = [line for line in text.splitlines() if line.startswith("│")]
    return [[c.strip() for c in line.strip("│").split("│")] for line in body]


def row_by(rows: list[ranking.Row], norm: str, act: str, status: str = "completed") -> ranking.Row:
    (row,) = [
        r
        for r in rows
        if r.knobs == {"model.norm_placement": norm, "model.activation": act} and r.status == status
    ]
    return row


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- loading & knobs


def test_load_runs_reads_every_file(multirun: Path) -> None:
    runs = load_runs(multirun)
    assert [r.dir.name for r in runs] == ["0", "1", "2", "3", "4", "5"]
    assert [r.failed for r in runs] == [False] * 5 + [True]
    assert runs[0].overrides["model.activation"] == "gelu"
    assert runs[0].overrides["debug"] == "smoke"  # leading '+' stripped
    assert runs[0].config["model"]["d_model"] == 64
    assert [s for s, _ in runs[0].curve["val/loss"]] == [50, 100, 150, 200]
    assert runs[0].curve["val/loss"][-1][1] == pytest.approx(3.10)
    assert len(runs[0].curve["train/loss"]) == 20  # empty cells of validation rows skipped
    assert runs[5].error.startswith("RuntimeError: CUDA out of memory")


@pytest.mark.parametrize(
    ("csv_logger", "written"),
    [
        ({"name": "mylogs", "version": ""}, "{job}/mylogs/metrics.csv"),
        ({"name": "", "version": "v2"}, "{job}/v2/metrics.csv"),
        ({"save_dir": "logs", "version": None}, "{cwd}/logs/csv/version_1/metrics.csv"),
        ({"save_dir": "{cwd}/abs", "version": 3}, "{cwd}/abs/csv/version_3/metrics.csv"),
    ],
)
def test_a_run_s_curves_are_read_where_its_csv_logger_wrote_them(
    tmp_path: Path, csv_logger: dict, written: str
) -> None:
    """compare read csv/metrics.csv only: a run with ``logger.csv.name=mylogs`` (or another
    save_dir or version) had no curves, its plot lines missing and a metrics.csv column
    'missing'. The config's ``logger.csv`` says where Lightning wrote it (save_dir/name/
    version, ``${paths.output_dir}`` the run's folder wherever it now is: the jobs' configs
    name /tmp/multirun/<i>; a relative save_dir the command's working directory; a null
    version the newest version_N of this run: in a save_dir that runs share, the one whose
    hparams.yaml names the run's output folder)."""
    root = make_multirun(tmp_path / "sweep", JOBS[:2])
    cwd = tmp_path / "launched_here"
    job = root / "1"
    config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
    fields = {k: v.format(cwd=cwd) if isinstance(v, str) else v for k, v in csv_logger.items()}
    config["logger"] = {"csv": {"save_dir": "${paths.output_dir}", "name": "csv", **fields}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    hydra = {"hydra": {"runtime": {"cwd": str(cwd), "output_dir": "/tmp/multirun/1"}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    target = Path(written.format(job=job, cwd=cwd))
    target.parent.mkdir(parents=True)
    (job / "csv" / "metrics.csv").rename(target)
    (job / "csv").rmdir()
    (target.parent / "hparams.yaml").write_text("paths.output_dir: /tmp/multirun/1\n")
    if "version_1" in written:  # other runs' versions, older and newer, in the shared folder
        for other in ("version_0", "version_2"):
            write_metrics_csv(target.parent.parent / other / "metrics.csv", 9.0, 1.0)
            (target.parent.parent / other / "hparams.yaml").write_text(
                "paths.output_dir: /tmp/multirun/0\n"
            )
    runs = load_runs(root)
    # the CSV holds each float's repr, so the values read back exactly
    assert runs[1].curve["val/loss"] == [(s, loss_at(s, 3.12)) for s in (50, 100, 150, 200)]


def test_load_runs_finds_nested_jobs_and_killed_jobs(tmp_path: Path) -> None:
    make_multirun(tmp_path / "sweep" / "a", JOBS[:2])
    make_multirun(tmp_path / "sweep" / "b", JOBS[3:4])
    for job in ("7", "8"):
        (tmp_path / "sweep" / "b" / job / ".hydra").mkdir(parents=True)
        (tmp_path / "sweep" / "b" / job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"model.activation=geglu{job}"])
        )
    (tmp_path / "sweep" / "b" / "7" / LOCK_FILE).write_text("4242\n")  # a kill -9 left it
    runs = load_runs(tmp_path / "sweep")
    assert len(runs) == 5
    assert [(r.dir.name, r.state) for r in runs][-2:] == [("7", "killed"), ("8", "failed")]
    # killed before its first checkpoint: there is nothing to continue (it said "continues")
    assert runs[-2].error == (
        "no results.json, and no live process holds its lock: no checkpoint yet, so "
        "resume=auto starts it again"
    )
    checkpoint(tmp_path / "sweep" / "b" / "7")
    assert load_runs(tmp_path / "sweep")[-2].error == (
        "no results.json, and no live process holds its lock: resume=auto continues it"
    )
    # no lock file either: refused before it took one (a config error), not killed
    assert runs[-1].error.startswith("no results.json: refused before training")
    # killed after its checks, the lock file it left removed by a later command in the folder
    # (one refused there too, which writes nothing): its plan.json says it started
    (tmp_path / "sweep" / "b" / "8" / PLAN).write_text(json.dumps({"steps": 5}))
    assert load_runs(tmp_path / "sweep")[-1].state == "killed"


def hold_lock(path: Path, pid: str) -> int:
    """Hold the lock file ``path`` as a live run or sweep would (its pid written): a second
    open file description of this process conflicts with it, as another process's would."""
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode())
    return fd


def test_a_live_job_is_running_and_a_dead_one_killed(multirun: Path) -> None:
    """A job that has not ended (results.json ``running``, or none yet) is RUNNING while a
    live process holds its lock or its sweep's, and KILLED when none does (a ``kill -9``:
    the lock file stays, unheld). Both were shown alike, as FAILED."""
    import os

    failed = next(p for p in sorted(multirun.iterdir()) if p.is_dir() and load_runs(p)[0].failed)
    running = {"status": "running", "error": None}
    (failed / "results.json").write_text(json.dumps(running))
    (failed / LOCK_FILE).write_text("4242\n")  # left by a kill -9: nobody holds it
    for job in ("6", "7"):  # no results.json yet
        (multirun / job / ".hydra").mkdir(parents=True)
        (multirun / job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"model.activation=relu{job}"])
        )
    (multirun / "7" / LOCK_FILE).write_text("4242\n")
    held = [hold_lock(multirun / "6" / LOCK_FILE, "4343")]
    try:
        runs = load_runs(multirun)
        assert [(r.dir.name, r.state) for r in runs if r.failed] == [
            (failed.name, "killed"),
            ("6", "running"),
            ("7", "killed"),
        ]
        assert runs[-2].error == "pid 4343 holds its lock"
        (multirun / "7" / LOCK_FILE).unlink()  # not taken yet: the sweep's lock tells
        held.append(hold_lock(multirun / SWEEP_LOCK_FILE, "4444"))  # the sweep is live
        runs = load_runs(multirun)
        assert [(r.dir.name, r.state) for r in runs if r.failed] == [
            (failed.name, "killed"),  # its own lock unheld: the sweep went on past it
            ("6", "running"),
            ("7", "running"),
        ]
        assert runs[-1].error == "pid 4444 holds its lock"
        knobs = mrun.varying_knobs(runs)
        rows = ranking.aggregate(runs, "val_loss", knobs=knobs)
        cells = table_cells(render(cmp.render_table(rows, knobs, "val_loss")))
        assert [c[-1].split(" (")[0] for c in cells[-3:]] == ["KILLED", "RUNNING", "RUNNING"]
        lines = ranking.summarize(rows, "val_loss")
        assert "2 of 8 runs still running (bottom of the table): compare again when they end" in (
            lines
        )
        # killed before its first checkpoint: it was said to be continued
        assert (
            "1 of 8 runs stopped or killed before their first checkpoint (bottom of the table): "
            "there is nothing to continue, resume=auto starts them again"
        ) in lines
        checkpoint(failed)
        runs = load_runs(multirun)
        lines = ranking.summarize(ranking.aggregate(runs, "val_loss", knobs=knobs), "val_loss")
        assert (
            "1 of 8 runs killed before their end, no live process holds their lock (bottom of "
            "the table): resume=auto continues them"
        ) in lines
        assert not any("runs failed" in line for line in lines), lines
    finally:
        for fd in held:
            os.close(fd)


def test_a_finished_run_that_a_resume_is_continuing_is_not_ranked_by_its_old_record(
    multirun: Path,
) -> None:
    """A completed run extended (``trainer.max_steps`` raised, ``resume=true``): the resume
    writes results.json only at its end, so compare ranked the run by its old record while
    the resume trained, and again after a ``kill -9`` of it (checkpoints past the record's
    step). RUNNING while the resume holds the run's lock, KILLED once its lock file, newer
    than the record, is held by nobody. A lock file older than the record (the run that wrote
    it killed just after) leaves the record as it is."""
    import os

    job = next(p for p in sorted(multirun.iterdir()) if p.is_dir() and not load_runs(p)[0].failed)
    assert load_runs(job)[0].results["status"] == "completed"
    checkpoint(job)  # its last step's, which the resume extends
    fd = hold_lock(job / LOCK_FILE, "4545")
    try:
        (run,) = load_runs(job)
        assert (run.state, run.error) == (
            "running",
            "pid 4545 holds its lock: a process continues the run (its results.json is of "
            "the run before)",
        )
    finally:
        os.close(fd)
    (run,) = load_runs(job)  # the resume was killed: its lock file is left, unheld
    assert (run.state, run.error) == (
        "killed",
        "a process that continued the run was killed (its results.json is of the run before): "
        "resume=auto continues it",
    )
    record = (job / "results.json").stat().st_mtime_ns
    os.utime(job / LOCK_FILE, ns=(record - 10**9, record - 10**9))  # taken before the record
    assert load_runs(job)[0].state == "completed"
    (job / LOCK_FILE).unlink()
    assert load_runs(job)[0].state == "completed"


def test_a_sweep_with_no_results_yet_names_its_live_jobs_pid(tmp_path: Path) -> None:
    import os

    from lmlab.analysis.runs import RunDirError

    killed(tmp_path / "sweep")  # job 0 refused before training, job 1 killed
    (tmp_path / "sweep" / "2" / ".hydra").mkdir(parents=True)
    (tmp_path / "sweep" / "2" / ".hydra" / "overrides.yaml").write_text("[]\n")
    fd = hold_lock(tmp_path / "sweep" / "2" / LOCK_FILE, "4343")
    try:
        with pytest.raises(RunDirError) as err:
            load_runs(tmp_path / "sweep")
    finally:
        os.close(fd)
    assert str(err.value).endswith(
        "(3 started: 1 still running (pid 4343): compare again when they end; 1 killed before "
        "they ended: resume=auto continues them; 1 refused before training: train.log or the "
        "command says why)"
    )


def test_a_job_that_ends_while_its_folder_is_read_is_not_killed(
    multirun: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last job writes results.json and lets go of its lock between compare's listing of
    the folders and its probe of the lock: it is read as it ended, not shown KILLED."""
    import lmlab.analysis.job_state as job_state

    job = multirun / "6"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.activation=relu"]))
    record = json.loads((multirun / "0" / "results.json").read_text())

    def ends_meanwhile(lock: Path) -> None:
        (job / "results.json").write_text(json.dumps(record))  # then the lock is released
        return None

    monkeypatch.setattr(job_state, "live_holder", ends_meanwhile)
    assert load_runs(multirun)[-1].results == record


def test_varying_knobs_exact(multirun: Path) -> None:
    # seed varies but is excluded; +debug and trainer.max_steps are constant
    assert mrun.varying_knobs(load_runs(multirun)) == [
        "model.norm_placement",
        "model.activation",
    ]


def test_varying_knobs_falls_back_to_config(tmp_path: Path) -> None:
    for i, (act, seed) in enumerate([("gelu", 1), ("relu", 2), ("relu", 3)]):
        config = {
            "model": {"activation": act, "d_model": 64},
            "seed": seed,
            "run_name": f"run{i}",
            "paths": {"output_dir": f"/tmp/x/{i}"},
            "started": f"2024-06-0{i + 1} 12:00:00",
        }
        results = results_for(3.0 + i / 10, 1000.0, seed, f"run{i}")
        write_job(tmp_path / str(i), ["+debug=smoke"], config, results, (3.0 + i / 10, 1000.0))
    runs = load_runs(tmp_path)
    assert mrun.varying_knobs(runs) == ["model.activation"]
    rows = ranking.aggregate(runs, "val_loss")
    assert [(r.label, r.n) for r in rows] == [("activation=gelu", 1), ("activation=relu", 2)]


def test_override_missing_in_some_jobs_uses_config_default(tmp_path: Path) -> None:
    base = {"model": {"activation": "gelu", "bias": True}, "seed": 1}
    write_job(tmp_path / "0", ["model.bias=true"], base, results_for(3.0, 1.0, 1, "a"), None)
    write_job(tmp_path / "1", [], base, results_for(3.1, 1.0, 1, "b"), None)
    other = {"model": {"activation": "relu", "bias": True}, "seed": 1}
    write_job(tmp_path / "2", ["model.activation=relu"], other, results_for(3.2, 1.0, 1, "c"), None)
    # model.bias=true equals the config default True: not a knob
    assert mrun.varying_knobs(load_runs(tmp_path)) == ["model.activation"]


def test_a_group_left_at_its_default_shows_the_preset_it_ran_with(tmp_path: Path) -> None:
    """``model=t5_tiny`` against a run that kept the default: the default's name (Hydra's
    runtime choices), not ``-``; run bookkeeping (W&B id, resumed_from) is not a metric."""
    for job, overrides, model in (("0", [], "gpt_tiny"), ("1", ["model=t5_tiny"], "t5_tiny")):
        results = results_for(3.0, 1.0, 1, job) | {"wandb_id": None, "resumed_from": None}
        write_job(tmp_path / job, overrides, {"seed": 1}, results, None)
        hydra = {"hydra": {"runtime": {"choices": {"model": model, "hydra/launcher": "basic"}}}}
        (tmp_path / job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    runs = load_runs(tmp_path)
    assert [mrun.knob_value(run, "model") for run in runs] == ["gpt_tiny", "t5_tiny"]
    assert not {"wandb_id", "resumed_from"} & set(mrun.available_metrics(runs))


def resumed_sweep(root: Path, swept_in_overrides: bool) -> Path:
    """``-m model.activation=gelu,relu seed=1,2`` stopped in its second job, then resumed with
    ``resume=auto``: job 0 had completed and was left as it was; the resume rewrote the
    ``.hydra/`` of the jobs it trained (``resume=auto`` in their overrides and config). With
    ``swept_in_overrides=False`` the grid is in config.yaml only (the fallback)."""
    jobs = [("gelu", 1, 3.10, False), ("relu", 1, 3.00, True)]
    jobs += [("gelu", 2, 3.12, True), ("relu", 2, 3.02, True)]
    for i, (act, seed, final, resumed) in enumerate(jobs):
        grid = [f"model.activation={act}", f"seed={seed}"] if swept_in_overrides else []
        overrides = ["+debug=smoke", *grid, *(["resume=auto"] if resumed else [])]
        config = {
            "model": {"activation": act, "d_model": 64},
            "seed": seed,
            "resume": "auto" if resumed else False,
            "dry_run": False,
            "ckpt_path": None,
        }
        results = results_for(final, 1000.0, seed, f"job{i}")
        write_job(root / str(i), overrides, config, results, (final, 1000.0))
    return root


@pytest.mark.parametrize("swept_in_overrides", [True, False])
def test_a_resumed_sweep_groups_its_seeds_resume_is_no_knob(
    tmp_path: Path, swept_in_overrides: bool
) -> None:
    """A resumed job's overrides hold ``resume=auto``: compare made it a knob, split the seeds of
    each activation into ``resume=false`` and ``resume=auto`` rows and named a winner from one
    seed. Run-control settings are never knobs, in the overrides or in config.yaml."""
    runs = load_runs(resumed_sweep(tmp_path, swept_in_overrides))
    assert mrun.varying_knobs(runs) == ["model.activation"]
    rows = ranking.aggregate(runs, "val_loss")
    assert [(r.label, r.n, [run.seed for run in r.runs]) for r in rows] == [
        ("activation=relu", 2, [1, 2]),
        ("activation=gelu", 2, [1, 2]),
    ]
    winner = "winner: activation=relu (val_loss = 3.0100 ± 0.0141)"  # both seeds, not one
    assert ranking.summarize(rows, "val_loss")[0] == winner


def test_run_control_settings_are_not_knobs() -> None:
    control = ["resume", "ckpt_path", "dry_run", "+logger", "logger.wandb.project"]
    control += ["paths.output_dir", "hydra.sweep.dir", "hydra/launcher"]
    assert all(mrun.is_run_control(key) for key in control)
    knobs = ["model.activation", "optim.lr", "compile", "init_from", "experiment", "data.path"]
    assert not any(mrun.is_run_control(key) for key in knobs)


def test_short_names_strip_common_prefix_but_stay_unique() -> None:
    names = mrun.short_names(["model.norm_placement", "model.dropout", "data.dropout"])
    assert names == {
        "model.norm_placement": "norm_placement",
        "model.dropout": "model.dropout",
        "data.dropout": "data.dropout",
    }
    # a sweep over budget.flops: its column beside the FLOPs trained was headed "flops" twice
    table = cmp.render_table([], ["budget.flops", "model.d_model"], "val_loss")
    assert [c.header for c in table.columns][:3] == ["#", "budget.flops", "d_model"]


def test_curve_column_maps_result_names_to_csv_columns() -> None:
    columns = ["train/loss", "val/loss", "perf/tokens_per_second"]
    assert mrun.curve_column("val_loss", columns) == "val/loss"
    assert mrun.curve_column("tokens_per_second", columns) == "perf/tokens_per_second"
    assert mrun.curve_column("val/loss", columns) == "val/loss"
    assert mrun.curve_column("loss", columns) is None  # ambiguous


# --------------------------------------------------------------------------- aggregation


def test_seed_aggregation_mean_std_n(multirun: Path) -> None:
    rows = ranking.aggregate(load_runs(multirun), "val_loss")
    gelu = row_by(rows, "pre", "gelu")
    assert gelu.n == 3
    assert [r.seed for r in gelu.runs] == [1, 2, 3]
    assert gelu.stats["val_loss"].mean == pytest.approx(3.12)
    assert gelu.stats["val_loss"].std == pytest.approx(0.02)  # sample std, ddof=1
    assert gelu.stats["tokens_per_second"].mean == pytest.approx(2000.0)
    swiglu = row_by(rows, "pre", "swiglu")
    assert (swiglu.n, swiglu.stats["val_loss"].std) == (1, None)


def test_rows_ranked_by_metric_failed_last(multirun: Path) -> None:
    rows = ranking.aggregate(load_runs(multirun), "val_loss")
    assert [r.label for r in rows] == [
        "norm_placement=pre, activation=swiglu",
        "norm_placement=pre, activation=gelu",
        "norm_placement=post, activation=relu",
        "norm_placement=post, activation=gelu (seed=1)",
    ]
    assert [r.rank for r in rows] == [1, 2, 3, None]
    failed = rows[-1]
    assert failed.status == "failed" and "CUDA out of memory" in failed.error
    assert failed.value("val_loss") is None


def test_metric_from_metrics_csv(multirun: Path) -> None:
    runs = load_runs(multirun)
    assert mrun.run_value(runs[0], "train/grad_norm") == pytest.approx(1.0 / MAX_STEPS)
    rows = ranking.aggregate(runs, "val/perplexity")
    assert rows[0].label == "norm_placement=pre, activation=swiglu"
    assert rows[0].value("val/perplexity") == pytest.approx(math.exp(3.05))


def test_unknown_metric_names_the_available_ones(multirun: Path) -> None:
    with pytest.raises(mrun.CompareError, match="unknown metric 'val_los'") as info:
        ranking.aggregate(load_runs(multirun), "val_los")
    message = str(info.value)
    assert "\n" not in message
    for name in ("val_loss", "tokens_per_second", "train/loss", "val/loss"):
        assert name in message
    assert "run_name" not in message and "'seed'" not in message


# --------------------------------------------------------------------------- table & summary


def test_rendered_table_order_follows_losses(multirun: Path) -> None:
    runs = load_runs(multirun)
    knobs = mrun.varying_knobs(runs)
    rows = ranking.aggregate(runs, "val_loss", knobs=knobs)
    table = cmp.render_table(rows, knobs, "val_loss")
    cells = table_cells(render(table))
    assert [c[:3] for c in cells] == [
        ["1", "pre", "swiglu"],
        ["2", "pre", "gelu"],
        ["3", "post", "relu"],
        ["-", "post", "gelu"],
    ]
    assert cells[1][3] == "3.1200 ± 0.0200" and cells[1][4] == "3"
    # the failed seed's folder: the knobs name the variant only
    assert cells[-1][3] == "FAILED" and cells[-1][-1].startswith("FAILED (5): RuntimeError: CUDA")
    assert len(cells[-1][-1]) <= len("FAILED (5): ") + stat.ERROR_WIDTH
    assert table.rows[0].style == "bold green"


def test_render_table_drops_extra_columns_to_fit_narrow_terminals(multirun: Path) -> None:
    runs = load_runs(multirun)
    knobs = mrun.varying_knobs(runs)
    rows = ranking.aggregate(runs, "val_loss", knobs=knobs)
    wide = cmp.render_table(rows, knobs, "val_loss")
    narrow = cmp.render_table(rows, knobs, "val_loss", width=80)
    assert [c.header for c in wide.columns][5:] == [
        "val ppl",
        "val bpb",
        "params",
        "tokens",
        "flops",
        "tok/s",
        "wall s",
        "status",
    ]
    headers = [c.header for c in narrow.columns]
    assert headers == ["#", "norm_placement", "activation", "val_loss", "n", "status"]
    text = render(narrow, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert [c[:4] for c in table_cells(text)][1] == ["2", "pre", "gelu", "3.1200 ± 0.0200"]


def test_wall_time_is_shown_to_a_tenth_of_a_second() -> None:
    assert (stat.fmt(2.9951, "wall_seconds"), stat.fmt(125.04, "wall_seconds")) == (
        "3.0",
        "125.0",
    )
    assert stat.fmt(2.9951, "val_loss") == "2.9951"


def test_a_value_below_a_thousandth_keeps_three_significant_digits() -> None:
    """A learning rate of 3e-05 (``--metric train/lr``) read 0.0000 in the table, the bars and
    the winner's line; a std keeps its mean's format."""
    assert stat.fmt(3e-5, "train/lr") == "3e-05"
    assert stat.fmt(-1.234e-4, "x") == "-0.000123"
    assert stat.fmt(0.0034, "val_loss") == "0.0034"  # 4 decimals: two digits still
    assert stat.fmt(0.0, "val_loss") == "0.0000"
    assert stat.fmt_stat(stat.Stat(3.1e-5, 2e-6, 2), "train/lr") == "3.1e-05 ± 2e-06"
    assert stat.fmt_stat(stat.Stat(3.12, 1e-5, 2), "val_loss") == "3.1200 ± 0.0000"


def test_a_small_gap_keeps_two_significant_digits(tmp_path: Path) -> None:
    """A gap of 0.043% was printed as "(0.0%)"."""
    jobs = [("pre", "gelu", 1, 3.0013, 2000.0), ("pre", "swiglu", 1, 3.0, 2000.0)]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "multirun", jobs)), "val_loss")
    assert "gap 0.0013 (0.043%)" in ranking.summarize(rows, "val_loss")[1]


def test_summary_winner_gap_and_noise(multirun: Path) -> None:
    rows = ranking.aggregate(load_runs(multirun), "val_loss")
    lines = ranking.summarize(rows, "val_loss")
    assert lines[0] == "winner: norm_placement=pre, activation=swiglu (val_loss = 3.0500)"
    assert lines[1].startswith("runner-up: norm_placement=pre, activation=gelu")
    assert "gap 0.0700 (2.3%)" in lines[1]
    # one swiglu seed against three gelu seeds (std 0.02): t = 0.07 / 0.0231 = 3.0 on 2 df
    assert lines[2] == (
        "difference 0.0700 <= 4.3 x its standard error over seeds 0.0231 (Student's t, 2 df, "
        "two-sided 5%; pooled std 0.0200, n=1 and 3): within noise (std from the variant with "
        "seed replicates only)"
    )
    assert lines[3] == "1 of 6 runs failed (bottom of the table)"


def test_an_exact_tie_shares_its_rank_and_names_no_winner(tmp_path: Path) -> None:
    """Variants with equal values were ranked 1, 2, ... by their labels' alphabetical order,
    and the first named the winner with a gap of 0: they share a rank, and a tie at the top
    is said as one."""
    jobs = [
        ("pre", "gelu", 1, 3.10, 1.0),
        ("post", "relu", 1, 3.10, 1.0),
        ("pre", "swiglu", 1, 3.2, 1.0),
    ]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "tie", jobs)), "val_loss")
    assert [(r.label, r.rank) for r in rows] == [
        ("norm_placement=post, activation=relu", 1),
        ("norm_placement=pre, activation=gelu", 1),
        ("norm_placement=pre, activation=swiglu", 3),
    ]
    lines = ranking.summarize(rows, "val_loss")
    assert lines[0] == (
        "no winner: 2 variants tie at val_loss = 3.1000: norm_placement=post, activation=relu, "
        "norm_placement=pre, activation=gelu"
    )
    assert not any(line.startswith(("winner", "runner-up", "difference")) for line in lines)


def test_a_value_edited_into_text_is_named_not_replaced_by_the_curve(multirun: Path) -> None:
    """A results.json whose val_loss was edited into a string was ranked by its metrics.csv's
    last value, without a word (``scaling`` refused the same edit)."""
    job = next(p for p in sorted(multirun.iterdir()) if p.is_dir() and not load_runs(p)[0].failed)
    record = json.loads((job / "results.json").read_text())
    (job / "results.json").write_text(json.dumps(record | {"val_loss": "7.5"}))
    with pytest.raises(mrun.CompareError, match=rf"^{job}/results.json: field 'val_loss' must be"):
        ranking.aggregate(load_runs(multirun), "val_loss")


def test_the_max_steps_of_a_run_whose_budget_set_its_steps_is_no_value(multirun: Path) -> None:
    """A ``budget=flops`` run compared beside ``budget=steps`` runs showed the config's unused
    ``trainer.max_steps`` (300) as its knob value, though its budget set how many it trained."""
    job = next(p for p in sorted(multirun.iterdir()) if p.is_dir())
    record = json.loads((job / "results.json").read_text())
    budget = {**record.get("budget", {}), "kind": "flops"}
    (job / "results.json").write_text(json.dumps(record | {"budget": budget}))
    values = {r.dir.name: mrun.knob_value(r, "trainer.max_steps") for r in load_runs(multirun)}
    assert values[job.name] == "-"
    assert {v for k, v in values.items() if k != job.name} == {str(MAX_STEPS)}


def test_a_stopped_run_is_shown_as_stopped_not_failed(multirun: Path) -> None:
    """A run preempted or interrupted (a checkpoint to resume from) is unranked like a failed
    one, but named by its status, and the summary says how to finish it: it was shown as
    FAILED and counted among the failures."""
    job = next(p for p in sorted(multirun.iterdir()) if p.is_dir() and load_runs(p)[0].failed)
    record = json.loads((job / "results.json").read_text())
    record |= {"status": "preempted", "error": "stopped by SIGTERM/SIGUSR1 after saving x"}
    (job / "results.json").write_text(json.dumps(record))
    checkpoint(job)
    runs = load_runs(multirun)
    rows = ranking.aggregate(runs, "val_loss", knobs=mrun.varying_knobs(runs))
    cells = table_cells(render(cmp.render_table(rows, mrun.varying_knobs(runs), "val_loss")))
    assert cells[-1][:4] == ["-", "post", "gelu", "PREEMPTED"]
    assert cells[-1][-1] == "PREEMPTED (5): stopped by SIGTERM/SIGUSR1 after saving x"
    lines = ranking.summarize(rows, "val_loss")
    assert not any("runs failed" in line for line in lines), lines
    assert (
        "1 of 6 runs stopped before their end, preempted or interrupted (bottom of the table): "
        "resume=true (resume=auto for a sweep) finishes them"
    ) in lines
    shutil.rmtree(job / "checkpoints")  # stopped before its first checkpoint (Ctrl-C in setup)
    runs = load_runs(multirun)
    rows = ranking.aggregate(runs, "val_loss", knobs=mrun.varying_knobs(runs))
    lines = ranking.summarize(rows, "val_loss")
    assert (
        "1 of 6 runs stopped or killed before their first checkpoint (bottom of the table): "
        "there is nothing to continue, resume=auto starts them again"
    ) in lines
    assert not any("finishes them" in line for line in lines), lines


def test_an_eval_lead_inside_its_items_standard_error_is_within_noise(tmp_path: Path) -> None:
    """Seeds score the same 300 items: a lead of 0.007 over a seed std of 0.0007 would be
    'likely real' by the seeds alone, but each accuracy has a standard error of 0.026 over its
    items, so the verdict is 'within noise'; a lead of 0.25 clears both."""
    jobs = [("pre", "gelu", s, 3.0, 1.0) for s in (1, 2)]
    jobs += [("post", "gelu", s, 3.5, 1.0) for s in (1, 2)]
    root = make_multirun(tmp_path / "m", jobs)

    def score(accs: list[float]) -> list:
        for job, acc in zip(sorted(root.iterdir(), key=lambda d: d.name), accs, strict=True):
            path = job / "results.json"
            extra = {"eval/t/acc": acc, "eval/t/acc_stderr": 0.026}
            path.write_text(json.dumps(json.loads(path.read_text()) | extra))
        return ranking.aggregate(load_runs(root), "eval/t/acc", higher_is_better=True)

    verdict = ranking.summarize(score([0.277, 0.276, 0.270, 0.269]), "eval/t/acc", True)[2]
    assert verdict == (
        "difference 0.0070 > 4.3 x its standard error over seeds 0.000707 (Welch's t, 2 df, "
        "two-sided 5%; std 0.000707 and 0.000707, n=2 and 2), <= 2 x the items' standard error "
        "(eval/t/acc_stderr) 0.0368: within noise"
    )
    verdict = ranking.summarize(score([0.57, 0.51, 0.34, 0.26]), "eval/t/acc", True)[2]
    assert verdict.endswith(": likely real")


def test_an_init_from_run_shows_the_model_it_trained(tmp_path: Path) -> None:
    """init_from trains the checkpoint's architecture whatever the composed config says;
    plan.json records it, and compare reads the knobs from there."""
    jobs = [("pre", "gelu", 1, 3.0, 1.0), ("pre", "relu", 1, 3.1, 1.0)]
    root = make_multirun(tmp_path / "m", jobs)
    model = {"norm_placement": "post", "activation": "swiglu", "d_model": 32}
    (root / "0" / "plan.json").write_text(json.dumps({"init_from": "a.ckpt", "model": model}))
    first, second = load_runs(root)
    assert first.flat_config["model.d_model"] == 32  # the config composed 64
    assert second.flat_config["model.d_model"] == 64  # no plan.json model: the config's


def test_an_init_from_run_without_model_is_not_listed_as_the_default_preset(
    tmp_path: Path,
) -> None:
    """A fine-tuning run from a converted BERT (``init_from=``, no ``model=``) was listed
    under model ``gpt_tiny``, the default preset it never trained; its model column is ``-``
    (its fields are the checkpoint's), a run that named its preset keeps it."""
    root = tmp_path / "m"
    for i, override in enumerate(["model=bert_tiny", "init_from=a.ckpt"]):
        config = {"model": {"d_model": 32}, "init_from": "a.ckpt" if i else None, "seed": 1}
        write_job(
            root / str(i), [override, "task=classify"], config, results_for(0.5, 1.0, 1, "r"), None
        )
        hydra = {
            "hydra": {"runtime": {"choices": {"model": "bert_tiny" if i == 0 else "gpt_tiny"}}}
        }
        (root / str(i) / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    runs = load_runs(root)
    assert "model" in mrun.varying_knobs(runs)
    assert [mrun.knob_value(r, "model") for r in runs] == ["bert_tiny", "-"]


def test_noise_within_and_unknown(tmp_path: Path) -> None:
    noisy = [("pre", "gelu", s, v, 1.0) for s, v in [(1, 3.10), (2, 3.20), (3, 3.30)]]
    noisy += [("post", "gelu", s, v, 1.0) for s, v in [(1, 3.25), (2, 3.35), (3, 3.45)]]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "a", noisy)), "val_loss")
    # the difference is 1.8 standard errors (0.1 x sqrt(2/3)), inside t's 2.78 on 4 df
    assert ranking.summarize(rows, "val_loss")[2] == (
        "difference 0.1500 <= 2.78 x its standard error over seeds 0.0816 (Welch's t, 4 df, "
        "two-sided 5%; std 0.1000 and 0.1000, n=3 and 3): within noise"
    )
    single = [("pre", "gelu", 1, 3.10, 1.0), ("post", "gelu", 1, 3.11, 1.0)]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "b", single)), "val_loss")
    assert "no seed replicates" in ranking.summarize(rows, "val_loss")[2]
    assert "noise is unknown" in ranking.summarize(rows, "val_loss")[2]


def test_the_noise_verdict_weighs_the_lead_by_the_standard_error_of_the_means(
    tmp_path: Path,
) -> None:
    """The verdict compared the lead with 2 x the pooled std of one run, whatever the seeds:
    with two seeds a variant (1 df each) it said 'likely real' for 18% of ties drawn from one
    distribution (35% with seeds 1 and 2), and with ten seeds each it called a lead of 1.4
    stds (3.2 standard errors of the difference) 'within noise', as it would at any number of
    seeds. It is now a two-sample t test at the two-sided 5% level (Welch's: equal spreads and
    seed counts give Student's n_a + n_b - 2 df and standard error)."""
    # two seeds each, std 0.0707 both: a lead of 0.25 (2 x the std is 0.141) is t = 3.5 on
    # 2 df, inside t(0.975, 2) = 4.303
    two = [("pre", "gelu", s, v, 1.0) for s, v in [(1, 3.00), (2, 3.10)]]
    two += [("post", "gelu", s, v, 1.0) for s, v in [(1, 3.25), (2, 3.35)]]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "two", two)), "val_loss")
    verdict = ranking.summarize(rows, "val_loss")[2]
    assert verdict == (
        "difference 0.2500 <= 4.3 x its standard error over seeds 0.0707 (Welch's t, 2 df, "
        "two-sided 5%; std 0.0707 and 0.0707, n=2 and 2): within noise"
    )
    # ten seeds each, +-0.1 about their means (std 0.1054): a lead of 0.15 is 3.2 standard
    # errors (0.1054 x sqrt(2/10) = 0.0471), beyond t(0.975, 18) = 2.101
    spread = [0.1 * (-1) ** s for s in range(10)]
    ten = [("pre", "gelu", s, 3.0 + e, 1.0) for s, e in enumerate(spread)]
    ten += [("post", "gelu", s, 3.15 + e, 1.0) for s, e in enumerate(spread)]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "ten", ten)), "val_loss")
    verdict = ranking.summarize(rows, "val_loss")[2]
    assert verdict == (
        "difference 0.1500 > 2.1 x its standard error over seeds 0.0471 (Welch's t, 18 df, "
        "two-sided 5%; std 0.1054 and 0.1054, n=10 and 10): likely real"
    )


def test_the_noise_verdict_weighs_each_variants_own_seed_spread(tmp_path: Path) -> None:
    """Student's pooled std let the steady variant's spread stand for the one that diverges
    more across seeds: two seeds 0.2 apart against five within 0.01 of 3.30 made a lead of 0.2
    3.8 standard errors (0.0532, from the pooled std 0.0636), beyond t(0.975, 5) = 2.57, 'likely
    real', though the two-seed variant's own mean is uncertain by its std over sqrt(2), 0.1. Welch's
    t weighs each variant's own std: sqrt(0.1414^2/2 + 0.0071^2/5) = 0.1000 on 1.002 df
    (Welch-Satterthwaite), whose critical value 12.6 puts the lead within noise."""
    jobs = [("pre", "gelu", s, v, 1.0) for s, v in [(1, 3.00), (2, 3.20)]]
    steady = [3.29, 3.30, 3.31, 3.30, 3.30]
    jobs += [("post", "gelu", s, v, 1.0) for s, v in enumerate(steady, start=1)]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path, jobs)), "val_loss")
    assert ranking.summarize(rows, "val_loss")[2] == (
        "difference 0.2000 <= 12.6 x its standard error over seeds 0.1000 (Welch's t, 1 df, "
        "two-sided 5%; std 0.1414 and 0.0071, n=2 and 5): within noise"
    )


def test_higher_is_better_reverses_order(multirun: Path) -> None:
    runs = load_runs(multirun)
    lower = ranking.aggregate(runs, "tokens_per_second")
    higher = ranking.aggregate(runs, "tokens_per_second", higher_is_better=True)
    ranked = [r.label for r in higher if r.rank is not None]
    assert ranked == [r.label for r in lower if r.rank is not None][::-1]
    assert ranked[0] == "norm_placement=post, activation=relu"
    assert higher[-1].status == "failed"


@pytest.mark.parametrize(
    ("metric", "higher"),
    [
        ("val_loss", False),
        ("val_bits_per_byte", False),
        ("wall_seconds", False),
        ("eval/stdlib_perplexity/bits_per_byte", False),
        ("eval/stdlib_nextline/acc", True),
        ("tokens_per_second", True),  # the slowest variant was the winner
        ("mfu", True),
        ("val_acc", True),  # a classifier's: the worst one was the winner
        ("val_f1", True),
        ("val_exact_match", True),
        ("val/accuracy", True),
    ],
)
def test_each_metric_ranks_in_its_own_direction_by_default(metric: str, higher: bool) -> None:
    assert mrun.higher_is_better(metric) is higher


def test_main_higher_is_better_prints_reversed_table(
    multirun: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "270")  # the failed row's error on one line
    assert compare_main([str(multirun), "--metric", "tokens_per_second"]) == 0  # its default
    assert compare_main([str(multirun), "--metric", "tokens_per_second", "--higher-is-better"]) == 0
    first, out = capsys.readouterr().out.split("wrote ", 1)
    assert table_cells(first) == table_cells(out)
    assert [c[:4] for c in table_cells(out)] == [
        ["1", "post", "relu", "3k"],
        ["2", "pre", "gelu", "2k ± 100"],
        ["3", "pre", "swiglu", "1k"],
        ["-", "post", "gelu", "FAILED"],
    ]
    assert "winner: norm_placement=post, activation=relu (tokens_per_second = 3k)" in out


# --------------------------------------------------------------------------- outputs


def test_compare_writes_png_and_json(multirun: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    rows = cmp.compare(multirun, out=out)
    assert rows[0].rank == 1
    png = out / "compare.png"
    assert png.stat().st_size > 10_000
    assert png_size(png) == (1400, 500)
    data = json.loads((out / "compare.json").read_text())
    assert data["metric"] == "val_loss" and data["higher_is_better"] is False
    assert data["knobs"] == ["model.norm_placement", "model.activation"]
    assert data["winner"] == "norm_placement=pre, activation=swiglu"
    assert data["summary"][0].startswith("winner: norm_placement=pre, activation=swiglu")
    first, gelu, _, failed = data["rows"]
    assert first["metrics"]["val_loss"] == {"mean": pytest.approx(3.05), "std": None, "n": 1}
    assert gelu["n"] == 3 and gelu["seeds"] == [1, 2, 3] and gelu["runs"] == ["0", "1", "2"]
    assert gelu["metrics"]["val_loss"]["std"] == pytest.approx(0.02)
    assert gelu["knobs"] == {"model.norm_placement": "pre", "model.activation": "gelu"}
    assert failed["status"] == "failed" and failed["rank"] is None
    assert "CUDA out of memory" in failed["error"]
    assert failed["metrics"]["val_loss"]["mean"] is None


def test_compare_defaults_to_multirun_dir(multirun: Path) -> None:
    cmp.compare(multirun, metric="val_bits_per_byte")
    assert png_size(multirun / "compare.png")[0] == 1400
    assert json.loads((multirun / "compare.json").read_text())["metric"] == "val_bits_per_byte"


# --------------------------------------------------------------------------- errors & CLI


def write(path: Path) -> Path:
    path.write_text("{}")
    return path


def started(path: Path) -> Path:
    """A live sweep's folder: its first job started, no results.json yet."""
    (path / "0" / ".hydra").mkdir(parents=True)
    (path / "0" / ".hydra" / "overrides.yaml").write_text("[]\n")
    return path


def killed(path: Path) -> Path:
    """A sweep's folder after a ``kill -9``: its second job left its lock file, unheld, and
    the checkpoint it saved before."""
    started(path)
    (path / "1" / ".hydra").mkdir(parents=True)
    (path / "1" / ".hydra" / "overrides.yaml").write_text("[]\n")
    (path / "1" / LOCK_FILE).write_text("4242\n")
    checkpoint(path / "1")
    return path


def checkpoint(job: Path) -> None:
    """A checkpoint in the run folder ``job``, which a resume continues (its bytes unread)."""
    (job / "checkpoints").mkdir(exist_ok=True)
    (job / "checkpoints" / "step000002.ckpt").write_bytes(b"")


def planned(path: Path, jobs: int = 2) -> Path:
    """A ``dry_run=true`` sweep's folder: each job's ``.hydra/`` and its plan, nothing trained."""
    for i in range(jobs):
        job = path / str(i)
        (job / ".hydra").mkdir(parents=True)
        overrides = ["+debug=smoke", f"seed={i + 1}", "dry_run=true"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"dry_run": True}))
        (job / "plan.json").write_text(json.dumps({"dry_run": True, "params": 1_234_567}))
    return path


@pytest.mark.parametrize(
    ("make", "argv_tail", "message"),
    [
        (lambda p: p / "missing", [], "error: multirun directory does not exist"),
        (
            planned,
            [],
            "error: no run under {}: its 2 job folder(s) are dry runs (dry_run=true "
            "writes the plan and trains nothing); train without dry_run=true\n",
        ),
        (lambda p: write(p / "results.json"), [], "error: {} is a file: give a multirun dir"),
        (lambda p: p, [], "error: no results.json under"),
        (
            started,
            [],
            "error: no run under {} has written its results.json yet (1 started: 1 refused "
            "before training: train.log or the command says why)",
        ),
        (
            killed,
            [],
            "error: no run under {} has written its results.json yet (2 started: 1 killed "
            "before they ended: resume=auto continues them; 1 refused before training",
        ),
        (make_multirun, ["--metric", "val_los"], "error: unknown metric 'val_los'; available:"),
    ],
)
def test_main_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_command, make, argv_tail, message
) -> None:
    path = make(tmp_path)
    assert run_command("compare", path, *argv_tail) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message.format(path))
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "compare.png").exists()


def test_dry_runs_are_left_out_not_counted_as_refused_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_command, monkeypatch
) -> None:
    """A dry run's folder (``.hydra/`` and its plan) holds no run: compare listed each as a
    ``FAILED: no results.json: refused before training`` row, and ``dry_run`` as a knob. They
    are left out, and named in one line. A run started in one since (its lock file left by a
    kill) is a run again."""
    monkeypatch.setenv("COLUMNS", "250")
    make_multirun(tmp_path / "sweep", JOBS[:4])
    planned(tmp_path / "plans")
    assert run_command("compare", tmp_path) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "refused" not in out and "failed" not in out
    assert "left out 2 dry run(s) (plans/0, plans/1): dry_run=true writes the plan" in out
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["knobs"] == ["model.norm_placement", "model.activation"]
    assert sum(row["n"] for row in data["rows"]) == 4
    assert [p.name for p in dry_runs(tmp_path)] == ["0", "1"]
    (tmp_path / "plans" / "1" / LOCK_FILE).write_text("4242\n")  # a run began there, killed
    assert [run.state for run in load_runs(tmp_path) if "plans" in run.dir.parts] == ["killed"]


def test_compare_replaces_only_its_own_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_command
) -> None:
    """A user's own compare.json or compare.png in the output folder is refused before the
    table, byte for byte as it was (both were overwritten). compare's own outputs (the PNG
    known by its mark) are replaced on the next run; a PNG without the mark is the user's,
    even beside compare's own compare.json (it was overwritten)."""
    multirun = make_multirun(tmp_path / "multirun")
    assert run_command("compare", multirun) == 0  # writes both
    png = (multirun / "compare.png").read_bytes()
    assert b"lmlab compare" in png
    assert run_command("compare", multirun) == 0  # its own: replaced
    mine = png.replace(b"lmlab compare", b"lmlab-compare")  # a PNG compare did not mark
    (multirun / "compare.png").write_bytes(mine)
    capsys.readouterr()
    assert run_command("compare", multirun) == 2  # beside compare's own JSON, still the user's
    assert "compare.png exists and is not compare's own output" in capsys.readouterr().err
    assert (multirun / "compare.png").read_bytes() == mine
    for name, mine in [("compare.json", b'{"mine": 1}\n'), ("compare.png", b"notes\n")]:
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / name).write_bytes(mine)
        assert run_command("compare", multirun, "--out", out) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(
            f"error: {out / name} exists and is not compare's own output: choose another "
            "folder with --out (nothing is overwritten)"
        ), captured.err
        assert "winner" not in captured.out  # refused before the table
        assert sorted(p.name for p in out.iterdir()) == [name]
        assert (out / name).read_bytes() == mine
    assert run_command("compare", multirun, "--out", multirun / "compare.json") == 2
    assert "is a file: give a folder" in capsys.readouterr().err


def test_main_all_failed_prints_failures_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "270")  # the failed row's error on one line
    jobs = [("pre", "gelu", 1, None, None), ("post", "gelu", 1, None, None)]
    assert compare_main([str(make_multirun(tmp_path, jobs))]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("): RuntimeError: CUDA out of memory") == 2
    assert "FAILED (0): " in captured.out and "FAILED (1): " in captured.out
    assert captured.err.startswith(
        f"error: no completed run under {tmp_path} (2 failed: RuntimeError: CUDA out of memory"
    )
    assert captured.err.count("\n") == 1
    assert (tmp_path / "compare.png").is_file()


def test_no_completed_run_says_so_not_unknown_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_command, monkeypatch
) -> None:
    """A folder where no run completed (a run refused at its start, results.json without
    metrics) lists its runs as a partly failed sweep's are listed, and says in one line that
    none completed and why, exit 1: it said "unknown metric 'val_loss'; available:
    wall_seconds". Runs that ended in several ways are counted by kind."""
    error = "ConfigError: budget=steps needs trainer.max_steps >= 1, got 0"
    results = {"status": "failed", "run_name": "steps0", "seed": 1337, "error": error}
    write_job(tmp_path / "steps0", [], {}, results | {"wall_seconds": 0.2}, None)
    monkeypatch.setenv("COLUMNS", "270")  # the error on one line, however long the path
    assert run_command("compare", tmp_path) == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: no completed run under {tmp_path} (1 failed: {error})\n"
    assert "FAILED (steps0): ConfigError: budget=steps" in captured.out
    killed(tmp_path / "sweep")  # its job 0 refused before training, job 1 killed
    assert run_command("compare", tmp_path) == 1
    assert capsys.readouterr().err == (
        f"error: no completed run under {tmp_path} (2 failed, 1 killed: the table above says why)\n"
    )


def test_list_valued_knobs_and_errors_with_brackets_show_in_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text from the runs is shown as it is: Rich read ``[a,b]`` as markup and showed a blank
    cell for a list-valued knob, and dropped an error's ``[rank0]:``; ``:x:`` is no emoji."""
    monkeypatch.setenv("COLUMNS", "270")
    root = tmp_path / "multirun"
    for i, tasks in enumerate(["[a,b]", "[c]"]):
        overrides = [f"+data.sources={tasks}", "seed=1"]
        write_job(root / str(i), overrides, {}, results_for(3.0 + i, 10.0, 1, str(i)), None)
    error = "[rank0]: RuntimeError: [bold]x[/bold] :x:"
    failed = results_for(None, None, 1, "2") | {"error": error}
    write_job(root / "2", ["+data.sources=[d]", "seed=1"], {}, failed, None)
    assert compare_main([str(root)]) == 0
    cells = table_cells(capsys.readouterr().out)
    assert [c[1] for c in cells] == ["[a,b]", "[c]", "[d]"]
    assert cells[-1][-1] == f"FAILED (2): {error}"


def test_compare_json_written_elsewhere_leads_to_the_runs(
    multirun: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compare.json written with --out names the compared folder by its whole path, which
    its rows' runs are named relative to: typed relative, it led nowhere from its folder.
    ``--out=~/o`` is in the home folder (no shell reads a ``~`` after ``--out=``)."""
    monkeypatch.chdir(multirun.parent)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compare_main([multirun.name, "--out=~/o"]) == 0
    data = json.loads((tmp_path / "o" / "compare.json").read_text())
    runs = [Path(data["multirun_dir"]) / run for row in data["rows"] for run in row["runs"]]
    assert runs and all((run / "results.json").is_file() for run in runs)


def test_cli_script_runs_from_any_directory(multirun: Path, tmp_path: Path) -> None:
    script = CONF_DIR.parent / "src" / "compare.py"
    cmd = [sys.executable, str(script), str(multirun), "--out", "out"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "winner: norm_placement=pre, activation=swiglu" in proc.stdout
    assert (tmp_path / "out" / "compare.png").is_file()
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nope")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: multirun directory does not exist")
    assert "Traceback" not in bad.stderr


def test_a_metric_measured_once_per_run_draws_the_training_loss_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that validates only at its end (isoflop, moe) has one val/loss point per run,
    no curve: the left panel draws train/loss instead of an empty axis."""
    import matplotlib.axes

    ylabels: list[str] = []
    original = matplotlib.axes.Axes.set

    def spy(self, **kwargs):
        ylabels.append(kwargs.get("ylabel"))
        return original(self, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set", spy)
    root = make_multirun(tmp_path / "curves", JOBS[:2])
    cmp.compare(root)
    assert "val/loss" in ylabels and "train/loss" not in ylabels
    for job in ("0", "1"):  # validated once, at step 50
        write_metrics_csv(root / job / "csv" / "metrics.csv", 3.1, 2000.0, last_step=50)
    ylabels.clear()
    cmp.compare(root)
    assert "train/loss" in ylabels and "val/loss" not in ylabels


# --------------------------------------------------------------------------- eval metrics

EVAL_ACC = "eval/stdlib_nextline/acc_mutual_info"


def test_eval_metrics_rank_a_sweep_higher_first_with_seed_mean_and_std(
    multirun: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--metric eval/<task>/acc...`` ranks by the eval metric, higher first by default, from
    results.json (evals during training) or from ``eval/step<N>.json`` (``lmlab evaluate``
    after it: the newest step counts)."""
    # (job, accuracy): the three pre/gelu seeds in results.json, the others evaluated later
    in_results = {"0": 0.40, "1": 0.44, "2": 0.42}
    for job, acc in in_results.items():
        results = json.loads((multirun / job / "results.json").read_text())
        (multirun / job / "results.json").write_text(json.dumps({**results, EVAL_ACC: acc}))
    for job, acc in {"3": 0.50, "4": 0.30}.items():
        (multirun / job / "eval").mkdir()
        for step, value in ((100, 0.99), (200, acc)):
            record = {"global_step": step, "metrics": {EVAL_ACC: value}}
            (multirun / job / "eval" / f"step{step:06d}.json").write_text(json.dumps(record))
    monkeypatch.setenv("COLUMNS", "270")  # the failed row's error on one line
    assert compare_main([str(multirun), "--metric", EVAL_ACC]) == 0
    out = capsys.readouterr().out
    assert f"{EVAL_ACC} (higher is better)" in out
    assert [c[:4] for c in table_cells(out)] == [
        ["1", "post", "relu", "0.5000"],
        ["2", "pre", "gelu", "0.4200 ± 0.0200"],
        ["3", "pre", "swiglu", "0.3000"],
        ["-", "post", "gelu", "FAILED"],
    ]
    assert compare_main([str(multirun), "--metric", EVAL_ACC, "--no-higher-is-better"]) == 0
    assert table_cells(capsys.readouterr().out)[0][1:3] == ["pre", "swiglu"]


def write_eval_record(job: Path, name: str, value: float) -> None:
    """``lmlab evaluate``'s record, ``eval/step<N>.json`` (or a file of another name)."""
    (job / "eval").mkdir(exist_ok=True)
    step = int(name[4:]) if name[4:].isdigit() else None
    record = {"global_step": step, "metrics": {EVAL_ACC: value, f"{EVAL_ACC}_stderr": 0.01}}
    (job / "eval" / f"{name}.json").write_text(json.dumps(record))


def test_the_newest_evaluate_record_is_found_by_its_step_number(tmp_path: Path) -> None:
    """Of ``eval/step<N>.json`` the largest N counts, compared as numbers: step 1000000 is
    newer than step 999999 (sorted as text it was older). Other names are not records."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1])
    for name, value in [
        ("step999999", 0.1),
        ("step1000000", 0.9),
        ("step_best", 0.5),
        ("stepfinal", 0.6),
    ]:
        write_eval_record(root / "0", name, value)
    (run,) = load_runs(root)
    assert mrun.run_value(run, EVAL_ACC) == 0.9
    assert run.eval_step == 1_000_000


def test_an_evaluate_record_of_the_final_weights_beats_the_evals_during_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """results.json holds the evals during training of its last step (``global_step``);
    ``lmlab evaluate``'s ``eval/step<N>.json`` of the same weights or newer ones wins (it was
    ignored whenever results.json had the metric), of older weights it does not. The
    metric's ``_stderr`` comes from the same evaluation."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1])
    job = root / "0"
    results = json.loads((job / "results.json").read_text())
    in_training = {EVAL_ACC: 0.40, f"{EVAL_ACC}_stderr": 0.05}
    (job / "results.json").write_text(json.dumps(results | in_training))
    assert results["global_step"] == MAX_STEPS
    write_eval_record(job, f"step{MAX_STEPS // 2:06d}", 0.90)  # an earlier checkpoint
    (run,) = load_runs(root)
    assert mrun.run_value(run, EVAL_ACC) == 0.40
    assert mrun.run_value(run, f"{EVAL_ACC}_stderr") == 0.05
    write_eval_record(job, f"step{MAX_STEPS:06d}", 0.60)  # the final checkpoint, after training
    (run,) = load_runs(root)
    assert mrun.run_value(run, EVAL_ACC) == 0.60
    assert mrun.run_value(run, f"{EVAL_ACC}_stderr") == 0.01
    assert compare_main([str(root), "--metric", EVAL_ACC]) == 0
    assert f"({EVAL_ACC} = 0.6000)" in capsys.readouterr().out
    write_eval_record(job, f"step{2 * MAX_STEPS:06d}", 0.70)  # trained on since, say
    (run,) = load_runs(root)
    assert mrun.run_value(run, EVAL_ACC) == 0.70
    del results["global_step"]  # a results.json without its step: the record, run after it
    (job / "results.json").write_text(json.dumps(results | in_training))
    (run,) = load_runs(root)
    assert mrun.run_value(run, EVAL_ACC) == 0.70


def test_copies_of_a_run_are_not_seed_replicates(tmp_path: Path) -> None:
    """A job folder copied (or a run repeated with its seed) gives the same numbers: counted
    as replicates, it would show a spread of 0 and call any lead real."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    shutil.copytree(root / "0", root / "2")
    rows = ranking.aggregate(load_runs(root), "val_loss")
    (gelu,) = [r for r in rows if r.knobs["model.activation"] == "gelu"]
    assert (gelu.n, gelu.stats["val_loss"].std) == (1, None)
    assert [r.dir.name for r in gelu.copies] == ["2"]
    lines = ranking.summarize(rows, "val_loss")
    assert any(line.startswith("note: ") and "(2): copies or repeats" in line for line in lines)


def test_runs_of_a_results_json_alone_are_not_taken_for_copies(tmp_path: Path) -> None:
    """``lmlab compare docs/isoflop``: 20 runs of 7 sizes, each a results.json alone (no
    config names what it trained) and one seed, were one variant, "all runs", its value one
    arbitrary run's loss and the other 19 noted as "copies or repeats of one run". A run whose
    variant is unknown is a row of its own, named by its folder."""
    root = tmp_path / "isoflop"
    for name, loss, params in [("C1_N1", 3.3, 1000), ("C1_N2", 3.1, 2000), ("C1_N3", 3.2, 3000)]:
        (root / name).mkdir(parents=True)
        results = results_for(loss, 2000.0, 1, name) | {"params": params}
        (root / name / "results.json").write_text(json.dumps(results))
    rows = ranking.aggregate(load_runs(root), "val_loss")
    assert [(r.label, r.value("val_loss"), r.copies) for r in rows] == [
        ("C1_N2", 3.1, []),
        ("C1_N3", 3.2, []),
        ("C1_N1", 3.3, []),
    ]
    assert not any("copies or repeats" in line for line in ranking.summarize(rows, "val_loss"))


def test_runs_of_a_results_json_alone_in_same_named_folders_get_distinct_labels(
    tmp_path: Path,
) -> None:
    """Two folders of such runs compared together (``a/0`` and ``b/0``): each row is named by
    its folder below what the runs share, so the two rows do not read as one name twice."""
    for sweep, loss in [("a", 3.1), ("b", 3.2)]:
        (tmp_path / sweep / "0").mkdir(parents=True)
        results = results_for(loss, 2000.0, 1, "0") | {"params": 1000}
        (tmp_path / sweep / "0" / "results.json").write_text(json.dumps(results))
    rows = ranking.aggregate(load_runs(tmp_path), "val_loss")
    assert [r.label for r in rows] == ["a/0", "b/0"]


def test_per_token_losses_of_different_tokenizers_get_a_warning(tmp_path: Path) -> None:
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    config = yaml.safe_load((root / "1" / ".hydra" / "config.yaml").read_text())
    config["data"] = {"vocab_size": 8192}
    (root / "1" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    rows = ranking.aggregate(load_runs(root), "val_loss")
    (warning,) = [line for line in ranking.summarize(rows, "val_loss") if "warning" in line]
    assert "differ in data.vocab_size" in warning and "val_bits_per_byte" in warning
    bpb = ranking.aggregate(load_runs(root), "val_bits_per_byte")
    assert not [line for line in ranking.summarize(bpb, "val_bits_per_byte") if "warning" in line]


def test_runs_of_one_data_config_validated_on_other_rows_get_a_warning(tmp_path: Path) -> None:
    """Jobs of one data config whose plan.json records other validation rows (a sweep extended
    by a later lmlab, which holds other documents out, or the corpus's files edited between
    jobs): the summary names each job's value, for any loss, per token or per byte (they were
    ranked unsaid). A record one job lacks (a plan written before it) is no difference."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:5])
    corpus = {"train": {"bytes": 9000}, "val": {"bytes": 1000}, "text_sha256": "0f1e"}
    plans = [
        {"corpus": corpus},  # an older lmlab's: no data_preparation
        {"corpus": corpus | {"val": {"bytes": 1200}}, "data_preparation": 1},
        {"corpus": corpus, "data_preparation": 1},
    ]
    for job, plan in enumerate(plans):
        (root / str(job) / PLAN).write_text(json.dumps(plan))
    for metric in ("val_loss", "val_bits_per_byte"):
        lines = ranking.summarize(ranking.aggregate(load_runs(root), metric), metric)
        (warning,) = [line for line in lines if "validated on different text" in line]
        assert warning.startswith(
            "warning: the runs differ in plan.corpus.val.bytes (1000: 2, 0; 1200: 1), so"
        ), warning
        assert "their data config is the same" in warning and "plan.data_prep" not in warning
    (root / "1" / PLAN).write_text(json.dumps(plans[2]))
    (root / "2" / PLAN).write_text(json.dumps(plans[2] | {"data_preparation": 2}))
    lines = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
    (warning,) = [line for line in lines if "validated on different text" in line]
    assert "differ in plan.data_preparation (1: 1; 2: 2), so" in warning, warning
    (root / "2" / PLAN).write_text(json.dumps(plans[2]))
    lines = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
    assert not [line for line in lines if "warning" in line], lines


def test_a_local_corpus_is_the_file_its_path_names_from_where_the_run_was_launched(
    tmp_path: Path,
) -> None:
    """``data.name=./x.jsonl`` typed in ``d`` and ``d``'s absolute path typed in ``e`` are one
    corpus: one variant, the second run a repeat of the first (it was another variant, and a
    warning said the two validated on different text). ``./x.jsonl`` typed in ``e`` is another
    corpus: another variant, warned of (it was taken for the first run's copy and left out)."""
    for folder in ("d", "e"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jsonl").write_text('{"text": "a"}\n')
    root = make_multirun(tmp_path / "multirun", [JOBS[0]] * 3)
    spelt = [("./x.jsonl", "d"), (str(tmp_path / "d" / "x.jsonl"), "e"), ("./x.jsonl", "e")]
    for job, ((name, cwd), loss) in enumerate(zip(spelt, (3.1, 3.1, 3.3), strict=True)):
        hydra = root / str(job) / ".hydra"
        config = yaml.safe_load((hydra / "config.yaml").read_text())
        config["data"] = {"source": "hf", "name": name}
        (hydra / "config.yaml").write_text(yaml.safe_dump(config))
        overrides = yaml.safe_load((hydra / "overrides.yaml").read_text())
        (hydra / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"data.name={name}"]))
        (hydra / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {tmp_path / cwd}\n")
        results = results_for(loss, 2000.0, 1, str(job))
        (root / str(job) / "results.json").write_text(json.dumps(results))
    rows = ranking.aggregate(load_runs(root), "val_loss")
    grouped = [([r.dir.name for r in row.runs], [r.dir.name for r in row.copies]) for row in rows]
    assert grouped == [(["0"], ["1"]), (["2"], [])]
    (warning,) = [line for line in ranking.summarize(rows, "val_loss") if "warning" in line]
    assert "differ in data.name" in warning, warning
    for folder, job in (("d", 0), ("e", 2)):
        assert f"{tmp_path / folder / 'x.jsonl'}: {job}" in warning, warning


def test_fine_tuning_runs_on_different_examples_get_a_warning(tmp_path: Path) -> None:
    """Two fine-tuning runs on other files: their accuracy (or loss) measures other data;
    the summary says so, for any metric. Pre-training runs never get it."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    for job, train_file in (("0", "a.jsonl"), ("1", "b.jsonl")):
        config = yaml.safe_load((root / job / ".hydra" / "config.yaml").read_text())
        config["task"] = {"kind": "classify", "source": "files", "train": train_file}
        (root / job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    for metric in ("val_loss", "tokens_per_second"):
        lines = ranking.summarize(ranking.aggregate(load_runs(root), metric), metric)
        warned = [line for line in lines if "different examples" in line]
        assert warned == [
            "warning: the runs differ in task.train, so they were trained and validated on "
            f"different examples and {metric} compares the data sets as much as the variants"
        ], lines
    plain = make_multirun(tmp_path / "pretraining", JOBS[:1] + JOBS[3:4])
    lines = ranking.summarize(ranking.aggregate(load_runs(plain), "val_loss"), "val_loss")
    assert not [line for line in lines if "different examples" in line]


def test_losses_of_different_objectives_are_listed_unranked(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """GPT's next-token loss, BERT's masked-token loss and a classifier's loss measure
    different things: no winner, no ranks, and the summary says why; a downstream eval or
    throughput still ranks them."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    for job, family in (("0", "gpt"), ("1", "bert")):
        config = yaml.safe_load((root / job / ".hydra" / "config.yaml").read_text())
        config["model"] = {**config.get("model", {}), "family": family}
        (root / job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    rows = ranking.aggregate(load_runs(root), "val_loss")
    assert [r.rank for r in rows] == [None, None]
    assert all(r.value("val_loss") is not None for r in rows)
    (first, *_) = ranking.summarize(rows, "val_loss")
    assert first.startswith("no winner: the runs differ in model.family: bert, gpt"), first
    assert compare_main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "\nwinner: " not in out and "unranked" in out
    assert json.loads((root / "compare.json").read_text())["winner"] is None
    throughput = ranking.aggregate(load_runs(root), "tokens_per_second", higher_is_better=True)
    assert sorted(r.rank for r in throughput) == [1, 2]

    config["task"] = {"kind": "classify"}  # a fine-tuning task's loss, beside pre-training's
    config["model"]["family"] = "gpt"
    (root / "1" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (first, *_) = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
    assert first.startswith("no winner: the runs differ in task.kind: classify, lm"), first


# --------------------------------------------------------------------------- equal compute

# gpt_tiny under +sweeps=moe (budget=flops, budget.params=active, 2048 tokens a step):
# (num_experts, top_k, params, active_params), from the runs' results.json
MOE_SWEEP = [
    (0, 2, 1_901_696, 1_901_696),
    (8, 2, 3_675_264, 1_905_792),
    (8, 2, 6_034_560, 2_495_616),
]
TOKENS_PER_STEP = 2048


def moe_multirun(
    root: Path,
    flops: float = 1.2e11,
    params: str = "active",
    steps_trained: dict[int, int] | None = None,
    sweep: list[tuple[int, int, int, int]] = MOE_SWEEP,
) -> Path:
    """One run per row of ``sweep`` under ``budget=flops budget.flops=<flops>``, each trained
    for the whole steps its budget asks (``steps_trained``: job -> fewer steps)."""
    for i, (experts, top_k, total, active) in enumerate(sweep):
        n = active if params == "active" else total
        target = flops / (6.0 * n)
        steps = math.ceil(target / TOKENS_PER_STEP)
        tokens = (steps_trained or {}).get(i, steps) * TOKENS_PER_STEP
        budget = {
            "kind": "flops",
            "tokens": steps * TOKENS_PER_STEP,
            "steps": steps,
            "flops": 6.0 * n * steps * TOKENS_PER_STEP,
            "tokens_per_step": TOKENS_PER_STEP,
            "target_tokens": target,
            "nominal_flops": flops,
            "params": params,
            "n_params": n,
        }
        results = results_for(3.0 + i / 10, 1000.0, 1, f"moe-{i}") | {
            "params": total,
            "active_params": active,
            "tokens": tokens,
            "flops": 6.0 * n * tokens,
            "budget_flops": flops,
            "budget": budget,
            "train_aux_loss": 1.0 + i / 100 if experts else None,  # a dense model has none
            "train_z_loss": 2.0 + i / 10 if experts else None,
        }
        overrides = [f"model.moe.num_experts={experts}", f"model.moe.d_ff={i}"]
        moe = {"num_experts": experts, "top_k": top_k, "every_n_layers": 1}
        config = {"model": {"moe": moe}, "budget": {"kind": "flops", "params": params}}
        write_job(root / str(i), overrides, config, results, None)
    return root


def test_a_dense_vs_moe_table_shows_active_params_and_the_compute_trained(
    tmp_path: Path, multirun: Path
) -> None:
    """A MoE's total parameters are 2-3x the dense model's while a token runs through the
    same number: the table and compare.json show the active count beside the total, the
    router losses at the last step, and the FLOPs and tokens each run trained. A dense sweep
    gets no active column (it would repeat params) and no router losses, but its flops."""
    root = moe_multirun(tmp_path / "moe")
    runs = load_runs(root)
    rows = ranking.aggregate(runs, "val_loss", knobs=mrun.varying_knobs(runs))
    table = cmp.render_table(rows, mrun.varying_knobs(runs), "val_loss")
    headers = [c.header for c in table.columns]
    sizes = ("params", "active", "aux loss", "z loss", "tokens", "flops")
    assert headers[headers.index("params") :] == [*sizes, "tok/s", "wall s", "status"]
    cells = {c[2]: [c[headers.index(h)] for h in sizes] for c in table_cells(render(table))}
    assert cells == {  # by d_ff: dense, 8 half-width experts top-2, Mixtral's shape
        "0": ["1.9M", "1.9M", "-", "-", "12.3k", "1.4e11"],
        "1": ["3.68M", "1.91M", "1.0100", "2.1000", "12.3k", "1.41e11"],
        "2": ["6.03M", "2.5M", "1.0200", "2.2000", "8.19k", "1.23e11"],
    }
    cmp.compare(root, out=tmp_path / "out")
    last = json.loads((tmp_path / "out" / "compare.json").read_text())["rows"][-1]["metrics"]
    assert (last["params"]["mean"], last["active_params"]["mean"]) == (6_034_560, 2_495_616)
    assert (last["tokens"]["mean"], last["flops"]["mean"]) == (8192, 6.0 * 2_495_616 * 8192)
    dense = load_runs(multirun)
    dense_rows = ranking.aggregate(dense, "val_loss")
    headers = [c.header for c in cmp.render_table(dense_rows, [], "val_loss").columns]
    assert not {"active", "aux loss", "z loss"} & set(headers) and "flops" in headers


def test_runs_of_one_flop_budget_that_trained_unequal_flops_get_a_warning(tmp_path: Path) -> None:
    """budget=flops promises each run C; whole steps add less than one step (C / steps) to it.
    At C = 1.2e11 a step is 19-26% of C (6 to 4 steps a run): the dense run trained 1.402e11,
    the half-width MoE 1.405e11, Mixtral's shape 1.227e11, 14.9% of C apart, and the summary
    says so and why. At 1000x the budget (thousands of steps) they are within 1% of C: no
    warning."""

    def warnings(root: Path) -> list[str]:
        lines = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
        return [line for line in lines if "compute" in line]

    (line,) = warnings(moe_multirun(tmp_path / "small"))
    assert line.startswith(
        "warning: unequal compute: budget=flops promised 3 runs C = 1.2e11 FLOPs each, but they "
        "trained 1.227e11 (num_experts=8, d_ff=2) to 1.405e11 (num_experts=8, d_ff=1), 14.9% of C "
        "apart; steps are whole global batches and one step is up to 25.6% of C here"
    ), line
    assert "budget.flops" in line and "100+ steps" in line
    assert warnings(moe_multirun(tmp_path / "large", flops=1.2e14)) == []
    # a run that stopped after 1957 of its 3914 steps trained half of C: not rounding
    (line,) = warnings(moe_multirun(tmp_path / "short", flops=1.2e14, steps_trained={2: 1957}))
    assert "more than whole steps explain" in line and "d_ff=2 trained 50.0% of C" in line


def test_runs_that_trained_unequal_tokens_without_a_budget_get_a_warning(tmp_path: Path) -> None:
    """A sweep over the sequence length at fixed steps (budget=steps) trains one variant twice
    the tokens of the other, which may win by its data alone: the summary says so. Runs
    within 1% of each other, or promised one C by budget=chinchilla at different N, do not."""
    from lmlab.analysis.compute import compute_notes
    from lmlab.analysis.runs import Run

    def run(tokens: int, budget: dict | None = None, n: int = 1000) -> Run:
        results = {"status": "completed", "tokens": tokens, "flops": 6.0 * n * tokens}
        return Run(tmp_path, results | ({"budget": budget} if budget else {}))

    steps = {"kind": "steps"}
    (line,) = compute_notes(
        [
            ("seq_len=128", run(409_600, steps)),
            ("seq_len=256", run(819_200, steps)),
            ("seq_len=256", run(819_200, steps)),
        ]
    )
    assert line == (
        "warning: unequal data: the runs trained 409,600 (seq_len=128) to 819,200 tokens "
        "(seq_len=256), 2.00x, and a variant may lead by its extra tokens alone; budget=tokens "
        "(or budget=flops) trains each the same"
    )
    assert compute_notes([("a", run(819_200)), ("b", run(823_296))]) == []  # within 1%

    def chinchilla(n: int) -> dict:  # 20 tokens a parameter
        return {"kind": "chinchilla", "tokens_per_step": 2048, "target_tokens": 20.0 * n}

    small, large = run(20_480, chinchilla(1000), 1000), run(40_960, chinchilla(2000), 2000)
    assert compute_notes([("a", small), ("b", large)]) == []


def test_moe_flops_that_count_every_expert_are_noted(tmp_path: Path) -> None:
    """Under budget.params=total a MoE's flops are 6 x all its parameters x tokens, more than
    a token runs through: the summary says so, naming the runs."""
    lines = ranking.summarize(
        ranking.aggregate(load_runs(moe_multirun(tmp_path / "t", 1.2e14, "total")), "val_loss"),
        "val_loss",
    )
    (note,) = [line for line in lines if "every expert" in line]
    assert note.startswith("note: the flops of 2 Mixture-of-Experts run(s) count every expert")
    assert note.endswith("(num_experts=8, d_ff=1; num_experts=8, d_ff=2)")


def test_chinchilla_budgets_promise_equal_compute_only_at_equal_n(tmp_path: Path) -> None:
    """budget=chinchilla trains 20 N tokens, so C = 120 N^2: runs of different N were never
    promised one C (no warning), runs of one N were (a warning when a larger global batch
    rounds one of them up by more than 1% of C)."""
    from lmlab.analysis.compute import compute_notes, promised_flops
    from lmlab.analysis.runs import Run

    def run(n: int, per_step: int) -> Run:
        target = 20.0 * n
        tokens = math.ceil(target / per_step) * per_step
        budget = {"kind": "chinchilla", "tokens_per_step": per_step, "target_tokens": target}
        results = {"status": "completed", "flops": 6.0 * n * tokens, "tokens": tokens}
        return Run(tmp_path, results | {"budget": budget, "params": n, "active_params": n})

    small, large = run(100_000, 2048), run(200_000, 2048)
    assert promised_flops(small) == ("chinchilla", pytest.approx(1.2e12))
    assert compute_notes([("small", small), ("large", large)]) == []
    (line,) = compute_notes([("small", small), ("big batch", run(100_000, 65536))])
    assert line.startswith("warning: unequal compute: budget=chinchilla promised 2 runs C = 1.2e12")
    assert "budget.tokens_per_param" in line


# --------------------------------------------------------------------------- QA: names, folders


def set_config(job: Path, **sections: dict) -> None:
    """Merge ``sections`` (``data={"tokenizer": "bpe"}``) into a job's .hydra/config.yaml."""
    config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def set_results(job: Path, **values: object) -> None:
    results = json.loads((job / "results.json").read_text())
    (job / "results.json").write_text(json.dumps(results | values))


@pytest.mark.parametrize(
    "metric", ["val/loss", "val/perplexity", "train/loss", "val/bits_per_byte"]
)
def test_a_loss_by_its_metrics_csv_name_is_checked_for_its_objective(
    tmp_path: Path, metric: str
) -> None:
    """``--metric val/loss`` named a GPT the winner over a BERT, which ``val_loss`` refuses
    to rank: a loss by its metrics.csv name is the same loss."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    set_config(root / "0", model={"family": "gpt"})
    set_config(root / "1", model={"family": "bert"})
    rows = ranking.aggregate(load_runs(root), metric)
    assert [r.rank for r in rows] == [None, None]
    assert all(r.value(metric) is not None for r in rows)
    (first, *_) = ranking.summarize(rows, metric)
    assert first.startswith(
        f"no winner: the runs differ in model.family: bert, gpt, so their {metric}"
    )


@pytest.mark.parametrize("metric", ["val/loss", "train/loss", "val/perplexity"])
def test_a_per_token_loss_by_its_metrics_csv_name_warns_of_other_tokenizers(
    tmp_path: Path, metric: str
) -> None:
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    set_config(root / "0", data={"tokenizer": "char"})
    set_config(root / "1", data={"tokenizer": "bpe"})
    lines = ranking.summarize(ranking.aggregate(load_runs(root), metric), metric)
    warned = [line for line in lines if line.startswith("warning: the runs differ in")]
    assert len(warned) == 1 and "data.tokenizer" in warned[0], lines
    assert f"their tokens differ and {metric} (per token)" in warned[0]


def test_throughput_by_its_metrics_csv_name_ranks_and_prints_as_its_results_json_name(
    multirun: Path,
) -> None:
    """perf/tokens_per_second ranked the slowest variant first and printed 1089.00 where
    tokens_per_second prints 1.09k; perf/mfu ranked lower first too."""
    for metric in ("perf/tokens_per_second", "perf/mfu"):
        assert mrun.higher_is_better(metric) is mrun.higher_is_better(metric[5:]) is True
    rows = cmp.compare(multirun, metric="perf/tokens_per_second")
    assert rows[0].label == "norm_placement=post, activation=relu"  # 3000 tokens/s
    assert stat.fmt(1089.0, "perf/tokens_per_second") == "1.09k"
    assert stat.fmt_stat(stat.Stat(2000.0, 100.0, 3), "perf/tokens_per_second") == "2k ± 100"


def test_throughput_by_its_metrics_csv_name_is_the_runs_not_its_last_logging_window(
    tmp_path: Path,
) -> None:
    """perf/tokens_per_second ranked by the last row of metrics.csv, the throughput of the last
    logging window (one step, where the run ends just after a logging step), while the
    table's tok/s and tokens_per_second gave the run's own: the two named opposite winners."""
    root = make_multirun(tmp_path / "multirun", JOBS[3:5])  # post/relu 3000, swiglu 1000 tok/s
    write_metrics_csv(root / "0" / "csv" / "metrics.csv", 3.30, 500.0)  # a slow last window
    for metric in ("perf/tokens_per_second", "tokens_per_second"):
        rows = cmp.compare(root, metric=metric)
        assert rows[0].label == "norm_placement=post, activation=relu", metric
        assert rows[0].value(metric) == 3000.0


def test_the_higher_is_better_help_names_every_metric_ranked_higher_first() -> None:
    """The help said "higher for eval accuracies, lower for everything else" while
    throughput and a fine-tuned task's accuracies rank higher first too."""
    from lmlab.cli.compare import build_parser

    (action,) = [a for a in build_parser()._actions if "--higher-is-better" in a.option_strings]
    for metric in sorted(mrun.HIGHER_RUN_METRICS):
        assert metric in action.help, metric
    assert "lower for everything else" not in action.help or "throughput" in action.help


def test_runs_validated_on_different_rows_get_a_warning(tmp_path: Path) -> None:
    """data.batch_size=2,4 validates limit_val_batches x micro-batch rows: val_tokens 1024 and
    2048, and compare named a winner without a word."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    set_results(root / "0", val_tokens=1024)
    set_results(root / "1", val_tokens=2048)
    for metric in ("val_loss", "val/loss", "val_bits_per_byte"):
        lines = ranking.summarize(ranking.aggregate(load_runs(root), metric), metric)
        warned = [line for line in lines if "val_tokens" in line]
        assert warned == [
            "warning: the runs were validated on different numbers of target tokens (val_tokens "
            "1024: norm_placement=pre, activation=gelu; 2048: norm_placement=post, "
            f"activation=relu), so {metric} compares different validation rows as much as the "
            "variants; validate every run on the same rows (the same data.batch_size x "
            "trainer.limit_val_batches, or final_val_batches=1.0 for the whole held-out split)"
        ], lines
    lines = ranking.summarize(ranking.aggregate(load_runs(root), "mfu"), "mfu")
    assert not [line for line in lines if "val_tokens" in line]
    set_results(root / "1", val_tokens=1024)
    lines = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
    assert not [line for line in lines if "val_tokens" in line]


def test_masked_token_runs_of_other_seeds_are_warned_of_other_val_tokens(tmp_path: Path) -> None:
    """BERT's validation masks are drawn with validation's own seed, so runs of other seeds
    on the same rows score as many targets: other counts mean other rows, warned of as for
    GPT. Grouped by seed (from when the masks followed the run's seed), a variant's seeds 1
    and 2 on other rows went unwarned."""
    root = make_multirun(tmp_path / "multirun", JOBS[:2] + JOBS[3:4])  # seeds 1, 2 and 1
    for job in ("0", "1", "2"):
        set_config(root / job, model={"family": "bert"})
        set_results(root / job, val_tokens=150)
    lines = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
    assert not [line for line in lines if "val_tokens" in line], lines
    set_results(root / "1", val_tokens=160)  # seed 2 of the first variant: other rows
    lines = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
    assert [line for line in lines if "val_tokens 150: " in line and "160: " in line], lines


def test_the_plot_says_why_a_row_with_a_value_is_unranked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compare.png labelled rows of different objectives "no val_loss" beside a table that
    shows their val_loss."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text as MplText

    from lmlab.analysis import compare_plot

    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])
    set_config(root / "0", model={"family": "gpt"})
    set_config(root / "1", model={"family": "bert"})
    drawn: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    rows = ranking.aggregate(load_runs(root), "val_loss")
    compare_plot.plot(rows, tmp_path / "compare.png", "val_loss")
    texts = [t.get_text() for t in drawn[0].findobj(MplText)]
    assert texts.count("unranked: objectives differ") == 2, texts
    assert "no val_loss" not in texts
    cells = table_cells(render(cmp.render_table(rows, ["model.activation"], "val_loss")))
    assert [c[-1] for c in cells] == ["unranked: objectives differ"] * 2


def test_a_stray_results_json_is_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_command, monkeypatch
) -> None:
    """``mkdir misc; echo '{"a":1}' > misc/results.json`` in a sweep's folder counted as a
    FAILED run ("1 of 5 runs failed") and added knob columns; it is left out with a warning.
    A results.json with a status is a run's even alone (docs/isoflop, lmlab scaling's input)."""
    monkeypatch.setenv("COLUMNS", "250")
    root = make_multirun(tmp_path / "sweep", JOBS[:5])
    (root / "misc").mkdir()
    (root / "misc" / "results.json").write_text('{"a": 1}\n')
    assert [p.name for p in not_runs(root)] == ["misc"]
    runs = load_runs(root)
    assert [r.dir.name for r in runs] == ["0", "1", "2", "3", "4"]
    assert mrun.varying_knobs(runs) == ["model.norm_placement", "model.activation"]
    assert run_command("compare", root) == 0
    out = capsys.readouterr().out
    assert "failed" not in out and "FAILED" not in out
    assert (
        "warning: left out 1 folder(s) whose results.json no run wrote (misc): no .hydra/ or "
        "plan.json beside it, and no status in it"
    ) in out
    assert json.loads((root / "compare.json").read_text())["summary"][-1].startswith(
        "warning: left out 1 folder(s)"
    )
    alone = tmp_path / "alone" / "C2e12_N1"  # results.json alone, as docs/isoflop ships it
    alone.mkdir(parents=True)
    (alone / "results.json").write_text(json.dumps(results_for(3.1, 2000.0, 1, "alone")))
    assert [r.dir.name for r in load_runs(tmp_path / "alone")] == ["C2e12_N1"]
    assert run_command("compare", root / "misc") == 2
    assert "not written by a run" in capsys.readouterr().err
    # a results.json that does not parse, alone in its folder, is a run whose file broke
    # (failed, unreadable); with no config it names no knob, so the others' overrides do not
    # all become knob columns
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("not json")
    runs = load_runs(root)
    assert [r.dir.name for r in runs if r.failed] == ["broken"]
    assert mrun.varying_knobs(runs) == ["model.norm_placement", "model.activation"]


def test_n_counts_the_values_and_a_dropped_value_is_said(
    multirun: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """One seed's val_loss nan: the row showed n 3 over a mean ± std of 2 values, and
    nothing said a value was left out."""
    monkeypatch.setenv("COLUMNS", "250")
    (multirun / "1" / "results.json").write_text(
        (multirun / "1" / "results.json").read_text().replace('"val_loss": 3.12', '"val_loss": NaN')
    )
    assert compare_main([str(multirun)]) == 0
    out = capsys.readouterr().out
    (cells,) = [c for c in table_cells(out) if c[1:3] == ["pre", "gelu"]]
    assert cells[3:5] == ["3.1200 ± 0.0283", "2"]  # the mean of 3.10 and 3.14: 2 values
    assert (
        "note: norm_placement=pre, activation=gelu: val_loss of 1 of its 3 runs is missing or "
        "not finite (1: nan), left out of its mean ± std and n, which are over the other 2"
    ) in out
    (row,) = [
        r
        for r in json.loads((multirun / "compare.json").read_text())["rows"]
        if r["label"] == "norm_placement=pre, activation=gelu"
    ]
    assert row["n"] == row["metrics"]["val_loss"]["n"] == 2 and len(row["runs"]) == 3
    gelu = row_by(ranking.aggregate(load_runs(multirun), "val_loss"), "pre", "gelu")
    assert (gelu.n, gelu.count("val_loss"), gelu.stats["val_loss"].n) == (3, 2, 2)


def test_the_verdict_says_it_left_out_a_diverged_seed_of_the_winner(tmp_path: Path) -> None:
    """A variant whose third seed diverged (val_loss nan) won on its two others and the
    verdict called its lead 'likely real' with nothing beside it: the note on the dropped
    value came lines later, and no line said that the test is over the seeds that did not
    diverge. The verdict now names what it left out, and so does one without replicates
    left."""
    jobs = [("pre", "gelu", s, v, 1.0) for s, v in [(1, 3.00), (2, 3.02), (3, math.nan)]]
    jobs += [("post", "gelu", s, v, 1.0) for s, v in [(1, 3.20), (2, 3.22), (3, 3.21)]]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "a", jobs)), "val_loss")
    verdict = ranking.summarize(rows, "val_loss")[2]
    assert verdict.endswith(
        "n=2 and 3): likely real; left out for a missing or non-finite val_loss (a diverged "
        "seed's nan, say): 1 of the 3 runs of norm_placement=pre: the verdict is over the other "
        "runs and says nothing of how often a variant diverges"
    )
    jobs = [("pre", "gelu", 1, 3.0, 1.0), ("pre", "gelu", 2, math.inf, 1.0)]
    jobs += [("post", "gelu", 1, 3.2, 1.0), ("post", "gelu", 2, math.nan, 1.0)]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "b", jobs)), "val_loss")
    verdict = ranking.summarize(rows, "val_loss")[2]
    assert verdict.startswith("no seed replicates (n=1 for both)")
    assert verdict.endswith(
        ": 1 of the 2 runs of norm_placement=pre and 1 of the 2 runs of norm_placement=post: "
        "the verdict is over the other runs and says nothing of how often a variant diverges"
    )
    clean = [("pre", "gelu", s, 3.0 + s / 100, 1.0) for s in (1, 2)]
    clean += [("post", "gelu", s, 3.2 + s / 100, 1.0) for s in (1, 2)]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "c", clean)), "val_loss")
    assert "left out" not in ranking.summarize(rows, "val_loss")[2]


def test_the_verdict_says_it_left_out_a_failed_seed_of_the_winner(tmp_path: Path) -> None:
    """A seed that did not complete (the guard stops a run at a nan loss: status failed) is a
    row of its own at the bottom, and the winner's mean ± std are over its other seeds. The
    verdict judged the lead on those alone and said nothing of the lost seed; it now names
    the runs of the two variants that did not complete. A failed seed of a third variant is
    not theirs."""
    jobs = [("pre", "gelu", s, v, 1.0) for s, v in [(1, 3.00), (2, 3.02), (3, None)]]
    jobs += [("post", "gelu", s, v, 1.0) for s, v in [(1, 3.20), (2, 3.22), (3, 3.21)]]
    jobs += [("post", "relu", 1, None, 1.0)]
    rows = ranking.aggregate(load_runs(make_multirun(tmp_path / "a", jobs)), "val_loss")
    assert [(r.label, r.n, r.status) for r in rows][:2] == [
        ("norm_placement=pre, activation=gelu", 2, "completed"),
        ("norm_placement=post, activation=gelu", 3, "completed"),
    ]
    verdict = ranking.summarize(rows, "val_loss")[2]
    assert verdict.endswith(
        "n=2 and 3): likely real; left out as not completed (the bottom of the table): 1 of "
        "the 3 runs of norm_placement=pre, activation=gelu: the verdict is over the runs that "
        "completed and says nothing of how often a variant fails"
    ), verdict


def write_multirun_yaml(root: Path, task: list[str], sweeper: str = "basic") -> None:
    targets = {
        "basic": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "optuna": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    }
    hydra = {
        "sweep": {"dir": str(root), "subdir": "${hydra.job.num}"},
        "sweeper": {"_target_": targets[sweeper], "params": None},
        "overrides": {"hydra": [f"hydra.sweep.dir={root}"], "task": task},
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra, "seed": 1}))


def test_the_jobs_a_stopped_sweep_never_started_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_command, monkeypatch
) -> None:
    """A 2 x 2 sweep stopped during its job 1: compare said nothing of jobs 2 and 3, which
    its multirun.yaml's grid holds. An Optuna sweep's trials are not known: nothing said."""
    root = make_multirun(tmp_path / "sweep", JOBS[:1] + JOBS[3:4])
    set_results(root / "1", status="preempted", error="stopped by SIGTERM")
    grid = ["model.norm_placement=pre,post", "model.activation=gelu,relu", "+debug=smoke"]
    write_multirun_yaml(root, grid)
    monkeypatch.setenv("COLUMNS", "400")  # the note on one line
    assert run_command("compare", root) == 0
    out = capsys.readouterr().out
    line = (
        "note: 2 of the 4 jobs of the sweep (its multirun.yaml's grid) have no folder "
        "(job 2, 3): never started: the sweep stopped before them; python src/train.py -m "
        f"<same overrides> resume=auto hydra.sweep.dir={root} runs them"
    )
    assert line in out.splitlines()
    assert line in json.loads((root / "compare.json").read_text())["summary"]
    fd = hold_lock(root / SWEEP_LOCK_FILE, "4545")  # the sweep goes on: they are to come
    try:
        (note,) = cmp.folder_notes(root)
        assert note.endswith("(job 2, 3): not started yet: the sweep still runs (pid 4545)")
    finally:
        import os

        os.close(fd)
    write_multirun_yaml(root, ["model.activation=gelu,relu"])  # 2 jobs, 2 folders
    assert cmp.folder_notes(root) == []
    write_multirun_yaml(root, grid, sweeper="optuna")
    assert cmp.folder_notes(root) == []
    write_multirun_yaml(root, grid)
    parent = tmp_path / "sweeps"  # a parent of the sweep: its folder named
    shutil.move(root, parent / "a")
    (note,) = cmp.folder_notes(parent)
    assert note.startswith("note: 2 of the 4 jobs of the sweep in a (its multirun.yaml's grid)")


def test_knob_floats_read_as_typed_and_copies_are_named_from_the_compared_folder(
    tmp_path: Path,
) -> None:
    """optim.lr=1e5 showed as 100000.0; copies in two sweeps of one parent were named by
    their own folders' names, (0, 1) for b/0 and b/1."""
    jobs = [("pre", "gelu", 1, 3.1, 2000.0), ("pre", "relu", 1, 3.2, 2000.0)]
    for sweep in ("a", "b"):
        make_multirun(tmp_path / sweep, jobs)
    for job, lr in (("a/0", "1e5"), ("a/1", "3e-4"), ("b/0", "100000.0"), ("b/1", "3e-4")):
        overrides = yaml.safe_load((tmp_path / job / ".hydra" / "overrides.yaml").read_text())
        overrides.append(f"optim.lr={lr}")
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    runs = load_runs(tmp_path)
    assert [mrun.knob_value(run, "optim.lr") for run in runs] == ["1e5", "0.0003"] * 2
    rows = ranking.aggregate(runs, "val_loss")
    assert [r.label for r in rows] == ["activation=gelu, lr=1e5", "activation=relu, lr=0.0003"]
    lines = ranking.summarize(rows, "val_loss", root=tmp_path)
    notes = [line for line in lines if "copies or repeats" in line]
    assert [n.split("counted (")[1].split(")")[0] for n in notes] == ["b/0", "b/1"], notes


def test_a_run_without_its_hydra_config_is_read_from_run_config_yaml(tmp_path: Path) -> None:
    """Seeds of one config, one copied without ``.hydra/config.yaml`` (``cp -r run/*`` skips
    it): its config was empty, so every key of the others counted as a knob (about a hundred
    columns) and compare said the runs trained different objectives (model.family None, gpt).
    Its ``run_config.yaml`` holds what it trained; the keys it lacks are unknown, not knobs."""
    config = {
        "model": {"family": "gpt", "d_model": 64, "activation": "gelu"},
        "data": {"max_bytes": 1000000},
        "trainer": {"max_steps": MAX_STEPS, "precision": "32-true"},
        "seed": 1,
    }
    for seed in (1, 2, 3):
        results = results_for(3.1 + seed / 100, 2000.0, seed, f"gpt-s{seed}")
        job_config = {**config, "seed": seed}
        write_job(tmp_path / str(seed), [f"seed={seed}"], job_config, results, None)
    copied = tmp_path / "2"
    (copied / ".hydra" / "config.yaml").unlink()
    partial = {k: config[k] for k in ("model", "data")} | {"seed": 2}
    (copied / "run_config.yaml").write_text(yaml.safe_dump(partial))
    runs = load_runs(tmp_path)
    assert [r.partial_config for r in runs] == [False, True, False]
    assert runs[1].flat_config["model.family"] == "gpt"
    assert mrun.varying_knobs(runs) == []  # seeds of one config
    variant = [*ranking.aggregate(runs, "val_loss")]
    assert len(variant) == 1 and variant[0].n == 3


def test_runs_of_different_precisions_get_a_warning(tmp_path: Path) -> None:
    """``trainer=ddp``'s ``precision: auto`` is bf16-mixed on a GPU and 32-true on a CPU: one
    command run on two machines trains and validates at two precisions, which no column of the
    table shows (no override differs). Said, naming the rows; not where each run sets
    ``trainer.precision`` (the precision is the variant), nor for runs of one precision or
    without a value."""
    from lmlab.analysis.comparable import precision_notes
    from lmlab.analysis.runs import Run

    def run(precision: str, overrides: dict | None = None, status: str = "completed") -> Run:
        results = {"status": status, "val_loss": 2.0}
        return Run(tmp_path, results, overrides or {}, plan={"precision": precision})

    rows = [("swiglu", run("bf16-mixed")), ("swiglu", run("bf16-mixed")), ("gelu", run("32-true"))]
    assert precision_notes(rows, "val_loss") == [
        "warning: the runs trained and were validated at different precisions (32-true: gelu; "
        "bf16-mixed: swiglu), so val_loss compares precisions as much as variants; set "
        "trainer.precision to one value (32-true or bf16-mixed) for every run"
    ]
    swept = [(p, run(p, {"trainer.precision": p})) for p in ("bf16-mixed", "32-true")]
    assert precision_notes(swept, "val_loss") == []
    assert precision_notes([("a", run("32-true")), ("b", run("32-true"))], "val_loss") == []
    failed = [("a", run("32-true")), ("b", run("bf16-mixed", status="failed"))]
    assert precision_notes(failed, "val_loss") == []
    assert precision_notes(rows, "val_accuracy") == []  # no run has a value


def test_compares_summary_names_runs_of_other_precisions(tmp_path: Path) -> None:
    """The warning above from the runs' folders, as ``lmlab compare`` reads them (plan.json's
    resolved precision)."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:5])
    for job, precision in enumerate(("32-true", "bf16-mixed", "32-true")):
        (root / str(job) / PLAN).write_text(json.dumps({"precision": precision}))
    lines = ranking.summarize(ranking.aggregate(load_runs(root), "val_loss"), "val_loss")
    (warning,) = [line for line in lines if "different precisions" in line]
    assert "(32-true: " in warning and "; bf16-mixed: " in warning, warning
