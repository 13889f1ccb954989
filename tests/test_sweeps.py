"""Sweeps: every sweep file composes; a real multirun survives a failed job, and each job is
its own W&B run with the sweep's group, a name from the varying overrides, and dotted keys."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lmlab.analysis.compare import compare
from lmlab.config import CONF_DIR, Positional, register_configs
from lmlab.train.loggers import build_loggers
from smoke import SMOKE

REPO = CONF_DIR.parent  # the repository root

SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_composes(sweep: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()  # the schemas the presets extend (the train command registers them too)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"+sweeps={sweep}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params, f"{sweep} sweeps nothing"
    assert f"multirun/{sweep}/" in cfg.hydra.sweep.dir


def test_the_positional_sweep_covers_every_positional_scheme() -> None:
    """``+sweeps=positional`` compares the positional schemes: each one ``model.positional``
    takes (T5's relative bias on a GPT too), so a new scheme joins it or this fails."""
    grid = yaml.safe_load((REPO / "sweeps" / "positional.yaml").read_text())
    swept = grid["hydra"]["sweeper"]["params"]["model.positional"].split(",")
    assert sorted(swept) == sorted(p.value for p in Positional)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_job_of_every_sweep_passes_the_checks_before_work(sweep: str, refused_jobs) -> None:
    """Each job as Hydra's sweeper composes it passes what a run checks before any work
    (``check_job``, the machine's own checks aside): a value the checks refuse in a sweep file
    would refuse the whole sweep."""
    assert refused_jobs("-m", f"+sweeps={sweep}") == []


@pytest.mark.slow  # trains a tokenizer and two runs
def test_multirun_with_a_failed_job_logs_and_compares(
    tmp_path: Path, wandb_records, run_command, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 jobs; job 1's 300 output rows are fewer than the tokenizer's 4,096 tokens, found once
    its data is read (a value refused from the config alone refuses the whole sweep before
    it starts: tests/cli/test_sweep.py), so job 1 fails and the others complete. In this
    process, as ``lmlab train -m`` runs it (one Lightning import less than a child process).
    A cache of its own: where the tokenizer is cached already, the sweep's checks refuse
    job 1 before any job starts."""
    sweep_dir = tmp_path / "sweep"
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    argv = ["-m", *SMOKE, "logger=wandb", "model.vocab_size=4096,300,8192"]
    assert run_command("train", *argv, f"hydra.sweep.dir={sweep_dir}") == 0
    status = {
        int(d.name): json.loads((d / "results.json").read_text())
        for d in sweep_dir.iterdir()
        if (d / "results.json").exists()
    }
    assert sorted(status) == [0, 1, 2]
    assert status[1]["status"] == "failed" and "vocab_size=300 is below" in status[1]["error"]
    assert all(status[i]["status"] == "completed" for i in (0, 2))

    groups = set()
    for i, vocab in ((0, 4096), (2, 8192)):
        records = wandb_records(sweep_dir / str(i))
        run = next(r["run"] for r in records if r["type"] == "run")
        assert run["display_name"] == f"model.vocab_size={vocab}"
        assert run["project"] == "lmlab" and "positional:learned" in run["tags"]
        assert "family:gpt" in run["tags"] and "size:tiny" in run["tags"]
        groups.add(run["run_group"])
        config = {
            k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()
        }
        assert config["model.vocab_size"] == vocab
        assert status[i]["wandb_id"] == run["run_id"]
    assert len(groups) == 1 and groups.pop().startswith("multirun-")

    rows = compare(sweep_dir)
    done = [r for r in rows if r.status != "failed"]
    losses = [r.value("val_loss") for r in done]
    assert losses == sorted(losses) and len(done) == 2
    assert [r.status for r in rows].count("failed") == 1
    assert (sweep_dir / "compare.png").stat().st_size > 0


@pytest.mark.slow  # trains one trial
def test_an_optuna_trial_is_named_by_the_parameters_of_a_search_given_on_the_command_line(
    tmp_path: Path, wandb_records, run_command
) -> None:
    """A search space typed on the command line (``model.activation=choice(...)``,
    ``optim.lr=interval(...)``) is no sweeper ``params``, and Optuna's sweeper writes no
    ``multirun.yaml`` where a grid's keeps the command line: each trial was named ``job<N>``
    (W&B's name, results.json's ``run_name``). The sweep's folder holds its record now, and a
    trial is named by the values it drew, in the sweep's group, tagged by its knobs."""
    sweep = tmp_path / "sweep"
    space = ["model.activation=choice(relu,gelu)", "optim.lr=interval(1e-4,1e-2)"]
    argv = ["-m", *SMOKE, "logger=wandb", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1"]
    assert run_command("train", *argv, *space, f"hydra.sweep.dir={sweep}") == 0
    drawn = OmegaConf.load(sweep / "0" / ".hydra" / "overrides.yaml")[:2]
    assert [o.split("=")[0] for o in drawn] == ["model.activation", "optim.lr"]
    (run,) = [r["run"] for r in wandb_records(sweep / "0") if r["type"] == "run"]
    assert run["display_name"] == ",".join(drawn)
    assert json.loads((sweep / "0" / "results.json").read_text())["run_name"] == ",".join(drawn)
    assert run["run_group"] == f"multirun-{sweep.parent.name}_{sweep.name}"
    assert f"activation:{drawn[0].split('=')[1]}" in run["tags"]
    assert OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task[-2:] == space


@pytest.mark.e2e
def test_the_wandb_sweep_runs_its_grid_as_wandbs_agent_would(
    tmp_path: Path, cache_dir: Path, wandb_records, refused_jobs, monkeypatch
) -> None:
    """sweeps/wandb/norm_x_activation.yaml: the Hydra sweep's grid; every point, as W&B's
    own command builder writes it, passes the checks; and one point run the way W&B's agent
    runs it (its command macros, its environment: sweep id, run id, project, the parameters'
    file; offline, as no agent can be here) trains under the agent's run id and project, which
    the run directory records: its loggers, built again outside the agent (a resume), reopen
    that W&B run there, not in the config's project."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args
    from wandb.sdk.lib import config_util

    spec = yaml.safe_load((REPO / "sweeps" / "wandb" / "norm_x_activation.yaml").read_text())
    hydra_sweep = yaml.safe_load((REPO / "sweeps" / "norm_x_activation.yaml").read_text())
    grid = {k: p["values"] for k, p in spec["parameters"].items()}
    assert grid == {
        k: str(v).split(",") for k, v in hydra_sweep["hydra"]["sweeper"]["params"].items()
    }
    assert spec["method"] == "grid" and spec["metric"]["name"] == "val/loss"
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    for point in points:
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
        assert refused_jobs(*args["args_no_hyphens"]) == []

    point = {"model.norm_placement": "post", "model.activation": "swiglu"}
    args = {k: {"value": v} for k, v in point.items()}
    macros = create_sweep_command_args({"args": args}) | {
        "env": ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [spec["program"]],
    }
    command = []
    for part in create_sweep_command(list(spec["command"])):  # as wandb_agent.py expands it
        command += macros[part[2:-1]] if part.startswith("${") else [part]
    run_dir = "hydra.run.dir=outputs/wandb/${oc.env:WANDB_SWEEP_ID}/${oc.env:WANDB_RUN_ID}"
    assert command == ["/usr/bin/env", "python", "src/train.py", *args_of(point), run_dir]
    params = tmp_path / "config-agentrun1.yaml"
    config_util.save_config_file_from_dict(str(params), args)
    env = {
        **os.environ,
        "LMLAB_CACHE": str(cache_dir),
        "WANDB_MODE": "offline",
        "WANDB_SWEEP_ID": "sweep123",
        "WANDB_RUN_ID": "agentrun1",
        "WANDB_PROJECT": "agentproj",  # `wandb agent me/agentproj/sweep123` sets it
        "WANDB_SWEEP_PARAM_PATH": str(params),
    }
    extra = ["+debug=smoke", "logger=wandb", "callbacks.sample=null"]
    program = str(REPO / command[2])  # the agent runs it from the repository's root
    proc = subprocess.run(
        [sys.executable, program, *command[3:], *extra],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "wandb" / "sweep123" / "agentrun1"  # one per agent run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["wandb_id"] == "agentrun1"
    records = wandb_records(run_dir)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["run_id"] == "agentrun1" and run["project"] == "agentproj"
    assert (run_dir / "wandb_project").read_text() == "agentproj"  # offline: no entity
    config = run["config"]["update"]  # W&B's from the agent's file, then lmlab's on top
    config |= {
        k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()
    }
    assert {k: config[k] for k in point} == point and config["model.norm"] == "layernorm"
    (row,) = compare(tmp_path / "outputs" / "wandb" / "sweep123")
    assert row.status == "completed" and row.value("val_loss") == results["val_loss"]

    # resumed by hand, outside the agent: the config names project lmlab
    for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(run_dir)
    assert cfg.logger.wandb.project == "lmlab"
    (wandb_logger,) = [lg for lg in build_loggers(cfg, run_dir) if lg.name == "agentproj"]
    run = wandb_logger.experiment
    assert (run.id, run.project) == ("agentrun1", "agentproj")
    run.finish()


def args_of(point: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in point.items()]


@pytest.mark.parametrize("width", [[], ["model.d_model=256", "model.n_heads=4"]])
def test_the_moe_sweeps_equal_active_rows_hold_at_any_width(width: list[str], multirun_config):
    """``+sweeps=moe``'s rows 1 to 3 have the dense model's active parameters (the MoE rows a
    router more), at gpt_tiny's width and at the wider model the sweep's comment suggests: its
    top-2 row's experts are half the dense width (``model.moe.granularity=2``). Its row had
    ``d_ff: 192``, half of gpt_tiny's 384 only: at d_model 256 that row held 4.34M active
    parameters against the dense 5.31M."""
    import dataclasses

    import torch

    from lmlab.cli.sweep import job_config, sweep_jobs
    from lmlab.config.resolve import composed_model
    from lmlab.model import build_model, param_breakdown

    config = multirun_config("+sweeps=moe", *width)
    active = []
    for num, overrides in enumerate(sweep_jobs(config)):
        cfg = composed_model(job_config(config, overrides, num))
        cfg = dataclasses.replace(cfg, vocab_size=4096)  # the data's tokenizer's, in a run
        with torch.device("meta"):
            counts = param_breakdown(build_model(cfg))
        routers = cfg.n_layers * cfg.d_model * cfg.moe.num_experts
        active.append(counts["active"] - routers)
    assert len(active) == 4
    assert active[0] == active[1] == active[2] < active[3]
