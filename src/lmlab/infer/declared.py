"""What a converted model's publisher declares beside its weights and tokenizer, which
lmlab's own config does not hold (``Declared``): where its text ends (``eos_tokens``: an
instruct model's ``<|eot_id|>`` or ``<|im_end|>``, names lmlab does not give EOS), its chat
template, its tokenizer's special tokens by role (what the template reads as ``bos_token``)
and its generation config (where transformers' ``generate`` stops, and its sampling
defaults). ``from_hf`` records it in the checkpoint (``DECLARED``); a run started from that
checkpoint (``init_from``) keeps it in its own, as the Hugging Face files travel with a
fine-tuned model; generation, evaluation and ``to_hf`` read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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
    # the tokenizer's special tokens by role, as transformers holds them (``bos_token``,
    # ``eos_token``, ``unk_token``, ``pad_token``...; lmlab finds its own by name): what a chat
    # template reads (``{{ bos_token }}``) and ``to_hf`` writes back
    roles: dict[str, str] = field(default_factory=dict)
    # the generation config as published (``GenerationConfig``'s non-default fields): its
    # ``eos_token_id`` are where transformers' ``generate`` stops; ``to_hf`` writes it back
    generation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, ckpt: dict, where: str) -> Declared:
        """A checkpoint's record (none: nothing declared, as for an lmlab-trained model), its
        types checked (``checked`` holds its names to the tokenizer); a ConfigError naming
        ``where`` otherwise. From the metadata alone: no weight is read."""
        record = ckpt.get(DECLARED) or {}
        get = record.get if isinstance(record, dict) else lambda key, default=None: None
        names, template = get("eos_tokens", []), get("chat_template")
        roles, generation = get("roles", {}), get("generation", {})
        named = isinstance(roles, dict) and all(isinstance(v, str) for v in roles.values())
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or not named
            or not isinstance(generation, dict)
        ):
            raise ConfigError(
                f"{where}: its {DECLARED} record is {record!r}; allowed: eos_tokens, a list of "
                "token names, chat_template, roles (token names by role) and generation (a "
                "generation config)"
            )
        texts = template.values() if isinstance(template, dict) else [template]
        if not all(t is None or isinstance(t, str) for t in texts):
            raise ConfigError(
                f"{where}: its declared chat_template is {type(template).__name__}; allowed: "
                "a Jinja template (text), or templates by name"
            )
        return cls(tuple(names), template, dict(roles), dict(generation))

    def checked(self, tok: Tokenizer, where: str) -> Declared:
        """Itself, where every declared end and role names a token of ``tok`` (the
        checkpoint's tokenizer) and the generation config's ends are ids; a ConfigError
        naming ``where`` otherwise."""
        names = [*self.eos_tokens, *self.roles.values()]
        unknown = list(dict.fromkeys(n for n in names if tok.token_to_id(n) is None))
        # an end past the tokenizer (a padded embedding's row) is kept: from_hf said so
        ends = [i for i in self.generation_ends() if type(i) is not int or i < 0]
        if unknown or ends:
            which = f"tokens {unknown}" if unknown else f"generation eos_token_id {ends}"
            raise ConfigError(
                f"{where}: its declared {which} are no tokens of its tokenizer; allowed: "
                "tokens of the tokenizer it carries"
            )
        return self

    def generation_ends(self) -> list:
        """The ids the generation config ends a text at (``eos_token_id``: one or a list),
        where transformers' ``generate`` stops; empty where it declares none."""
        ends = self.generation.get("eos_token_id")
        return list(ends) if isinstance(ends, list | tuple) else [] if ends is None else [ends]

    def ending_also(self, token_id: int) -> Declared:
        """Itself with ``token_id`` among the generation config's ends, where it declares
        any: a run started from a conversion ends its documents with the EOS lmlab finds by
        name (``document_end_id``), so its checkpoints, and the folder ``to_hf`` writes of
        them, stop there too."""
        ends = self.generation_ends()
        if not ends or token_id in ends:
            return self
        return dataclasses.replace(
            self, generation={**self.generation, "eos_token_id": [*ends, token_id]}
        )

    def record(self) -> dict[str, Any]:
        """The checkpoint's record: plain types (``torch.load(weights_only=True)``), only
        what is declared."""
        out: dict[str, Any] = {}
        if self.eos_tokens:
            out["eos_tokens"] = list(self.eos_tokens)
        if self.chat_template is not None:
            out["chat_template"] = self.chat_template
        if self.roles:
            out["roles"] = dict(self.roles)
        if self.generation:
            out["generation"] = dict(self.generation)
        return out

    def chat(self, asked: bool | str, where: str, key: str = "chat_template") -> str:
        """The chat template lm-eval formats requests with (``apply_chat_template``), chosen
        as lm-eval's HFLM chooses: the one template; of templates by name, the one ``asked``
        names (``True``: ``default``). A ConfigError naming ``where`` where none is declared
        or the name is not one of them, and ``key``, the setting that names one."""
        template = self.chat_template
        if template is None:
            raise ConfigError(
                f"{where} declares no chat template (a model converted from a Hugging Face "
                "folder whose tokenizer has one does, and the runs started from it): it has no "
                "chat format to render"
            )
        if isinstance(template, str):
            if asked is True or asked == "default":
                return template
            raise ConfigError(
                f"{where} declares one chat template, not several by name: {key}="
                f"{asked!r} names none; allowed: no {key}= (the one)"
            )
        name = "default" if asked is True else str(asked)
        if name not in template:
            raise ConfigError(
                f"{where} declares chat templates {sorted(template)}, none named {name!r}; "
                f"allowed: {key}= one of {', '.join(sorted(template))}"
            )
        return template[name]

    def specials(self, tok: Tokenizer) -> Specials:
        """``tok``'s special tokens by role (``Specials.of``), EOS the declared one where the
        model declares its ends: the tokenizer a converted model goes out with, and renders
        its chat template with, names the EOS it came in with."""
        found = Specials.of(tok)
        return dataclasses.replace(found, eos=self.eos_tokens[0]) if self.eos_tokens else found

    def prefix_id(self, tok: Tokenizer, bos_id: int | None, eos_id: int) -> int:
        """What an empty context is conditioned on, as lm-eval's HFLM takes its
        ``prefix_token_id``: a converted model's ``bos_token``, where its tokenizer declares
        one (whether or not it puts it before a text), else its EOS (``eos_id``); a model
        without the tokenizer's roles (lmlab's, or a record from before them): ``bos_id``,
        the BOS training starts documents with, else EOS."""
        if self.roles:
            bos = self.roles.get("bos_token")
            return tok.token_to_id(bos) if bos else eos_id
        return eos_id if bos_id is None else bos_id

    def end_ids(self, tok: Tokenizer) -> list[int]:
        """The ids that end a text, where generation stops: the generation config's ends,
        where transformers' ``generate`` stops (a run started from the model adds the EOS it
        ends its documents with: ``ending_also``); where it declares none (a record from
        before it was kept, or a model without one), the declared ends and then the token
        training ends every document with (``Specials.document_end``). Empty where the
        tokenizer has none."""
        if generation := self.generation_ends():
            return list(dict.fromkeys(generation))
        ids = [tok.token_to_id(name) for name in self.eos_tokens]
        ends = dict.fromkeys([*ids, document_end_id(tok)])
        return [i for i in ends if i is not None]


NOTHING = Declared()  # an lmlab-trained model's: nothing declared


def check_declares_chat(path: Path, name: str | None = None, key: str = "ckpt") -> None:
    """A command that renders the chat template (``apply_chat_template=true``,
    ``chat=true``; ``name``: one of several, ``chat_template=``) of a checkpoint that declares
    none (one lmlab trained from scratch), or none of that name, is refused from its
    metadata, before its weights are read."""
    from lmlab.infer.checkpoint import read_checkpoint

    where = f"{key}={path}"
    Declared.read(read_checkpoint(path), where).chat(name or True, where)
