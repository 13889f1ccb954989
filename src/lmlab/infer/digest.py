"""The identity of what a checkpoint gives (``model_digest``): its model config, tokenizer
and a few values of each weight tensor, cheap at any size. ``lmlab evaluate`` records it with
each score, training in ``results.json`` (``lmlab.infer.pretrained.checkpoint_digest``), so
that ``compare`` can tell a run's evaluation from another model's."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from tokenizers import Tokenizer

from lmlab.config import RUNTIME_FIELDS, ModelConfig, model_config_dict

# Values of each weight tensor (from its start and from its end) that ``model_digest`` reads
DIGEST_VALUES = 1024


def model_digest(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    tok: Tokenizer,
    saved: dict[str, Any] | None = None,
) -> str:
    """An identity of what a checkpoint gives, cheap at any size: its model config (less the
    fields that change how, not what, it computes), its tokenizer, and per weight tensor the
    name, shape, dtype and first and last ``DIGEST_VALUES`` values as stored (a few pages of a
    memory-mapped file). Two trainings, or one run at two steps, differ in every trained
    tensor; two files of the same weights (a copy, ``last.ckpt`` and its step's file, a
    sharded folder and its consolidated file) share one digest. ``saved``: the checkpoint's
    ``model_config`` as it was saved, whose fields alone are read (``fields_saved``)."""
    config = {k: v for k, v in model_config_dict(cfg).items() if k not in RUNTIME_FIELDS}
    config = fields_saved(config, saved)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(tok.to_str().encode())
    for name in sorted(state):
        values = state[name].detach().reshape(-1)  # a view of a contiguous (stored) tensor
        h.update(f"{name} {tuple(state[name].shape)} {values.dtype}".encode())
        for part in (values[:DIGEST_VALUES], values[-DIGEST_VALUES:]):
            h.update(part.cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


def fields_saved(config: dict[str, Any], saved: dict[str, Any] | None) -> dict[str, Any]:
    """``config`` less the fields (``moe``'s too) that the checkpoint's saved model config
    ``saved`` lacks (None: lacks none): a field added to ModelConfig since it was saved
    (``embed_scale``, ``moe.granularity``) holds the default that computes what the model did
    then, so the checkpoint keeps the digest the lmlab that saved it gave, which its eval
    records and results.json hold."""
    if saved is None:
        return config
    return {
        k: fields_saved(v, saved[k]) if isinstance(v, dict) and isinstance(saved[k], dict) else v
        for k, v in config.items()
        if k in saved
    }
