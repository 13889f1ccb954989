"""A sweep's jobs are known and checked before the first starts: the jobs are Hydra's own,
in its order, and one bad job refuses the sweep with nothing written."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext
from omegaconf import OmegaConf

from lmlab.cli.sweep import (
    MAX_CORNERS,
    job_config,
    runs_here,
    search_corners,
    shared_folder,
    sweep_jobs,
)
from smoke import SMOKE


class Recorder(Launcher):
    """A launcher that runs nothing and keeps what it was asked to launch."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] = []

    def setup(self, **kwargs) -> None:
        pass

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        self.jobs += [list(job) for job in job_overrides]
        # a finished job each, for a sweeper that reads them (Optuna's)
        return [JobReturn(_return_value=1.0, status=JobStatus.COMPLETED) for _ in job_overrides]


def sweeper_for(config):
    """The sweeper Hydra instantiates for ``config``, through its plugins."""
    context = HydraContext(GlobalHydra.instance().config_loader(), Callbacks())
    return Plugins.instance().instantiate_sweeper(
        config=config, hydra_context=context, task_function=lambda cfg: None
    )


def test_the_jobs_are_the_ones_hydras_sweeper_launches_in_its_order(
    multirun_config, tmp_path: Path
) -> None:
    """A sweep file's params and the command line's values, as Hydra's basic sweeper itself
    expands them (job #i is the i-th it launches)."""
    argv = [
        "+sweeps=norm_x_activation",
        "model.n_heads=2,4",
        "seed=7",
        f"hydra.sweep.dir={tmp_path}",
    ]
    config = multirun_config(*argv)
    sweeper = sweeper_for(config)
    assert type(sweeper).__name__ == "BasicSweeper"
    sweeper.launcher = Recorder()
    # the sweeper's check that each job composes (validate_batch_is_legal, as its launcher
    # would) is no part of their order: left out (12 of this test's 14 compositions)
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.sweep(list(config.hydra.overrides.task))
    jobs = sweep_jobs(config)
    assert jobs == sweeper.launcher.jobs and len(jobs) == 2 * 3 * 2
    assert jobs[1] == [
        "model.norm_placement=pre",
        "model.activation=relu",
        "+sweeps=norm_x_activation",
        "model.n_heads=4",
        "seed=7",
    ]  # hydra.* overrides are Hydra's, not the job's
    job = job_config(config, jobs[1], 1)
    assert (job.model.n_heads, job.model.activation, job.seed) == (4, "relu", 7)
    assert job.hydra.runtime.output_dir == str(tmp_path / "1")  # where its checkpoints go


def test_another_sweeper_draws_its_jobs_as_it_goes_and_a_cluster_trains_elsewhere() -> None:
    optuna = OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.OptunaSweeper"}}}
    )
    assert sweep_jobs(optuna) is None  # each job is checked as it starts
    for target, here in [
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", True),
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", False),
    ]:
        assert runs_here(OmegaConf.create({"hydra": {"launcher": {"_target_": target}}})) is here


