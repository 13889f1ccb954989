"""Compute budgets: how long to train, from steps, tokens, FLOPs or a tokens-per-parameter ratio.

A budget fixes the number of training tokens D; the training length follows from the global
batch in tokens (micro-batch x sequence length x devices x nodes x gradient accumulation):

* ``steps``: D = ``trainer.max_steps`` x tokens per step (the plain Lightning setting).
* ``chinchilla``: D = ``tokens_per_param`` x N, 20 by default, the compute-optimal ratio of
  Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556).
* ``flops``: D = C / (6 N), from the approximation C = 6 N D of training FLOPs (Kaplan et al.
  2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361, section 2.1; Hoffmann et
  al. 2022 use the same).
* ``tokens``: D given.

N is the parameter count ``budget.params`` names: ``active`` (default; what one token runs
through, so 6 N D is the compute of a Mixture of Experts too) or ``total`` (every expert). A
dense model's two counts are equal. ``results.json``'s ``flops`` uses the same N.

Rounding: steps = ceil(D / tokens_per_step). The budget then reports what is actually
trained, tokens = steps x tokens_per_step and flops = 6 N tokens, which exceed the requested D
by less than one global batch. A D below one global batch is refused (one step would overshoot
it many times over), as is one past a 64-bit count of tokens. ``nominal_flops`` keeps the
requested C of a ``flops`` budget, so the runs of an isoFLOP sweep group by the C they were
given.

No torch import: a config is validated (and a budget resolved) before anything heavy loads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig

from lmlab.config import BudgetConfig, BudgetKind, ParamCount
from lmlab.config.asked import asked_fields, command_line_overrides
from lmlab.errors import ConfigError

# D / tokens_per_step is rounded to this many decimals before ceil, so float noise in
# C / (6 N) (e.g. 300.0000000001 steps) does not add a whole step.
_STEP_DECIMALS = 6


# Whole steps that train more than this share past the D asked for are said (a run's warning,
# a dry run's plan): below one global batch of D is refused, and just above it overshoots.
OVERSHOOT_SAID = 0.10

# The most tokens a run may train: the data sampler counts rows (and results.json tokens) in a
# signed 64-bit integer.
MAX_TOKENS = 2**63 - 1


def asked(cfg: BudgetConfig, max_steps: int) -> str:
    """The setting that gave the budget's D, as the user typed it."""
    kind = BudgetKind(cfg.kind)
    if kind == BudgetKind.steps:
        return f"trainer.max_steps={max_steps}"
    if kind == BudgetKind.chinchilla:
        return f"budget=chinchilla (budget.tokens_per_param={cfg.tokens_per_param:g} x N)"
    return f"budget.{kind.value}={getattr(cfg, kind.value):g}"


@dataclass(frozen=True)
class Budget:
    """A resolved budget: what will actually be trained (see the module docstring)."""

    kind: BudgetKind
    tokens: int  # steps * tokens_per_step, trained
    steps: int
    flops: float  # 6 * N * tokens, trained
    tokens_per_step: int
    target_tokens: float  # D asked for, before rounding to whole steps
    nominal_flops: float | None  # C of a ``flops`` budget; None for the other kinds
    params: ParamCount  # which count N is: active or total
    n_params: int  # N

    def as_dict(self) -> dict[str, Any]:
        """Plain types, for ``plan.json``, ``results.json`` and loggers."""
        return {**asdict(self), "kind": self.kind.value, "params": self.params.value}


def overshoot(budget: dict[str, Any]) -> str | None:
    """``"+100% past the 4,097 tokens asked (2 whole steps of 4,096)"`` where whole steps
    train more than ``OVERSHOOT_SAID`` past the budget's D (a ``Budget.as_dict``); else None.
    An isoFLOP run then sits that far above the C it was given."""
    over = budget["tokens"] / budget["target_tokens"] - 1
    if over <= OVERSHOOT_SAID:
        return None
    return (
        f"{over:+.0%} past the {budget['target_tokens']:,.0f} tokens asked "
        f"({budget['steps']:,} whole steps of {budget['tokens_per_step']:,})"
    )


