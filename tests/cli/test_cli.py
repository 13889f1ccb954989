"""One command line: the ``lmlab`` console script and the ``src/*.py`` scripts run the same
commands with the same arguments, and bad input is one line with exit code 2."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.cli.main import COMMANDS
from lmlab.config import CONF_DIR, ModelConfig
from lmlab.train.compose import compose_train
from smoke import SMOKE

LMLAB = Path(sys.executable).parent / "lmlab"  # installed by `make install` (pip install -e .)
SRC = CONF_DIR.parent / "src"
MODEL_KEYS = ", ".join(f.name for f in dataclasses.fields(ModelConfig))


def run(*cmd: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cmd`` as a user runs it: the installed lmlab, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_lmlab_help_lists_every_command() -> None:
    out = run(LMLAB, "--help")
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert f"  {name} " in out.stdout
    assert {p.stem for p in SRC.glob("*.py")} == set(COMMANDS)  # one script per command
    assert run(LMLAB).returncode == 2  # no command: the usage, and exit 2


@pytest.mark.parametrize("name", ["train", "generate"])
def test_help_read_by_a_reader_that_stops_early_ends_quietly(name: str) -> None:
    """``lmlab generate --help | head -2`` printed a BrokenPipeError traceback, and ``lmlab
    train --help | head`` said ``error: [Errno 32] Broken pipe``: the reader closed the pipe
    (here before the command started to write). Exit 141, as a process SIGPIPE ended."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [str(LMLAB), name, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_lmlab_help_command_is_that_commands_help() -> None:
    """``lmlab help generate`` printed lmlab's list of commands, not generate's arguments."""
    out = run(LMLAB, "help", "generate")
    assert out.returncode == 0 and out.stdout == run(LMLAB, "generate", "--help").stdout
    assert "prompt" in out.stdout
    out = run(LMLAB, "help", "trian")
    assert out.returncode == 2 and out.stderr.startswith("error: unknown command 'trian'")


def test_unknown_command_is_one_line_and_exit_2() -> None:
    out = run(LMLAB, "trian")
    assert out.returncode == 2
    assert out.stderr == "error: unknown command 'trian'; allowed: " + ", ".join(COMMANDS) + "\n"


def test_a_python_without_lmlabs_packages_names_the_venv_in_one_line(tmp_path: Path) -> None:
    """After ``make train`` the README's commands are ``python src/train.py ...``: typed into
    a shell whose ``python`` is the system's, which lacks lmlab's packages, they gave a
    ``ModuleNotFoundError: No module named 'hydra'`` traceback. Such a Python (here one where
    hydra cannot be imported) gets one line naming the virtual environment to use, exit 2."""
    script = SRC / "train.py"
    code = (
        "import runpy, sys; sys.modules['hydra'] = None; "  # import hydra: ModuleNotFoundError
        f"sys.argv = [{str(script)!r}, '--help']; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    out = run(sys.executable, "-c", code, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: this Python ({sys.executable}) cannot import hydra")
    assert f"source {CONF_DIR.parent / '.venv' / 'bin' / 'activate'}" in out.stderr


