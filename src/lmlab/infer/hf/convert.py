"""``from_hf``: a Hugging Face model folder (or hub name) -> an lmlab checkpoint file.
``to_hf``: an lmlab checkpoint (file or sharded folder) -> a folder that transformers'
``AutoModelFor*`` and ``AutoTokenizer`` load.

transformers reads and writes the Hugging Face side (configs, legacy key names, safetensors
shards, ``bin`` files, tokenizers); ``huggingface_hub.save_torch_state_dict`` writes the weights
(sharded when large). What lmlab adds is the mapping (``lmlab.infer.hf.mapping``) and the
refusals: a knob value a transformers class cannot express is named, never approximated.
The tokenizer's side is ``lmlab.infer.hf.tokenizer_io``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from lmlab.config import ModelConfig, model_config_dict, to_schema
from lmlab.config.outpath import (
    beside,
    cannot_write,
    check_file_out,
    check_folder_out,
    publish,
)
from lmlab.data.hub import hub_reachable, offline_hub
from lmlab.errors import ConfigError, first_line
from lmlab.files import GENERATION_CONFIG, HF_CONFIG, write_json
from lmlab.infer.checkpoint import save_new
from lmlab.infer.declared import DECLARED, Declared
from lmlab.infer.hf import ARCHITECTURES, Architecture, architectures_of
from lmlab.infer.hf.mapping import to_hf as state_to_hf
from lmlab.infer.hf.mapping import to_lmlab as state_to_lmlab
from lmlab.infer.hf.tokenizer_io import (
    check_specials,
    declared_eos,
    declared_roles,
    hf_tokenizer,
    hf_tokenizer_of,
    published_generation,
    transformers_quiet,
)
from lmlab.infer.pretrained import check_finite, checkpoint_config, load
from lmlab.model import build_model

log = logging.getLogger(__name__)


def hf_config(source: str) -> Any:
    """The Hugging Face config of a local folder or a hub name, or a ConfigError that says
    which it was and why it cannot be read."""
    transformers = transformers_quiet()
    local = Path(source)
    if local.exists() and not (local / HF_CONFIG).is_file():
        raise ConfigError(f"from_hf={source}: a local path without config.json")
    if not local.exists() and looks_local(source):  # ./x, /x, ~/x, a/b/c: never a hub name
        raise ConfigError(f"from_hf={source}: no such folder")
    try:
        return transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        if local.exists():
            raise ConfigError(f"from_hf={source}: config.json unreadable: {err}") from None
        raise ConfigError(
            f"from_hf={source}: no such local folder, and the Hugging Face hub has no such model "
            "or cannot be reached (offline?): download it where you are online "
            f"(`hf download {source} --local-dir DIR`) and pass from_hf=DIR"
        ) from None


def architecture_of(config: Any, source: str) -> Architecture:
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ConfigError(
            f"from_hf={source}: model_type={config.model_type!r} has no lmlab recipe; "
            f"allowed: {', '.join(ARCHITECTURES)}"
        )
    return arch


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{name: the name it shares its tensor with} (a tied head -> the embedding)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def from_hf(source: str, out: str | Path) -> Path:
    """Convert ``source`` (folder or hub name) into the lmlab checkpoint ``out``."""
    out = check_file_out(out)
    # a hub name while the hub is unreachable: the cache only, at once (not 30 s of retries)
    with offline_hub(not Path(source).exists() and not hub_reachable()):
        ckpt = _from_hf(source)
    return save_new(ckpt, out)  # two conversions into one out: the second is refused


def _from_hf(source: str) -> dict[str, Any]:
    """The lmlab checkpoint (a dict) of ``source``."""
    config = hf_config(source)
    arch = architecture_of(config, source)
    # what lmlab cannot express is refused from config.json, before the weights are read (or
    # downloaded: a 7B model's 14 GB); whether the head is tied is known from the weights
    lmlab_config(arch, config, source, tied=True)
    tokenizer, none_because = hf_tokenizer(source, config.vocab_size)  # before the weights
    hf_model = hf_weights(source, config, arch)
    tied = hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight
    cfg = lmlab_config(arch, hf_model.config, source, tied)
    hf_state = hf_model.state_dict()
    with torch.device("meta"):
        skeleton = build_model(cfg)
    shapes = {k: v.shape for k, v in skeleton.state_dict().items()}
    rules = arch.rules(cfg)
    check_finite(hf_state, f"from_hf={source}", "they are so in its files; nothing was written")
    state = state_to_lmlab(hf_state, rules, shapes)
    for alias, name in tied_aliases(skeleton).items():
        state[alias] = state[name]
    saved = arch.rules_to_save(cfg)  # what to_hf writes is known too (BERT's unused bias)
    used = {k for r in [*rules, *saved] for k in r.hf} | set(
        getattr(hf_model, "_tied_weights_keys", None) or {}
    )
    unused = sorted(set(hf_state) - used)
    if unused:
        raise ConfigError(f"from_hf={source}: weights with no lmlab counterpart: {listed(unused)}")
    skeleton.load_state_dict(state, strict=True, assign=True)  # every key, every shape
    ckpt: dict[str, Any] = {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "model_config": model_config_dict(cfg),
        "converted_from": {"source": str(source), "hf_class": arch.hf_class},
    }
    if tokenizer is not None:
        ckpt["tokenizer"] = tokenizer.backend_tokenizer.to_str()
        generation = getattr(hf_model, "generation_config", None)
        eos_tokens = declared_eos(tokenizer, generation, source)
        declared = Declared(
            tuple(eos_tokens),
            getattr(tokenizer, "chat_template", None),
            declared_roles(tokenizer),
            published_generation(generation),
        )
        if declared.record():
            ckpt[DECLARED] = declared.record()
        check_specials(tokenizer, declared)
    else:
        log.warning(
            "from_hf=%s %s: generation will need tokenizer=<tokenizer.json>, and init_from a "
            "tokenizer (put the model's tokenizer files in the folder and convert it again)",
            source,
            none_because,
        )
    return ckpt


def lmlab_config(arch: Architecture, hf: Any, source: str, tied: bool) -> ModelConfig:
    """The ModelConfig of Hugging Face config ``hf`` (its head ``tied`` to the embedding), or
    a ConfigError naming the setting lmlab has no knob for (YaRN, a relative-position BERT)
    or the lmlab field a config.json value fails (a Mixtral's ``num_experts_per_tok`` above
    its ``num_local_experts``: ``model.moe.top_k``), after ``from_hf=<source>``."""
    try:
        return to_schema(ModelConfig, arch.config_from_hf(hf, tied), "model.")
    except ConfigError as err:
        raise ConfigError(f"from_hf={source}: {err}") from None


def listed(keys: list[str], n: int = 4) -> str:
    return f"{', '.join(keys[:n])}{' ...' if len(keys) > n else ''}"


# The first number in a weight's name is its layer (block) index in every family:
# ``model.layers.3.``, ``transformer.h.3.``, ``bert.encoder.layer.3.``, ``encoder.block.3.``.
LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_of(key: str) -> int | None:
    found = LAYER_INDEX.search(key)
    return int(found.group(1)) if found else None


def beyond_layers(source: str, keys: list[str], held: list[str], in_weights: bool) -> None:
    """A ConfigError where ``keys`` (the weights only the folder has, ``in_weights``, or only
    config.json's model has) are whole layers past the last layer of ``held`` (the keys both
    have): config.json's layer count is not the weights'."""
    layers = [layer_of(k) for k in keys]
    both = [i for i in map(layer_of, held) if i is not None]
    if not keys or not both or any(i is None or i <= max(both) for i in layers):
        return
    more, fewer = max(i for i in layers if i is not None) + 1, max(both) + 1
    weights, config = (more, fewer) if in_weights else (fewer, more)
    raise ConfigError(
        f"from_hf={source}: config.json says {config} layer{'s' * (config != 1)}, the "
        f"weights hold {weights} "
        f"({listed(keys)} {'in the weights only' if in_weights else 'missing'}); allowed: the "
        "config.json saved with these weights"
    )


def hf_weights(source: str, config: Any, arch: Architecture) -> Any:
    """The transformers model of ``source``, or a ConfigError where it would not be the saved
    model: weights that do not read, a weight the class needs and the folder lacks
    (transformers would initialise it at random), one the folder has and the class leaves out
    (another task's head: lmlab would drop it), one whose shape is not config.json's."""
    from safetensors import SafetensorError

    try:
        hf_model, info = getattr(transformers_quiet(), arch.hf_class).from_pretrained(
            source, dtype="auto", output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        raise ConfigError(f"from_hf={source}: weights unreadable: {first_line(err, 200)}") from None
    saved = (config.architectures or ["its class"])[0]
    missing = sorted(info.get("missing_keys") or ())
    loaded = [k for k in hf_model.state_dict() if k not in set(missing)]
    beyond_layers(source, missing, loaded, in_weights=False)
    if missing:
        raise ConfigError(
            f"from_hf={source}: {saved} lacks weights {arch.hf_class} needs: {listed(missing)} "
            "(a base model without its language-model head, or another task's head); allowed: "
            f"a folder saved from {arch.hf_class}"
        )
    dropped = sorted(
        k for k in info.get("unexpected_keys") or () if not k.startswith(arch.droppable)
    )
    beyond_layers(source, dropped, loaded, in_weights=True)
    if dropped:
        raise ConfigError(
            f"from_hf={source}: {saved} has weights {arch.hf_class} leaves out: "
            f"{listed(dropped)} (another task's head, which the conversion would drop); "
            f"allowed: a folder saved from {arch.hf_class}"
        )
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        key, stored, expected = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ConfigError(
            f"from_hf={source}: config.json does not match the weights: {key} is "
            f"{list(stored)} in the weights, {list(expected)} by config.json{more}"
        )
    return hf_model


def looks_local(source: str) -> bool:
    """Whether ``source`` can only be a path: a hub name is ``owner/name`` or ``name``, and
    never starts with ``.``, ``/`` or ``~``, nor has more than one ``/``."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def choose_architecture(cfg: ModelConfig) -> Architecture:
    """The transformers class for ``cfg``, or a ConfigError naming every knob in the way."""
    candidates = architectures_of(cfg.family)
    chosen = [a for a in candidates if a.selects(cfg)]
    if not chosen:
        options = "; ".join(f"{a.hf_class} takes {a.selected_by}" for a in candidates)
        raise ConfigError(
            f"model.positional={cfg.positional.value} (family={cfg.family.value}) has no "
            f"transformers class: {options}"
        )
    chosen[0].check(cfg)
    return chosen[0]


def stored_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def to_hf(
    path: str | Path, out: str | Path, dtype: str = "auto", tokenizer: str | None = None
) -> Path:
    """Write checkpoint ``path`` as a Hugging Face model folder ``out`` (config.json,
    model.safetensors or shards, the tokenizer: the checkpoint's, or ``tokenizer``)."""
    out = Path(out)
    try:
        link = out.is_symlink()
    except OSError as err:  # a name too long
        raise cannot_write(out, "out", err) from None
    if link:  # the folder is renamed into place, which a link does not take
        raise ConfigError(
            f"out={out} is a symbolic link (to {os.readlink(out)}): name a new folder, or the "
            "folder it points to"
        )
    out = check_folder_out(out, empty=True)
    # a knob transformers cannot express is refused from the checkpoint's metadata, before
    # load builds the model and reads every weight (a 7B checkpoint's 28 GB)
    arch = choose_architecture(checkpoint_config(path, dtype, key="to_hf"))
    pre = load(path, dtype=dtype, tokenizer=tokenizer, key="to_hf")
    cfg = pre.cfg
    left_out = arch.left_out(cfg)
    if left_out:
        log.warning(
            "to_hf: %s has no field for %s: not written (training settings: the weights give "
            "lmlab's outputs exactly; training in transformers goes without them)",
            arch.hf_class,
            "; ".join(left_out),
        )
    transformers = transformers_quiet()
    hf_class = getattr(transformers, arch.hf_class)
    # a converted model's declared end of text goes out as it came in (``pre.specials``)
    tok, specials, declared = pre.tokenizer, pre.specials, pre.declared
    ids = {
        role: tok.token_to_id(getattr(specials, role))
        for role in ("bos", "eos", "pad")
        if getattr(specials, role)
    }
    # every role, None where lmlab's tokenizer has none: the HF config classes' defaults are
    # their own vocabularies' ids (GPT-2's bos 50256, Llama's bos 1, lmlab's <pad>)
    extra = {f"{role}_token_id": ids.get(role) for role in ("bos", "eos", "pad")}
    if cfg.family.value == "t5" and "pad" in ids:
        extra["decoder_start_token_id"] = ids["pad"]  # lmlab's T5 decoder starts from PAD
    weights_dtype = stored_dtype(pre.model)
    config = hf_class.config_class(
        **arch.config_to_hf(cfg), architectures=[arch.hf_class], dtype=weights_dtype, **extra
    )
    state = pre.model.state_dict()
    hf_state = state_to_hf(state, arch.rules_to_save(cfg))
    hf_state |= arch.fill_to_hf(cfg, state["embed.weight"])
    from huggingface_hub import save_torch_state_dict

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = beside(out)
    tmp.mkdir()
    try:
        config.save_pretrained(tmp)
        if declared.generation:  # as it came in: where generate() stops, its sampling;
            # written as is: save_pretrained refuses what transformers loads with a warning
            # (Llama 2 Chat's temperature and top_p without do_sample)
            version = {"transformers_version": transformers.__version__}
            write_json(tmp / GENERATION_CONFIG, declared.generation | version)
        elif len(declared.eos_tokens) > 1:  # a record from before the generation config's
            ends = [tok.token_to_id(name) for name in declared.eos_tokens]
            transformers.GenerationConfig(**(extra | {"eos_token_id": ends})).save_pretrained(tmp)
        say_tied(tmp / "config.json", cfg.tie_embeddings)
        save_torch_state_dict(hf_state, tmp)
        hf_tok = hf_tokenizer_of(
            tok, specials, cfg.family, cfg.type_vocab_size > 1, roles=declared.roles
        )
        hf_tok.chat_template = declared.chat_template  # as it came in (chat_template.jinja)
        hf_tok.save_pretrained(tmp)
        as_umask_allows(tmp)
        publish(tmp, out)  # over an empty folder, not over another conversion's
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def say_tied(path: Path, tied: bool) -> None:
    """config.json's ``tie_word_embeddings`` as the head is: transformers 5 writes ``true``
    for every T5 (it ties or not by whether the saved weights differ, and warns "update the
    config with tie_word_embeddings=False" where they do), while transformers 4 and other
    readers (vLLM) tie the head by the flag: an untied T5 (v1.1's shape) would lose its head
    there. In place."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tie_word_embeddings") != tied:
        config["tie_word_embeddings"] = tied
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def as_umask_allows(folder: Path) -> None:
    """The permissions a plain ``mkdir`` and ``open`` would give: the temporary folder (and
    the safetensors writer's files) start private (0700, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)
