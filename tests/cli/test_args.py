"""The ``key=value`` arguments of the checkpoint tools (``lmlab.cli.args``)."""

from __future__ import annotations

import dataclasses

import pytest

from lmlab.cli.args import PATH_KEYS, parse
from lmlab.cli.consolidate import ConsolidateConfig
from lmlab.cli.convert import ConvertConfig
from lmlab.cli.evaluate import EvaluateConfig
from lmlab.cli.generate import GenerateConfig
from lmlab.cli.probe import ProbeConfig
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


@pytest.mark.parametrize(
    ("schema", "args"),
    [
        (GenerateConfig, ["ckpt=~/r/last.ckpt", "tokenizer=~/t.json", "prompt=~/x"]),
        (ProbeConfig, ["ckpt=~/r/last.ckpt", "out=~/a.png", "tokenizer=~/t.json", "text=~/x"]),
        (EvaluateConfig, ["ckpt=~/r/last.ckpt", "out=~/e.json", "tokenizer=~/t.json"]),
        (ConsolidateConfig, ["ckpt=~/r/sharded", "out=~/one.ckpt"]),
        (ConvertConfig, ["from_hf=~/hf/gpt2", "out=~/gpt2.ckpt"]),
        (ConvertConfig, ["to_hf=~/r/last.ckpt", "out=~/hf", "tokenizer=~/t.json"]),
    ],
)
def test_a_path_typed_with_a_tilde_is_in_the_home_folder(
    schema: type, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """zsh (macOS's shell) passes ``ckpt=~/runs/...`` on as typed, as any shell passes a
    quoted one: it named a folder ``~`` in the working directory (``no such file``). A key
    that names a file or folder is read from the home folder; a prompt or text keeps its
    ``~``; a value that does not start with one is as typed."""
    monkeypatch.setenv("HOME", "/home/someone")
    cfg = parse(schema, args)
    for arg in args:
        key, _, value = arg.partition("=")
        home = "/home/someone" + value[1:]
        assert getattr(cfg, key) == (home if key in PATH_KEYS else value), key
    assert parse(GenerateConfig, ["ckpt=runs/~/x~"]).ckpt == "runs/~/x~"


def test_every_path_key_is_a_key_of_a_tool() -> None:
    """``PATH_KEYS`` names the tools' keys: a key renamed in a schema is no longer expanded."""
    keys = set()
    for schema in (GenerateConfig, ProbeConfig, EvaluateConfig, ConsolidateConfig, ConvertConfig):
        keys |= {f.name for f in dataclasses.fields(schema)}
    assert keys >= PATH_KEYS
