"""What a sweep says before its first job: a sweeper setting or a swept value list that would
launch nothing is refused in one line, a command-line value that replaces a sweep file's grid
is named, and Ctrl-C before training ends on one line (exit 130), leaving nothing that the
next command would take for a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmlab.errors import ConfigError

OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
LOSS_ONLY = (
    "each trial's value is its run's validation loss, one number, lower is better; allowed: "
    "minimize"
)
RANGE = (
    "range(start, stop, step) leaves out stop, as Python's range does; allowed: a stop past the "
    "start in the step's direction"
)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["+sweeps=lr", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: a search needs "),
        (["+sweeps=lr", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0: the sweeper launches "),
        (
            ["+sweeps=lr", "hydra.sweeper.max_failure_rate=2"],
            "hydra.sweeper.max_failure_rate=2.0: the share of failed trials that stops the "
            "search; allowed: 0 to 1",
        ),
        (
            ["+sweeps=lr", "hydra.sweeper.direction=maximize"],
            f"hydra.sweeper.direction=maximize: {LOSS_ONLY}",
        ),
        (
            ["+sweeps=lr", "hydra.sweeper.direction=[minimize,maximize]"],
            f"hydra.sweeper.direction=[minimize,maximize]: {LOSS_ONLY}",
        ),
        (["hydra/sweeper=optuna", "optim.lr=interval(1e-4,1e-2)"], None),  # Direction.minimize
        (
            ["model.activation=relu,gelu", "hydra.sweeper.max_batch_size=0"],
            "hydra.sweeper.max_batch_size=0: the sweeper launches its jobs in batches ",
        ),
        (["model.n_layers=range(2,2)"], f"model.n_layers=range(2,2) sweeps no value: {RANGE} "),
        (["model.n_layers=range(4,2,-1)"], None),  # 4, 3: a sweep
        (  # Optuna's form under the basic sweeper, a later value of the key or not
            ["optim.lr=interval(1e-4,1e-2)", "optim.lr=0.001"],
            "optim.lr=interval(1e-4,1e-2): Hydra's basic sweeper runs a grid, and an interval "
            "has no values to list; search it with Optuna (add hydra/sweeper=optuna, as "
            "+sweeps=lr does), or list the values (optim.lr=a,b,c, range(start,stop,step), "
            "choice(a,b))",
        ),
        (
            ["model.n_layers=range(2,4,-1)"],
            f"model.n_layers=range(2,4,-1) sweeps no value: {RANGE} (range(2,1,-1) sweeps 2)",
        ),
        (
            ["model=glob(zzz*)"],
            "model=glob(zzz*) sweeps no value: the glob matches none of model's options "
            "(bert_base, ",
        ),
        (
            ["+sweeps=lr", "model.n_layers=range(5,2)"],  # Optuna's range includes its end
            "model.n_layers=range(5,2) sweeps no value: Optuna's range(low, high) includes both "
            "ends; allowed: high >= low",
        ),
        (
            ["+sweeps=lr", "optim.lr=interval(1e-2,1e-4)"],  # a grid file's key, replaced
            "optim.lr=interval(1e-2,1e-4): The `low` value must be smaller than or equal to the "
            "`high` value (low=0.01, high=0.0001).",
        ),
    ],
)
def test_a_sweep_that_would_launch_nothing_is_refused_in_one_line(
    argv: list[str], why: str | None, tmp_path: Path, multirun_config, capsys, monkeypatch
) -> None:
    """Optuna's n_trials=0 ran nothing and exited 0 ("dry run: 0 trials planned" where no dry
    run was asked), its n_jobs=0 ended on "error: division by zero", its direction=maximize
    searched for the highest validation loss, an empty grid launched 0 jobs and exited 0:
    now each is refused before any job, naming the field and its value.
    The sweep's check itself (``check_sweep``), as ``lmlab train -m`` calls it before any job
    (one composition a case, not a whole command's two): its refusal through the command
    (exit 2, the lines, nothing written) is test_sweep.py's
    test_a_sweep_with_bad_jobs_is_refused_before_any_job_starts."""
    import lmlab.train.preflight
    from lmlab.cli.sweep_check import check_sweep

    def checked(*args) -> None:  # the jobs' checks come next: a sweep that gets there stops
        raise ConfigError("the jobs' checks")

    monkeypatch.setattr(lmlab.train.preflight, "check_job", checked)
    sweep = tmp_path / "sweep"
    config = multirun_config("+debug=smoke", *argv, f"hydra.sweep.dir={sweep}")
    with pytest.raises(SystemExit) as exited:
        check_sweep(config)
    code = exited.value.code
    err = capsys.readouterr().err
    assert code == 2 and not sweep.exists()
    if why is None:
        assert "the jobs' checks" in err, err
    else:
        assert err.startswith(f"error: {why}") and err.count("\n") == 1, err


REPLACED = (
    "model.activation=gelu on the command line replaces +sweeps=norm_x_activation's grid for it "
    "(relu,gelu,swiglu)"
)


def test_a_command_line_value_that_replaces_a_sweep_files_grid_is_named(multirun_config) -> None:
    """Hydra lets the command line win over a sweep file's ``hydra.sweeper.params`` (a way to
    narrow a sweep), and so does lmlab: each such value is named with the grid it replaces."""
    from lmlab.cli.sweep_overrides import replaced_by_command_line  # the other tests need none

    sweep = "+sweeps=norm_x_activation"
    assert replaced_by_command_line(multirun_config(sweep, "model.activation=gelu")) == [REPLACED]
    assert replaced_by_command_line(multirun_config(sweep, "++model.activation=relu,gelu")) == [
        REPLACED.replace("model.activation=gelu", "++model.activation=relu,gelu")
    ]
    assert replaced_by_command_line(multirun_config(sweep, "model.n_heads=2,4")) == []
    assert replaced_by_command_line(multirun_config("+sweeps=lr", "optim.lr=0.001")) == [
        "optim.lr=0.001 on the command line replaces +sweeps=lr's grid for it "
        "(tag(log, interval(1e-4, 1e-2)))"
    ]


def test_a_sweep_narrowed_on_the_command_line_says_so_before_its_jobs(
    tmp_path: Path, run_command, capsys
) -> None:
    """``+sweeps=norm_x_activation model.activation=gelu`` ran 2 of the file's 6 jobs without
    a word. It still runs those 2, and says why once, before the jobs are checked (here the
    checks refuse them, so that no job trains)."""
    argv = ["-m", "+debug=smoke", "+sweeps=norm_x_activation", "model.activation=gelu"]
    code = run_command("train", *argv, "trainer.max_steps=0", f"hydra.sweep.dir={tmp_path}/s")
    out = "".join(capsys.readouterr())
    assert code == 2 and "error: 2 of the sweep's 2 jobs would be refused" in out, out
    assert out.count(REPLACED) == 1 and out.index(REPLACED) < out.index("would be refused"), out


@pytest.mark.parametrize(
    ("sweeper", "typed", "plain"),
    [
        (
            "hydra/sweeper=optuna",
            "hydra.sweeper.params.optim.lr='interval(1e-4,1e-2)'",
            "'optim.lr=interval(1e-4,1e-2)'",
        ),
        (
            "hydra/sweeper=optuna",
            "+hydra.sweeper.params.optim.lr=interval(1e-4,1e-2)",
            "'optim.lr=interval(1e-4,1e-2)'",
        ),
        (
            "hydra/sweeper=optuna",
            "hydra.sweeper.params={optim.lr:'interval(1e-4,1e-2)',model:{n_layers:'range(1,3)'}}",
            "'optim.lr=interval(1e-4,1e-2)' 'model.n_layers=range(1,3)'",
        ),
        ("+sweeps=lr", "hydra.sweeper.params.optim.lr=0.001,0.01", "'optim.lr=0.001,0.01'"),
        (
            "+sweeps=norm_x_activation",  # a dotted key the file's grid does not hold
            "hydra.sweeper.params={model.norm:'layernorm,rmsnorm'}",
            "'model.norm=layernorm,rmsnorm'",
        ),
    ],
)
def test_a_sweep_typed_under_the_sweepers_params_is_refused_with_the_plain_form(
    sweeper: str, typed: str, plain: str, tmp_path: Path, run_command, capsys
) -> None:
    """Without a sweep file the sweepers' ``params`` is null: Hydra ended on "error: Unexpected
    type: None" or "'NoneType' object has no attribute 'get'" (and a file's dotted keys, one
    key each, are no path the command line's dots name). The refusal says how to type it."""
    sweep = tmp_path / "sweep"
    code = run_command("train", "-m", sweeper, "+debug=smoke", typed, f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err
    assert code == 2 and not sweep.exists(), err
    assert err == (
        f"error: {typed}: type a sweep's values as an override of the key they sweep, {plain} "
        "(each sweeper reads them from the command line; hydra.sweeper.params is for a sweep "
        "file)\n"
    )


def test_a_sweep_file_given_another_sweeper_names_the_one_to_leave_out(
    tmp_path: Path, run_command, capsys
) -> None:
    """``+sweeps=lr`` chooses Optuna's sweeper and its sampler; with ``hydra/sweeper=basic``
    Hydra ended on "In 'sweeps/lr': Could not override 'hydra/sweeper/sampler'. No match in
    the defaults list", which names neither the sweeper typed nor what to do."""
    sweep = tmp_path / "sweep"
    argv = ["-m", "+sweeps=lr", "hydra/sweeper=basic", "+debug=smoke", f"hydra.sweep.dir={sweep}"]
    code = run_command("train", *argv)
    err = capsys.readouterr().err
    assert code == 2 and not sweep.exists(), err
    assert err == (
        "error: +sweeps=lr with hydra/sweeper=basic: the sweep file chooses its own sweeper, "
        "and hydra/sweeper/sampler with it, which hydra/sweeper=basic replaces; leave "
        "hydra/sweeper=basic out\n"
    )


RESUMED = (
    "error: resume=auto continues an Optuna search's runs only where each trial draws its "
    "folder's values again, as a sampler seeded alike does: "
)
FRESH = "start the search in a new folder, with hydra.sweeper.sampler.seed=<n>"


@pytest.mark.parametrize(
    ("first", "argv", "why"),
    [
        (None, [], f"hydra.sweeper.sampler.seed=null draws other values each time; {FRESH}"),
        (
            None,
            ["hydra.sweeper.sampler.seed=5"],
            f"its first command had no seed, so no seed draws its values again; {FRESH}",
        ),
        (
            1337,
            ["hydra.sweeper.sampler.seed=5"],
            "its first command had hydra.sweeper.sampler.seed=1337, this one 5; give it "
            "hydra.sweeper.sampler.seed=1337",
        ),
        (
            None,
            ["hydra/sweeper/sampler=grid"],
            "GridSampler takes no seed (it picks its points in a random order); "
            f"{FRESH} and a sampler that takes one (hydra/sweeper/sampler=tpe)",
        ),
        (1337, ["hydra.sweeper.sampler.seed=1337"], None),  # the same draws: it continues
    ],
)
def test_a_resumed_optuna_search_whose_sampler_draws_other_values_is_refused(
    first: int | None,
    argv: list[str],
    why: str | None,
    tmp_path: Path,
    run_command,
    capsys,
    monkeypatch,
) -> None:
    """``resume=auto`` into an unseeded search's folder started again at trial #0, drew other
    values, and every trial was refused ("holds another config") after the search's checks.
    A search continues only where its sampler draws the same values: seeded, as its first
    command (its ``multirun.yaml``) was. Refused in one line before any trial, the folder as
    it was."""
    import lmlab.train.preflight

    def checked(*args) -> None:  # the corners' checks come next: a search that gets there
        raise ConfigError("the jobs' checks")

    monkeypatch.setattr(lmlab.train.preflight, "check_job", checked)
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "results.json").write_text('{"status": "completed", "val_loss": 7.0}')
    sampler = {"_target_": "optuna.samplers.TPESampler", "seed": first}
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"sweeper": {"_target_": OPTUNA, "sampler": sampler}}})
    )
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    search = ["hydra/sweeper=optuna", "optim.lr=interval(1e-4,1e-2)", "resume=auto"]
    code = run_command("train", "-m", "+debug=smoke", *search, *argv, f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err
    assert code == 2, err
    if why is None:
        assert "the jobs' checks" in err, err
    else:
        assert err == f"{RESUMED}{why}\n"
        assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


REPEATED = (
    "model.activation=relu,gelu and model.activation=swiglu: the command line gives "
    "model.activation 2 values, and the sweep takes model.activation=swiglu alone (Hydra keeps "
    "a key's last value, as a single run does); give model.activation once"
)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["model.activation=relu,gelu", "model.activation=swiglu"], REPEATED),
        (  # a later ++ is the value composed last: both jobs trained swiglu
            ["model.activation=relu,gelu", "++model.activation=swiglu"],
            REPEATED.replace("and model", "and ++model").replace("takes model", "takes ++model"),
        ),
        (
            ["model.activation=swiglu", "model.activation=relu,gelu"],
            "model.activation=swiglu and model.activation=relu,gelu: the command line gives "
            "model.activation 2 values, and the sweep takes model.activation=relu,gelu alone",
        ),
        (  # Optuna's sweeper keeps the fixed value, whichever comes last
            ["hydra/sweeper=optuna", "optim.lr=0.001", "optim.lr=interval(1e-4,1e-2)"],
            "optim.lr=0.001 and optim.lr=interval(1e-4,1e-2): the command line gives optim.lr 2 "
            "values, and the sweep takes optim.lr=0.001 alone (Optuna's sweeper keeps a fixed "
            "value over a search range)",
        ),
        (["model.activation=relu", "model.activation=gelu", "model.norm=layernorm,rmsnorm"], None),
        (["model.activation=relu,gelu", "model.norm=rmsnorm"], None),
    ],
)
def test_a_key_given_twice_on_the_command_line_is_named_with_the_value_the_sweep_keeps(
    argv: list[str], said: str | None, multirun_config
) -> None:
    """``-m model.activation=relu,gelu model.activation=swiglu`` ran swiglu alone ("checked
    the sweep's 1 job") without a word. Hydra keeps a key's last value in a single run too and
    says nothing, so the sweep goes on as Hydra runs it, and says once which value it took.
    Two fixed values, no sweep among them, are a single run's case: nothing is said."""
    from lmlab.cli.sweep_overrides import repeated_on_command_line

    lines = repeated_on_command_line(multirun_config(*argv))
    if said is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(said), lines


