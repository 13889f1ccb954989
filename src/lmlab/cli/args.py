"""``key=value`` command lines for the tools that use a checkpoint (generate, probe, consolidate).

Values are taken verbatim (``prompt=def fib(`` and ``text=[MASK] is`` need no quoting beyond
the shell's), then typed and checked against a dataclass by OmegaConf: an unknown key or a
value of the wrong type is a ``ConfigError`` naming the key, the value and what is allowed.
Hydra's override grammar would reject those prompts (brackets and parentheses are syntax).
The commands with flags (compare, scaling) use ``ArgumentParser``, whose errors take the same
one-line path."""

from __future__ import annotations

import argparse
import dataclasses
from typing import NoReturn, TypeVar

from omegaconf import MISSING

from lmlab.config import to_schema
from lmlab.errors import ConfigError

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands that take flags (compare, scaling): a bad argument is a
    ConfigError, one line with exit code 2, rather than argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (--help lists the arguments)")


def parse(schema: type[T], argv: list[str]) -> T:
    """``schema`` (a dataclass) filled from ``key=value`` arguments; ``null`` means None."""
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
    for key in required:
        if key not in given:
            raise ConfigError(f"{key} is required: add {key}=<value>")
    return to_schema(schema, given)
