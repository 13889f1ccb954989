"""The tokenizer's side of a Hugging Face conversion: a model folder's tokenizer read for
``from_hf`` (``hf_tokenizer``, refused where it does not load or names ids past the model's
vocabulary), and lmlab's tokenizer written for ``to_hf`` as one ``AutoTokenizer`` loads and
frames as the family's own (``hf_tokenizer_of``). ``transformers_quiet``: transformers,
imported with its notes and progress bars off."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmlab.config import Family
from lmlab.data.tokenizer import ROLE_NAMES, Specials, spaces_are_tokens
from lmlab.errors import ConfigError, first_line
from lmlab.infer.declared import NOTHING, Declared

log = logging.getLogger(__name__)

# The files transformers builds a tokenizer from: a folder with none of them has no tokenizer
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
)
# Post-processors that add special tokens: ``framed`` replaces them with its own template
FRAMING = {"TemplateProcessing", "BertProcessing", "RobertaProcessing"}


def transformers_quiet() -> Any:
    """transformers, imported when a conversion needs it, with its own notes and progress bars
    off: a refusal is one line of lmlab's."""
    import transformers

    transformers.logging.set_verbosity_error()  # its notes on unused keys are ours to report
    transformers.logging.disable_progress_bar()  # a refusal is one line, not under a bar
    return transformers


def hf_tokenizer(source: str, vocab_size: int) -> tuple[Any | None, str]:
    """The model's fast tokenizer, or None and why ``source`` has none (a folder without
    tokenizer files, for which transformers makes up a stand-in of special tokens only).
    Tokenizer files that do not load, and ids past ``vocab_size``, are refused: the
    checkpoint could not generate with them."""
    local = Path(source)
    files = [f for f in TOKENIZER_FILES if (local / f).is_file()]
    if local.is_dir() and not files:
        return None, "has no tokenizer files"
    try:
        tok = transformers_quiet().AutoTokenizer.from_pretrained(source)
    except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
        if isinstance(err, OSError) and not local.exists():  # a hub name without them
            return None, "has no tokenizer files"
        raise ConfigError(
            f"from_hf={source}: its tokenizer ({', '.join(files) or 'tokenizer files'}) does "
            f"not load: {first_line(err, 200)}; repair or remove it (without one, generation needs "
            "tokenizer=<tokenizer.json>)"
        ) from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None, f"gives a {type(tok).__name__}, not a tokenizers one (tokenizer.json)"
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    if len(set(backend.get_vocab()) - added) < 2:  # < 2: T5's stand-in also has "▁"
        return (
            None,
            f"has tokenizer files ({', '.join(files) or 'on the hub'}) without a vocabulary",
        )
    top = max(backend.get_vocab().values())
    if top >= vocab_size:
        past = sorted((i, t) for t, i in backend.get_vocab().items() if i >= vocab_size)
        more = f" and {len(past) - 3} more" if len(past) > 3 else ""
        shown = ", ".join(f"{t!r} ({i})" for i, t in past[:3]) + more
        raise ConfigError(
            f"from_hf={source}: its tokenizer has ids up to {top}, past config.json's "
            f"vocab_size={vocab_size}: {shown} (no embedding for them: another model's "
            "tokenizer, or special tokens tokenizer_config.json names and tokenizer.json lacks, "
            f"which transformers adds at its end); allowed: ids below {vocab_size}"
        )
    return tok, ""


def declared_eos(tokenizer: Any, generation_config: Any, source: str) -> list[str]:
    """The tokens a Hugging Face model's publisher says end its text, as transformers reads
    them: the tokenizer's ``eos_token`` first (lm-eval's HFLM ends and prefixes with it), then
    the ``eos_token_id`` of the model's generation config (generation_config.json, else
    config.json), at any of which transformers' ``generate`` stops. An instruct model's differ
    from its base model's: Llama 3 Instruct ends a turn with ``<|eot_id|>`` and lists
    ``<|end_of_text|>`` too, SmolLM2 Instruct ends with ``<|im_end|>``, names that ``Specials``
    does not give EOS (its base model's hold them too). ``from_hf`` records them in the
    checkpoint (``lmlab.infer.declared``). An id the tokenizer has no token for is left out, with a
    warning naming ``source``."""
    backend = tokenizer.backend_tokenizer
    names = [tokenizer.eos_token] if getattr(tokenizer, "eos_token", None) else []
    ids = getattr(generation_config, "eos_token_id", None)
    for token_id in [ids] if isinstance(ids, int) else list(ids or ()):
        name = backend.id_to_token(token_id)
        if name is None:
            log.warning(
                "from_hf=%s: its generation config's eos_token_id %s is no token of its "
                "tokenizer (of %d): no text of it ends there",
                source,
                token_id,
                backend.get_vocab_size(),
            )
        else:
            names.append(name)
    return [n for n in dict.fromkeys(names) if backend.token_to_id(n) is not None]