def test_a_key_given_twice_says_so_before_the_sweeps_jobs(
    tmp_path: Path, run_command, capsys
) -> None:
    """The line comes from the sweep's start, before its jobs are checked (here the checks
    refuse them, so that no job trains)."""
    argv = ["-m", "+debug=smoke", "model.activation=relu,gelu", "model.activation=swiglu"]
    code = run_command("train", *argv, "trainer.max_steps=0", f"hydra.sweep.dir={tmp_path}/s")
    out = "".join(capsys.readouterr())
    assert code == 2 and "error: 1 of the sweep's 1 job would be refused" in out, out
    assert out.count(REPEATED) == 1 and out.index(REPEATED) < out.index("would be refused"), out


@pytest.mark.parametrize(
    ("argv", "overridden"),
    [
        (
            ["+sweeps=isoflop", "model.d_model=64"],
            "model.d_model=64 on the command line "
            "overrides model.d_model, which +sweeps=isoflop's grid sweeps in its model values "
            "(32, 40, 48, 64, 96, 128, 192): ",
        ),
        (
            ["+sweeps=moe", "model.moe.top_k=1"],
            "model.moe.top_k=1 on the command line overrides model.moe.top_k, which "
            "+sweeps=moe's grid sweeps in its model values (2, 1): ",
        ),
        (
            ["+sweeps=moe", "model.moe={top_k:1}"],
            "model.moe={top_k:1} on the command line overrides model.moe.top_k, which "
            "+sweeps=moe's grid sweeps in its model values (2, 1): ",
        ),
        (
            ["+sweeps=norm_x_activation", "model={activation:gelu}"],
            "model={activation:gelu} on "
            "the command line overrides model.activation, which +sweeps=norm_x_activation's grid "
            "sweeps (relu, gelu, swiglu): ",
        ),
        (["+sweeps=moe", "model.d_model=64"], None),  # a field no swept value sets: all jobs
        (["+sweeps=moe", "model=gpt_small"], None),  # the swept key: replaces its grid
        (["+sweeps=norm_x_activation", "model=gpt_small"], None),  # a preset, then the grid
        (["+sweeps=recipes", "model.activation=swiglu"], None),  # a group's option, not a value
    ],
)
def test_a_command_line_value_inside_a_sweep_files_swept_values_is_refused(
    argv: list[str], overridden: str | None, multirun_config
) -> None:
    """Hydra applies the command line after the grid, so ``+sweeps=isoflop model.d_model=64``
    trained every size at d_model 64 under its ladder name ({d_model:40,n_layers:2} and
    {d_model:48,n_layers:2} were one model, two rows of compare) and ``+sweeps=moe
    model.moe.top_k=1`` a top-1 row named top_k:2, without a word. Such an override is refused,
    naming the field and the swept values; one that the swept values do not set is not."""
    from lmlab.cli.sweep_overrides import grid_values_overridden

    why = grid_values_overridden(multirun_config(*argv))
    if overridden is None:
        assert why is None, why
    else:
        assert why is not None and why.startswith(overridden), why
        assert why.endswith("leave it out, or change the swept values in a copy of the sweep file")


