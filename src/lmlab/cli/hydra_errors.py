"""Hydra's errors before a run starts as one line (``hydra_error``): an unknown preset or key,
a value outside an enum, override syntax, a run directory that cannot be created
(``unwritable``), which Hydra would print over several lines with exit code 1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from lmlab.config import omegaconf_error
from lmlab.errors import ConfigError, disk_full, first_line, write_error_words
from lmlab.train.runfiles import in_the_way


def hydra_error(err: Exception, argv: Sequence[str]) -> ConfigError:
    """One line for what Hydra raised before the run started, naming the override and, where
    Hydra says it, what is allowed."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = [o for o in err.options or () if not o.startswith("base_")]  # not schemas
        if group and options:
            return ConfigError(f"{group}={name}: no such config; allowed: {', '.join(options)}")
    if isinstance(err, OverrideParseException):
        key, _, value = str(err.override).partition("=")
        if "LexerNoViableAltException" in str(err) and "'" not in value:
            # a character Hydra's grammar takes no unquoted value with (~ for a home folder)
            return ConfigError(
                f"{err.override}: Hydra cannot read this value unquoted; quote it for Hydra "
                f"inside the shell's quotes: \"{key}='{value}'\""
            )
        return ConfigError(f"{err.override}: {first_line(err)}")
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        given = [a for a in argv if a.lstrip("+~").partition("=")[0] == key]
        return omegaconf_error(cause, given[-1].lstrip("+~") if given else key)
    if isinstance(err, OSError) and err.filename:  # creating the run directory
        return unwritable(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ConfigError(" ".join(lines) or type(err).__name__)


def unwritable(err: OSError) -> ConfigError:
    """The run directory could not be created or written."""
    if (full := disk_full(err)) is not None:
        return ConfigError(f"{write_error_words(full)}: free space, then run the command again")
    blocker = in_the_way(Path(err.filename)) if err.filename else None
    why = f"{blocker} is a file, not a folder" if blocker is not None else err.strerror
    return ConfigError(
        f"cannot write {err.filename}: {why} (hydra.run.dir, or hydra.sweep.dir with -m, must "
        "be a directory this user can create and write)"
    )
