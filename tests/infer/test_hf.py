"""Hugging Face interop: tiny random models of each transformers class, saved and converted,
give transformers' logits and greedy tokens; lmlab checkpoints go out and come back unchanged.

No hub access: every model is built here from a config. The logits are compared in fp32 at
1e-5 (the issue's bound): these models' logits are O(1) and each passes ~10^2 accumulations
per layer, so fp32 rounding (6e-8 per operation) stays near 1e-6, while a wrong mapping (a
transposed matrix, a lost bias, an unscaled query) moves logits by 1e-2 or more.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

from lmlab.config import (  # noqa: E402
    Activation,
    Family,
    ModelConfig,
    NormPlacement,
    Positional,
    model_config_dict,
    to_schema,
)
from lmlab.data.tokenizer import Specials, encode, train_bpe, train_char  # noqa: E402
from lmlab.errors import ConfigError  # noqa: E402
from lmlab.infer import fill  # noqa: E402
from lmlab.infer.declared import Declared  # noqa: E402
from lmlab.infer.generation import decode_loop, generate  # noqa: E402
from lmlab.infer.hf.convert import choose_architecture, from_hf, to_hf  # noqa: E402
from lmlab.infer.hf.tokenizer_io import (  # noqa: E402
    check_specials,
    declared_eos,
    hf_tokenizer_of,
)
from lmlab.infer.pretrained import load  # noqa: E402
from lmlab.model import build_model  # noqa: E402

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4
TOKENIZER = train_char([TEXT])
V = TOKENIZER.get_vocab_size()
SPECIALS = Specials.of(TOKENIZER)
PAD = TOKENIZER.token_to_id(SPECIALS.pad)
NO_SPECIAL_IDS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)


def llama(**kw) -> torch.nn.Module:
    """A tiny random ``LlamaForCausalLM``: 2 layers, 4 query heads sharing 2 key-value heads."""
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
        max_position_embeddings=64,
        initializer_range=0.1,
        **NO_SPECIAL_IDS,
        **kw,
    )
    return transformers.LlamaForCausalLM(config)


def mixtral(**kw) -> torch.nn.Module:
    """A tiny random ``MixtralForCausalLM``: 2 layers, 4 experts (top-2), GQA."""
    config = transformers.MixtralConfig(
        **{
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": V,
            "max_position_embeddings": 64,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "initializer_range": 0.1,
            **NO_SPECIAL_IDS,
            **kw,
        }
    )
    return transformers.MixtralForCausalLM(config)


CASES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            vocab_size=V,
            initializer_range=0.1,
            **NO_SPECIAL_IDS,
        )
    ),
    "llama": lambda: llama(
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
    ),
    # Llama 3.1's scaled RoPE; with these frequencies (head_dim 8, theta 5e5: wavelengths 6,
    # 167, 4443, 118e3) and L = 512 one is kept (< 128), one interpolated, two divided (> 512)
    "llama3_rope": lambda: llama(
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        },
        tie_word_embeddings=True,
    ),
    "mistral": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            vocab_size=V,
            max_position_embeddings=64,
            sliding_window=5,
            initializer_range=0.1,
            **NO_SPECIAL_IDS,
        )
    ),
    "bert": lambda: transformers.BertForMaskedLM(
        transformers.BertConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=V,
            max_position_embeddings=64,
            type_vocab_size=2,
            initializer_range=0.1,
            pad_token_id=PAD,
        )
    ),
    "bert_untied": lambda: untied_bert(),
    "t5": lambda: transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            d_model=32,
            d_ff=64,
            d_kv=8,
            num_layers=2,
            num_decoder_layers=3,
            num_heads=4,
            vocab_size=V,
            feed_forward_proj="relu",
            pad_token_id=PAD,
            decoder_start_token_id=PAD,
            eos_token_id=None,
        )
    ),
    # T5 v1.1 / Flan: gated GELU, untied head, 3 heads of 16 in a 32-wide model
    "t5_v1_1": lambda: transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            d_model=32,
            d_ff=64,
            d_kv=16,
            num_layers=2,
            num_heads=3,
            vocab_size=V,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            pad_token_id=PAD,
            decoder_start_token_id=PAD,
            eos_token_id=None,
        )
    ),
}


def untied_bert() -> torch.nn.Module:
    """A BERT whose head is its own (as RoBERTa-style conversions and fine-tunes save it): the
    decoder's bias, which the forward adds, differs from ``cls.predictions.bias``, unused."""
    config = CASES["bert"]().config
    config.tie_word_embeddings = False
    model = transformers.BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.decoder.bias.normal_(0.0, 1.0)
        model.cls.predictions.bias.normal_(5.0, 1.0)
    return model


def hf_folder(name: str, root: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny random model of ``name`` with lmlab's char tokenizer, as save_pretrained writes."""
    torch.manual_seed(0)
    model = CASES[name]().eval()
    folder = root / name
    model.save_pretrained(folder)
    hf_tokenizer_of(TOKENIZER, SPECIALS).save_pretrained(folder)
    return folder, model


def lmlab_checkpoint(path: Path, cfg: ModelConfig, model: torch.nn.Module | None = None) -> Path:
    """``model`` (default: a fresh one of ``cfg``) saved as training saves it, with the char
    tokenizer."""
    state = (build_model(cfg) if model is None else model).state_dict()
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "model_config": model_config_dict(cfg),
            "tokenizer": TOKENIZER.to_str(),
        },
        path,
    )
    return path


