"""The checks before any work: ``check_run`` (a run) and ``check_job`` (each job of a sweep,
before the first starts), with and without the machine's own checks."""

from __future__ import annotations

import re

import pytest
import torch

from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.preflight import check_job, check_run


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=gpu"], r"^trainer.accelerator=gpu needs a CUDA GPU"),
        (["trainer.num_nodes=2"], r"^trainer.num_nodes=2 needs a launcher"),
        (["model.attention_kernel=flex"], r"^model.attention_kernel=flex cannot train with"),
    ],
)
def test_what_depends_on_the_machine_is_left_to_the_machine_that_trains(
    overrides: list[str], message: str, no_gpu: None, tmp_path
) -> None:
    """A sweep a cluster launcher sends to GPU nodes is checked on a login node without one:
    there its GPU, launcher and kernel checks would refuse every job wrongly."""
    cfg = compose_train(["+debug=smoke", *overrides], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_job(cfg)
    check_job(cfg, machine=False)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_job_is_checked_as_far_as_its_dry_run_goes(tmp_path) -> None:
    """check_job adds the plan to check_run: its budget, and the state's memory here."""
    steps = compose_train(["+debug=smoke", "trainer.max_steps=0"], tmp_path / "run", tmp_path)
    check_run(steps)  # the budget is resolved with the plan
    with pytest.raises(ConfigError, match=r"^budget=steps needs trainer.max_steps >= 1, got 0"):
        check_job(steps)
    # with the default data's 4,096 tokens: 31.6 billion parameters, at 16 bytes each for
    # weights, gradients and AdamW's two moments
    big = compose_train(["model=gpt_8x7b"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"^the model's 31,564,570,624 parameters need at le"):
        check_job(big)
    check_job(big, machine=False)  # a cluster's node may have it
    check_job(compose_train(["model=gpt_8x7b", "dry_run=true"], tmp_path / "run", tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp8", "trainer.precision=fp8: allowed auto, 64, 32, 16, "),
        ("trainer.accelerator=foo", "trainer.accelerator=foo: allowed auto, gpu, cpu, cuda"),
        ("trainer.devices=0", "trainer.devices=0: allowed an int >= 1 (that many devices), -1"),
        ("trainer.devices=-2", "trainer.devices=-2: allowed an int >= 1"),
        ("trainer.devices=[]", "trainer.devices=[]: allowed an int >= 1"),
        ("trainer.devices=[0,1]", "trainer.devices=[0, 1] with trainer.accelerator=cpu: allowed"),
    ],
)
def test_trainer_values_lightning_refuses_are_refused_before_any_data(
    override: str, message: str, tmp_path
) -> None:
    """Lightning refuses these only when the Trainer is built, after the data is prepared,
    through a traceback; a dry run plans for another machine, but not with such values."""
    for dry in ([], ["dry_run=true"]):
        cfg = compose_train(["+debug=smoke", override, *dry], tmp_path / "run", tmp_path)
        with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
            check_run(cfg)
    assert list(tmp_path.iterdir()) == []


def test_every_precision_lmlab_allows_is_one_lightning_builds() -> None:
    from lightning.fabric.connector import _convert_precision_to_unified_args

    from lmlab.train.plan import trainer_precisions

    allowed = trainer_precisions()
    assert {"auto", "32-true", "bf16-mixed", "16-mixed", "64-true"} <= set(allowed)
    for precision in allowed[1:]:
        _convert_precision_to_unified_args(precision)  # raises on a value it does not take
    for ok in (["trainer=gpu", "dry_run=true"], ["trainer.devices=auto"], ["trainer.devices=1"]):
        check_run(compose_train(["+debug=smoke", *ok]), machine=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.vocab_size=100"], "data.vocab_size=100 is too small: byte-level BPE needs at le"),
        (
            ["model=t5_tiny", "model.max_seq_len=4096", "model.positional=rope"],
            "data.seq_len=4096 makes 227 noise spans per row, more than the tokenizer's 100 sen",
        ),
    ],
)
def test_what_the_tokenizer_must_hold_is_checked_before_the_corpus_is_read(
    overrides: list[str], message: str, tmp_path
) -> None:
    """Arithmetic, not data: a dry run refuses them as the run would, before any data."""
    for dry in ([], ["dry_run=true"]):
        cfg = compose_train(["+debug=smoke", *overrides, *dry], tmp_path / "run", tmp_path)
        with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
            check_run(cfg)
    assert list(tmp_path.iterdir()) == []
    check_run(compose_train(["+debug=smoke", "model=t5_tiny"], tmp_path / "run", tmp_path))
