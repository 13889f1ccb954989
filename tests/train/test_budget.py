"""Budget arithmetic for every kind (tokens, steps, FLOPs, rounding), its errors, its configs."""

from __future__ import annotations

import math
import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lmlab.config import CONF_DIR
from lmlab.errors import ConfigError
from lmlab.train.budget import (
    BudgetConfig,
    BudgetKind,
    budget_params,
    overshoot,
    resolve_budget,
)
from lmlab.train.compose import compose_train

N = 1_000_000
TPS = 4096  # tokens per step


def budget_group(name: str) -> str:
    """``budget=name`` once conf/train.yaml lists the budget group, ``+budget=name`` before."""
    wired = "budget:" in (CONF_DIR / "train.yaml").read_text()
    return f"{'' if wired else '+'}budget={name}"


KIND_CONFIGS = {
    BudgetKind.steps: BudgetConfig(),
    BudgetKind.chinchilla: BudgetConfig(kind=BudgetKind.chinchilla),
    BudgetKind.flops: BudgetConfig(kind=BudgetKind.flops, flops=1e15),
    BudgetKind.tokens: BudgetConfig(kind=BudgetKind.tokens, tokens=3e7),
}


def test_every_kind_has_a_config_file_and_a_test_case() -> None:
    assert set(KIND_CONFIGS) == set(BudgetKind)
    assert {p.stem for p in (CONF_DIR / "budget").glob("*.yaml")} == {k.value for k in BudgetKind}


@pytest.mark.parametrize("kind", list(BudgetKind))
def test_trained_tokens_are_whole_steps_covering_the_target(kind: BudgetKind) -> None:
    b = resolve_budget(KIND_CONFIGS[kind], N, TPS, max_steps=300)
    assert b.kind == kind and b.tokens_per_step == TPS
    assert b.tokens == b.steps * TPS
    assert b.flops == 6 * N * b.tokens
    assert b.target_tokens <= b.tokens < b.target_tokens + TPS  # ceil: under one extra step
    assert b.as_dict()["kind"] == kind.value


def test_steps_budget_is_max_steps() -> None:
    b = resolve_budget(BudgetConfig(), N, TPS, max_steps=300)
    assert (b.steps, b.tokens, b.flops) == (300, 300 * TPS, 6.0 * N * 300 * TPS)
    assert b.nominal_flops is None


def test_chinchilla_is_tokens_per_param_times_n() -> None:
    """Hoffmann et al. 2022: 20 tokens per parameter; 2e7 / 4096 = 4882.8 -> 4883 steps."""
    b = resolve_budget(BudgetConfig(kind=BudgetKind.chinchilla), N, TPS, max_steps=1)
    assert (b.target_tokens, b.steps, b.tokens) == (20_000_000, 4883, 4883 * TPS)
    b10 = resolve_budget(BudgetConfig(kind="chinchilla", tokens_per_param=10), N, TPS, 1)
    assert b10.target_tokens == 10_000_000 and b10.steps == math.ceil(1e7 / TPS)


def test_flops_budget_is_c_over_6n() -> None:
    b = resolve_budget(BudgetConfig(kind=BudgetKind.flops, flops=6e12), N, 1000, max_steps=1)
    assert (b.target_tokens, b.steps, b.tokens, b.flops) == (1e6, 1000, 1_000_000, 6e12)
    assert b.nominal_flops == 6e12


@pytest.mark.parametrize("count", ["active", "total"])
def test_budget_n_is_the_parameter_count_it_names(count: str) -> None:
    """A Mixture of Experts has two counts; budget.params picks N (active by default)."""
    counts = {"total": 3 * N, "active": N}
    cfg = BudgetConfig(kind=BudgetKind.flops, flops=6e12, params=count)
    assert BudgetConfig().params == "active"
    b = resolve_budget(cfg, budget_params(cfg, counts), 1000, max_steps=1)
    n = counts[count]
    assert (b.n_params, b.target_tokens, b.flops) == (n, 6e12 / (6 * n), 6.0 * n * b.tokens)
    assert b.as_dict()["params"] == count


def test_float_noise_does_not_add_a_step() -> None:
    """1.1 x 3000 is 3300.0000000000005 in floating point: still exactly 33 steps of 100."""
    b = resolve_budget(BudgetConfig(kind="chinchilla", tokens_per_param=1.1), 3000, 100, 1)
    assert b.target_tokens / 100 > 33  # the noise is there...
    assert (b.steps, b.tokens) == (33, 3300)  # ...and ignored


def test_tokens_budget_rounds_up_to_whole_steps() -> None:
    b = resolve_budget(BudgetConfig(kind=BudgetKind.tokens, tokens=1e6), N, TPS, max_steps=1)
    assert (b.steps, b.tokens) == (245, 245 * TPS)  # 1e6 / 4096 = 244.1


def test_whole_steps_far_past_the_budget_are_said() -> None:
    """D just above one global batch trains two: twice what was asked, said (a run's warning,
    a dry run's plan); the usual rounding (under 10% here: 245 steps for 244.1) is not."""
    just_over = resolve_budget(BudgetConfig(kind=BudgetKind.tokens, tokens=4097), N, TPS, 1)
    assert overshoot(just_over.as_dict()) == (
        "+100% past the 4,097 tokens asked (2 whole steps of 4,096)"
    )
    usual = resolve_budget(BudgetConfig(kind=BudgetKind.tokens, tokens=1e6), N, TPS, 1)
    assert overshoot(usual.as_dict()) is None
    exact = resolve_budget(BudgetConfig(kind=BudgetKind.steps), N, TPS, max_steps=3)
    assert overshoot(exact.as_dict()) is None