def inputs(name: str) -> dict[str, torch.Tensor]:
    """Ids (two rows, 12 tokens: longer than Mistral's window of 5); BERT also a padded row
    and segments, T5 decoder inputs."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(110, V, (2, 12), generator=g)
    if name.startswith("bert"):
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        segments = torch.zeros_like(ids)
        segments[:, 6:] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}
    if name.startswith("t5"):
        return {"input_ids": ids, "decoder_input_ids": torch.randint(110, V, (2, 7), generator=g)}
    return {"input_ids": ids}


@pytest.mark.parametrize("name", list(CASES))
def test_from_hf_gives_transformers_logits(name: str, tmp_path: Path) -> None:
    folder, hf_model = hf_folder(name, tmp_path)
    pre = load(from_hf(str(folder), tmp_path / f"{name}.ckpt"))
    batch = inputs(name)
    with torch.no_grad():
        expected = hf_model(**batch).logits
        got = pre.model(**batch)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5
    assert pre.tokenizer.get_vocab() == TOKENIZER.get_vocab()  # the tokenizer came along
    assert pre.tokenizer.encode(TEXT).ids == TOKENIZER.encode(TEXT).ids


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama3_rope", "mistral", "t5_v1_1"])
def test_greedy_generation_with_the_kv_cache_gives_transformers_tokens(
    name: str, tmp_path: Path
) -> None:
    folder, hf_model = hf_folder(name, tmp_path)
    pre = load(from_hf(str(folder), tmp_path / f"{name}.ckpt"))
    ids = inputs(name)["input_ids"][:1]
    n = 10
    with torch.no_grad():
        expected = hf_model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
        if name.startswith("t5"):
            memory = pre.model.encode(ids)
            start = torch.full((1, 1), PAD)
            got = decode_loop(
                lambda d, cache: pre.model.decode(d, memory, cache=cache),
                pre.model.new_cache,
                start,
                pre.cfg.max_seq_len,
                n,
                temperature=0.0,
            )
        else:
            got = generate(pre.model, ids, n, temperature=0.0, use_cache=True)
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("knobs", "hf_class"),
    [
        ({"positional": Positional.learned}, "GPT2LMHeadModel"),
        (
            dict(
                positional="rope",
                norm="rmsnorm",
                activation="swiglu",
                bias=False,
                n_kv_heads=2,
                tie_embeddings=False,
            ),
            "LlamaForCausalLM",
        ),
        *(
            (
                dict(
                    positional="rope",
                    norm="rmsnorm",
                    activation="swiglu",
                    bias=False,
                    rope_factor=4.0,
                    **scaling,
                ),
                "LlamaForCausalLM",
            )
            for scaling in (
                {"rope_scaling": "linear"},
                {"rope_scaling": "llama3", "rope_original_max_seq_len": 16},
            )
        ),
        (
            dict(
                positional="rope",
                norm="rmsnorm",
                activation="geglu",
                bias=False,
                attention_window=6,
            ),
            "MistralForCausalLM",
        ),
        (dict(family="bert", norm_placement="post", activation="gelu_exact"), "BertForMaskedLM"),
        (dict(family="bert", norm_placement="post", type_vocab_size=2), "BertForMaskedLM"),
        (dict(family="bert", norm_placement="post", tie_embeddings=False), "BertForMaskedLM"),
        (
            # 2 heads of 16: the query scale sqrt(16) = 4 is exact both ways
            dict(
                family="t5",
                positional="relative",
                norm="rmsnorm",
                bias=False,
                n_heads=2,
                activation="relu",
            ),
            "T5ForConditionalGeneration",
        ),
        (
            # T5 v1.1's shape: gated GELU, an untied head, not rescaled
            dict(
                family="t5",
                positional="relative",
                norm="rmsnorm",
                bias=False,
                n_heads=2,
                activation="geglu",
                tie_embeddings=False,
            ),
            "T5ForConditionalGeneration",
        ),
    ],
)
def test_to_hf_loads_in_transformers_with_lmlab_logits_and_round_trips(
    knobs: dict, hf_class: str, tmp_path: Path
) -> None:
    base = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=32, vocab_size=V)
    cfg = to_schema(ModelConfig, {**base, **knobs})
    torch.manual_seed(0)

    model = build_model(cfg)
    with torch.no_grad():  # every parameter nonzero, norms away from 1, so nothing hides
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = to_hf(lmlab_checkpoint(tmp_path / "lmlab.ckpt", cfg, model), tmp_path / "hf")
    # the flag other readers (transformers 4, vLLM) tie the head by; transformers 5 writes
    # true for every T5
    written = json.loads((folder / "config.json").read_text())
    assert written["tie_word_embeddings"] == cfg.tie_embeddings
    auto = {
        Family.gpt: "AutoModelForCausalLM",
        Family.bert: "AutoModelForMaskedLM",
        Family.t5: "AutoModelForSeq2SeqLM",
    }[cfg.family]
    hf_model = getattr(transformers, auto).from_pretrained(folder).eval()
    assert type(hf_model).__name__ == hf_class
    # each special id is the tokenizer's own, or None: never the HF class's default (GPT-2's
    # bos 50256 is past this vocabulary; Llama's 1 would be lmlab's <pad>)
    for role in ("bos", "eos", "pad"):
        name = getattr(SPECIALS, role)
        expected = TOKENIZER.token_to_id(name) if name else None
        assert getattr(hf_model.config, f"{role}_token_id") == expected, role
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    a, b = TOKENIZER.encode("hear me").ids, TOKENIZER.encode("speak").ids
    assert tok("hear me", add_special_tokens=False)["input_ids"] == a
    # tok(text) frames it as lmlab's model saw it in training: BERT [CLS] .. [SEP], T5 .. EOS
    cls, sep, eos = (TOKENIZER.token_to_id(getattr(SPECIALS, r)) for r in ("cls", "sep", "eos"))
    single, pair = {
        Family.gpt: (a, [*a, *b]),
        Family.bert: ([cls, *a, sep], [cls, *a, sep, *b, sep]),
        Family.t5: ([*a, eos], [*a, eos, *b, eos]),
    }[cfg.family]
    assert tok("hear me")["input_ids"] == single
    assert tok("hear me", "speak")["input_ids"] == pair
    # BERT's segments: 0 up to the first [SEP], then 1; a model without them has one, 0, and
    # is given none unless asked (then 0s: its one segment)
    assert ("token_type_ids" in tok("hear me", "speak")) == bool(cfg.type_vocab_size)
    if cfg.family == Family.bert:
        second = 1 if cfg.type_vocab_size else 0
        segments = tok("hear me", "speak", return_token_type_ids=True)["token_type_ids"]
        assert segments == [0] * (len(a) + 2) + [second] * (len(b) + 1)
    batch = inputs(cfg.family.value)
    batch["input_ids"] = batch["input_ids"][:, : cfg.max_seq_len]
    if cfg.family == Family.bert and not cfg.type_vocab_size:
        batch.pop("token_type_ids")
    with torch.no_grad():
        assert (hf_model(**batch).logits - model.eval()(**batch)).abs().max() <= 1e-5
    back = load(from_hf(str(folder), tmp_path / "back.ckpt"))
    original = model.state_dict()
    # the width made explicit; a BERT without segments comes back with one all-zero segment
    segments = max(cfg.type_vocab_size, 1) if cfg.family == Family.bert else 0
    assert back.cfg == dataclasses.replace(cfg, d_ff=cfg.ffn_dim, type_vocab_size=segments)
    restored = back.model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in original.items())
    # out again: the tokenizer that came back already frames, and is framed once, not twice
    again = transformers.AutoTokenizer.from_pretrained(
        to_hf(tmp_path / "back.ckpt", tmp_path / "2")
    )
    for text in (["hear me"], ["hear me", "speak"]):
        assert dict(again(*text)) == dict(tok(*text))


def test_a_float64_checkpoint_loads_and_goes_out_as_stored(tmp_path: Path) -> None:
    """``dtype=auto`` keeps the weights as stored: float64 ones (what ``from_hf`` writes from a
    float64 folder) were copied into fp32 parameters first, off by up to 6e-8."""
    from safetensors.torch import load_file

    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V))
    torch.manual_seed(0)
    model = build_model(cfg).double()
    with torch.no_grad():  # values fp32 cannot hold
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = lmlab_checkpoint(tmp_path / "f64.ckpt", cfg, model)
    stored = model.state_dict()
    loaded = load(path, dtype="auto").model.state_dict()
    assert all(
        loaded[k].dtype == torch.float64 and torch.equal(loaded[k], v) for k, v in stored.items()
    )
    exported = load_file(to_hf(path, tmp_path / "hf") / "model.safetensors")
    assert torch.equal(exported["transformer.wte.weight"], stored["embed.weight"])
    # asked for fp32, they are rounded once, as the cast rounds them
    as_fp32 = load(path, dtype="fp32").model.state_dict()
    assert all(torch.equal(as_fp32[k], v.float()) for k, v in stored.items())


@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        (
            {"positional": Positional.alibi},
            "model.positional=alibi (family=gpt) has no transformers class: GPT2LMHeadModel "
            "takes model.positional=learned; LlamaForCausalLM takes model.positional=rope, no "
            "attention window, dense",
        ),
        ({"norm_placement": NormPlacement.post}, "model.norm_placement=post"),
        ({"norm_placement": NormPlacement.sandwich, "norm": "rmsnorm"}, "model.norm=rmsnorm"),
        ({"positional": Positional.rope, "activation": Activation.gelu}, "model.activation=gelu"),
        ({"family": Family.bert}, "model.norm_placement=pre"),
        ({"family": Family.t5, "positional": Positional.relative}, "model.bias=true"),
        (
            {"embed_scale": True},
            "GPT2LMHeadModel cannot express model.embed_scale=true (needs false: its token "
            "embeddings enter unscaled)",
        ),
        (
            {"family": Family.t5, "positional": Positional.relative, "embed_scale": True},
            "T5ForConditionalGeneration cannot express model.embed_scale=true",
        ),
    ],
)
def test_to_hf_refuses_what_transformers_cannot_express(knobs: dict, named: str) -> None:
    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V, **knobs))
    with pytest.raises(ConfigError, match=re.escape(named)):
        choose_architecture(cfg)


def test_to_hf_refuses_a_knob_before_it_reads_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal comes from the checkpoint's model_config: building the model and reading
    its weights first took a 300M-parameter checkpoint 25 s and 2.7 GB, a 7B one its 28 GB."""
    import lmlab.infer.hf.convert as convert

    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V))
    cfg = dataclasses.replace(cfg, positional=Positional.alibi)
    path = lmlab_checkpoint(tmp_path / "alibi.ckpt", cfg)

    def weights_read(*args, **kwargs):
        raise AssertionError("the weights were read before the refusal")

    monkeypatch.setattr(convert, "load", weights_read)
    with pytest.raises(ConfigError, match=re.escape("model.positional=alibi (family=gpt)")):
        to_hf(path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_scaled_rope_converts_and_what_has_no_knob_is_refused(tmp_path: Path) -> None:
    """Llama 3.1's frequencies are transformers' own; YaRN (which also rescales attention)
    is refused, naming the rope_type and what converts."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_model = CASES["llama3_rope"]()
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_model.config)
    folder, _ = hf_folder("llama3_rope", tmp_path)
    pre = load(from_hf(str(folder), tmp_path / "llama3.ckpt"))
    assert pre.cfg.rope_scaling == "llama3" and pre.cfg.rope_original_max_seq_len == 512
    rope = pre.model.positional  # the angles of position 1 are the frequencies
    inv_freq = torch.atan2(rope.sin[1, :4], rope.cos[1, :4])
    # fp32 cos/sin tables (rounding 6e-8) against transformers' fp32 frequencies
    torch.testing.assert_close(inv_freq, expected, rtol=1e-6, atol=1e-7)
    yarn = dict(hf_model.config.rope_parameters, rope_type="yarn")
    hf_model.config.rope_parameters = yarn
    hf_model.save_pretrained(tmp_path / "yarn")
    with pytest.raises(
        ConfigError, match=rf"^from_hf={tmp_path / 'yarn'}: rope_type='yarn' has no lmlab knob;"
    ):
        from_hf(str(tmp_path / "yarn"), tmp_path / "yarn.ckpt")
    hf_model.config.rope_parameters = {"rope_type": "default", "rope_theta": 1e4}
    hf_model.config.rope_parameters["partial_rotary_factor"] = 0.5
    hf_model.save_pretrained(tmp_path / "partial")
    with pytest.raises(ConfigError, match=r"partial_rotary_factor=0.5: lmlab's RoPE rotates"):
        from_hf(str(tmp_path / "partial"), tmp_path / "partial.ckpt")


def test_from_hf_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # the hub unreachable: transformers reads its cache only (no 30 s of retries), then fails
    monkeypatch.setattr("lmlab.infer.hf.convert.hub_reachable", lambda: False)
    seen, before = [], huggingface_hub.constants.HF_HUB_OFFLINE
    real = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(huggingface_hub.constants.HF_HUB_OFFLINE)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    with pytest.raises(ConfigError, match="no such local folder.*hf download"):
        from_hf("openai-community/gpt2", tmp_path / "x.ckpt")
    assert seen == [True] and before == huggingface_hub.constants.HF_HUB_OFFLINE
    for folder in ("./nosuch", str(tmp_path / "nosuch"), "~/nosuch", "a/b/c"):  # never hub names
        with pytest.raises(ConfigError, match=f"from_hf={re.escape(folder)}: no such folder$"):
            from_hf(folder, tmp_path / "x.ckpt")
    assert seen == [True]  # refused before transformers looked anywhere
    with pytest.raises(ConfigError, match="without config.json"):
        from_hf(str(tmp_path), tmp_path / "x.ckpt")
    # a base model (no language-model head) or another task's head: its head would be random
    headless = {
        "LlamaModel": CASES["llama"]().model,
        "BertModel": CASES["bert"]().bert,
        "LlamaForSequenceClassification": transformers.LlamaForSequenceClassification(
            CASES["llama"]().config
        ),
    }
    for cls, model in headless.items():
        model.save_pretrained(tmp_path / cls)
        with pytest.raises(ConfigError, match=rf"{cls} lacks weights .*(lm_head|cls\.pred)"):
            from_hf(str(tmp_path / cls), tmp_path / f"{cls}.ckpt")
        assert not (tmp_path / f"{cls}.ckpt").exists()
    # published weights holding nan: refused, nothing written (every use would fail on them)
    diverged = CASES["llama"]()
    with torch.no_grad():
        diverged.model.norm.weight[0] = float("nan")
    diverged.save_pretrained(tmp_path / "nan")
    named = r"not finite \(nan or inf\): model\.norm\.weight \(1 of 32\); they are so in"
    with pytest.raises(ConfigError, match=named):
        from_hf(str(tmp_path / "nan"), tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()
    (tmp_path / "x.ckpt").write_text("mine")
    with pytest.raises(ConfigError, match="exists"):
        from_hf(str(tmp_path), tmp_path / "x.ckpt")
    assert (tmp_path / "x.ckpt").read_text() == "mine"


@pytest.mark.parametrize(
    ("name", "setting", "named"),
    [
        (
            "llama",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
            "rope_type='yarn' has no lmlab knob",
        ),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ("bert", {"position_embedding_type": "relative_key"}, "'relative_key'"),
    ],
)
def test_a_setting_lmlab_cannot_express_is_refused_before_the_weights_are_read(
    name: str, setting: dict, named: str, tmp_path: Path
) -> None:
    """A published model's weights are gigabytes, downloaded first for a hub name: a setting
    of config.json that lmlab has no knob for is refused from config.json alone. Here the
    weights file does not read, so reading it first fails otherwise (it did)."""
    folder, _ = hf_folder(name, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **setting}))
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match=rf"^from_hf={re.escape(str(folder))}: .*{named}"):
        from_hf(str(folder), tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_a_config_json_value_lmlab_refuses_names_the_conversion(tmp_path: Path) -> None:
    """A config.json value that fails lmlab's checks once converted (a Mixtral routing each
    token to more experts than it has) is refused as the conversion's, from config.json
    alone: the message starts with ``from_hf=<folder>`` (it named only ``model.moe.top_k``,
    a field the user never set)."""
    folder = tmp_path / "mixtral"
    mixtral().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_experts_per_tok": 5}))
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match=rf"^from_hf={re.escape(str(folder))}: .*top_k=5"):
        from_hf(str(folder), tmp_path / "x.ckpt")


# Tokenizers that frame their input themselves, as transformers builds them from a vocabulary
# (no files, no hub): BERT's WordPiece ([CLS] a [SEP]) and T5's Unigram (a </s>)
WORDS = ["paris", "is", "the", "capital", "of", "france"]
FRAMING = {
    "bert": (
        lambda: transformers.BertTokenizerFast(
            vocab={
                w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])
            }
        ),
        lambda n: transformers.BertForMaskedLM(
            transformers.BertConfig(
                vocab_size=n,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
            )
        ),
    ),
    "t5": (
        lambda: transformers.T5TokenizerFast(
            vocab=[
                ("<pad>", 0.0),
                ("</s>", 0.0),
                ("<unk>", 0.0),
                *((f"▁{w}", -1.0) for w in WORDS),
            ],
            extra_ids=3,
        ),
        lambda n: transformers.T5ForConditionalGeneration(
            transformers.T5Config(
                vocab_size=n,
                d_model=16,
                d_ff=32,
                d_kv=8,
                num_layers=1,
                num_heads=2,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        ),
    ),
}


@pytest.mark.parametrize("name", list(FRAMING))
def test_a_tokenizer_that_frames_goes_both_ways_twice_unchanged(name: str, tmp_path: Path) -> None:
    """from_hf, to_hf, and again (the tokenizer then is to_hf's own): each folder's tokenizer
    encodes a text and a pair as the original does (ids and segments), framed once."""
    tokenizer, model = FRAMING[name]
    original = tokenizer()
    folder = tmp_path / "hf0"
    model(len(original)).save_pretrained(folder)
    original.save_pretrained(folder)
    texts = (["paris is the capital of france"], ["paris is", "the capital"])
    expected = [dict(original(*t)) for t in texts]
    for i in (1, 2):
        folder = to_hf(from_hf(str(folder), tmp_path / f"{i}.ckpt"), tmp_path / f"hf{i}")
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        assert [dict(tok(*t)) for t in texts] == expected, f"round {i}"


def test_from_hf_keeps_a_tokenizer_only_where_the_folder_has_a_usable_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No tokenizer files (transformers would make up a GPT-2 tokenizer of one token), or
    files without a vocabulary: the checkpoint has none, and a warning says why and that
    generation needs tokenizer=. Files that do not load, or whose ids pass the model's
    vocabulary, are refused."""
    folder, _ = hf_folder("gpt2", tmp_path)
    tokenizer_json = (folder / "tokenizer.json").read_bytes()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()

    def converted(name: str) -> dict:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lmlab.infer.hf.convert"):
            return torch.load(from_hf(str(folder), tmp_path / name))

    assert "tokenizer" not in converted("none.ckpt")
    assert f"from_hf={folder} has no tokenizer files: generation will need tokenizer=" in (
        caplog.text
    )
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    assert "tokenizer" not in converted("empty.ckpt")
    assert f"from_hf={folder} has tokenizer files (tokenizer_config.json) without a vocabulary" in (
        caplog.text
    )
    (folder / "tokenizer.json").write_bytes(tokenizer_json[:200])  # a download cut short
    with pytest.raises(
        ConfigError,
        match=r"its tokenizer \(tokenizer.json, tokenizer_config.json\) does not load: .*; "
        "repair or remove it",
    ):
        from_hf(str(folder), tmp_path / "cut.ckpt")
    # a tokenizer of V tokens on a model of V - 10: ids V - 10 .. V - 1 have no embedding
    small = tmp_path / "small"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=V - 10, **NO_SPECIAL_IDS)
    ).save_pretrained(small)
    hf_tokenizer_of(TOKENIZER, SPECIALS).save_pretrained(small)
    with pytest.raises(
        ConfigError,
        match=rf"its tokenizer has ids up to {V - 1}, past config.json's vocab_size={V - 10}: "
        rf"'.*' \({V - 10}\), '.*' \({V - 9}\), '.*' \({V - 8}\) and 7 more \(no embedding "
        rf".*; allowed: ids below {V - 10}$",
    ):
        from_hf(str(small), tmp_path / "small.ckpt")
    assert not {"cut.ckpt", "small.ckpt"} & {p.name for p in tmp_path.iterdir()}


