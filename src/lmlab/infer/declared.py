"""What a converted model's publisher declares beside its weights and tokenizer, which
lmlab's own config does not hold (``Declared``): where its text ends (``eos_tokens``: an
instruct model's ``<|eot_id|>`` or ``<|im_end|>``, names lmlab does not give EOS) and its chat
template. ``from_hf`` records it in the checkpoint (``DECLARED``); a run started from that
checkpoint (``init_from``) keeps it in its own, as the Hugging Face files travel with a
fine-tuned model; generation, evaluation and ``to_hf`` read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmlab.data.tokenizer import Specials, document_end_id
from lmlab.errors import ConfigError

DECLARED = "declared"  # the checkpoint's key


@dataclass(frozen=True)
class Declared:
    # token names, the tokenizer's ``eos_token`` first, then the generation config's
    # ``eos_token_id``s (``lmlab.infer.hf.tokenizer_io.declared_eos``)
    eos_tokens: tuple[str, ...] = ()
    # the tokenizer's ``chat_template``: one Jinja template, or templates by name
    chat_template: str | dict[str, str] | None = None

    @classmethod
    def read(cls, ckpt: dict, where: str) -> Declared:
        """A checkpoint's record (none: nothing declared, as for an lmlab-trained model), its
        types checked (``checked`` holds its names to the tokenizer); a ConfigError naming
        ``where`` otherwise. From the metadata alone: no weight is read."""
        record = ckpt.get(DECLARED) or {}
        names = record.get("eos_tokens", []) if isinstance(record, dict) else None
        template = record.get("chat_template") if isinstance(record, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f"{where}: its {DECLARED} record is {record!r}; allowed: eos_tokens, a list of "
                "token names, and chat_template"
            )
        texts = template.values() if isinstance(template, dict) else [template]
        if not all(t is None or isinstance(t, str) for t in texts):
            raise ConfigError(
                f"{where}: its declared chat_template is {type(template).__name__}; allowed: "
                "a Jinja template (text), or templates by name"
            )
        return cls(tuple(names), template)

    def checked(self, tok: Tokenizer, where: str) -> Declared:
        """Itself, where every declared end is a token of ``tok`` (the checkpoint's
        tokenizer); a ConfigError naming ``where`` otherwise."""
        unknown = [n for n in self.eos_tokens if tok.token_to_id(n) is None]
        if unknown:
            raise ConfigError(
                f"{where}: its declared eos_tokens {unknown} are no tokens of its tokenizer; "
                "allowed: tokens of the tokenizer it carries"
            )
        return self

    def record(self) -> dict[str, Any]:
        """The checkpoint's record: plain types (``torch.load(weights_only=True)``), only
        what is declared."""
        out: dict[str, Any] = {}
        if self.eos_tokens:
            out["eos_tokens"] = list(self.eos_tokens)
        if self.chat_template is not None:
            out["chat_template"] = self.chat_template
        return out

    def chat(self, asked: bool | str, where: str) -> str:
        """The chat template lm-eval formats requests with (``apply_chat_template``), chosen
        as lm-eval's HFLM chooses: the one template; of templates by name, the one ``asked``
        names (``True``: ``default``). A ConfigError naming ``where`` where none is declared
        or the name is not one of them."""
        template = self.chat_template
        if template is None:
            raise ConfigError(
                f"{where} declares no chat template (a model converted from a Hugging Face "
                "folder whose tokenizer has one does, and the runs started from it): it has no "
                "chat format to render"
            )
        if isinstance(template, str):
            return template
        name = "default" if asked is True else str(asked)
        if name not in template:
            raise ConfigError(
                f"{where} declares chat templates {sorted(template)}, none named {name!r}; "
                f"allowed: {', '.join(sorted(template))}"
            )
        return template[name]

    def specials(self, tok: Tokenizer) -> Specials:
        """``tok``'s special tokens by role (``Specials.of``), EOS the declared one where the
        model declares its ends: the tokenizer a converted model goes out with, and renders
        its chat template with, names the EOS it came in with."""
        found = Specials.of(tok)
        return dataclasses.replace(found, eos=self.eos_tokens[0]) if self.eos_tokens else found

    def end_ids(self, tok: Tokenizer) -> list[int]:
        """The ids that end a text, where generation stops: the declared ends, then the token
        training ends every document with (``Specials.document_end``). Empty where the
        tokenizer has none."""
        ids = [tok.token_to_id(name) for name in self.eos_tokens]
        ends = dict.fromkeys([*ids, document_end_id(tok)])
        return [i for i in ends if i is not None]


NOTHING = Declared()  # an lmlab-trained model's: nothing declared


def check_declares_chat(path: Path, key: str = "ckpt") -> None:
    """A command that renders the chat template (``apply_chat_template=true``,
    ``chat=true``) of a checkpoint that declares none (one lmlab trained from scratch) is
    refused from its metadata, before its weights are read."""
    from lmlab.infer.checkpoint import read_checkpoint

    where = f"{key}={path}"
    Declared.read(read_checkpoint(path), where).chat(True, where)
