"""How an lmlab state dict and a Hugging Face one correspond, stated once per architecture and
read in both directions.

A ``Rule`` says that the lmlab tensors, stacked along their first dimension, equal the Hugging
Face tensors stacked the same way, transposed (GPT-2's ``Conv1D`` stores ``(in, out)``) and
scaled (T5 folds attention's 1/sqrt(d) into its query weights; lmlab scales the scores). One
rule covers a fused tensor on either side: lmlab's ``wkv`` is Llama's ``k_proj`` and
``v_proj``; GPT-2's ``c_attn`` is lmlab's ``wq`` and ``wkv``. ``Architecture`` is what one
transformers class needs: its config in both directions, the knob values it can express, and
its rules.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.config import Family, ModelConfig
from lmlab.errors import ConfigError, spelled


@dataclass(frozen=True)
class Rule:
    """cat(lmlab tensors, dim) == scale * T(cat(hf tensors, dim)), T a transpose when
    ``transpose``. ``hf_sizes`` splits the Hugging Face side when it has several tensors.
    ``dim`` is 0 (output rows) but for stacked experts, whose rows are dimension 1. With
    ``stacked`` the Hugging Face tensors are stacked on a new first dimension, not
    concatenated: one per expert, as save_pretrained writes Mixtral's."""

    lmlab: tuple[str, ...]
    hf: tuple[str, ...]
    transpose: bool = False
    scale: float = 1.0
    hf_sizes: tuple[int, ...] | None = None
    dim: int = 0
    stacked: bool = False


def rule(
    lmlab: str | Iterable[str],
    hf: str | Iterable[str],
    transpose: bool = False,
    scale: float = 1.0,
    hf_sizes: tuple[int, ...] | None = None,
    dim: int = 0,
    stacked: bool = False,
) -> Rule:
    as_tuple = lambda k: (k,) if isinstance(k, str) else tuple(k)
    return Rule(as_tuple(lmlab), as_tuple(hf), transpose, scale, hf_sizes, dim, stacked)


def linear(lmlab: str, hf: str, bias: bool, **kw: Any) -> list[Rule]:
    """An ``nn.Linear``'s weight, and its bias when it has one."""
    rules = [rule(f"{lmlab}.weight", f"{hf}.weight", **kw)]
    if bias:
        kw.pop("transpose", None)
        rules.append(rule(f"{lmlab}.bias", f"{hf}.bias", **kw))
    return rules


def norm(lmlab: str, hf: str, bias: bool) -> list[Rule]:
    return linear(lmlab, hf, bias)


def fused_kv(lmlab: str, hf_k: str, hf_v: str, cfg: ModelConfig, bias: bool) -> list[Rule]:
    """lmlab's fused ``wkv`` (keys, then values) from separate key and value projections."""
    kv = cfg.kv_heads * cfg.head_dim
    rules = [rule(f"{lmlab}.weight", (f"{hf_k}.weight", f"{hf_v}.weight"), hf_sizes=(kv, kv))]
    if bias:
        rules.append(rule(f"{lmlab}.bias", (f"{hf_k}.bias", f"{hf_v}.bias"), hf_sizes=(kv, kv)))
    return rules


def _oriented(t: torch.Tensor, transpose: bool) -> torch.Tensor:
    return t.t() if transpose and t.ndim == 2 else t


