"""The one error type for bad user input: caught by ``src/train.py`` and shown without traceback,
and ``first_line``, which puts a library's error into such a message."""


class ConfigError(ValueError):
    """A config value, path or file the user gave is not usable; the message names the field,
    the value and what is allowed."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of ``err``'s message (its type's name where it has none), cut
    to ``limit`` characters: a library's error inside a one-line ConfigError."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]
