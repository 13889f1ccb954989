"""Hydra's errors before a run starts as one line (``hydra_error``): an unknown preset or key,
a value outside an enum, override syntax, a run directory that cannot be created
(``unwritable``), which Hydra would print over several lines with exit code 1; and the exit
of a refusal from inside Hydra's run (``refuse``)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lmlab.config import CONF_DIR, flatten, group_options, omegaconf_error
from lmlab.config.asked import DELTA_GROUPS
from lmlab.config.resolve import GROUP_SCHEMAS
from lmlab.errors import ConfigError, disk_full, first_line, storage_fix, write_error_words
from lmlab.train.runfiles import in_the_way

# Hydra's words for a config group given twice on the command line (`+experiment=a
# +experiment=b`; with one value twice, the second)
REPEATED_GROUP = re.compile(
    r"Multiple values for ([\w/.@-]+)\. To override a value use"
    r"|([\w/.@-]+) appears more than once in the final defaults list"
)


# Hydra's words for a config group given null on the command line (`trainer=null`)
NULL_GROUP = "Config group override must be a string or a list"

# a sweeper's grid or search space: a sweep file's, keyed by whole dotted names (`optim.lr`)
SWEEPER_PARAMS = "hydra.sweeper.params"

# Hydra's words for a sweep file's override of its sweeper's own group (`override
# /hydra/sweeper/sampler: tpe`) where the command line chose another sweeper
SWEEPER_SUBGROUP = re.compile(r"In '(sweeps)/([\w.-]+)': Could not override '(hydra/sweeper/\S+)'")


def hydra_error(err: Exception, argv: Sequence[str]) -> ConfigError:
    """One line for what Hydra raised before the run started, naming the override and, where
    Hydra says it, what is allowed."""
    if (typed := sweeper_params_typed(err, argv) or other_sweeper(err, argv)) is not None:
        return typed
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = [o for o in err.options or () if not o.startswith("base_")]  # not schemas
        if group and options:
            return ConfigError(f"{group}={name}: no such config; allowed: {', '.join(options)}")
    if isinstance(err, ConfigCompositionException) and (repeated := REPEATED_GROUP.match(str(err))):
        # `+experiment=a +experiment=b`: Hydra says to write `override experiment: b`, a
        # defaults-list line; on the command line a list applies both, in order
        group = repeated.group(1) or repeated.group(2)
        given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith(f"{group}=")]
        typed = " ".join(f"+{group}={v}" for v in given)
        if len(set(given)) == 1:
            return ConfigError(f"{typed}: the same {group} twice; once applies it")
        return ConfigError(
            f"{typed}: {group} takes one value on the command line; apply several, in order, "
            f"as one list: '+{group}=[{','.join(given)}]'"
        )
    if isinstance(err, OverrideParseException):
        key, _, value = str(err.override).partition("=")
        if "LexerNoViableAltException" in str(err) and "'" not in value:
            # a character Hydra's grammar takes no unquoted value with (~ for a home folder)
            return ConfigError(
                f"{err.override}: Hydra cannot read this value unquoted; quote it for Hydra "
                f"inside the shell's quotes: \"{key}='{value}'\""
            )
        return ConfigError(f"{err.override}: {first_line(err)}")
    if isinstance(err, ValueError) and str(err).startswith(NULL_GROUP):
        # `trainer=null`: Hydra's words name neither the group nor what it takes
        nulls = [a.lstrip("+") for a in argv if a.lstrip("+").endswith("=null")]
        groups = [a.partition("=")[0] for a in nulls if (CONF_DIR / a.partition("=")[0]).is_dir()]
        if groups:
            return ConfigError(
                f"{groups[0]}=null: {groups[0]} takes the name of one of its options, not "
                f"null; allowed: {', '.join(group_options(groups[0]))}"
            )
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        # the override as typed: `logger.wandb.project=x` where the node missing is logger.wandb
        given = [a for a in argv if f"{a.lstrip('+~').partition('=')[0]}.".startswith(f"{key}.")]
        refusal = omegaconf_error(cause, given[-1].lstrip("+~") if given else key)
        if given and isinstance(cause, ConfigKeyError | ConfigAttributeError):
            return ConfigError(f"{refusal}{unknown_key_hint(given[-1], key, str(refusal))}")
        return refusal
    if isinstance(err, OSError) and err.filename:  # creating the run directory
        return unwritable(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ConfigError(" ".join(lines) or type(err).__name__)


def sweeper_params_typed(err: Exception, argv: Sequence[str]) -> ConfigError | None:
    """The refusal of a swept value typed under ``hydra.sweeper.params`` that Hydra could not
    compose, saying how to type it (as an override of its own key), or None. The sweepers'
    ``params`` is null unless a sweep file sets it, and OmegaConf read
    ``hydra.sweeper.params.optim.lr=...`` through the null as "Unexpected type: None", and
    ``hydra.sweeper.params={optim.lr:...}`` as "'NoneType' object has no attribute 'get'"; a
    sweep file's ``params`` holds ``optim.lr`` as one dotted key, which the command line's
    dots do not name (they nest). The sweepers read the command line's own overrides as their
    grid or search space: ``'optim.lr=interval(1e-4,1e-2)'`` (the Optuna sweeper's documented
    form)."""
    given = [a for a in argv if re.match(rf"[+~]*{re.escape(SWEEPER_PARAMS)}[.=]", a)]
    cause = err.__cause__
    said = f"{err} {getattr(cause, 'full_key', '')}"
    if not given or not (SWEEPER_PARAMS in said or "Unexpected type: None" in str(err)):
        return None
    plain = [f"'{o}'" for a in given for o in plain_overrides(a)]
    return ConfigError(
        f"{given[0]}: type a sweep's values as an override of the key they sweep, "
        f"{' '.join(plain) or repr('optim.lr=interval(1e-4,1e-2)')} (each sweeper reads them "
        f"from the command line; {SWEEPER_PARAMS} is for a sweep file)"
    )


def other_sweeper(err: Exception, argv: Sequence[str]) -> ConfigError | None:
    """A sweep file that chooses its sweeper and a setting of it (``+sweeps=lr``: Optuna and
    its sampler) given with another sweeper on the command line (``hydra/sweeper=basic``):
    Hydra said only that the sampler's override had "No match in the defaults list"."""
    said = SWEEPER_SUBGROUP.search(str(err))
    chosen = [a.lstrip("+~") for a in argv if re.match(r"[+~]*hydra/sweeper=", a)]
    if said is None or not chosen:
        return None
    group, name, setting = said.groups()
    return ConfigError(
        f"+{group}={name} with {chosen[-1]}: the sweep file chooses its own sweeper, and "
        f"{setting} with it, which {chosen[-1]} replaces; leave {chosen[-1]} out"
    )


