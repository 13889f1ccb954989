"""One command line: the ``lmlab`` console script and the ``src/*.py`` scripts run the same
commands with the same arguments, and bad input is one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lmlab.cli.main import COMMANDS
from lmlab.config import CONF_DIR

LMLAB = Path(sys.executable).parent / "lmlab"  # installed by `make install` (pip install -e .)
SRC = CONF_DIR.parent / "src"


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


def test_unknown_command_is_one_line_and_exit_2() -> None:
    out = run(LMLAB, "trian")
    assert out.returncode == 2
    assert out.stderr == "error: unknown command 'trian'; allowed: " + ", ".join(COMMANDS) + "\n"


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
    assert bad.stderr == "error: model.d_model=100 is not divisible by model.n_heads=7\n"


def test_the_scripts_are_not_importable_modules(tmp_path: Path) -> None:
    """The install maps the lmlab package alone: a bare ``import compare`` is not lmlab's."""
    code = "import importlib.util as u; print([u.find_spec(m) for m in ('compare', 'train')])"
    out = run(sys.executable, "-c", code, cwd=tmp_path)
    assert out.stdout.strip() == "[None, None]", out.stdout
    assert run(sys.executable, "-c", "import lmlab.cli.main", cwd=tmp_path).returncode == 0