def test_a_sweep_with_bad_jobs_is_refused_before_any_job_starts(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each refused job is named by its number and swept values, jobs refused for the same
    reason on one line; the sweep folder is not created."""
    sweep = tmp_path / "sweep"
    argv = [
        "-m",
        "+debug=smoke",
        "model.n_heads=2,3",
        "model.activation=relu,gelu",
        "trainer.max_steps=4,0",
        f"hydra.sweep.dir={sweep}",
    ]
    assert run_command("train", *argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: 6 of the sweep's 8 jobs would be refused, so none was started (fix or leave "
        "out these values):",
        "  #1 model.n_heads=2 model.activation=relu trainer.max_steps=0, #3 model.n_heads=2 "
        "model.activation=gelu trainer.max_steps=0: budget=steps needs trainer.max_steps >= 1, "
        "got 0",
        "  #4 model.n_heads=3 model.activation=relu trainer.max_steps=4, #5 model.n_heads=3 "
        "model.activation=relu trainer.max_steps=0, #6 model.n_heads=3 model.activation=gelu "
        "trainer.max_steps=4 and 1 more: model.d_model=128 is not divisible by model.n_heads=3 "
        "(or set model.d_head, the dimension of each head)",
    ]
    assert not sweep.exists()
    # one swept value per job: a reason that starts with it does not say it twice
    assert run_command("train", "-m", "+debug=smoke", "model=gpt_tiny,gpt_huge", argv[-1]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[1].startswith("  #1 model=gpt_huge: no such config; allowed: bert_base, ")
    assert not sweep.exists()
    # a value of a type no check expected (Hydra only warns of its callback's errors)
    argv = ["-m", "+debug=smoke", "trainer.accumulate_grad_batches=abc,1", argv[-1]]
    assert run_command("train", *argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: 1 of the sweep's 2 jobs would be refused"), err
    assert err[1].startswith("  #0 trainer.accumulate_grad_batches=abc"), err
    assert not sweep.exists()


def test_a_cluster_sweep_is_checked_here_without_this_machines_gpu(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """hydra/launcher=slurm from a machine without a GPU: a config error is refused here; the
    GPU the jobs ask for is left to the GPU nodes (job #0 is not refused for it)."""
    sweep = tmp_path / "sweep"
    argv = ["-m", "hydra/launcher=slurm", "+debug=smoke", "trainer=gpu", f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *argv, "model.n_heads=2,3") == 2
    err = capsys.readouterr().err
    assert "1 of the sweep's 2 jobs would be refused" in err and "#1 model.n_heads=3: " in err
    assert "#0" not in err and "CUDA" not in err and not sweep.exists()


def test_an_optuna_sweeps_corners_are_its_search_space_as_its_trials_write_them(
    multirun_config, tmp_path: Path
) -> None:
    """Every choice, every value of a short integer range and both ends of any other, in every
    combination, with the fixed values: the keys and fixed values the Optuna sweeper's own
    trials launch with. Past MAX_CORNERS combinations, each parameter's values one at a time."""
    argv = [
        "+sweeps=lr",
        "model.n_heads=2,4",
        "model.n_layers=range(1,4)",
        "seed=7",
        f"hydra.sweep.dir={tmp_path}",
    ]
    config = multirun_config(*argv)
    assert sweep_jobs(config) is None
    corners = search_corners(config)
    lows = ["optim.lr=0.0001", "optim.lr=0.01"]  # tag(log, interval(1e-4, 1e-2))
    assert [c[:3] for c in corners[:3]] == [
        [lows[0], "model.n_heads=2", "model.n_layers=1"],
        [lows[0], "model.n_heads=2", "model.n_layers=2"],
        [lows[0], "model.n_heads=2", "model.n_layers=3"],
    ]
    # the sweeper's IntUniformDistribution(1, 4) includes 4
    assert len(corners) == 2 * 2 * 4 and {c[0] for c in corners} == set(lows)
    sweeper = sweeper_for(config)
    sweeper.sweeper.launcher = Recorder()  # the plugin's implementation launches
    sweeper.sweeper.n_trials = 3
    sweeper.sweep(list(config.hydra.overrides.task))
    trials = sweeper.sweeper.launcher.jobs
    assert len(trials) == 3
    for trial in trials:
        assert [o.partition("=")[0] for o in trial] == [o.partition("=")[0] for o in corners[0]]
        assert trial[3:] == corners[0][3:]  # the fixed values
    wide = multirun_config(*argv[:-1], "model.d_model=64,128,256,512", argv[-1])
    corners = search_corners(wide)
    assert MAX_CORNERS < 2 * 2 * 4 * 4 and len(corners) == 1 + 1 + 1 + 3 + 3


def test_an_optuna_sweep_whose_range_reaches_a_refused_value_starts_no_trial(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corner refused refuses the search before its first trial, named by its values."""
    sweep = tmp_path / "sweep"
    argv = ["-m", "+sweeps=lr", "+debug=smoke", "model.n_heads=2,3", f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: 2 of the search space's 4 corners would be refused, so no trial was started "
        "(fix, narrow or leave out these values):",
        "  optim.lr=0.0001 model.n_heads=3, optim.lr=0.01 model.n_heads=3: model.d_model=128 is "
        "not divisible by model.n_heads=3 (or set model.d_head, the dimension of each head)",
    ]
    assert not sweep.exists()


def test_an_optuna_search_goes_on_past_a_trial_with_no_value(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial that gives no loss (a dry run's plan, a failed job) is a failed trial to
    Optuna, and the search goes on: a NaN was told as a failed trial's value, which optuna
    refuses, and the search ended at its first trial with a traceback."""
    sweep = tmp_path / "sweep"
    argv = ["-m", "+sweeps=lr", *SMOKE, "dry_run=true", "hydra.sweeper.n_trials=2"]
    argv.append("model.n_layers=1")  # each trial's dry run times 4 steps of its model
    assert run_command("train", *argv, f"hydra.sweep.dir={sweep}") in (0, None)
    assert sorted(p.parent.name for p in sweep.glob("*/plan.json")) == ["0", "1"]
    out = "".join(capsys.readouterr())
    assert "Traceback" not in out
    # a dry run's trials have no value by design: no "Failed experiment" line for each
    assert "dry run: 2 trials planned" in out and "Failed experiment" not in out, out
    # Optuna's lines go through logging (a handler of its own held the stderr of the moment it
    # was imported: a later test's lines were "--- Logging error ---" tracebacks)
    assert "A new study created" in out
    optuna_logger = logging.getLogger("optuna")
    assert optuna_logger.propagate and not optuna_logger.handlers


def test_a_sweep_whose_every_job_failed_exits_1(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """One failed job does not sink a sweep, but a sweep of failures is no success: exit 1,
    one line, each job's results.json saying why. A sweep of one job too (it exited 0). The
    jobs fail once their data is read (a vocabulary below the tokenizer's): a cache of this
    test's own, as the sweep's checks refuse them where the tokenizer is cached already; of a
    100 kB slice of the corpus, as each cache trains its tokenizer (on smoke's 1 MB slice the
    test took about twice the CPU time)."""
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    argv = ["-m", "+debug=smoke", "data.max_bytes=100000", "logger=none"]
    argv.append("model.vocab_size=300,301")
    assert run_command("train", *argv, f"hydra.sweep.dir={sweep}") == 1
    assert "error: all 2 jobs failed: the errors are logged above" in capsys.readouterr().err
    for job in ("0", "1"):
        record = json.loads((sweep / job / "results.json").read_text())
        assert record["status"] == "failed" and "below the tokenizer's" in record["error"]
    # with the tokenizer cached now, the sweep's checks refuse such a job before any starts
    argv[-1] = "model.vocab_size=302"
    assert run_command("train", *argv, f"hydra.sweep.dir={tmp_path / 'refused'}") == 2
    err = capsys.readouterr().err
    assert "1 of the sweep's 1 job would be refused" in err and "below the tokenizer's" in err
    assert not (tmp_path / "refused").exists()
    # with another cache, the job finds it once its data is read, and fails
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "another"))
    assert run_command("train", *argv, f"hydra.sweep.dir={tmp_path / 'one'}") == 1
    assert "error: the sweep's only job failed: the errors" in capsys.readouterr().err


def job_folders(config, jobs: list[list[str]]) -> dict[Path, list[int]]:
    """Each job's folder as ``check_sweep`` records it, by job number."""
    folders: dict[Path, list[int]] = {}
    for num, overrides in enumerate(jobs):
        folder = Path(job_config(config, overrides, num).hydra.runtime.output_dir)
        folders.setdefault(folder, []).append(num)
    return folders


@pytest.mark.parametrize(
    ("argv", "shared"),
    [
        (["model.activation=relu,gelu", "hydra.sweep.subdir=."], "jobs #0, #1 the same folder {}"),
        (
            ["model.activation=relu,gelu", "hydra.sweep.subdir=a"],
            "jobs #0, #1 the same folder {}/a",
        ),
        (
            ["model.activation=relu,gelu,relu", "hydra.sweep.subdir=${model.activation}"],
            "jobs #0, #2 the same folder {}/relu",
        ),
        (["model.activation=relu", "hydra.sweep.subdir=."], None),  # one job: the folder's own
        (["model.activation=relu,gelu", "hydra.sweep.subdir=${model.activation}"], None),
        (["model.activation=relu,gelu", "hydra.sweep.subdir=a/${hydra.job.num}"], None),
        (["model.activation=relu,gelu", "hydra.sweep.subdir=${hydra.job.override_dirname}"], None),
        (["+sweeps=lr", "hydra.sweep.subdir=."], "trials #0 and #1 the same folder {}"),
        # a trial may draw a value again
        (["+sweeps=lr", "hydra.sweep.subdir=${optim.lr}"], "trials #0 and #1 the same folder {}/"),
        (["+sweeps=lr", "hydra.sweeper.n_trials=1", "hydra.sweep.subdir=."], None),
        (["+sweeps=lr"], None),
    ],
)
def test_jobs_that_would_share_a_folder_are_found_from_the_config(
    argv: list[str], shared: str | None, multirun_config, tmp_path: Path
) -> None:
    """A grid's jobs share a folder where their subdirs compose to one; an Optuna search's
    trials where the subdir does not change with the trial number (a trial may draw a value
    again); one job alone may run in the sweep's folder itself."""
    config = multirun_config(*argv, f"hydra.sweep.dir={tmp_path}")
    jobs = sweep_jobs(config)
    corners = jobs is None
    jobs = search_corners(config) if corners else jobs
    why = shared_folder(config, jobs, job_folders(config, jobs), corners)
    if shared is None:
        assert why is None, why
    else:
        subdir = next(a for a in argv if a.startswith("hydra.sweep.subdir="))
        assert why.startswith(f"{subdir} gives {shared.format(tmp_path)}"), why
        assert "${hydra.job.num}" in why and "\n" not in why


def test_a_sweep_whose_jobs_would_share_a_folder_is_refused_before_any_job_starts(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hydra.sweep.subdir=.`` with two jobs: the second job was refused at the first's
    checkpoints, after Hydra's launcher had rewritten the first's ``.hydra/`` with its own
    overrides, and the sweep exited 0. Now one line, and nothing is written."""
    sweep = tmp_path / "sweep"
    argv = ["-m", "+debug=smoke", "model.activation=relu,gelu", "hydra.sweep.subdir=."]
    assert run_command("train", *argv, f"hydra.sweep.dir={sweep}") == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: hydra.sweep.subdir=. gives jobs #0, #1 the same folder {sweep}: a sweep needs "
        "a folder per job; allowed: a subdir with ${hydra.job.num} in it (the default), or with "
        "values that differ between all the jobs\n"
    )
    assert not sweep.exists()


def test_hydra_job_chdir_is_refused_before_anything_is_written(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """``hydra.job.chdir=true`` ran the job in its run folder, where lmlab looked for
    ``data.name=./x.jsonl`` (missing, after Hydra had made the folder). A run and a sweep are
    refused in one line before anything is written."""
    (tmp_path / "x.jsonl").write_text('{"text": "def f(x):\\n    return x\\n"}\n')
    monkeypatch.chdir(tmp_path)
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    commands = [
        ["data=hf", "data.name=./x.jsonl", f"hydra.run.dir={run}"],
        ["-m", "model.activation=relu,gelu", f"hydra.sweep.dir={sweep}"],
    ]
    for argv in commands:
        assert run_command("train", *argv, "+debug=smoke", "hydra.job.chdir=true") == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: hydra.job.chdir=true: lmlab reads the paths"), err
        assert err.endswith(
            "allowed: hydra.job.chdir=false (the default); "
            "${hydra:runtime.output_dir} names the folder\n"
        ), err
        assert err.count("\n") == 1
    assert not run.exists() and not sweep.exists()


def test_a_sweep_over_the_sweeps_group_is_refused_in_one_line(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``+sweeps=a,b``: Hydra reads the sweeper's grid once, from the config composed without
    the swept sweep files, so each job ran a default run (identical jobs, and compare named a
    winner among them). Refused before anything is written; one sweep file stays a sweep."""
    sweep = tmp_path / "sweep"
    for swept in ["+sweeps=norm_x_activation,seeds", "+sweeps=lr,seeds", "+sweeps=glob(*)"]:
        argv = ["-m", "+debug=smoke", swept, "dry_run=true", f"hydra.sweep.dir={sweep}"]
        assert run_command("train", *argv) == 2, swept
        assert capsys.readouterr().err == (
            f"error: {swept}: the sweeps group takes one value (each job would be a default run: "
            "a sweep file's grid applies to the whole multirun, not inside a job); run each "
            "sweep on its own: -m +sweeps=<name>\n"
        )
        assert not sweep.exists()


def test_a_sweep_ends_with_how_many_jobs_completed_and_which_failed(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A partly failed sweep ended on its last job's lines: no word of how many completed, nor
    of which failed. Its last line says both (a warning: the exit status stays 0, as one failed
    job does not sink a sweep); a sweep whose jobs all completed, or planned, says so. A job
    that train()'s checks refuse before training (a ``ConfigError``: an Optuna trial that drew
    other values than its folder's run, a vocabulary below the tokenizer's) trained nothing,
    and in a resumed sweep's folder its run's record stays as it was: it is said apart from
    the failed, whose "results.json says why", with the reason. A sweep that passes its checks
    says first what its jobs train in all, from each job's plan: smoke's 4 steps of 4 x 256
    tokens per job (the jobs here train nothing: ``train`` is replaced)."""
    import lmlab.train.run
    from lmlab.errors import ConfigError

    def job(cfg) -> float:  # job 1 fails as a job does after its checks passed
        if cfg.model.activation == "gelu":
            raise RuntimeError("the data ran out")
        if cfg.model.activation == "geglu":
            raise ConfigError("cannot resume it: it holds another config")
        return 1.0

    monkeypatch.setattr(lmlab.train.run, "train", job)
    sweep = tmp_path / "sweep"
    argv = ["-m", "+debug=smoke", "model.activation=relu,gelu"]
    assert run_command("train", *argv, f"hydra.sweep.dir={sweep}") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].endswith(
        f"sweep: 1 of 2 jobs completed, 1 failed ({sweep / '1'}): each failed job's "
        "results.json says why"
    ), out[-1]
    argv[-1] = "model.activation=relu,gelu,geglu"
    assert run_command("train", *argv, f"hydra.sweep.dir={tmp_path / 'refused'}") == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith(
        f"sweep: 1 of 3 jobs completed, 1 failed ({tmp_path / 'refused' / '1'}): each failed "
        f"job's results.json says why; 1 refused before training, nothing trained "
        f"({tmp_path / 'refused' / '2'}: cannot resume it: it holds another config)"
    ), last
    argv[-1] = "model.activation=relu,swiglu"
    done = tmp_path / "done"
    assert run_command("train", *argv, f"hydra.sweep.dir={done}") == 0
    out = capsys.readouterr()
    line = next(x for x in (out.out + out.err).splitlines() if "checked the sweep's" in x)
    assert re.search(
        r"checked the sweep's 2 jobs in [0-9.]+ s; they train 8 steps, 8,192 tokens", line
    )
    last = out.out.splitlines()[-1]
    assert last.endswith(f"sweep: 2 of 2 jobs completed in {done}"), last
    assert sorted(p.name for p in done.iterdir()) == ["0", "1", "multirun.yaml"]


@pytest.mark.parametrize(
    ("flops", "said"),
    [
        # gpt_tiny +experiment=llama, 2,048 tokens a step: the dense model (N = 1,901,696
        # active) takes ceil(2e11 / 6N / 2048) = 9 steps, 6N x 18,432 = 2.103e11; Mixtral's
        # top-2 row (N = 2,495,616) 7 steps, 6N x 14,336 = 2.147e11: (2.147 - 2.103) / 2 = 2.2%
        (
            "2e11",
            "unequal compute: budget=flops promises 4 jobs C = 2e11 FLOPs each, but whole steps "
            "would train 2.103e11 (#0 model={moe:{num_experts:0}}) to 2.147e11 "
            "(#3 model={moe:{num_experts:8,top_k:2}}), 2.2% of C apart, and one step is up to "
            "15.3% of C: ",
        ),
        ("6e12", None),  # the sweep file's C: 257 steps and more, under 1% apart
    ],
)
def test_a_sweep_promised_one_compute_says_before_its_jobs_when_whole_steps_break_it(
    flops: str, said: str | None, tmp_path: Path, multirun_config, caplog
) -> None:
    """``+sweeps=moe`` promises its rows one C, and compare warned only after they trained
    that whole steps had put them 2.2% of C apart. The sweep's check says it before the first
    job (a dry run's too), from the jobs' plans; nothing is said where they are within 1%.
    The check itself (``check_sweep``), as ``lmlab train -m`` calls it before any job: what it
    logs reaches the command's output in
    test_a_sweep_ends_with_how_many_jobs_completed_and_which_failed (a whole command: 11
    compositions a case, against 5)."""
    from lmlab.cli.sweep_check import check_sweep

    argv = ["+sweeps=moe", f"budget.flops={flops}", "logger=csv"]
    config = multirun_config(*argv, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    with caplog.at_level(logging.INFO, logger="lmlab"):
        check_sweep(config)
    out = caplog.text
    assert "checked the sweep's 4 jobs" in out, out
    if said is None:
        assert "unequal compute" not in out, out
    else:
        assert out.count(said) == 1, out
    assert not (tmp_path / "sweep").exists()