def test_a_declared_special_token_lmlab_has_no_role_for_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """lmlab finds roles by name: a tokenizer whose PAD is ``<|pad|>`` converts without one,
    and the conversion says so; one whose EOS is ``<|im_end|>`` ends generation there (its
    declared end: test_declared_eos.py), and the conversion says that training has no EOS to
    pack documents with. GPT-2's one token in three roles, or a Llama tokenizer padding with
    ``<unk>``, keeps each declared token in a role and says nothing."""
    from tokenizers import models

    def declaring(vocab: list[str], **roles: str) -> object:
        tok = Tokenizer(models.WordLevel({v: i for i, v in enumerate(vocab)}, unk_token=vocab[0]))
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **roles)

    def warned(tok: object) -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lmlab.infer.hf.tokenizer_io"):
            check_specials(tok, Declared(tuple(declared_eos(tok, None, "folder"))))
        return caplog.text

    pad = declaring(["<|pad|>", "</s>", "a"], pad_token="<|pad|>", eos_token="</s>")
    assert (
        warned(pad)
        .strip()
        .endswith(
            "the tokenizer's pad is '<|pad|>', a name lmlab does not give that role (it reads "
            "<pad>, [PAD]): the checkpoint has no pad token, and what needs one refuses it"
        )
    )
    im_end = declaring(["<|im_end|>", "a"], eos_token="<|im_end|>")
    assert Specials.of(im_end.backend_tokenizer).eos is None
    assert (
        "the model ends its text at '<|im_end|>', as it declares: generation stops at "
        "'<|im_end|>' (its declared ends), evaluation "
        "ends a text with '<|im_end|>' (the first it declares); training ends documents "
        "with an EOS, which this tokenizer lacks by name "
        "(<|endoftext|>, </s>, <|end_of_text|>, <eos>, <｜end▁of▁sentence｜>), so training "
        "cannot pack its documents"
    ) in warned(im_end)
    eos = "<|endoftext|>"
    assert not warned(declaring([eos, "a"], eos_token=eos, bos_token=eos, unk_token=eos))
    llama = ["<unk>", "<s>", "</s>", "a"]
    assert not warned(declaring(llama, eos_token="</s>", unk_token="<unk>", pad_token="<unk>"))