def to_lmlab(
    hf_state: Mapping[str, torch.Tensor], rules: list[Rule], shapes: Mapping[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """The lmlab state dict (``shapes``: the lmlab model's) from a Hugging Face one."""
    out: dict[str, torch.Tensor] = {}
    for r in rules:
        missing = [k for k in r.hf if k not in hf_state]
        if missing:
            raise ConfigError(f"the Hugging Face weights lack {', '.join(missing)}")
        tensors = [hf_state[k] for k in r.hf]
        full = torch.stack(tensors) if r.stacked else torch.cat(tensors, r.dim)
        full = _oriented(full, r.transpose)
        if r.scale != 1.0:
            full = full * r.scale
        sizes = [shapes[k][r.dim] for k in r.lmlab]
        for key, part in zip(r.lmlab, full.split(sizes, r.dim), strict=True):
            out[key] = part.contiguous()
    return out


def to_hf(lmlab_state: Mapping[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict from an lmlab one; every tensor its own storage (safetensors
    refuses views that share one)."""
    out: dict[str, torch.Tensor] = {}
    for r in rules:
        full = torch.cat([lmlab_state[k] for k in r.lmlab], r.dim)
        if r.scale != 1.0:
            full = full / r.scale
        full = _oriented(full, r.transpose)
        if r.stacked:
            parts = full.unbind(0)
        else:
            parts = full.split(list(r.hf_sizes), r.dim) if r.hf_sizes else [full]
        for key, part in zip(r.hf, parts, strict=True):
            out[key] = part.clone().contiguous()
    return out


# A requirement: the knob, the values the class can express (given the config), and why.
Requirement = tuple[str, Callable[[ModelConfig], tuple[Any, ...]], str]


def same(value: Any) -> Callable[[ModelConfig], tuple[Any, ...]]:
    return lambda cfg: (value,)


def heads_default(cfg: ModelConfig) -> tuple[Any, ...]:
    """``n_kv_heads`` values that mean plain multi-head attention."""
    return (None, cfg.n_heads)


def unmet(cfg: ModelConfig, requirements: list[Requirement]) -> list[tuple[str, str, str]]:
    """("model.<knob>=<value>", the values allowed, why) of each requirement ``cfg`` misses."""
    out = []
    for name, allowed_of, why in requirements:
        value, allowed = functools.reduce(getattr, name.split("."), cfg), allowed_of(cfg)
        if value not in allowed:
            shown = ", ".join(spelled(getattr(a, "value", a)) for a in allowed)
            out.append((f"model.{name}={spelled(getattr(value, 'value', value))}", shown, why))
    return out


def check(cfg: ModelConfig, requirements: list[Requirement], hf_class: str) -> None:
    """Every knob value the class cannot express, in one ConfigError."""
    problems = [
        f"{knob} ({f'needs {shown}' if shown else 'no value fits'}: {why})"
        for knob, shown, why in unmet(cfg, requirements)
    ]
    if problems:
        raise ConfigError(f"{hf_class} cannot express " + "; ".join(problems))


# What no transformers class lmlab converts to can express, whichever it is.
EVERY_CLASS: list[Requirement] = [
    ("embed_scale", same(False), "its token embeddings enter unscaled"),
]


def no_fill(cfg: ModelConfig, like: torch.Tensor) -> dict[str, torch.Tensor]:
    return {}


@dataclass(frozen=True)
class Architecture:
    """One transformers class and how lmlab's knobs map onto it."""

    hf_class: str  # "LlamaForCausalLM"
    model_type: str  # config.json's model_type
    family: Family
    # (HF config, whether the loaded model's head is its input embedding) -> ModelConfig fields
    config_from_hf: Callable[[Any, bool], dict[str, Any]]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]  # ModelConfig -> HF config fields
    rules: Callable[[ModelConfig], list[Rule]]  # the transformers model's state dict
    # The layout save_pretrained writes, where it is not the state dict's (transformers 5
    # fuses Mixtral's experts in memory and writes them one by one): to_hf writes it.
    saved_rules: Callable[[ModelConfig], list[Rule]] | None = None
    requirements: list[Requirement] = field(default_factory=list)
    # Hugging Face tensors with no lmlab counterpart that keep the function (BERT's segment
    # table for a model without segments): (config, a tensor of the right dtype) -> tensors
    fill_to_hf: Callable[[ModelConfig, torch.Tensor], dict[str, torch.Tensor]] = no_fill
    selects: Callable[[ModelConfig], bool] = lambda cfg: True  # the class for this config?
    selected_by: str = ""  # what ``selects`` asks for, in knobs: "model.positional=learned"
    # Prefixes of Hugging Face weights a folder may hold that the class leaves out for its
    # own task (BERT's pooler and next-sentence head, in pre-training checkpoints): dropped.
    # Any other weight the class leaves out (another task's head) is refused.
    droppable: tuple[str, ...] = ()
    # Knob values the class has no field for that change only how the model trains (Mixtral's
    # router z-loss and capacity factor): to_hf writes the weights, which compute the same,
    # and names each one it leaves out rather than refusing.
    training_only: list[Requirement] = field(default_factory=list)

    def check(self, cfg: ModelConfig) -> None:
        if cfg.moe.num_experts and self.model_type != "mixtral":
            decoder = cfg.family.value == "gpt"  # Mixtral's class is a decoder's alone
            how = (
                "a GPT Mixture of Experts converts as MixtralForCausalLM: +experiment=mixtral"
                if decoder
                else f"transformers has no class of a {cfg.family.value.upper()} Mixture of "
                "Experts; it stays an lmlab checkpoint"
            )
            raise ConfigError(
                f"{self.hf_class} cannot express model.moe.num_experts={cfg.moe.num_experts} "
                f"({how})"
            )
        check(cfg, [*EVERY_CLASS, *self.requirements], self.hf_class)

    def rules_to_save(self, cfg: ModelConfig) -> list[Rule]:
        """The rules of the layout save_pretrained writes."""
        return (self.saved_rules or self.rules)(cfg)

    def left_out(self, cfg: ModelConfig) -> list[str]:
        """The training settings of ``cfg`` the class has no field for, each with why."""
        return [f"{knob} ({why})" for knob, _, why in unmet(cfg, self.training_only)]


def query_scale(cfg: ModelConfig) -> float:
    """T5's scores are q.k (no 1/sqrt(d)); lmlab's q'.k/sqrt(d) equals them for q' = sqrt(d) q."""
    return math.sqrt(cfg.head_dim)