def test_console_script_and_script_take_the_same_arguments(tmp_path: Path) -> None:
    for cmd in ([LMLAB, "compare"], [sys.executable, SRC / "compare.py"]):
        out = run(*cmd, tmp_path / "nope", cwd=tmp_path)
        assert out.returncode == 2
        assert out.stderr.startswith("error: multirun directory does not exist")
    job = ["model=gpt_medium", "+experiment=prenorm", "--cfg", "job"]
    from_script = run(sys.executable, SRC / "train.py", *job, cwd=tmp_path)
    from_lmlab = run(LMLAB, "train", *job, cwd=tmp_path)
    assert from_script.returncode == from_lmlab.returncode == 0, from_lmlab.stderr
    assert from_script.stdout == from_lmlab.stdout and "d_model: 1024" in from_lmlab.stdout
    bad = run(LMLAB, "train", "model.d_model=100", "model.n_heads=7", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == (
        "error: model.d_model=100 is not divisible by model.n_heads=7 (or set model.d_head, "
        "the dimension of each head)\n"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["budget=chinchilla", "trainer.max_steps=5"],
            "trainer.max_steps=5 is read by budget=steps only: budget=chinchilla sets the "
            "steps from its tokens (dry_run=true shows them); drop trainer.max_steps, or use "
            "budget=steps",
        ),
        (
            ["data.vocab_size=300"],
            "data.vocab_size=300 is too small: byte-level BPE needs at least 362 (256 bytes + "
            "106 special tokens, 100 of them T5's sentinels)",
        ),
        (["model.tie_embeddings=7"], "model.tie_embeddings=7: allowed: true or false"),
        (["+model.nrom=rmsnorm"], f"model.nrom=rmsnorm: unknown key; allowed: {MODEL_KEYS}"),
        (
            ["seed=-1"],
            "seed=-1: allowed an integer from 0 to 4294967295 (2**32-1, the range "
            "numpy's random state takes)",
        ),
        (
            ["+trainer.fast_dev_run=true"],
            "trainer.fast_dev_run=true: it ends after its batches "
            "while results.json says completed; allowed: false; a quick check: +debug=smoke "
            "(trainer.max_steps=1 for one step), or dry_run=true for the plan",
        ),
    ],
)
def test_a_refusal_the_config_shows_comes_before_torch_loads(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    """A refusal the composed config shows is given before the heavy imports (torch,
    Lightning: seconds), as the model's are: ``-X importtime`` lists every module loaded. It
    leaves no folder, as a refusal while Hydra composes does (it left Hydra's ``.hydra/`` and
    an empty ``train.log``, then, once those were removed, the default folder's
    ``outputs/<date>/``)."""
    out = run(sys.executable, "-X", "importtime", SRC / "train.py", *overrides, cwd=tmp_path)
    assert out.returncode == 2
    said = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert said == [f"error: {message}"]
    loaded = {line.rpartition("|")[2].strip() for line in out.stderr.splitlines()}
    assert "omegaconf" in loaded and not loaded & {"torch", "lightning"}
    assert list(tmp_path.iterdir()) == []


CALLBACK_IN_A_CHILD = "callbacks.guard.mode=bogus"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "callbacks.checkpoint.every_n_train_steps=-1",
            "callbacks.checkpoint.every_n_train_steps=-1: Invalid value for "
            "every_n_train_steps=-1. Must be >= 0",
        ),
        ("callbacks.guard.mode=bogus", "callbacks.guard.mode=bogus: allowed: stop, skip, off"),
        # no _target_ (Lightning's traceback once the data was prepared), or not a Callback
        (
            "+callbacks.early.patience=3",
            "callbacks.early={'patience': 3}: not a callback; allowed: a Lightning Callback "
            "class, as callbacks.early._target_=<its dotted path>, or callbacks.early=null to "
            "turn it off",
        ),
        (
            "+callbacks.od._target_=collections.OrderedDict",
            "callbacks.od={'_target_': 'collections.OrderedDict'}: not a callback; allowed: a "
            "Lightning Callback class, as callbacks.od._target_=<its dotted path>, or "
            "callbacks.od=null to turn it off",
        ),
    ],
)
def test_a_callbacks_bad_value_is_one_line_before_the_run_starts(
    tmp_path: Path,
    override: str,
    message: str,
    run_command,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A callback's class imports Lightning, so its fields are checked once that is loaded,
    before the run starts: one line, exit 2, and no run directory (it held Hydra's files), nor
    the folders made on the way to it (they were left, empty). One value as a user runs it
    (the installed lmlab, a process of its own, nothing it prints at exit after the line);
    the others through the same command in this process, in ``tmp_path`` as its working
    directory: a process each cost about 12 s of imports."""
    run_dir = tmp_path / "runs" / "today" / "run"
    argv = ["train", *SMOKE, override, f"hydra.run.dir={run_dir}"]
    if override == CALLBACK_IN_A_CHILD:
        out = run(LMLAB, *argv, cwd=tmp_path)
        code, err = out.returncode, out.stderr
    else:
        monkeypatch.chdir(tmp_path)
        code = run_command(*argv)
        err = capsys.readouterr().err
    assert (code, err.splitlines()[-1:]) == (2, [f"error: {message}"])
    assert list(tmp_path.iterdir()) == []


def test_the_scripts_are_not_importable_modules(tmp_path: Path) -> None:
    """The install maps the lmlab package alone: a bare ``import compare`` is not lmlab's."""
    code = "import importlib.util as u; print([u.find_spec(m) for m in ('compare', 'train')])"
    out = run(sys.executable, "-c", code, cwd=tmp_path)
    assert out.stdout.strip() == "[None, None]", out.stdout
    assert run(sys.executable, "-c", "import lmlab.cli.main", cwd=tmp_path).returncode == 0


# Bad input to the checkpoint tools, refused before the checkpoint is read (none exists here).
BAD_TOOL_INPUT = [
    ("generate", "temperature=-1", "temperature=-1.0 must be >= 0 (0: greedy)"),
    ("generate", "top_p=1.5", "top_p=1.5 must be in (0, 1]"),
    ("generate", "top_p=0", "top_p=0.0 must be in (0, 1]"),
    ("generate", "top_k=0", "top_k=0 must be >= 1"),
    ("generate", "top_k=-3", "top_k=-3 must be >= 1"),
    ("generate", "cache=1", "cache=1: allowed: true or false"),  # OmegaConf reads 1 as true
    ("generate", "cache=yes", "cache=yes: allowed: true or false"),
    ("evaluate", "wandb=yes", "wandb=yes: allowed: true or false"),
    ("generate", "cache=null", "cache=null: allowed: true or false; null is not"),
    ("evaluate", "batch_size=null", "batch_size=null: allowed: an integer; null is not"),
    ("generate", "temperature=null", "temperature=null: allowed: a number; null is not"),
    ("probe", "device=null", "device=null: allowed: a string; null is not"),
    # OmegaConf's words were "Value '0.5' of type 'str' could not be converted to Integer"
    ("evaluate", "limit=0.5", "limit=0.5: allowed: an integer or null"),
    ("generate", "max_new_tokens=abc", "max_new_tokens=abc: allowed: an integer"),
    ("generate", "temperature=hot", "temperature=hot: allowed: a number"),
    ("generate", "max_new_tokens=0", "max_new_tokens=0: both must be >= 1"),
    ("generate", "device=cuda:99", "device=cuda:99: "),
    ("generate", "device=gpu0", "device=gpu0: "),
    ("probe", "text=", "text='' is empty"),
    ("probe", "device=cuda:99", "device=cuda:99: "),
    ("evaluate", "limit=0", "limit=0 must be >= 1"),
    ("evaluate", "batch_size=0", "batch_size=0 must be >= 1"),
    ("evaluate", "tasks=,", "tasks=',' names no task"),
    ("evaluate", "device=cuda:99", "device=cuda:99: "),
]


@pytest.mark.parametrize(("name", "arg", "message"), BAD_TOOL_INPUT)
def test_checkpoint_tools_refuse_bad_values_before_loading(
    name: str, arg: str, message: str, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command(name, "ckpt=/nonexistent.ckpt", arg) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=gpt_huge", "model=gpt_huge: no such config; allowed: bert_base, "),
        ("+experiment=lama", "experiment=lama: no such config; allowed: alibi, bert, "),
        ("model.nrom=x", "model.nrom=x: unknown key; allowed: family, d_model, "),
        ("model.norm=batchnorm", "model.norm=batchnorm: Invalid value 'batchnorm', expected one"),
        ("seed=[1,2", "seed=[1,2: no viable alternative at input '[1,2'"),
        ("trainer.max_stpes=3", "trainer.max_stpes=3: unknown key; allowed: _target_, accel"),
        # a node below the unknown one: the override as typed, with its value (was model.moe.foo)
        ("model.moe.foo.bar=1", "model.moe.foo.bar=1: unknown key; allowed: num_experts, top_k"),
        # Hydra's "Config group override must be a string or a list. Got NoneType"
        (
            "trainer=null",
            "trainer=null: trainer takes the name of one of its options, not null; "
            "allowed: cpu, ddp, fsdp, gpu",
        ),
    ],
)
def test_compose_errors_are_one_line_and_exit_2(
    override: str, message: str, tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command("train", override, f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert "base_model" not in err  # the schema is not a preset
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        # Lightning's strategy, which trainer=cpu does not set, or lmlab's FSDP config
        (
            "trainer.strategy=fsdp",
            "; or another argument that lightning.pytorch.Trainer takes, added with +: "
            "+trainer.strategy=fsdp; type trainer=fsdp for the trainer config fsdp\n",
        ),
        ("optim.amsgrad=true", "AdamW takes, added with +: +optim.amsgrad=true\n"),
        # a schema's group refuses an added key: only the preset
        ("model.size=gpt_small", "moe; type model=gpt_small for the model config gpt_small\n"),
        # the missing node is not the key typed: + would add a dict, not the key
        ("trainer.strategy.foo=1", "default_root_dir, plugins\n"),
    ],
)
def test_an_unknown_key_says_what_to_type(
    override: str, hint: str, tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra's message for a key the config lacks names the ``+`` that adds it; the one line
    keeps that where the key can be added, and names the group's option the value is."""
    assert run_command("train", override, f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {override}: unknown key; allowed: ") and err.endswith(hint), err
    assert not (tmp_path / "run").exists()


def test_an_unknown_key_under_a_group_option_without_keys_says_so(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``logger=none logger.wandb.project=x`` said ``logger.wandb: unknown key; allowed: ``,
    an empty list, without the value typed."""
    argv = ("logger=none", "logger.wandb.project=x", f"hydra.run.dir={tmp_path / 'run'}")
    assert run_command("train", *argv) == 2
    err = capsys.readouterr().err
    assert err == "error: logger.wandb.project=x: unknown key; allowed: none, logger is empty\n"


PLUS_ARGUMENTS = [
    ("trainer.deterministic=true", "lightning.pytorch.Trainer"),
    ("optim.amsgrad=true", "torch.optim.AdamW"),
    # the README's spelling of a strategy lmlab refuses: the + form reaches that refusal
    ("trainer.strategy.start_method=spawn", "lightning.pytorch.strategies.DDPStrategy"),
]


@pytest.mark.parametrize(("override", "target"), PLUS_ARGUMENTS)
def test_an_argument_of_a_target_missing_from_its_yaml_names_the_plus_that_adds_it(
    override: str, target: str, tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key that a ``_target_`` node's YAML lacks but its target takes is added with ``+``,
    as Hydra's own message says; lmlab's one line said only ``unknown key`` and listed the
    YAML's keys, so ``trainer.deterministic=true`` read as a setting lmlab has not got."""
    group = ("trainer=ddp",) if "strategy" in override else ()
    assert run_command("train", *group, override, f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {override}: unknown key; allowed: _target_, "), err
    assert err.endswith(f"; or another argument that {target} takes, added with +: +{override}\n")


@pytest.mark.parametrize(("override", "target"), PLUS_ARGUMENTS)
def test_the_plus_form_the_unknown_key_names_is_taken_or_refused_for_itself(
    override: str, target: str, refused_jobs
) -> None:
    group = ("trainer=ddp",) if "strategy" in override else ()
    reasons = refused_jobs(*group, f"+{override}")
    if "spawn" in override:
        assert len(reasons) == 1 and "starts the ranks with multiprocessing's spawn" in reasons[0]
    else:
        assert reasons == []


def test_an_experiment_given_twice_names_the_list_that_applies_both(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``+experiment=sandwich +experiment=rmsnorm`` got Hydra's "To override a value use
    'override experiment: rmsnorm'", a defaults-list line no command line takes. The list it
    names now is what applies both, in order."""
    argv = ("+experiment=sandwich", "+experiment=rmsnorm", f"hydra.run.dir={tmp_path / 'run'}")
    assert run_command("train", *argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: +experiment=sandwich +experiment=rmsnorm: experiment takes one value on the "
        "command line; apply several, in order, as one list: '+experiment=[sandwich,rmsnorm]'\n"
    )
    assert not (tmp_path / "run").exists()
    model = compose_train(["+experiment=[sandwich,rmsnorm]"]).model
    assert (model.norm_placement, model.norm) == ("sandwich", "rmsnorm")
    # one recipe twice: Hydra's "experiment appears more than once in the final defaults list"
    argv = ("+experiment=rope", "+experiment=rope", f"hydra.run.dir={tmp_path / 'run'}")
    assert run_command("train", *argv) == 2
    assert capsys.readouterr().err == (
        "error: +experiment=rope +experiment=rope: the same experiment twice; once applies it\n"
    )
    assert not (tmp_path / "run").exists()


def test_unwritable_run_dir_is_one_line_and_exit_2(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert run_command("train", f"hydra.run.dir={tmp_path / 'file' / 'run'}") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not a folder" in err


def test_a_sweep_whose_job_folder_is_a_file_is_refused_before_any_job_trains(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """Job 1's folder is a file: Hydra's launcher raised FileExistsError with a traceback
    after job 0 had trained. Now the sweep's checks name the job and nothing runs."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "1").write_text("x\n")
    argv = ("-m", "+debug=smoke", "model.activation=relu,gelu", f"hydra.sweep.dir={sweep}")
    assert run_command("train", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of the sweep's 2 jobs would be refused"), err
    assert f"#1 model.activation=gelu: its folder {sweep / '1'} cannot be created: " in err
    assert f"{sweep / '1'} is a file, not a folder" in err and "Traceback" not in err
    assert sorted(p.name for p in sweep.iterdir()) == ["1"]


def test_a_sweep_into_an_earlier_sweeps_folder_is_refused_before_hydra_writes(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra writes multirun.yaml and each job's .hydra/ before lmlab's checks: a new sweep
    into a folder that holds runs would rewrite what describes them."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "results.json").write_text('{"status": "completed"}')
    (sweep / "multirun.yaml").write_text("the earlier sweep\n")
    modified = sweep.stat().st_mtime_ns
    argv = ("-m", "+debug=smoke", "model.activation=relu,gelu", f"hydra.sweep.dir={sweep}")
    assert run_command("train", *argv) == 2
    assert sweep.stat().st_mtime_ns == modified  # no lock file came and went
    err = capsys.readouterr().err
    assert err.startswith(f"error: hydra.sweep.dir={sweep} already holds the runs of an ")
    assert "sweep (0): choose another directory" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in sweep.rglob("*")) == ["0", "multirun.yaml", "results.json"]
    assert (sweep / "multirun.yaml").read_text() == "the earlier sweep\n"


def test_a_value_hydra_reads_only_quoted_is_named_with_the_quoting(
    run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``data.path=~/corpus`` (the shell leaves the ``~`` alone there) met Hydra's lexer and
    printed its exception's name; the line now shows the quoting that works."""
    assert run_command("train", "data=text", "data.path=~/corpus") == 2
    err = capsys.readouterr().err
    assert err == (
        "error: data.path=~/corpus: Hydra cannot read this value unquoted; quote it for Hydra "
        "inside the shell's quotes: \"data.path='~/corpus'\"\n"
    )


def test_compose_error_from_the_script_and_with_full_error(tmp_path: Path) -> None:
    """The script exits 2 with one line; HYDRA_FULL_ERROR=1 gives Hydra's traceback."""
    out = run(sys.executable, SRC / "train.py", "model=gpt_huge", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: model=gpt_huge: no such config; allowed: ")
    full = subprocess.run(
        [sys.executable, SRC / "train.py", "model=gpt_huge"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode == 1 and "Traceback" in full.stderr
    assert "MissingConfigException" in full.stderr


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("scaling", ["DIR", "--target-flops", "-1"], "argument --target-flops: must be a positive"),
        ("scaling", ["DIR", "--n-key", "layers"], "argument --n-key: invalid choice: 'layers'"),
        ("compare", ["DIR", "--metrik", "mfu"], "unrecognized arguments: --metrik mfu"),
        ("compare", [], "the following arguments are required: MULTIRUN_DIR"),
    ],
)
def test_argument_errors_are_one_line_and_exit_2(
    name: str, args: list[str], message: str, tmp_path: Path, run_command, capsys
) -> None:
    assert run_command(name, *[str(tmp_path) if a == "DIR" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: lmlab {name}: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize("name", ["generate", "probe", "consolidate", "convert", "evaluate"])
def test_key_value_commands_answer_help(name: str, run_command, capsys) -> None:
    """``lmlab <command> --help``, as ``lmlab --help`` says: the command's usage, then every
    key with its default and what it is; exit 0, nothing loaded."""
    import dataclasses
    import importlib

    module = importlib.import_module(f"lmlab.cli.{name}")
    schema = next(
        v
        for v in vars(module).values()
        if dataclasses.is_dataclass(v) and v.__module__ == module.__name__
    )
    for flag in ("--help", "-h"):
        assert run_command(name, "ckpt=/nowhere", flag) == 0
        out, err = capsys.readouterr()
        assert err == "" and out.startswith(f"usage: lmlab {name} key=value ...")
        assert module.__doc__.splitlines()[0] in out
        keys = out.partition("keys (default; null is None):\n")[2].splitlines()
        assert [line.split()[0] for line in keys] == [f.name for f in dataclasses.fields(schema)]
    if name == "generate":
        assert "  temperature     0.8       0: greedy" in keys
        assert "  ckpt            required" in keys and "  prompt          ''" in out


@pytest.mark.parametrize("name", ["generate", "probe", "evaluate"])
def test_help_lists_every_dtype_the_checkpoint_tools_take(name: str, run_command, capsys) -> None:
    """``dtype=auto`` (the weights as stored) is taken by every checkpoint tool: its help
    says so beside the others."""
    assert run_command(name, "--help") == 0
    keys = capsys.readouterr().out.partition("keys (default; null is None):\n")[2]
    (line,) = [k for k in keys.splitlines() if k.split()[0] == "dtype"]
    assert line.split(maxsplit=2)[2].startswith("fp32 | bf16 | fp16 | auto"), line


def test_a_run_the_guard_stops_says_why_on_one_line(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """Weights of standard deviation 1e9 overflow at step 0: the guard's message, exit 1,
    no traceback; results.json says failed. (In this process: the console script's exit
    path is the one the tests above run.)"""
    argv = [*SMOKE, "model.init_std=1e9", "logger=none", f"hydra.run.dir={tmp_path}"]
    assert run_command("train", *argv) == 1
    err = capsys.readouterr().err
    assert err.endswith(
        "error: non-finite loss or gradient norm at step 0 (guard.mode=stop, 0 updates "
        "skipped); last good checkpoint: none saved yet\n"
    ), err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("consolidate", ["ckpt=SHARDED", "out=KEEP"], "exists: choose a new file"),
        ("consolidate", ["ckpt=SHARDED", "out=SHARDED/meta.pt"], "inside the sharded checkpoint"),
        ("consolidate", ["ckpt=SHARDED", "out=DIR"], "is a folder: name the file to write"),
        ("consolidate", ["ckpt=SHARDED", "out=KEEP/x.ckpt"], "is a file, not a folder"),
        ("convert", ["from_hf=DIR", "out=KEEP"], "exists: choose a new file"),
        ("convert", ["from_hf=DIR", "out=KEEP/x.ckpt"], "is a file, not a folder"),
        ("convert", ["to_hf=DIR/m.ckpt", "out=KEEP"], "is a file: name a folder"),
        ("convert", ["to_hf=DIR/m.ckpt", "out=KEEP/hf"], "is a file, not a folder"),
        ("probe", ["ckpt=DIR/m.ckpt", "out=KEEP/a.png"], "is a file, not a folder"),
        ("probe", ["ckpt=DIR/m.ckpt", "out=DIR/x.ckpt"], ".ckpt is not an image format"),
        ("probe", ["ckpt=DIR/m.ckpt", "out=DIR"], "is a folder: name the file to write"),
        ("probe", ["ckpt=DIR/m.ckpt", "out=DIR/a.png/"], "names a folder (it ends with /)"),
        ("evaluate", ["ckpt=DIR/m.ckpt", "out=DIR/new/"], "names a folder (it ends with /)"),
        ("evaluate", ["ckpt=DIR/m.ckpt", "out=KEEP"], "is not an lmlab eval record"),
        ("scaling", ["DIR", "--out", "KEEP"], "is a file: name a folder"),
    ],
)
def test_an_out_that_would_damage_a_file_is_refused_before_any_work(
    name: str, args: list[str], message: str, tmp_path: Path, run_command, capsys
) -> None:
    """Every command that writes checks ``out`` first: an existing file is never replaced
    (unless the command owns it), and a path under a file or a folder where a file belongs
    (a name ending with a slash included: ``Path`` drops the slash, and evaluate wrote its
    record as a file named like the folder) is one line, exit 2, before anything is read or
    computed."""
    keep = tmp_path / "keep.txt"
    keep.write_text("the user's file\n")
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"not read")
    before = {p: p.read_bytes() for p in (keep, sharded / "meta.pt")}
    listing = sorted(tmp_path.rglob("*"))
    names = {"SHARDED": str(sharded), "KEEP": str(keep), "DIR": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in names.items() if k in a), a) for a in args]
    assert run_command(name, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(tmp_path.rglob("*")) == listing


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(
    run_command, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmlab.cli.generate

    def interrupted(argv: list[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lmlab.cli.generate, "main", interrupted)
    assert run_command("generate", "ckpt=x") == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"


def test_ctrl_c_once_a_command_has_done_its_work_changes_nothing(
    run_command, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C after the command's work, in the garbage collection before exit, gave a
    traceback (``gc.collect() KeyboardInterrupt``) and exit code 1 after a successful
    ``convert``. It has nothing left to stop there: the command exits with its own code."""
    import os
    import signal

    import lmlab.cli.generate
    import lmlab.cli.main

    def collected() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # as the user's Ctrl-C, while the heap is scanned

    monkeypatch.setattr(lmlab.cli.generate, "main", lambda argv: 0)
    monkeypatch.setattr(lmlab.cli.main, "before_exit", collected)
    handler = signal.getsignal(signal.SIGINT)
    assert run_command("generate", "ckpt=x") == 0
    assert capsys.readouterr().err == "" and signal.getsignal(signal.SIGINT) is handler


def test_a_refused_run_removes_only_the_empty_folders_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parents a refused run made on the way to its folder (``outputs/<date>/``) go with
    it, but not one where another run made its folder meanwhile (a run started the same day)."""
    from lmlab.cli.interrupt import clear_launch, made_above, note_folder
    from lmlab.cli.launch import LAUNCH

    for noted in ("folder", "made", "existed", "above"):  # put back after the test
        monkeypatch.setattr(LAUNCH, noted, getattr(LAUNCH, noted))
    run_dir = tmp_path / "outputs" / "day" / "first"
    above = made_above(run_dir)
    assert above == tmp_path / "outputs"
    run_dir.mkdir(parents=True)
    note_folder(run_dir, existed=False, above=above)
    (run_dir / "train.log").write_text("")
    clear_launch()
    assert list(tmp_path.iterdir()) == []

    run_dir.mkdir(parents=True)
    note_folder(run_dir, existed=False, above=above)
    (tmp_path / "outputs" / "day" / "second").mkdir()  # another run's, made meanwhile
    clear_launch()
    assert [p.name for p in (tmp_path / "outputs" / "day").iterdir()] == ["second"]


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["resume=true"], "run"),
        (["resume=auto"], "run"),
        (["-m", "resume=auto", "seed=1,2"], "sweep"),
    ],
)
def test_a_resume_into_the_default_folder_named_by_the_time_is_refused_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_command,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    kind: str,
) -> None:
    """``outputs/<date>/<time>`` (``multirun/...`` for a sweep) is a new folder each launch:
    ``resume=auto`` there (a requeued SLURM job's command without ``hydra.run.dir``) trained
    the run again from step 0 in another folder, and ``resume=true`` was refused only once the
    data was prepared, leaving that folder. Now one line before anything is written, naming
    the folder a SLURM job can give. (In this process, in ``tmp_path`` as its working
    directory: the console script's exit path is the one the tests above run.)"""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.chdir(tmp_path)
    code = run_command("train", *argv, "+debug=smoke")
    err = capsys.readouterr().err
    dirs = {"run": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}", "sweep": "multirun/${now:%Y-%m-%d}"}
    value = argv[-2] if kind == "sweep" else argv[0]
    assert code == 2 and err.startswith(
        f"error: {value} continues the {kind} in hydra.{kind}.dir, which is {dirs[kind]}"
    ), err
    assert f"hydra.{kind}.dir=outputs/slurm/${{SLURM_JOB_ID}}, 4242 here" in err
    assert list(tmp_path.iterdir()) == []