def plain_overrides(override: str) -> list[str]:
    """``hydra.sweeper.params.optim.lr='interval(1e-4,1e-2)'`` (or ``params={optim.lr:...}``)
    as the command line's own overrides: ``optim.lr=interval(1e-4,1e-2)``; [] where Hydra's
    grammar does not read it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, _, value = override.lstrip("+~").partition("=")
    if key != SWEEPER_PARAMS:  # hydra.sweeper.params.<key>=<value>, its quotes Hydra's
        quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "'\""
        return [f"{key.removeprefix(SWEEPER_PARAMS + '.')}={value[1:-1] if quoted else value}"]
    try:
        parsed = OverridesParser.create().parse_overrides([override.lstrip("+~")])[0].value()
    except Exception:  # noqa: BLE001 - not Hydra's grammar: said without the plain form
        return []
    return [f"{k}={v}" for k, v in flatten(parsed).items()] if isinstance(parsed, dict) else []


def unknown_key_hint(override: str, missing: str, said: str = "") -> str:
    """What to type instead of ``override`` whose key (``missing``) the composed config lacks:
    the group's option of that name (``trainer.strategy=fsdp``: ``trainer=fsdp``), and ``+``,
    which adds a key (Hydra's way, which its own message names), where the group's node takes
    keys it does not set (a ``_target_``'s arguments: ``trainer``, ``optim``; a schema's
    group refuses one) and the refusal ``said`` does not name it already. '' where neither
    applies."""
    key, _, value = override.partition("=")
    group = key.partition(".")[0]
    if "." not in key or not (CONF_DIR / group).is_dir() or group in DELTA_GROUPS:
        return ""
    hints = []
    if value in group_options(group):
        hints.append(f"{group}={value} for the {group} config {value}")
    plus = not key.startswith("+") and f"+{override}" not in said
    if plus and key == missing and group not in GROUP_SCHEMAS:
        hints.append(f"+{override} to add the key")
    return f"; type {' or '.join(hints)}" if hints else ""


def unwritable(err: OSError) -> ConfigError:
    """The run directory could not be created or written."""
    if (full := disk_full(err)) is not None:
        return ConfigError(
            f"{write_error_words(full)}: {storage_fix(full)}, then run the command again"
        )
    blocker = in_the_way(Path(err.filename)) if err.filename else None
    why = f"{blocker} is a file, not a folder" if blocker is not None else err.strerror
    return ConfigError(
        f"cannot write {err.filename}: {why} (hydra.run.dir, or hydra.sweep.dir with -m, must "
        "be a directory this user can create and write)"
    )


def refuse(why: str | ConfigError | OSError) -> NoReturn:
    """``error: <why>`` on stderr (an OSError: ``unwritable``'s words) and exit code 2, from
    Hydra's callbacks and checks: an exception there (``lmlab.cli.main.fail`` raises under the
    HYDRA_FULL_ERROR=1 that main() sets while Hydra runs) Hydra turns into a warning and goes
    on, to write into the directory it should not."""
    if isinstance(why, OSError):
        why = unwritable(why)
    print(f"error: {why}", file=sys.stderr)
    sys.exit(2)