def test_from_hf_refuses_weights_that_are_not_the_model_in_one_line(
    tmp_path: Path, run_command, capsys
) -> None:
    """A weights file cut short, a config.json of other shapes, another task's head that the
    conversion would drop: one line, exit 2, no checkpoint."""
    folder, _ = hf_folder("gpt2", tmp_path)
    weights, config = folder / "model.safetensors", folder / "config.json"
    original = weights.read_bytes(), config.read_text()

    def refusal() -> str:
        capsys.readouterr()  # save_pretrained's progress bars
        assert run_command("convert", f"from_hf={folder}", f"out={tmp_path / 'x.ckpt'}") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and not (tmp_path / "x.ckpt").exists(), err
        return err

    weights.write_bytes(original[0][: len(original[0]) // 2])
    assert refusal().startswith(f"error: from_hf={folder}: weights unreadable: Error while ")
    weights.write_bytes(original[0])
    config.write_text(json.dumps({**json.loads(original[1]), "n_positions": 32}))
    assert refusal() == (
        f"error: from_hf={folder}: config.json does not match the weights: "
        "transformer.wpe.weight is [64, 32] in the weights, [32, 32] by config.json\n"
    )
    layers = json.loads(original[1])["n_layer"]  # the weights' layers, 0 .. layers - 1
    for n_layer, first, side in (
        (layers - 1, layers - 1, "in the weights only"),
        (layers + 1, layers, "missing"),
    ):
        config.write_text(json.dumps({**json.loads(original[1]), "n_layer": n_layer}))
        err = refusal()
        assert err.startswith(
            f"error: from_hf={folder}: config.json says {n_layer} layer{'s' * (n_layer != 1)}, "
            f"the weights hold {layers} (transformer.h.{first}."
        ), err
        assert err.endswith(f" {side}); allowed: the config.json saved with these weights\n")
    config.write_text(original[1])
    # GPT-2's head is its embedding: a sequence classifier lacks nothing GPT2LMHeadModel needs
    torch.manual_seed(0)
    classifier = transformers.GPT2ForSequenceClassification(CASES["gpt2"]().config)
    classifier.save_pretrained(folder)
    assert refusal() == (
        f"error: from_hf={folder}: GPT2ForSequenceClassification has weights GPT2LMHeadModel "
        "leaves out: score.weight (another task's head, which the conversion would drop); "
        "allowed: a folder saved from GPT2LMHeadModel\n"
    )


def test_berts_pretraining_heads_are_left_out_and_its_masked_lm_converts(tmp_path: Path) -> None:
    """Published BERT checkpoints (bert-base-uncased) hold BertForPreTraining's pooler and
    next-sentence head beside the MLM head: BertForMaskedLM leaves them out, and so does
    lmlab; the MLM gives BertForMaskedLM's logits."""
    torch.manual_seed(0)
    pretraining = transformers.BertForPreTraining(CASES["bert"]().config)
    pretraining.save_pretrained(tmp_path / "hf")
    hf_tokenizer_of(TOKENIZER, SPECIALS).save_pretrained(tmp_path / "hf")
    mlm = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    pre = load(from_hf(str(tmp_path / "hf"), tmp_path / "bert.ckpt"))
    batch = inputs("bert")
    with torch.no_grad():
        assert (pre.model(**batch) - mlm(**batch).logits).abs().max() <= 1e-5


def test_to_hf_refuses_a_link_as_out_before_any_work(tmp_path: Path, run_command, capsys) -> None:
    """The folder is written beside ``out`` and renamed into place, which a link (to an
    empty folder, or dangling) does not take: refused first, even before the checkpoint is
    looked for. An existing empty folder is written into (nothing in it is lost)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "nowhere"):
        link = tmp_path / f"to-{target.name}"
        link.symlink_to(target)
        assert run_command("convert", f"to_hf={tmp_path / 'none.ckpt'}", f"out={link}") == 2
        assert capsys.readouterr().err == (
            f"error: out={link} is a symbolic link (to {target}): name a new folder, or the "
            "folder it points to\n"
        )
    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V))
    assert to_hf(lmlab_checkpoint(tmp_path / "m.ckpt", cfg), empty) == empty
    assert (empty / "config.json").is_file()


def test_to_hf_keeps_the_tokenizer_a_checkpoint_carries(tmp_path: Path) -> None:
    """``tokenizer=`` is for a checkpoint that carries none: another tokenizer of the same
    size (it passes the size check) would ship beside the weights, and every id would mean
    another token. Refused before anything is written; the carried one itself is accepted."""
    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V))
    ckpt = lmlab_checkpoint(tmp_path / "m.ckpt", cfg)
    spec = json.loads(TOKENIZER.to_str())  # the same tokens, the plain ones at other ids
    plain = {t: i for t, i in spec["model"]["vocab"].items() if i >= len(spec["added_tokens"])}
    ids = sorted(plain.values())
    spec["model"]["vocab"].update(zip(plain, reversed(ids), strict=True))
    (tmp_path / "other.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"carries its own tokenizer, the one it was trained"):
        to_hf(ckpt, tmp_path / "hf", tokenizer=str(tmp_path / "other.json"))
    assert not (tmp_path / "hf").exists()
    TOKENIZER.save(str(tmp_path / "same.json"))
    to_hf(ckpt, tmp_path / "hf", tokenizer=str(tmp_path / "same.json"))
    assert Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).get_vocab() == (
        TOKENIZER.get_vocab()
    )
    # the folder's own tokenizer.json, as to_hf wrote it for transformers (a framing
    # template, masks that take the space to their left): the same ids, accepted (it was
    # refused as another model's)
    to_hf(ckpt, tmp_path / "again", tokenizer=str(tmp_path / "hf" / "tokenizer.json"))
    exported = [Tokenizer.from_file(str(tmp_path / f / "tokenizer.json")) for f in ("hf", "again")]
    assert exported[0].to_str() == exported[1].to_str()


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_the_exported_tokenizer_reads_masks_and_sentinels_as_fill_does(
    kind: str, tmp_path: Path
) -> None:
    """A masked token or a T5 span brings its own space under byte-level BPE (``Ġfox``):
    ``lmlab.infer.fill`` drops the space before a ``<mask>`` or a sentinel, and the exported
    tokenizer's do too (``lstrip``, as RoBERTa's ``<mask>``), so a fill-mask pipeline reads
    ``the quick <mask> fox`` as lmlab does, not with a lone space token before the mask. In a
    character vocabulary the space is a token of its own, which masked-LM training masks or
    leaves in place: both keep it."""
    text = "the quick brown fox jumps over the lazy dog\n" * 20
    tok = train_bpe([text], 400) if kind == "bpe" else train_char([text])
    hf_tokenizer_of(tok, Specials.of(tok), Family.t5).save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for prompt, marker, unspaced in [
        ("the quick <mask> fox", "<mask>", "the quick<mask> fox"),
        ("the <extra_id_0> fox <extra_id_1>", "<extra_id_", "the<extra_id_0> fox<extra_id_1>"),
    ]:
        read = unspaced if kind == "bpe" else prompt
        assert fill._unspaced(tok, prompt, marker) == read
        assert hf(prompt, add_special_tokens=False)["input_ids"] == encode(tok, read), prompt


# --- a trained checkpoint out to transformers, back, and into training -------------------


def test_trained_llama_goes_to_transformers_and_back_into_training(
    tmp_path: Path, cache_dir: Path, run_command
) -> None:
    """``+debug=smoke +experiment=llama`` -> ``convert to_hf`` -> transformers' logits equal
    lmlab's -> ``convert from_hf`` is bit-exact -> ``init_from`` trains from it: with a
    vanishing learning rate its validation loss is the trained run's (the weights and the
    tokenizer both came along)."""
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train
    from smoke import SMOKE

    smoke = [*SMOKE, "logger=none", "callbacks.sample=null"]  # 64-token rows: none rests on 256
    first = tmp_path / "first"
    val_loss = train(compose_train([*smoke, "+experiment=llama"], first, cache_dir))
    ckpt = first / "checkpoints" / "last.ckpt"
    assert run_command("convert", f"to_hf={ckpt}", f"out={tmp_path / 'hf'}") == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    pre = load(ckpt)
    ids = torch.randint(
        200, pre.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert (hf_model(ids).logits - pre.model(ids)).abs().max() <= 1e-5
    back = tmp_path / "back.ckpt"
    assert run_command("convert", f"from_hf={tmp_path / 'hf'}", f"out={back}") == 0
    restored = load(back).model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in pre.model.state_dict().items())

    init = [*smoke, f"init_from={back}", "data.tokenizer=checkpoint", "optim.lr=1e-12"]
    continued = train(compose_train(init, tmp_path / "continued", cache_dir))
    # same weights, tokenizer and validation rows: equal up to fp32 summation order (1e-6 x
    # a loss of ~8) and a 1e-12 learning rate's steps
    assert continued == pytest.approx(val_loss, abs=1e-4)
    plan = (tmp_path / "continued" / "plan.json").read_text()
    assert '"init_from"' in plan and '"positional": "rope"' in plan

    with pytest.raises(ConfigError, match="needs data.tokenizer=checkpoint"):
        train(compose_train([*smoke, f"init_from={back}"], tmp_path / "x", cache_dir))
    with pytest.raises(ConfigError, match=r"model\.n_layers=3 but the checkpoint has"):
        train(compose_train([*init, "model.n_layers=3"], tmp_path / "y", cache_dir))
    for refused in ("x", "y"):  # refused before any data, plan or checkpoint
        assert not {"plan.json", "checkpoints"} & {p.name for p in (tmp_path / refused).iterdir()}


# Published shapes, written from the papers' and model cards' hyper-parameters, not from lmlab's
# mapping: (preset, recipe, vocabulary, the transformers class and config of the reference).
PUBLISHED = {
    "gpt2": ("gpt_small", "gpt2", 50257, "GPT2LMHeadModel", {}),
    "gpt2-medium": (
        "gpt_medium",
        "gpt2",
        50257,
        "GPT2LMHeadModel",
        dict(n_embd=1024, n_layer=24, n_head=16),
    ),
    "gpt2-large": (
        "gpt_large",
        "gpt2",
        50257,
        "GPT2LMHeadModel",
        dict(n_embd=1280, n_layer=36, n_head=20),
    ),
    "gpt2-xl": (
        "gpt_xl",
        "gpt2",
        50257,
        "GPT2LMHeadModel",
        dict(n_embd=1600, n_layer=48, n_head=25),
    ),
    "llama-2-7b": ("gpt_7b", "llama", 32000, "LlamaForCausalLM", {}),  # LlamaConfig()'s default
    "bert-base": ("bert_base", "bert", 30522, "BertForMaskedLM", {}),
    "bert-large": (
        "bert_large",
        "bert",
        30522,
        "BertForMaskedLM",
        dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        ),
    ),
    "t5-small": ("t5_small", "t5", 32128, "T5ForConditionalGeneration", {}),
    "t5-base": (
        "t5_base",
        "t5",
        32128,
        "T5ForConditionalGeneration",
        dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12),
    ),
    "t5-large": (
        "t5_large",
        "t5",
        32128,
        "T5ForConditionalGeneration",
        dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16),
    ),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_counts_equal_the_published_models(name: str) -> None:
    """Every size preset under its recipe has the parameters of the transformers class built
    on the meta device from the published shape, and converts to that class's config."""
    from lmlab.train.compose import compose_train

    preset, recipe, vocab, hf_class, shape = PUBLISHED[name]
    composed = compose_train(
        [f"model={preset}", f"+experiment={recipe}", f"model.vocab_size={vocab}"]
    )
    cfg = to_schema(ModelConfig, composed.model)
    cls = getattr(transformers, hf_class)
    with torch.device("meta"):
        reference = cls(cls.config_class(vocab_size=vocab, **shape))
        ours = build_model(cfg)
    expected = sum(p.numel() for p in reference.parameters())
    assert sum(p.numel() for p in ours.parameters()) == expected
    assert choose_architecture(cfg).hf_class == hf_class