def test_a_budget_below_one_step_or_past_a_64_bit_count_is_refused() -> None:
    """One step would overshoot a budget smaller than the global batch many times over (a
    1e6-FLOP budget trained 2e9 FLOPs, unsaid); a budget past 2**63 tokens would overflow
    the sampler's row count once training started. Exactly one step's worth trains one step."""
    one_step = resolve_budget(BudgetConfig(kind=BudgetKind.tokens, tokens=TPS), N, TPS, 1)
    assert (one_step.steps, one_step.tokens) == (1, TPS)
    for cfg, named in (
        (BudgetConfig(kind=BudgetKind.tokens, tokens=1), "budget.tokens=1 asks for 1 tokens"),
        (BudgetConfig(kind=BudgetKind.tokens, tokens=TPS - 1), f"asks for {TPS - 1:,} tokens"),
        (BudgetConfig(kind=BudgetKind.flops, flops=1e6), "budget.flops=1e+06 asks for 0.1667"),
        (BudgetConfig(kind=BudgetKind.chinchilla, tokens_per_param=1e-6), "budget=chinchilla"),
    ):
        with pytest.raises(ConfigError, match=rf"{re.escape(named)}.* less than one step's "):
            resolve_budget(cfg, N, TPS, max_steps=1)
    for cfg, named in (
        (BudgetConfig(kind=BudgetKind.tokens, tokens=1e30), "budget.tokens=1e+30"),
        (BudgetConfig(kind=BudgetKind.flops, flops=1e40), "budget.flops=1e+40"),
        (BudgetConfig(), "trainer.max_steps=10000000000000000000"),
    ):
        with pytest.raises(
            ConfigError, match=rf"{re.escape(named)} asks for .* past the 9.22e\+18"
        ):
            resolve_budget(cfg, N, TPS, max_steps=10**19)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "flops"}, r"budget=flops needs budget.flops=<FLOPs>"),
        ({"kind": "tokens"}, r"budget=tokens needs budget.tokens=<tokens>"),
        ({"kind": "flops", "flops": -1e15}, r"budget.flops=-1e\+15 must be a positive"),
        ({"kind": "tokens", "tokens": 0.0}, r"budget.tokens=0 must be a positive"),
        ({"kind": "chinchilla", "tokens_per_param": 0}, r"budget.tokens_per_param=0 must be"),
        # NaN and inf passed and crashed the run with a traceback when it sized D
        ({"kind": "chinchilla", "tokens_per_param": math.nan}, r"=nan must be > 0 and finite"),
        ({"kind": "chinchilla", "tokens_per_param": math.inf}, r"=inf must be > 0 and finite"),
        ({"flops": 1e15}, r"budget.flops=1e\+15 is set but budget.kind=steps ignores it"),
        ({"kind": "chinchilla", "tokens": 5.0}, r"budget.tokens=5 is set but budget.kind=chi"),
        ({"tokens_per_param": 40}, r"budget.tokens_per_param=40 is set but budget.kind=steps "),
        ({"kind": "flops", "flops": 1e15, "tokens_per_param": 5}, r"kind=flops ignores it"),
    ],
)
def test_bad_budget_names_field_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BudgetConfig(**kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((BudgetConfig(), N, TPS, -1), r"budget=steps needs trainer.max_steps >= 1, got -1"),
        ((BudgetConfig(), 0, TPS, 10), r"parameter count N >= 1, got 0"),
        ((BudgetConfig(), N, 0, 10), r"tokens per step=0 must be >= 1"),
    ],
)
def test_bad_resolve_arguments_name_the_value(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_budget(*args)


@pytest.mark.parametrize("kind", list(BudgetKind))
def test_budget_files_compose_into_the_schema(kind: BudgetKind) -> None:
    extra = {"flops": ["budget.flops=2e12"], "tokens": ["budget.tokens=1e6"]}
    cfg = compose_train([budget_group(kind.value), *extra.get(kind.value, [])])
    budget = OmegaConf.to_object(cfg.budget)
    assert isinstance(budget, BudgetConfig) and budget.kind == kind


def test_budget_file_without_its_value_fails_with_config_error() -> None:
    cfg = compose_train([budget_group("flops")])
    with pytest.raises(ConfigError, match="budget=flops needs budget.flops"):
        OmegaConf.to_object(cfg.budget)


@pytest.mark.parametrize(
    "override", ["budget.kind=weeks", "budget.flopz=1e12", "budget.params=all"]
)
def test_budget_typos_fail_at_compose_time(override: str) -> None:
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_train([budget_group("steps"), override])


def test_a_budget_that_sets_the_steps_refuses_max_steps_asked_for(tmp_path) -> None:
    """``trainer.max_steps`` is ``budget=steps``' only: asked for under another budget, on
    the command line or by ``+debug=smoke``, it is refused, not silently ignored (a smoke
    run of a Chinchilla budget would train for hours); the trainer preset's default is not
    asked for."""
    from lmlab.train.compose import compose_train
    from lmlab.train.preflight import check_run

    tokens = ["budget=tokens", "budget.tokens=100000"]
    cases = [
        ([*tokens, "trainer.max_steps=7"], r"^trainer.max_steps=7 is read by budget=steps only"),
        (
            ["budget=chinchilla", "+debug=smoke"],
            r"^trainer.max_steps=4 \(from \+debug=smoke\) is read by budget=steps only: "
            r"budget=chinchilla .*; leave out \+debug=smoke \(it sets the steps\)",
        ),
        (["+debug=smoke", *tokens, "trainer.max_steps=7"], r"^trainer.max_steps=7 is read"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_run(compose_train([*overrides, "dry_run=true"], tmp_path, tmp_path))
    check_run(compose_train([*tokens, "dry_run=true"], tmp_path, tmp_path))
    check_run(compose_train(["+debug=smoke", "trainer.max_steps=7"], tmp_path, tmp_path))
