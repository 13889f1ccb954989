"""The ``key=value`` arguments of the checkpoint tools (``lmlab.cli.args``)."""

from __future__ import annotations

import pytest

from lmlab.cli.args import parse
from lmlab.cli.generate import GenerateConfig
from lmlab.errors import ConfigError


@pytest.mark.parametrize(
    "text",
    [
        "${oc.env:HOME}",  # was the home folder's path
        'x = "${name}"',  # was a traceback: interpolation key 'name' not found
        "echo ${HOME} $PATH",
        "\\${escaped}",  # OmegaConf's own escape, typed by the user: kept as typed
        "a\\\\${b}\\\\c",
        "${${nested}}",
        "trailing ${",
        "plain (no interpolation) \\n",
    ],
)
def test_a_value_is_taken_verbatim_with_interpolation_syntax_in_it(text: str) -> None:
    """A prompt that holds OmegaConf's ``${...}`` (shell scripts, JavaScript templates) is the
    prompt as typed, not resolved against the environment or the config."""
    cfg = parse(GenerateConfig, ["ckpt=${x}.ckpt", f"prompt={text}"])
    assert (cfg.prompt, cfg.ckpt) == (text, "${x}.ckpt")


def test_a_number_key_given_interpolation_syntax_names_the_value_as_typed() -> None:
    with pytest.raises(ConfigError, match=r"^seed=\$\{x\}: allowed: an integer$"):
        parse(GenerateConfig, ["ckpt=a.ckpt", "seed=${x}"])