def test_to_hf_folder_has_the_permissions_of_a_plain_folder(tmp_path: Path) -> None:
    """Not the private 0700 of a temporary folder: the folder is for sharing."""
    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V))
    ckpt = lmlab_checkpoint(tmp_path / "m.ckpt", cfg)
    umask = os.umask(0o022)
    try:
        out = to_hf(ckpt, tmp_path / "hf")
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_mixtral_converts_both_ways_with_transformers_logits(tmp_path: Path) -> None:
    """MixtralForCausalLM (4 experts, top-2, GQA) in, equal logits and greedy tokens; and an
    ``+experiment=mixtral`` model out and back bit-exact."""
    torch.manual_seed(0)
    hf_model = mixtral().eval()
    hf_model.save_pretrained(tmp_path / "hf")
    hf_tokenizer_of(TOKENIZER, SPECIALS).save_pretrained(tmp_path / "hf")
    pre = load(from_hf(str(tmp_path / "hf"), tmp_path / "m.ckpt"))
    assert (pre.cfg.moe.num_experts, pre.cfg.moe.top_k) == (4, 2)
    ids = inputs("llama")["input_ids"]
    with torch.no_grad():
        assert (pre.model(ids) - hf_model(ids).logits).abs().max() <= 1e-5
        expected = hf_model.generate(ids[:1], do_sample=False, max_new_tokens=8, min_new_tokens=8)
        assert generate(pre.model, ids[:1], 8, temperature=0.0).tolist() == expected.tolist()
    out = to_hf(tmp_path / "m.ckpt", tmp_path / "out")
    back = load(from_hf(str(out), tmp_path / "back.ckpt")).model.state_dict()
    assert all(torch.equal(back[k], v) for k, v in pre.model.state_dict().items())
    dense = to_schema(
        ModelConfig,
        dict(
            d_model=32,
            n_layers=1,
            n_heads=4,
            positional="rope",
            norm="rmsnorm",
            activation="swiglu",
            bias=False,
            moe={"num_experts": 4, "top_k": 2, "every_n_layers": 2},
        ),
    )
    with pytest.raises(ConfigError, match=r"model\.moe\.every_n_layers=2"):
        choose_architecture(dense)
    # one expert: no top_k fits, and the message says so and why
    single = dataclasses.replace(
        dense, moe=dataclasses.replace(dense.moe, num_experts=1, top_k=1, every_n_layers=1)
    )
    with pytest.raises(ConfigError) as refused:
        choose_architecture(single)
    assert (
        "model.moe.top_k=1 (no value fits: Mixtral renormalises the chosen gates: top_k "
        "from 2 to model.moe.num_experts)" in str(refused.value)
    )


