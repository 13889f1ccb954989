"""The tests' kept compositions (``tests/config_files.py``) compose what Hydra composes."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra._internal import config_loader_impl
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

import config_files
from lmlab.config import CONF_DIR, register_configs
from lmlab.train.compose import compose_train

register_configs()  # lmlab's schemas in the ConfigStore, as every lmlab command has them

VALUES = ["trainer.max_steps=7", "paths.output_dir=/elsewhere", "optim.lr=3e-4"]
# each kind of group choice (one chosen, added, a list of them, deleted, Hydra's own, swept),
# with and without value overrides, and refused ones (their errors compared); every config
# of every group, compared once (stop 77), took 100 s
CASES = [
    [],
    ["model=gpt_small", *VALUES],
    ["model=bert_tiny", "+experiment=[prenorm,llama]", "data.seq_len=64"],
    ["model=t5_tiny", "+sweeps=lr", *VALUES],
    ["+debug=smoke", "budget=chinchilla", "task=lm", "~logger"],
    ["model=gpt_tiny", "+model.undeclared=1"],
    ["model=gpt_tiny,gpt_small", "optim.lr=1e-3,2e-3"],
    ["hydra/sweeper=optuna", "model=gpt_tiny"],
    ["model=no_such_preset"],
    ["model.no_such_key=1"],
]


def composed(overrides: list[str], mode: RunMode) -> str:
    """The whole config, the hydra node too (the working directory aside), or the error."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            cfg = loader.load_configuration("train", overrides, mode, from_shell=True)
        except Exception as err:  # noqa: BLE001 - the error is compared
            return f"{type(err).__name__}: {err}"
    cfg.hydra.runtime.cwd = "."
    return OmegaConf.to_yaml(cfg)


def test_the_kept_compositions_equal_hydras_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case in both run modes composes alike through Hydra's own functions and through
    the kept ones, the first time (kept then) and again (from what was kept)."""
    every = [(o, m) for m in (RunMode.RUN, RunMode.MULTIRUN) for o in CASES]
    monkeypatch.setattr(config_files, "_DEFAULTS", {})
    monkeypatch.setattr(config_files, "_MERGED", {})
    with monkeypatch.context() as own:  # Hydra's
        own.setattr(config_loader_impl, "create_defaults_list", config_files._DEFAULTS_LIST)
        own.setattr(ConfigLoaderImpl, "_compose_config_from_defaults_list", config_files._MERGE)
        hydras = [composed(*case) for case in every]
    first = [composed(*case) for case in every]
    again = [composed(*case) for case in every]
    assert len(config_files._DEFAULTS) >= 5 and len(config_files._MERGED) >= 5
    errors = [case for case, h in zip(every, hydras, strict=True) if not h.startswith("hydra:")]
    refused = [["model=no_such_preset"], ["model.no_such_key=1"]]
    sweep = ["model=gpt_tiny,gpt_small", "optim.lr=1e-3,2e-3"]  # a multirun's, not a run's
    assert [(o, m) for o, m in errors] == [
        *[(o, RunMode.RUN) for o in [sweep, *refused]],
        *[(o, RunMode.MULTIRUN) for o in refused],
    ], errors
    for case, hydra, kept, kept_again in zip(every, hydras, first, again, strict=True):
        assert kept == hydra, case
        assert kept_again == hydra, case


def test_a_kept_composition_reads_its_own_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${now:...}`` (``hydra.run.dir``'s ``outputs/<date>/<time>``) is the time of each
    composition, kept or not: a kept one read the time of the first (two runs in a test that
    froze the clock went to that time's folder)."""
    import datetime as real

    import hydra.core.utils

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 30, 12, 0, 0)

    assert compose_train(["model=gpt_small"]).paths.output_dir != "outputs/2026-11-30/12-00-00"
    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    assert compose_train(["model=gpt_small"]).paths.output_dir == "outputs/2026-11-30/12-00-00"
