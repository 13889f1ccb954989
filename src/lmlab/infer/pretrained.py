"""Trained models back from checkpoints, for generation, fill-mask, infilling and probes.

A checkpoint carries what it takes to use it alone: the weights, ``model_config`` (plain types)
and the tokenizer (its JSON), so ``ckpt=<file>`` is all a user passes. Keys are the model's own
(the task's ``model.`` prefix and any ``_orig_mod.``/``module.`` wrapper prefixes are removed),
so a checkpoint of any strategy loads into a single-process model. A sharded (FSDP) checkpoint
folder is consolidated in memory; ``src/consolidate.py`` writes it as one file.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tokenizers import Tokenizer
from torch import nn

from lmlab.config import Family, ModelConfig
from lmlab.data.tokenizer import Specials, encode, prompt_ids
from lmlab.errors import ConfigError, first_line
from lmlab.infer.checkpoint import consolidate, is_sharded, no_checkpoint, read_checkpoint
from lmlab.infer.ckpt_tokenizer import (
    carried_tokenizer,
    check_not_replaced,
    read_tokenizer,
    stored_tokenizer,
    trained_vocab,
)
from lmlab.infer.declared import Declared
from lmlab.infer.digest import model_digest

NOT_LMLAB = "not an lmlab checkpoint (no model_config/state_dict)"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_forward_module.")


@dataclass
class Pretrained:
    model: nn.Module
    tokenizer: Tokenizer
    cfg: ModelConfig
    path: Path
    global_step: int | None = None  # the training step the checkpoint was saved at
    digest: str | None = None  # ``model_digest`` of the checkpoint (None: a model in memory)
    task: str = "lm"  # the task it was trained on (``TaskKind``'s value): seq2seq answers texts
    declared: Declared = Declared()  # what a converted model's publisher declares

    @property
    def family(self) -> Family:
        return self.cfg.family

    @property
    def specials(self) -> Specials:
        """The tokenizer's special tokens by role, EOS as a converted model declares it
        (``Declared.specials``)."""
        return self.declared.specials(self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bos_id(self) -> int | None:
        """The token training starts every document of a GPT with (``pack``: the tokenizer's
        BOS, such as Llama's ``<s>``); None without one (lmlab's and GPT-2's tokenizers: a
        document follows the EOS of the one before) and for BERT and T5, which frame their
        inputs themselves."""
        return bos_token_id(self.tokenizer, self.family)

    @property
    def end_ids(self) -> list[int]:
        """The tokens that end a text, where generation stops (``Declared.end_ids``): a
        converted model's generation config's ends (an instruct model's ``<|eot_id|>`` or
        ``<|im_end|>``), as transformers' ``generate`` stops; without them, the ends it
        declares and the one training ends every document with."""
        return self.declared.end_ids(self.tokenizer)

    @functools.cached_property
    def hf_tokenizer(self) -> Any:
        """The tokenizer as transformers' (``hf_tokenizer_of``), its roles as the model
        declares them: what a chat template is rendered with."""
        from lmlab.infer.hf.tokenizer_io import hf_tokenizer_of

        return hf_tokenizer_of(
            self.tokenizer, self.specials, self.family, roles=self.declared.roles
        )

    def chat_text(
        self,
        history: list[dict[str, str]],
        add_generation_prompt: bool = True,
        template: bool | str = True,
    ) -> str:
        """``history`` (``[{"role": "user", "content": ...}, ...]``) in the chat template the
        model declares (``Declared.chat``: ``template`` names one of several), rendered by
        transformers' ``apply_chat_template`` with the model's tokenizer (its BOS and declared
        EOS are the template's ``bos_token`` and ``eos_token``), as lm-eval's HFLM renders it:
        the assistant's turn opened (``add_generation_prompt``), else the last message
        continued. A ConfigError where the model declares no template."""
        return self.hf_tokenizer.apply_chat_template(
            history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
            chat_template=self.declared.chat(template, f"ckpt={self.path}"),
        )

    def chat_ids(self, text: str, template: bool | str = True) -> list[int]:
        """A GPT's input for the user's message ``text``: the chat with that one turn and the
        assistant's turn opened (``chat_text``; ``template`` names one of several), its
        special tokens read as such and nothing added, as transformers'
        ``apply_chat_template(tokenize=True)`` gives it."""
        turn = [{"role": "user", "content": text}]
        return encode(self.tokenizer, self.chat_text(turn, template=template))

    def prompt_ids(self, text: str) -> list[int]:
        """A GPT's input for the prompt ``text``, framed as training frames a document: BOS
        first where there is one (as a Llama tokenizer's ``tok(text)``), then the text's
        tokens; an empty prompt without BOS is what evaluation conditions an empty context on
        (``Declared.prefix_id``: a converted model's declared BOS, else its EOS; lmlab's: the
        EOS a document follows)."""
        if text or self.bos_id is not None:
            return prompt_ids(self.tokenizer, text)
        eos = self.specials.id(self.tokenizer, "eos", "an empty prompt")
        return [self.declared.prefix_id(self.tokenizer, None, eos)]


def bos_token_id(tokenizer: Tokenizer, family: Family) -> int | None:
    """``Pretrained.bos_id`` of a model of ``family`` with ``tokenizer``, from the two alone
    (a training run's evals are checked before its model is built)."""
    if family != Family.gpt:
        return None
    before, _ = Specials.of(tokenizer).frame(tokenizer, Family.gpt, "a document's start")
    return before[0] if before else None


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


def saved_config(ckpt: dict, where: str) -> ModelConfig:
    """A checkpoint's ``model_config`` as this lmlab's ModelConfig; ``where`` names the
    checkpoint in the one line that says it does not fit."""
    try:
        return OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(ModelConfig), ckpt["model_config"])
        )
    except OmegaConfBaseException as err:  # a field this lmlab lacks, or a bad value
        raise ConfigError(
            f"{where}: its model_config does not fit this lmlab's ModelConfig ("
            f"{first_line(err)}): saved by another lmlab version?"
        ) from None


def checkpoint_digest(path: str | os.PathLike, step: int | None = None) -> str | None:
    """``model_digest`` of the checkpoint file ``path`` as ``load`` computes it with the
    tokenizer it carries (what ``lmlab evaluate`` records), without building the model: the
    file is memory-mapped and a few pages of each tensor read. None for a sharded folder
    (consolidating it reads every shard), a checkpoint that carries no model config or
    tokenizer, or one not saved at ``step`` (where given). Training records it in
    results.json, so that ``compare`` can tell this run's ``eval/step<N>.json`` from another
    model's. ``path``: a ``str`` or any ``os.PathLike``."""
    path = Path(path)
    if is_sharded(path) or not path.is_file():
        return None
    ckpt = read_checkpoint(path)
    if not {"model_config", "state_dict", "tokenizer"} <= set(ckpt):
        return None
    if step is not None and ckpt.get("global_step") != step:
        return None
    where = f"ckpt={path}"
    tok = stored_tokenizer(ckpt["tokenizer"], where)
    state = model_state(ckpt["state_dict"])
    return model_digest(saved_config(ckpt, where), state, tok, ckpt["model_config"])


def check_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``state`` holds exactly ``model``'s weights, each of its shape; else one line naming
    what differs (``load_state_dict``'s own error is a paragraph per key)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    reshaped = [
        f"{k} {tuple(v.shape)} where the model has {want[k]}"
        for k, v in state.items()
        if k in want and tuple(v.shape) != want[k]
    ]
    problems = [
        f"{what} {', '.join(keys[:3])}{f' ... ({len(keys)} in all)' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped))
        if keys
    ]
    if problems:
        raise ConfigError(
            f"{where}: its weights do not fit its model_config ({'; '.join(problems)}): the "
            "file is damaged or its model_config was edited"
        )


def check_finite(state: dict[str, torch.Tensor], where: str, why: str | None = None) -> None:
    """Every weight of ``state`` finite; else one line naming the tensors that are not. A
    diverged model's nan/inf gives nan scores, pictures and files silently; lmlab's
    non-finite guard saves none, so by default such a file came from elsewhere (``why``
    says otherwise, as a dtype's overflow)."""
    bad = {
        k: int((~torch.isfinite(v)).sum())
        for k, v in state.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    }
    if bad:
        named = ", ".join(f"{k} ({n} of {state[k].numel()})" for k, n in list(bad.items())[:3])
        more = f" ... ({len(bad)} tensors in all)" if len(bad) > 3 else ""
        why = why or (
            "a diverged model: lmlab's non-finite guard saves none, so another tool wrote or "
            "edited it"
        )
        listed = f"{named}{more}"
        raise ConfigError(f"{where}: weights that are not finite (nan or inf): {listed}; {why}")


def check_source(path: Path, device: str, dtype: str, key: str = "ckpt") -> None:
    """What ``load`` checks before reading: a usable device, a checkpoint file or sharded
    folder at ``path``, a known dtype (cheap: commands check it before slow imports)."""
    check_device(device)
    if not (path.is_file() or is_sharded(path)):
        raise no_checkpoint(key, path)
    if dtype not in DTYPES and dtype != "auto":
        raise ConfigError(f"dtype={dtype!r}: allowed {', '.join(DTYPES)}, auto")


def language_model_config(ckpt: dict, path: Path, key: str = "ckpt") -> ModelConfig:
    """The model config of a read checkpoint (``read_checkpoint``'s: a file memory-mapped, a
    sharded folder's metadata), refused where it is no lmlab checkpoint or holds a classifier,
    which generation, evaluation, probes and conversion do not read."""
    if not isinstance(ckpt, dict) or "model_config" not in ckpt:
        raise ConfigError(f"{key}={path}: {NOT_LMLAB}")
    task = ckpt.get("task", {})
    if task.get("kind") == "classify":  # seq2seq fine-tunes T5 as it is: it infills as before
        raise ConfigError(
            f"{key}={path} is a task=classify model (a classification head over the labels "
            f"{', '.join(task.get('labels', [])[:10])}), not a language model: generation, "
            "evaluation, probes and conversion read language models; its validation is the "
            "run's val/acc and val/f1 (init_from starts a new classifier from its encoder, "
            "the head drawn afresh)"
        )
    return saved_config(ckpt, f"{key}={path}")


def checkpoint_config(
    path: str | os.PathLike, dtype: str = "auto", key: str = "ckpt"
) -> ModelConfig:
    """The model config of checkpoint ``path`` from its metadata alone, no weight read: what a
    command checks before ``load`` builds the model and reads every weight (minutes and the
    model's size in memory for a 7B checkpoint)."""
    path = Path(path)
    check_source(path, "cpu", dtype, key)
    return language_model_config(read_checkpoint(path), path, key)


def load(
    path: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "fp32",
    tokenizer: str | os.PathLike | None = None,
    key: str = "ckpt",
) -> Pretrained:
    """The model of checkpoint ``path`` in eval mode on ``device`` in ``dtype`` (fp32, bf16,
    fp16, or auto: as stored), with its tokenizer (or the ``tokenizer.json`` at ``tokenizer``).
    ``path`` and ``tokenizer``: a ``str`` or any ``os.PathLike``. ``key``: the argument that
    named ``path``, for the messages."""
    path = Path(path)
    check_source(path, device, dtype, key)
    ckpt = consolidate(path) if is_sharded(path) else read_checkpoint(path)
    cfg = language_model_config(ckpt, path, key)
    if "state_dict" not in ckpt:
        raise ConfigError(f"{key}={path}: {NOT_LMLAB}")
    if tokenizer is not None:
        tok = read_tokenizer(Path(tokenizer), cfg.vocab_size, trained_vocab(ckpt))
        check_not_replaced(tok, carried_tokenizer(ckpt), Path(tokenizer), f"{key}={path}")
    elif "tokenizer" in ckpt:
        tok = stored_tokenizer(ckpt["tokenizer"], f"{key}={path}")
    else:
        raise ConfigError(
            f"{key}={path} holds no tokenizer (saved by an older lmlab, or converted from a "
            "folder without one): pass tokenizer=<a tokenizer.json, such as the run's data "
            "cache's>"
        )
    declared = Declared.read(ckpt, f"{key}={path}").checked(tok, f"{key}={path}")
    from lmlab.model import build_model  # 2 s of imports (torch._dynamo): after the checks

    model = build_model(cfg)
    state = model_state(ckpt["state_dict"])
    check_weights(model, state, f"{key}={path}")
    check_finite(state, f"{key}={path}")
    as_stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    if as_stored == torch.float64:  # copied into fp32 parameters, they would be rounded
        model.double()
    model.load_state_dict(state)
    model.to(device=device, dtype=as_stored if dtype == "auto" else DTYPES[dtype]).eval()
    if dtype != "auto" and DTYPES[dtype] != as_stored:
        check_finite(
            model.state_dict(),
            f"{key}={path} in dtype={dtype}",
            f"they overflow {dtype}'s range; load them in fp32 or bf16",
        )
    digest = model_digest(cfg, state, tok, ckpt["model_config"])
    task = ckpt.get("task", {}).get("kind", "lm")
    return Pretrained(model, tok, cfg, path, ckpt.get("global_step"), digest, task, declared)
