"""``lmlab <command> [arguments]``: one console script for every tool, with the arguments of the
matching ``python src/<command>.py``. Each command's module is imported only when it runs, so
``lmlab --help`` and bad input answer in about a second."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lmlab.cli.heap import before_exit, long_lived
from lmlab.errors import ConfigError

# command -> what it does (the module is lmlab.cli.<command>, with main(argv) -> exit code)
COMMANDS = {
    "train": "train one run, or a Hydra multirun with -m (Hydra overrides: model=gpt_mini ...)",
    "compare": "rank the jobs of a multirun: table, winner, compare.png, compare.json",
    "scaling": "fit Chinchilla scaling laws to a multirun's results.json files",
    "generate": "sample text (GPT), fill masks (BERT) or spans (T5) from a checkpoint",
    "probe": "parameter table, FLOPs per token and attention maps of a checkpoint",
    "consolidate": "turn a sharded (FSDP) checkpoint folder into one file",
    "convert": "Hugging Face models in (from_hf=) and out (to_hf=): GPT-2, Llama, Mistral, "
    "Mixtral, BERT, T5",
    "evaluate": "score a GPT or T5 checkpoint on lm-evaluation-harness tasks (offline ones ship)",
}


def fail(err: Exception, code: int = 2) -> NoReturn:
    """One line on stderr and exit ``code``: 2 for bad input, 1 for a run that stopped on its
    own terms (the non-finite guard); the traceback with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


def not_installed(module: str) -> str:
    """Why a command cannot start: ``python src/train.py`` run by a Python that lmlab was not
    installed into (the system's, where ``make install`` put lmlab in ``.venv``), which lacks
    ``module``."""
    venv = Path(__file__).resolve().parents[3] / ".venv" / "bin"
    return (
        f"this Python ({sys.executable}) cannot import {module}, which lmlab needs: "
        f"`make install` installs lmlab and its packages in {venv.parent}; run `source "
        f"{venv / 'activate'}` first, or {venv / 'python'} {sys.argv[0]} ... (or `pip install "
        "-e .` into the Python you use)"
    )


def command(name: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``lmlab.cli.<name>.main(argv)`` (default: ``sys.argv[1:]``) and exit with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with long_lived():  # its imports
            module = importlib.import_module(f"lmlab.cli.{name}")
        code = module.main(args)
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] in ("", "lmlab"):
            raise  # lmlab's own: a defect, with its traceback
        fail(ConfigError(not_installed(err.name)))
    except ConfigError as err:
        fail(err)
    except KeyboardInterrupt:  # Ctrl-C: what was written stays; no traceback
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `lmlab generate --help | head`: the reader had what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit's flush
        sys.exit(141)  # as a process that SIGPIPE ended (128 + 13)
    # The work is done: a Ctrl-C now has nothing to stop, and raised inside the garbage
    # collection it gave a traceback and exit code 1 after a successful command.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        before_exit()  # the interpreter's shutdown need not scan the heap: about 1.4 s sooner
    finally:
        signal.signal(signal.SIGINT, previous)
    sys.exit(code or 0)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return (
        "usage: lmlab <command> [arguments]\n\ncommands:\n" + "\n".join(lines) + "\n\n"
        "`lmlab <command> --help` or `lmlab help <command>` (train: Hydra's) for its arguments; "
        "`python src/<command>.py` takes the same."
    )


def main() -> NoReturn:
    """The ``lmlab`` console script."""
    if sys.argv[1:2] == ["help"] and len(sys.argv) > 2:  # `lmlab help generate`, as git's
        sys.argv[1:] = [sys.argv[2], "--help"]
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    name = sys.argv[1]
    if name not in COMMANDS:
        fail(ConfigError(f"unknown command {name!r}; allowed: {', '.join(COMMANDS)}"))
    sys.argv = [f"{sys.argv[0]} {name}", *sys.argv[2:]]  # what Hydra and argparse show
    command(name)


if __name__ == "__main__":
    main()