def test_a_sweep_whose_swept_values_the_command_line_overrides_starts_no_job(
    tmp_path: Path, run_command, capsys, monkeypatch
) -> None:
    """The refusal comes before the jobs are checked or anything is written: one line, exit 2."""
    import lmlab.train.preflight

    monkeypatch.setattr(lmlab.train.preflight, "check_job", interrupt)  # reaching it fails
    sweep = tmp_path / "sweep"
    argv = ["-m", "+sweeps=moe", "model.moe.top_k=1", f"hydra.sweep.dir={sweep}"]
    code = run_command("train", *argv)
    err = capsys.readouterr().err
    assert code == 2 and not sweep.exists()
    assert err.startswith("error: model.moe.top_k=1 on the command line overrides") and (
        err.count("\n") == 1
    ), err


@pytest.mark.parametrize(
    ("sweep", "grid"),
    [
        ("positional", "model.positional: learned,sinusoidal,rope,alibi,relative,none"),
        ("lr", "optim.lr: tag(log, interval(1e-4, 1e-2))"),  # Optuna's search space
    ],
)
def test_a_sweep_file_without_multirun_is_refused_before_anything_is_written(
    sweep: str, grid: str, tmp_path: Path, run_command, capsys, monkeypatch
) -> None:
    """``+sweeps=positional`` without ``-m`` trained one default run (learned positions, 300
    steps) and exited 0: the file's grid is read by a sweeper only. Hydra refuses an ad-hoc
    grid without ``-m``; a sweep file is refused the same way, naming its grid."""
    import lmlab.train.run

    monkeypatch.setattr(lmlab.train.run, "train", interrupt)  # reaching training fails the test
    run_dir = tmp_path / "run"
    code = run_command("train", f"+sweeps={sweep}", "+debug=smoke", f"hydra.run.dir={run_dir}")
    err = capsys.readouterr().err
    assert code == 2 and not run_dir.exists()
    assert err == (
        f"error: +sweeps={sweep} is a sweep ({grid}): add -m (--multirun) to run its jobs; "
        "without it this would train one run with none of those values\n"
    )