def test_a_mixtral_with_gelu_experts_goes_out_as_it_came_in(tmp_path: Path) -> None:
    """Mixtral's experts are gated MLPs of its ``hidden_act``: a GeGLU one comes in as
    ``activation=geglu`` and goes out again (it was refused: "Mixtral's experts are SwiGLU"),
    with transformers' logits (fp32, 1e-5: see the module docstring) and the same weights."""
    torch.manual_seed(0)
    mixtral(hidden_act="gelu_pytorch_tanh").save_pretrained(tmp_path / "hf")
    hf_tokenizer_of(TOKENIZER, SPECIALS).save_pretrained(tmp_path / "hf")
    pre = load(from_hf(str(tmp_path / "hf"), tmp_path / "m.ckpt"))
    assert pre.cfg.activation == Activation.geglu
    out = to_hf(tmp_path / "m.ckpt", tmp_path / "out")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf_model.config.hidden_act == "gelu_pytorch_tanh"
    ids = inputs("llama")["input_ids"]
    with torch.no_grad():
        assert (pre.model(ids) - hf_model(ids).logits).abs().max() <= 1e-5
    back = load(from_hf(str(out), tmp_path / "back.ckpt")).model.state_dict()
    assert all(torch.equal(back[k], v) for k, v in pre.model.state_dict().items())