def target_tokens(cfg: BudgetConfig, n_params: int, tokens_per_step: int, max_steps: int) -> float:
    """D requested by the budget, before rounding to whole steps."""
    kind = BudgetKind(cfg.kind)
    if kind == BudgetKind.steps:
        if max_steps < 1:
            raise ConfigError(f"budget=steps needs trainer.max_steps >= 1, got {max_steps}")
        return float(max_steps * tokens_per_step)
    if kind == BudgetKind.chinchilla:
        return cfg.tokens_per_param * n_params  # Hoffmann et al. 2022: D ~ 20 N
    if kind == BudgetKind.flops:
        return cfg.flops / (6.0 * n_params)  # C = 6 N D (Kaplan et al. 2020)
    return float(cfg.tokens)


def check_steps_asked(kind: BudgetKind, max_steps: int, asked: str | None) -> None:
    """``trainer.max_steps`` is read by ``budget=steps`` only: asked for under another budget
    (``asked``: the override, ``+debug=smoke`` among them), it would be ignored."""
    if asked and kind != BudgetKind.steps:
        typed = asked.lstrip("+~").startswith("trainer.")
        where = "" if typed else f" (from {asked})"
        fix = (
            "drop trainer.max_steps, or use budget=steps"
            if typed
            else f"leave out {asked} (it sets the steps) and make the budget small for a "
            "short run, or use budget=steps"
        )
        raise ConfigError(
            f"trainer.max_steps={max_steps}{where} is read by budget=steps only: "
            f"budget={kind.value} sets the steps from its tokens (dry_run=true shows them); {fix}"
        )


def check_max_steps(cfg: DictConfig) -> None:
    """``check_steps_asked`` for a composed run config and the command line that asked for
    it; cheap (no torch): the command line runs it before the heavy imports."""
    asked = asked_fields(command_line_overrides(), "trainer").get("max_steps")
    check_steps_asked(BudgetKind(cfg.budget.kind), cfg.trainer.max_steps, asked)


def budget_params(cfg: BudgetConfig, counts: dict[str, int]) -> int:
    """N for the budget: ``counts`` (a ``param_breakdown``) ``active`` or ``total``."""
    return counts[ParamCount(cfg.params).value]


def resolve_budget(
    cfg: BudgetConfig, n_params: int, tokens_per_step: int, max_steps: int
) -> Budget:
    """Steps, tokens and FLOPs of a run of an N-parameter model (N: ``budget_params``) with a
    global batch of ``tokens_per_step`` tokens. ``max_steps`` (``trainer.max_steps``) is read by
    ``budget=steps`` only. steps = ceil(D / tokens_per_step), at least one whole step of D;
    tokens and flops are those of the whole steps actually trained."""
    if n_params < 1:
        raise ConfigError(f"a budget needs the parameter count N >= 1, got {n_params}")
    if tokens_per_step < 1:
        raise ConfigError(f"tokens per step={tokens_per_step} must be >= 1")
    d_target = target_tokens(cfg, n_params, tokens_per_step, max_steps)
    kind = BudgetKind(cfg.kind)
    steps = math.ceil(round(d_target / tokens_per_step, _STEP_DECIMALS))
    if steps < 1 or d_target < tokens_per_step * (1 - 10**-_STEP_DECIMALS):
        raise ConfigError(
            f"{asked(cfg, max_steps)} asks for {d_target:,.4g} tokens (N={n_params:,}), less "
            f"than one step's {tokens_per_step:,} (the global batch): training one step would "
            "overshoot it; raise the budget, or lower the global batch (data.batch_size, "
            "data.seq_len, trainer.accumulate_grad_batches)"
        )
    tokens = steps * tokens_per_step
    if tokens > MAX_TOKENS:
        raise ConfigError(
            f"{asked(cfg, max_steps)} asks for {d_target:,.4g} tokens, past the {MAX_TOKENS:.3g} "
            "a run can count (a 64-bit integer of rows and tokens): lower it"
        )
    return Budget(
        kind=kind,
        tokens=tokens,
        steps=steps,
        flops=6.0 * n_params * tokens,
        tokens_per_step=tokens_per_step,
        target_tokens=d_target,
        nominal_flops=float(cfg.flops) if kind == BudgetKind.flops else None,
        params=ParamCount(cfg.params),
        n_params=n_params,
    )
