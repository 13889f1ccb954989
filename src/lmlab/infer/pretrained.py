"""Trained models back from checkpoints, for generation, fill-mask, infilling and probes.

A checkpoint carries what it takes to use it alone: the weights, ``model_config`` (plain types)
and the tokenizer (its JSON), so ``ckpt=<file>`` is all a user passes. Keys are the model's own
(the task's ``model.`` prefix and any ``_orig_mod.``/``module.`` wrapper prefixes are removed),
so a checkpoint of any strategy loads into a single-process model. A sharded (FSDP) checkpoint
folder is consolidated in memory; ``src/consolidate.py`` writes it as one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer
from torch import nn

from lmlab.config import Family, ModelConfig
from lmlab.data.tokenizer import Specials
from lmlab.errors import ConfigError
from lmlab.infer.checkpoint import consolidate, is_sharded, read_checkpoint
from lmlab.model import build_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_forward_module.")


@dataclass
class Pretrained:
    model: nn.Module
    tokenizer: Tokenizer
    cfg: ModelConfig
    path: Path
    global_step: int | None = None  # the training step the checkpoint was saved at

    @property
    def family(self) -> Family:
        return self.cfg.family

    @property
    def specials(self) -> Specials:
        return Specials.of(self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def model_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's own keys from a LightningModule's state dict."""
    out = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.replace(prefix, "")
        if key.startswith("model."):
            out[key.removeprefix("model.")] = value
    return out


def check_device(device: str) -> torch.device:
    """``device`` as a torch device this process can use (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    usable = "cpu" + (
        f", cuda (0 to {torch.cuda.device_count() - 1})" if torch.cuda.is_available() else ""
    )
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError):
        raise ConfigError(
            f"device={device}: not usable on this machine; allowed: {usable}"
        ) from None
    if dev.type == "meta":
        raise ConfigError(f"device={device}: holds no weights; allowed: {usable}")
    return dev


def load(
    path: str | Path, device: str = "cpu", dtype: str = "fp32", tokenizer: str | None = None
) -> Pretrained:
    """The model of checkpoint ``path`` in eval mode on ``device`` in ``dtype`` (fp32, bf16,
    fp16, or auto: as stored), with its tokenizer (or the ``tokenizer.json`` at ``tokenizer``)."""
    check_device(device)
    path = Path(path)
    if not (path.is_file() or is_sharded(path)):
        raise ConfigError(f"ckpt={path}: no such checkpoint file or sharded checkpoint folder")
    if dtype not in DTYPES and dtype != "auto":
        raise ConfigError(f"dtype={dtype!r}: allowed {', '.join(DTYPES)}, auto")
    ckpt = consolidate(path) if is_sharded(path) else read_checkpoint(path)
    if "model_config" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt={path}: not an lmlab checkpoint (no model_config/state_dict)")
    task = ckpt.get("task", {})
    if task.get("kind") == "classify":  # seq2seq fine-tunes T5 as it is: it infills as before
        raise ConfigError(
            f"ckpt={path} is a task=classify model (a classification head over the labels "
            f"{', '.join(task.get('labels', [])[:10])}), not a language model: generation, "
            "probes and conversion read language models; fine-tune it on with init_from"
        )
    cfg: ModelConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(ModelConfig), ckpt["model_config"])
    )
    if tokenizer is not None:
        tok = Tokenizer.from_file(str(tokenizer))
    elif "tokenizer" in ckpt:
        tok = Tokenizer.from_str(ckpt["tokenizer"])
    else:
        raise ConfigError(
            f"ckpt={path} holds no tokenizer (saved by an older lmlab): pass "
            "tokenizer=<the run's data cache>/tokenizer.json"
        )
    model = build_model(cfg)
    state = model_state(ckpt["state_dict"])
    model.load_state_dict(state)
    stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model.to(device=device, dtype=stored if dtype == "auto" else DTYPES[dtype]).eval()
    return Pretrained(model, tok, cfg, path, ckpt.get("global_step"))