def nothing_written(folder: Path) -> str:
    return f"interrupted before training: nothing was written to {folder}\n"


def interrupt(*args, **kwargs) -> None:
    """Ctrl-C at this point, as Python's SIGINT handler raises it."""
    raise KeyboardInterrupt


def test_ctrl_c_in_a_sweeps_checks_says_nothing_was_written(
    tmp_path: Path, run_command, capsys, monkeypatch
) -> None:
    """While the sweep's jobs are checked (before Hydra writes anything): one line, exit 130;
    it said "interrupted (Ctrl-C)", which did not say whether anything was left."""
    import lmlab.train.preflight

    monkeypatch.setattr(lmlab.train.preflight, "check_job", interrupt)
    sweep = tmp_path / "sweep"
    argv = ["-m", "+debug=smoke", "model.activation=relu,gelu", f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *argv) == 130
    assert capsys.readouterr().err == nothing_written(sweep)
    assert not sweep.exists()


def test_ctrl_c_before_a_job_trains_leaves_nothing_the_next_command_trips_on(
    tmp_path: Path, run_command, capsys, monkeypatch
) -> None:
    """In a job's own checks (as while its data is prepared): it exited 130 without a word,
    and its results.json ("interrupted", nothing trained) made the folder an earlier run's,
    so the same command was refused there. Now one line; a folder this command made is gone,
    one that held something is as it was, and the same command runs there again."""
    import lmlab.train.run

    monkeypatch.setattr(lmlab.train.run, "check_run", interrupt)
    sweep, run_dir, held = tmp_path / "sweep", tmp_path / "run", tmp_path / "held"
    argv = ["+debug=smoke", "dry_run=true"]
    for _ in range(2):  # the second time into the same folders: not refused for the first
        assert run_command("train", "-m", *argv, "seed=1,2", f"hydra.sweep.dir={sweep}") == 130
        assert capsys.readouterr().err.endswith(nothing_written(sweep))
        assert not sweep.exists()
    assert run_command("train", *argv, f"hydra.run.dir={run_dir}") == 130
    assert capsys.readouterr().err == nothing_written(run_dir)
    assert not run_dir.exists()
    held.mkdir()
    (held / "notes.txt").write_text("mine")
    assert run_command("train", *argv, f"hydra.run.dir={held}") == 130
    assert capsys.readouterr().err == nothing_written(held)
    assert [p.name for p in held.iterdir()] == ["notes.txt"]


def test_ctrl_c_before_a_later_job_trains_keeps_the_jobs_before_it(
    tmp_path: Path, run_command, capsys, monkeypatch
) -> None:
    """Job #1 interrupted before it trained: its folder goes, job #0's stays, and the line
    says where; before any job (in Hydra's launcher), the sweep's new folder goes."""
    import lmlab.cli.train
    import lmlab.train.run

    def job(cfg) -> float:
        if cfg.seed == 2:
            raise KeyboardInterrupt
        return 1.0

    monkeypatch.setattr(lmlab.train.run, "train", job)
    sweep = tmp_path / "sweep"
    argv = ["-m", "+debug=smoke", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    assert run_command("train", *argv) == 130
    assert capsys.readouterr().err == (
        f"interrupted before job #1 trained: nothing was written to {sweep / '1'}; the job "
        f"before it is in {sweep}\n"
    )
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]
    monkeypatch.setattr(lmlab.cli.train, "run", interrupt)  # Hydra wrote job #0's .hydra/
    argv[-1] = f"hydra.sweep.dir={tmp_path / 'other'}"
    assert run_command("train", *argv) == 130
    assert capsys.readouterr().err == nothing_written(tmp_path / "other")
    assert not (tmp_path / "other").exists()