def test_mixtral_training_loss_keeps_its_weights_both_ways(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """transformers' load-balancing loss counts each token's k choices against the tokens
    (k when balanced), lmlab's against the assignments (1), and Mixtral has no router z-loss:
    a converted Mixtral's training objective is transformers' training loss, and its
    coefficient goes back unchanged. One layer: over several, transformers pools the layers'
    counts and probabilities before the product, lmlab averages the layers' losses. Out, a
    z-loss (training only) is named as left out."""
    from lmlab.train.task import LMTask

    torch.manual_seed(0)
    hf_model = mixtral(num_hidden_layers=1, num_experts_per_tok=3, router_aux_loss_coef=0.02)
    hf_model.save_pretrained(tmp_path / "hf")
    hf_tokenizer_of(TOKENIZER, SPECIALS).save_pretrained(tmp_path / "hf")
    ids = inputs("llama")["input_ids"]
    expected = hf_model.eval()(ids, labels=ids, output_router_logits=True).loss
    ckpt = from_hf(str(tmp_path / "hf"), tmp_path / "m.ckpt")
    pre = load(ckpt)
    task = LMTask(pre.cfg, None, None).eval()
    task.model.load_state_dict(pre.model.state_dict())
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)  # HF shifts inside
    with torch.no_grad():
        total, (lm, aux, z) = task.objective({"input_ids": ids, "labels": labels})
    assert aux > 1.05  # unbalanced, so the coefficient shows
    assert (total - expected).abs() <= 1e-5
    out = json.loads((to_hf(ckpt, tmp_path / "out") / "config.json").read_text())
    assert out["router_aux_loss_coef"] == pytest.approx(0.02, rel=1e-12)
    cfg = dataclasses.replace(pre.cfg, moe=dataclasses.replace(pre.cfg.moe, z_loss_coef=1e-3))
    with caplog.at_level(logging.WARNING, logger="lmlab.infer.hf.convert"):
        to_hf(lmlab_checkpoint(tmp_path / "z.ckpt", cfg, pre.model), tmp_path / "z")
    assert "model.moe.z_loss_coef=0.001" in caplog.text


def tiny_mixtral(n_layers: int, capacity_factor: float | None = None, **knobs) -> ModelConfig:
    """An lmlab model Mixtral can express: RMSNorm, RoPE, SwiGLU experts (4, top-2), GQA, no
    biases, no z-loss (Mixtral has none)."""
    moe = {"num_experts": 4, "top_k": 2, "capacity_factor": capacity_factor, "z_loss_coef": 0.0}
    base = dict(d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=32, vocab_size=V, bias=False)
    mixtral = dict(positional="rope", norm="rmsnorm", activation="swiglu", moe=moe)
    return to_schema(ModelConfig, {**base, **mixtral, "n_layers": n_layers, **knobs})


def test_mixtral_with_a_capacity_factor_goes_out_with_its_eval_logits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A capacity factor drops assignments in training only; evaluation and generation are
    dropless, as Mixtral is: the model goes out (the setting named as not written) and
    transformers gives lmlab's eval logits."""
    cfg = tiny_mixtral(n_layers=1, capacity_factor=0.5)
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = inputs("llama")["input_ids"]
    with torch.no_grad():
        dropped = model.train()(ids)
        expected = model.eval()(ids)
    assert (dropped - expected).abs().max() > 1e-3  # the factor drops, in training
    with caplog.at_level(logging.WARNING, logger="lmlab.infer.hf.convert"):
        folder = to_hf(lmlab_checkpoint(tmp_path / "m.ckpt", cfg, model), tmp_path / "hf")
    assert "model.moe.capacity_factor=0.5" in caplog.text
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert (hf_model(ids).logits - expected).abs().max() <= 1e-5


