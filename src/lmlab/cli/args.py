"""``key=value`` command lines for the tools that use a checkpoint (generate, probe, consolidate).

Values are taken verbatim (``prompt=def fib(`` and ``text=[MASK] is`` need no quoting beyond
the shell's), then typed and checked against a dataclass by OmegaConf: an unknown key or a
value of the wrong type is a ``ConfigError`` naming the key, the value and what is allowed.
Hydra's override grammar would reject those prompts (brackets and parentheses are syntax), and
OmegaConf's interpolation would read ``${...}`` in them (a shell script's or a JavaScript
template's ``${name}``), so it is escaped. A file or folder (``PATH_KEYS``) starting with
``~`` is in the home folder, as a shell reads it: zsh (macOS's shell) and a quoted value pass
the ``~`` on.
The commands with flags (compare, scaling) use ``ArgumentParser``, whose errors take the same
one-line path. ``-h`` or ``--help`` prints the command's usage (its module's docstring) and
every key with its default and the comment beside it in the schema."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import typing
from pathlib import Path
from typing import NoReturn, TypeVar

from omegaconf import MISSING

from lmlab.config import to_schema
from lmlab.errors import ConfigError

T = TypeVar("T")

HELP = ("-h", "--help")
# a schema's field line: ``name: type = default  # what it is``
FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.*)$")
# what a key of each type takes, for the error of a key that cannot be null
KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
# the keys that name a file or folder, in every tool's schema (from_hf: a folder or a hub id)
PATH_KEYS = frozenset({"ckpt", "out", "tokenizer", "from_hf", "to_hf"})


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands that take flags (compare, scaling): a bad argument is a
    ConfigError, one line with exit code 2, rather than argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (--help lists the arguments)")


def user_path(value: str) -> Path:
    """argparse's ``type`` for a file or folder flag (compare, scaling): a leading ``~`` is the
    home folder, which no shell reads in ``--out=~/x`` (not an assignment), nor zsh in an
    argument's ``key=~/x``."""
    return Path(os.path.expanduser(value))


def usage(schema: type) -> str:
    """The help of the command whose arguments ``schema`` holds: the docstring of the module
    that defines it (examples and what the command does), then each key, its default and
    the comment beside it."""
    module = sys.modules[schema.__module__]
    command = schema.__module__.rpartition(".")[2]
    comments = dict(
        match.groups()
        for line in inspect.getsource(schema).splitlines()
        if (match := FIELD_COMMENT.match(line))
    )
    rows = []
    for f in dataclasses.fields(schema):
        if f.default == MISSING:
            default = "required"
        elif f.default is None:
            default = "null"
        elif isinstance(f.default, bool):
            default = str(f.default).lower()
        elif isinstance(f.default, str) and (" " in f.default or not f.default.isprintable()):
            default = repr(f.default)
        else:
            default = str(f.default) or "''"
        rows.append((f.name, default, comments.get(f.name, "")))
    width = [max(len(row[i]) for row in rows) for i in (0, 1)]
    keys = [f"  {n:<{width[0]}}  {d:<{width[1]}}  {c}".rstrip() for n, d, c in rows]
    return (
        f"usage: lmlab {command} key=value ...  (or python src/{command}.py key=value ...)\n\n"
        f"{inspect.cleandoc(module.__doc__ or '')}\n\nkeys (default; null is None):\n"
        + "\n".join(keys)
    )


def parse(schema: type[T], argv: list[str]) -> T:
    """``schema`` (a dataclass) filled from ``key=value`` arguments; ``null`` means None.
    ``-h``/``--help`` prints ``usage(schema)`` and exits with 0."""
    if any(arg in HELP for arg in argv):
        print(usage(schema))
        raise SystemExit(0)
    fields = {f.name for f in dataclasses.fields(schema)}
    required = [f.name for f in dataclasses.fields(schema) if f.default == MISSING]
    given: dict[str, str | None] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(
                f"argument {arg!r} is not key=value; keys: {', '.join(sorted(fields))}"
            )
        if key not in fields:
            raise ConfigError(f"unknown key {key!r}; allowed: {', '.join(sorted(fields))}")
        given[key] = None if value == "null" else value
    hints = typing.get_type_hints(schema)
    for key, value in given.items():  # OmegaConf reads yes/on/1 as true: held to its words
        is_bool = bool in (hints[key], *typing.get_args(hints[key]))
        if is_bool and value is not None and value.lower() not in ("true", "false"):
            raise ConfigError(f"{key}={value}: allowed: true or false")
    for key in required:
        if key not in given:
            raise ConfigError(f"{key} is required: add {key}=<value>")
        if not given[key]:  # ckpt= (an unset shell variable): a path of '.' further on
            raise ConfigError(f"{key} is empty: give {key}=<value>")
    for key, value in given.items():  # OmegaConf's words would print None and the type
        if value is None and type(None) not in typing.get_args(hints[key]):
            raise ConfigError(f"{key}=null: allowed: {KINDS[hints[key]]}; null is not")
        number = next(
            (t for t in (int, float) if t in (hints[key], *typing.get_args(hints[key]))), None
        )
        if number is not None and value is not None and not _reads_as(number, value):
            nullable = " or null" if type(None) in typing.get_args(hints[key]) else ""
            raise ConfigError(f"{key}={value}: allowed: {KINDS[number]}{nullable}")
    for key in PATH_KEYS.intersection(given):
        given[key] = given[key] and os.path.expanduser(given[key])
    return to_schema(schema, {k: v if v is None else verbatim(v) for k, v in given.items()})


# ``${`` and the backslashes right before it: OmegaConf reads ``\${`` as a literal ``${`` and
# each ``\\`` before it as one backslash
INTERPOLATION = re.compile(r"(\\*)\$\{")


def verbatim(value: str) -> str:
    """``value`` escaped for OmegaConf, which would otherwise resolve an interpolation in it:
    ``prompt=${oc.env:HOME}`` sampled from the home folder's path, and ``text=x = "${name}"``
    ended in a traceback."""
    return INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)


def _reads_as(kind: type, value: str) -> bool:
    """Whether ``value`` is an int (``kind=int``) or a number (``float``) as typed: OmegaConf
    said "Value '0.5' of type 'str' could not be converted to Integer"."""
    try:
        kind(value)
    except ValueError:
        return False
    return True