def declared_roles(tokenizer: Any) -> dict[str, str]:
    """The Hugging Face tokenizer's special tokens by role (``special_tokens_map``:
    ``bos_token``, ``eos_token``...), those its vocabulary holds: what transformers renders a
    chat template with (``{{ bos_token }}``), whichever names lmlab finds by itself."""
    backend = tokenizer.backend_tokenizer
    roles = {}
    for role, token in (getattr(tokenizer, "special_tokens_map", None) or {}).items():
        name = token if isinstance(token, str) else getattr(token, "content", None)
        if isinstance(name, str) and backend.token_to_id(name) is not None:
            roles[str(role)] = name
    return roles


def published_generation(generation_config: Any) -> dict[str, Any]:
    """A model's generation config as its folder holds it: the fields that differ from
    transformers' defaults (generation_config.json's, else those config.json gives), as JSON
    types, without transformers' own bookkeeping (its version)."""
    if generation_config is None:
        return {}
    fields = json.loads(generation_config.to_json_string(use_diff=True))
    return {k: v for k, v in fields.items() if k != "transformers_version" and k[0] != "_"}


def check_specials(tokenizer: Any, declared: Declared = NOTHING) -> None:
    """lmlab finds each role by name among the special tokens (``Specials.of``); warn where that
    differs from what the Hugging Face tokenizer declares, and where a declared token takes no
    role at all (a PAD named ``<|pad|>``: what needs one refuses the checkpoint). EOS is said
    apart: generation stops at the model's declared ends (``Declared.end_ids``) and
    evaluation ends a text with its tokenizer's (``declared``, which the checkpoint records),
    while training ends its documents with the EOS found by name. BOS is left out: it is the
    token the tokenizer puts before a text, whatever its name (``Specials.of``)."""
    backend = tokenizer.backend_tokenizer
    found = Specials.of(backend)
    roles = ("pad", "mask", "cls", "sep", "unk")
    taken = {getattr(found, role) for role in ("eos", *roles)} - {None}
    for role in roles:
        named, ours = getattr(tokenizer, f"{role}_token", None), getattr(found, role)
        if named and ours not in (named, None):
            log.warning("the tokenizer's %s is %r; lmlab uses %r", role, named, ours)
        elif named and ours is None and named not in taken:
            log.warning(
                "the tokenizer's %s is %r, a name lmlab does not give that role (it reads %s): "
                "the checkpoint has no %s token, and what needs one refuses it",
                role,
                named,
                ", ".join(ROLE_NAMES[role]),
                role,
            )
    if declared.eos_tokens and list(declared.eos_tokens) != [found.eos]:
        stops = [backend.id_to_token(i) for i in declared.end_ids(backend)]
        log.warning(
            "the model ends its text at %s, as it declares: generation stops at %s (%s), "
            "evaluation ends a text with %r (the first it declares); training ends "
            "documents with %s",
            " or ".join(repr(n) for n in declared.eos_tokens),
            " or ".join(repr(n) for n in stops),
            "its generation config's ends" if declared.generation_ends() else "its declared ends",
            declared.eos_tokens[0],
            f"{found.eos!r} (the EOS lmlab finds by name)"
            if found.eos
            else f"an EOS, which this tokenizer lacks by name ({', '.join(ROLE_NAMES['eos'])}), "
            "so training cannot pack its documents",
        )