def test_fine_grained_experts_go_out_at_their_own_width(tmp_path: Path) -> None:
    """``model.moe.granularity=2`` experts are half the dense feed-forward's width; Mixtral's
    ``intermediate_size`` is its experts' width, so it is written as the experts' (the dense
    width would not load), and transformers gives lmlab's logits. Back through from_hf, the
    same experts arrive at granularity 1 with that width as ``d_ff``."""
    moe = {"num_experts": 4, "top_k": 2, "granularity": 2, "z_loss_coef": 0.0}
    cfg = tiny_mixtral(n_layers=1, moe=moe)
    assert (cfg.ffn_dim, cfg.expert_dim) == (128, 64)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = inputs("llama")["input_ids"]
    with torch.no_grad():
        expected = model(ids)
    folder = to_hf(lmlab_checkpoint(tmp_path / "m.ckpt", cfg, model), tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["intermediate_size"] == 64
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert (hf_model(ids).logits - expected).abs().max() <= 1e-5
    back = torch.load(from_hf(str(folder), tmp_path / "back.ckpt"), weights_only=False)
    assert back["model_config"]["d_ff"] == 64
    assert back["model_config"]["moe"]["granularity"] == 1


def saved_layout(folder: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{key: (shape, dtype)} of every tensor in the folder's safetensors files."""
    from safetensors.torch import load_file

    tensors = {k: v for p in folder.glob("*.safetensors") for k, v in load_file(p).items()}
    return {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}


def test_mixtral_goes_out_in_the_layout_save_pretrained_writes(tmp_path: Path) -> None:
    """transformers 5 fuses Mixtral's experts in memory (``mlp.experts.gate_up_proj``) but
    save_pretrained writes them one by one (``block_sparse_moe.experts.<e>.w1|w2|w3``), the
    layout of published checkpoints, transformers 4 and vLLM: to_hf writes save_pretrained's
    keys, shapes and dtypes for the same config, with lmlab's logits; from_hf reads both."""
    cfg = tiny_mixtral(n_layers=2, tie_embeddings=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = to_hf(lmlab_checkpoint(tmp_path / "m.ckpt", cfg, model), tmp_path / "out")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    transformers.MixtralForCausalLM(hf_model.config).save_pretrained(tmp_path / "ref")
    layout = saved_layout(out)
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in layout
    assert layout == saved_layout(tmp_path / "ref")
    ids = inputs("llama")["input_ids"]
    with torch.no_grad():
        assert (hf_model(ids).logits - model(ids)).abs().max() <= 1e-5
    # the fused layout, as transformers 5 holds it in memory, comes in too
    from safetensors.torch import save_file

    fused = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    save_file(fused, out / "model.safetensors")
    assert "model.layers.1.mlp.experts.gate_up_proj" in saved_layout(out)
    back = load(from_hf(str(out), tmp_path / "back.ckpt")).model.state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_from_hf_interrupted_while_saving_leaves_no_partial_file(
    error: type[BaseException], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C or a full disk halfway through writing the checkpoint: the exception goes on,
    and neither the hidden temporary file nor ``out`` is left behind."""
    import lmlab.infer.hf.convert as convert

    monkeypatch.setattr(convert, "_from_hf", lambda source: {"state_dict": {}})

    def half_save(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 1000)  # a partial archive
        raise error("interrupted")

    monkeypatch.setattr(convert.torch, "save", half_save)
    with pytest.raises(error):
        from_hf(str(tmp_path), tmp_path / "out" / "x.ckpt")
    assert list((tmp_path / "out").iterdir()) == []


def test_two_conversions_into_one_out_keep_the_first_and_refuse_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``convert`` run twice at once into one ``out``: both passed the check before their
    work, then ``from_hf``'s second rename replaced the first's checkpoint in silence (both
    said they wrote it; they also shared one temporary name), and ``to_hf``'s second ended in
    a traceback (``out.rmdir()``: directory not empty). Now the second is refused in one
    line at the end, the first's output is whole, and no temporary file is left."""
    import lmlab.infer.hf.convert as convert

    out = tmp_path / "x.ckpt"
    first = {"state_dict": {"w": torch.ones(2)}, "converted_from": "first"}

    def meanwhile(source: str) -> dict:
        torch.save(first, out)  # the other conversion finished while this one worked
        return {"state_dict": {"w": torch.zeros(2)}, "converted_from": "second"}

    with monkeypatch.context() as patch:
        patch.setattr(convert, "_from_hf", meanwhile)
        with pytest.raises(ConfigError) as refused:
            from_hf(str(tmp_path), out)
    assert str(refused.value) == (
        f"out={out} is now a file: another command wrote it while this one ran (nothing is "
        "overwritten; this one's output is not kept)"
    )
    assert torch.load(out)["converted_from"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]

    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V))
    ckpt = lmlab_checkpoint(tmp_path / "m.ckpt", cfg)
    folder, kept = tmp_path / "hf", tmp_path / "hf" / "theirs.txt"
    save = convert.say_tied

    def written_meanwhile(path: Path, tied: bool) -> None:
        folder.mkdir(exist_ok=True)
        kept.write_text("the other conversion's")
        save(path, tied)

    with monkeypatch.context() as patch:
        patch.setattr(convert, "say_tied", written_meanwhile)
        with pytest.raises(ConfigError, match=r"^out=\S+/hf is now a folder that is not empty: "):
            to_hf(ckpt, folder)
    assert [p.name for p in folder.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.ckpt", "x.ckpt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is still taken, whole
    assert to_hf(ckpt, empty) == empty and (empty / "config.json").is_file()


def test_what_a_killed_conversion_left_beside_out_is_removed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``kill -9`` while ``to_hf`` wrote left a hidden, model-sized ``.hf.tmp-XXXX`` folder
    (``from_hf``: ``.x.ckpt.tmp``) that nothing removed. The temporary names now hold this
    machine's name and the pid: the next conversion into that ``out`` removes those whose
    process is gone, and keeps a live process's and another machine's."""
    import socket
    import subprocess
    import sys

    import lmlab.infer.hf.convert as convert

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead, live, host = int(gone.stdout), os.getppid(), socket.gethostname()
    left = {
        tmp_path / f".x.ckpt.{host}.{dead}.tmp": False,
        tmp_path / f".x.ckpt.{host}.{live}.tmp": True,
        tmp_path / f".x.ckpt.other-host.{dead}.tmp": True,
        tmp_path / f".hf.{host}.{dead}.tmp": False,
        tmp_path / f".hf.other-host.{dead}.tmp": True,
    }
    for path in left:
        if path.name.startswith(".hf."):
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"\0" * 64)
        else:
            path.write_bytes(b"\0" * 64)
    monkeypatch.setattr(convert, "_from_hf", lambda source: {"state_dict": {}})
    from_hf(str(tmp_path), tmp_path / "x.ckpt")
    cfg = to_schema(ModelConfig, dict(d_model=32, n_layers=1, n_heads=4, vocab_size=V))
    to_hf(lmlab_checkpoint(tmp_path / "m.ckpt", cfg), tmp_path / "hf")
    assert {path: path.exists() for path in left} == left
    assert (tmp_path / "x.ckpt").is_file() and (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.parametrize(
    ("preset", "recipe", "cls"),
    [("bert_tiny", "bert", "BertForMaskedLM"), ("t5_tiny", "t5", "T5ForConditionalGeneration")],
)
def test_an_moe_bert_or_t5_is_refused_without_pointing_at_mixtral(
    preset: str, recipe: str, cls: str
) -> None:
    """The refusal named +experiment=mixtral, a decoder's recipe that cannot help a BERT or
    T5: transformers has no class for their Mixture of Experts."""
    from lmlab.config import resolve_configs
    from lmlab.train.compose import compose_train

    overrides = [f"model={preset}", f"+experiment={recipe}", "model.moe.num_experts=4"]
    cfg = resolve_configs(compose_train(overrides), machine=False)[0]
    with pytest.raises(ConfigError) as refused:
        choose_architecture(cfg)
    family = recipe.upper()
    assert str(refused.value) == (
        f"{cls} cannot express model.moe.num_experts=4 (transformers has no class of a "
        f"{family} Mixture of Experts; it stays an lmlab checkpoint)"
    )


def test_an_out_that_ends_with_a_slash_is_not_written_as_a_file(
    tmp_path: Path, run_command, capsys
) -> None:
    """``out=newdir/`` names a folder, but ``Path`` drops the slash: ``from_hf`` wrote a file
    named ``newdir``. Refused before any work, as an existing folder is."""
    out = f"{tmp_path / 'newdir'}/"
    assert run_command("convert", f"from_hf={tmp_path / 'none'}", f"out={out}") == 2
    assert capsys.readouterr().err == (
        f"error: out={out} names a folder (it ends with /): name the file to write\n"
    )
    assert list(tmp_path.iterdir()) == []