def framed(tok: Any, specials: Specials, family: Family | None, segments: bool = False) -> Any:
    """A copy of ``tok`` whose post-processor frames text as lmlab's ``family`` does: BERT
    ``[CLS] a [SEP]`` (a pair: ``[CLS] a [SEP] b [SEP]``, with ``segments`` 0 and 1), T5's
    encoder ``a </s>``. transformers' tokenizer then gives the model's inputs from
    ``tok(text)``, as the Hugging Face BERT and T5 tokenizers do; lmlab itself encodes
    without it. Idempotent: a template ``tok`` has already is replaced, not framed again."""
    from tokenizers import processors

    if family not in (Family.bert, Family.t5):  # a decoder's tokenizer adds its own BOS
        return tok
    before, after = ([getattr(specials, r) for r in side] for side in specials.frame_roles(family))
    if None in before + after:
        return tok
    b = int(segments)  # without segments, Hugging Face's BERT has the one, 0
    single = " ".join([*before, "$A", *after])  # BERT: [CLS] $A [SEP]; T5: $A </s>
    pair = " ".join([*before, "$A", *after, f"$B:{b}", *(f"{t}:{b}" for t in after)])
    template = processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys(before + after)],
    )
    spec = json.loads(tok.to_str())
    # a tokenizer from Hugging Face, or from an earlier to_hf, already frames: its template
    # goes (framing twice gives [CLS] [CLS] ..), byte-level BPE's offsets trimming stays
    kept = [p for p in steps(spec.get("post_processor")) if p["type"] not in FRAMING]
    spec["post_processor"] = {"type": "Sequence", "processors": kept} if kept else None
    copy = Tokenizer.from_str(json.dumps(spec))
    copy.post_processor = processors.Sequence([copy.post_processor, template]) if kept else template
    return copy


def stripping_left(tok: Any, names: set[str]) -> Any:
    """A copy of ``tok`` whose special tokens ``names`` take the whitespace to their left
    (``lstrip``), as RoBERTa's ``<mask>``: a masked token or a T5 span brings its own space
    (byte-level BPE's ``Ġfox``), as ``lmlab.infer.fill`` reads a prompt."""
    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:
        if added["content"] in names:
            added["lstrip"] = True
    return Tokenizer.from_str(json.dumps(spec))


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether ``a`` and ``b`` read text as the same ids: their JSON equal but for what
    ``to_hf`` adds for transformers (``framed``'s template, ``stripping_left``'s ``lstrip``)
    and the encoding's truncation and padding, so a tokenizer and its ``to_hf`` export are one
    (the export was refused as another model's tokenizer)."""

    def core(tok: Tokenizer) -> dict[str, Any]:
        spec = json.loads(tok.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)
        spec["post_processor"] = [
            p for p in steps(spec.get("post_processor")) if p["type"] not in FRAMING
        ]
        for added in spec["added_tokens"]:
            added.pop("lstrip", None)
        return spec

    return core(a) == core(b)


def steps(processor: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The post-processors (as JSON) that ``processor`` applies, in order."""
    if processor is None:
        return []
    if processor["type"] == "Sequence":
        return [step for p in processor["processors"] for step in steps(p)]
    return [processor]


def hf_tokenizer_of(
    tok: Any,
    specials: Specials,
    family: Family | None = None,
    segments: bool = False,
    roles: dict[str, str] | None = None,
) -> Any:
    """lmlab's tokenizer as transformers' fast tokenizer, with its special tokens' roles and
    (given the ``family``) the framing its model's inputs have (``framed``); with
    ``segments``, ``tok(a, b)`` also gives the ``token_type_ids`` BERT's segments read.
    ``roles``: the names a converted model's tokenizer declared (``declared_roles``), which
    its chat template reads and its folder goes out with, those alone (not the roles lmlab
    finds by name beside them); the framing stays ``specials``'."""
    transformers = transformers_quiet()
    # `the <mask>` reads as lmlab's fill and infill read it: as RoBERTa's <mask> does, unless
    # a space is a token of its own (a character vocabulary)
    strips = not spaces_are_tokens(tok)
    tok = framed(tok, specials, family, segments)
    if strips:
        tok = stripping_left(tok, {specials.mask, *specials.sentinels} - {None})
    inputs = ["input_ids", *(["token_type_ids"] if segments else []), "attention_mask"]
    found = {
        f"{role}_token": getattr(specials, role)
        for role in ("bos", "eos", "unk", "pad", "mask", "cls", "sep")
        if getattr(specials, role)
    }
    roles = roles or found
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        additional_special_tokens=list(specials.sentinels),
        model_input_names=inputs,
        **roles,
    )
