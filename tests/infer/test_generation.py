"""Using trained models: KV-cache generation, sampling filters, fill-mask, infilling, attention
maps and the per-layer parameter table, through the library and the two command lines."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from lmlab.cli.generate import main as generate_main
from lmlab.config import (
    CONF_DIR,
    INFER_TASKS,
    Family,
    ModelConfig,
    MoEConfig,
    Positional,
    model_config_dict,
)
from lmlab.data.tokenizer import EOS, encode, train_bpe, train_char
from lmlab.errors import ConfigError
from lmlab.infer import fill
from lmlab.infer.declared import Declared
from lmlab.infer.fill import fill_mask, infill, parse_spans
from lmlab.infer.generation import decode_loop, filter_logits, generate
from lmlab.infer.pretrained import Pretrained, load
from lmlab.infer.probe import CREATOR, attention_maps, drawn_by_probe, probe_ids
from lmlab.model import build_model, param_breakdown
from lmlab.model.kv_cache import KVCache
from lmlab.model.params import param_rows
from lmlab.train.compose import compose_train
from lmlab.train.run import train
from smoke import SMOKE

REPO = CONF_DIR.parent  # the repository root

VOCAB = 61

# Paths that compute the same function are compared in float64: their rounding differences are
# about eps64 (1.1e-16) x accumulation length (< 10^3) x magnitude (logits < 10^2), far below
# FP64_ATOL, while a real defect (a leaked token, a wrong cache slot) moves logits by > 1e-3.
# In float32 the same comparisons sit at the noise floor, which differs between CPU kernels.
FP64_ATOL = 1e-9


def tiny(family: str = "gpt", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    # a large init spreads the logits, so greedy choices are far from ties
    base = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=24, vocab_size=VOCAB, init_std=0.5)
    return build_model(ModelConfig(family=family, **{**base, **kw})).eval().double()


VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "window": {"attention_window": 5},
    # generation routes every token (dropless) whatever the training capacity
    "moe": {"moe": MoEConfig(num_experts=4, top_k=2, capacity_factor=1.0)},
}


# every positional scheme with every attention variant; the MoE feed-forward with Mixtral's RoPE
CACHE_CASES = [(p, v) for v in VARIANTS if v != "moe" for p in Positional]
CACHE_CASES.append((Positional.rope, "moe"))


@pytest.mark.parametrize(("positional", "variant"), CACHE_CASES)
def test_kv_cache_greedy_equals_full_recomputation(positional: Positional, variant: str) -> None:
    """7 prompt tokens + 30 new ones: past the window (a ring cache) and past max_seq_len=24
    (where both paths crop the context)."""
    model = tiny(positional=positional, **VARIANTS[variant])
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 30, temperature=0, use_cache=True)
    full = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    # and the logits agree step by step, not just their argmax
    cache = model.new_cache(2)
    torch.testing.assert_close(model(prompt, cache=cache), model(prompt), atol=FP64_ATOL, rtol=0)
    for t in range(7, 12):
        step = model(cached[:, t : t + 1], cache=cache)[:, -1]
        torch.testing.assert_close(step, model(cached[:, : t + 1])[:, -1], atol=FP64_ATOL, rtol=0)


@pytest.mark.parametrize("positional", [Positional.relative, Positional.rope])
def test_t5_decoder_cache_equals_full_decoder(positional: Positional) -> None:
    model = tiny("t5", positional=positional)
    src = torch.randint(0, VOCAB, (2, 9))
    dec = torch.randint(0, VOCAB, (2, 6))
    memory = model.encode(src)
    cache = model.new_cache(2)
    steps = [model.decode(dec[:, :3], memory, cache=cache)]
    steps += [model.decode(dec[:, t : t + 1], memory, cache=cache) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), model(src, dec), atol=FP64_ATOL, rtol=0)


@pytest.mark.parametrize("use_cache", [True, False])
def test_t5_decoding_past_the_context_keeps_the_start_token(use_cache: bool) -> None:
    """30 target tokens past max_seq_len=24: every cropped decoder input still begins with the
    start token T5 was trained to read first, followed by the latest tokens; the cached and
    the recomputing paths give the same targets."""
    model = tiny("t5")
    src = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    memory = model.encode(src)
    start = torch.full((2, 1), 3)
    seen: list[torch.Tensor] = []

    def decode(ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        seen.append(ids)
        return model.decode(ids, memory, cache=cache)

    new_cache = model.new_cache if use_cache else None
    out = decode_loop(decode, new_cache, start, 24, 30, temperature=0.0, keep_start=1)
    assert out.shape == (2, 31)
    full = [ids for ids in seen if ids.shape[1] == 24]
    assert len(full) >= 6 and all(torch.equal(ids[:, 0], start[:, 0]) for ids in full)
    # the last step read the context of 30 tokens: the start token and the last 23
    assert torch.equal(seen[-1], torch.cat((start, out[:, 7:30]), dim=1))
    other_cache = None if use_cache else model.new_cache
    other = decode_loop(decode, other_cache, start, 24, 30, temperature=0.0, keep_start=1)
    assert torch.equal(out, other)


def test_cache_takes_the_dtype_attention_computes_in() -> None:
    """FSDP's bf16 policy computes keys in bf16 over fp32 weights: the cache, made in the
    weights' dtype, follows the keys (SDPA refuses a bf16 query with fp32 keys)."""
    cache = KVCache(n_layers=1, batch=1, n_kv_heads=2, head_dim=4, max_len=8)
    k = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16)
    keys, values = cache.update(0, k, k + 1)
    assert keys.dtype == values.dtype == torch.bfloat16 and torch.equal(keys, k)


def test_window_cache_holds_only_the_window() -> None:
    model = tiny(attention_window=5, n_kv_heads=1)
    cache = model.new_cache(1)
    assert cache.k.shape == (2, 1, 1, 5, 8)  # layers, batch, kv heads, window, head dim
    model(torch.randint(0, VOCAB, (1, 9)), cache=cache)
    assert cache.slot_pos.tolist() == [5, 6, 7, 8, 4]  # slot = position % window


def test_full_cache_refuses_more_than_max_seq_len() -> None:
    model = tiny()
    cache = model.new_cache(1)
    model(torch.zeros(1, 24, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"KV cache full: 24 \+ 1 tokens > max_seq_len 24"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_the_cache_holds_the_decode_not_every_position(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode's cache is as long as its context and new tokens: sized by max_seq_len, a
    converted Llama 3.1 (131072 positions) took 17 GB in bf16 to continue one prompt. Past
    max_seq_len it holds max_seq_len and the greedy tokens equal full recomputation."""
    sizes = []
    made = KVCache.__init__

    def recorded(self: KVCache, *args, **kwargs) -> None:
        made(self, *args, **kwargs)
        sizes.append(self.size)

    monkeypatch.setattr(KVCache, "__init__", recorded)
    model = tiny(family, max_seq_len=4096)
    forward = (lambda ids, c: model(ids, cache=c)) if family == "gpt" else decode_t5(model)
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    for max_len, new in ((4096, 5), (24, 30)):
        cached = decode_loop(forward, model.new_cache, prompt, max_len, new, temperature=0.0)
        assert torch.equal(cached, decode_loop(forward, None, prompt, max_len, new, 0.0))
    assert sizes == [7 + 5, 24]


def decode_t5(model: torch.nn.Module):
    """A T5 decoder step over a fixed encoder input, as infilling runs it."""
    src = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    memory = model.encode(src)
    return lambda ids, cache: model.decode(ids, memory, cache=cache)


def test_long_prompt_is_truncated_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny()
    prompt = torch.randint(0, VOCAB, (1, 30))
    out = generate(model, prompt, 2, temperature=0)
    assert "only its last 24 are used" in caplog.text
    assert torch.equal(out[:, :30], prompt) and out.shape == (1, 32)


def test_top_k_and_top_p_never_sample_outside_the_allowed_set() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    top_k = torch.multinomial(filter_logits(logits, top_k=3).softmax(-1), 1, generator=gen)
    assert set(top_k.unique().tolist()) == {0, 1, 2}
    # probabilities 0.64, 0.23, 0.09, ...: the nucleus of 0.8 is the first two tokens
    top_p = torch.multinomial(filter_logits(logits, top_p=0.8).softmax(-1), 1, generator=gen)
    assert set(top_p.unique().tolist()) == {0, 1}
    assert filter_logits(logits[:1], top_p=0.01).isfinite().sum() == 1  # the top token stays


@pytest.mark.parametrize(
    ("top_k", "top_p"), [(3, None), (None, 0.8), (4, 0.7), (0, None), (None, 0.0), (99, 1.0)]
)
def test_filtered_distribution_is_transformers(top_k: int | None, top_p: float | None) -> None:
    """After ``filter_logits`` the tokens left and their renormalised probabilities are those
    of transformers' top-k and top-p warpers, built as ``generate`` builds them (top-k where
    ``top_k`` is neither None nor 0, top-p where ``top_p < 1``), edge values too: ``top_k=0``
    (a harness task may pass it) failed on a tensor shape, and ``top_p=0`` left no token.
    Both sides softmax the same float32 logits of size < 10 and differ at most by a few eps32
    (1.2e-7) of probabilities <= 1: 1e-6 holds them, while a token kept or dropped wrongly
    moves a probability by > 1e-2."""
    processors = pytest.importorskip("transformers.generation.logits_process")
    logits = torch.tensor([[1.5, 4.0, -0.5, 3.0, 2.0, 0.5, -1.0, 1.0]])
    warpers = [processors.TopKLogitsWarper(top_k)] if top_k else []
    if top_p is not None and top_p < 1.0:
        warpers.append(processors.TopPLogitsWarper(top_p))
    expected = processors.LogitsProcessorList(warpers)(None, logits.clone()).softmax(-1)
    got = filter_logits(logits, top_k=top_k, top_p=top_p).softmax(-1)
    assert torch.equal(got > 0, expected > 0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cache", [True, False])
def test_ids_past_the_tokenizer_are_never_picked(cache: bool) -> None:
    """A model with more rows than its tokenizer has tokens (``model.vocab_size=50304`` for
    GPT-2's 50257) wrote ids that decode to nothing, in silence. Here the last rows (the
    padding) are made the likeliest: without ``n_vocab`` greedy decoding picks them, with it
    neither greedy decoding nor sampling ever does."""
    model = tiny(tie_embeddings=False)
    n_tokens = VOCAB - 5
    with torch.no_grad():  # the final norm's output is (1, 0, ..., 0) at every position
        model.norm_f.weight[:], model.norm_f.bias[:] = 0.0, 0.0
        model.norm_f.bias[0] = 1.0
        model.head.weight[:] = 0.0
        model.head.weight[n_tokens:, 0] = 1.0  # the padding rows' logits 1, the tokens' 0
    prompt = torch.zeros(2, 3, dtype=torch.long)
    assert (generate(model, prompt, 6, 0.0, use_cache=cache)[:, 3:] >= n_tokens).all()
    greedy = generate(model, prompt, 6, 0.0, use_cache=cache, n_vocab=n_tokens)
    gen = torch.Generator().manual_seed(0)
    sampled = generate(model, prompt, 20, 1.0, generator=gen, use_cache=cache, n_vocab=n_tokens)
    assert (greedy[:, 3:] < n_tokens).all() and (sampled[:, 3:] < n_tokens).all()
    assert len(sampled[:, 3:].unique()) > 10  # sampled among the tokens (all equally likely)


PROMPT = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"temperature": -1.0}, r"^temperature=-1.0 must be >= 0 \(0: greedy\)$"),
        ({"temperature": float("nan")}, r"^temperature=nan must be >= 0"),
        ({"top_k": -1}, r"^top_k=-1 must be an int >= 0"),
        ({"top_p": 1.5}, r"^top_p=1.5 must be in \[0, 1\]"),
        ({"top_p": -0.1}, r"^top_p=-0.1 must be in \[0, 1\]"),
        ({"max_new_tokens": -1}, r"^max_new_tokens=-1 must be an int >= 0$"),
        ({"max_new_tokens": 10.0}, r"^max_new_tokens=10.0 must be an int >= 0$"),
        ({"max_new_tokens": True}, r"^max_new_tokens=True must be an int >= 0$"),
        ({"top_k": True}, r"^top_k=True must be an int >= 0"),
        ({"temperature": "0.8"}, r"^temperature='0.8' must be a number >= 0"),
        ({"top_p": "0.9"}, r"^top_p='0.9' must be a number in \[0, 1\]"),
        ({"ids_BT": torch.zeros(1, 0, dtype=torch.long)}, r"^ids_BT: .* shape \(1, 0\); allowed"),
        ({"ids_BT": PROMPT[0]}, r"^ids_BT: .* shape \(3,\); allowed: integer token ids"),
        ({"ids_BT": PROMPT.float()}, r"^ids_BT: a torch.float32 tensor"),
        ({"ids_BT": PROMPT + VOCAB}, rf"^ids_BT: ids from {VOCAB + 1} to {VOCAB + 3}, outside"),
    ],
    ids=["temperature<0", "temperature-nan", "top_k<0", "top_p>1", "top_p<0", "max_new<0",
         "max_new-float", "max_new-bool", "top_k-bool", "temperature-str", "top_p-str",
         "empty-prompt", "1-D", "float-ids", "ids-past-vocab"],
)  # fmt: skip
def test_generate_refuses_a_bad_argument_in_one_line_naming_it(bad: dict, named: str) -> None:
    """From Python as from the command line: a negative temperature sampled the least likely
    tokens and a top_p outside [0, 1] kept one token or all, in silence; a negative top_k, a
    prompt of no tokens or of the wrong shape or type, and ids past the model's vocabulary
    failed deep inside torch; a float max_new_tokens (``10.0`` too, as ``range`` refuses it)
    failed there with a TypeError, a bool one was taken for 0 or 1 token, and a string
    temperature or top_p failed in a comparison."""
    model = tiny()
    args = {"ids_BT": PROMPT, "max_new_tokens": 2, "temperature": 1.0, **bad}
    with pytest.raises(ConfigError, match=named):
        generate(model, generator=torch.Generator().manual_seed(0), **args)


CALLS = {
    "generate": lambda pre: generate(pre.model, PROMPT, 2),
    "fill_mask": lambda pre: fill_mask(pre, "a <mask>"),
    "infill": lambda pre: infill(pre, "a <extra_id_0>", 2),
}
MISMATCHED = [(f, task) for f in Family for task in INFER_TASKS.values() if INFER_TASKS[f] != task]


@pytest.mark.parametrize(("family", "task"), MISMATCHED, ids=[f"{f}-{t}" for f, t in MISMATCHED])
def test_each_python_call_refuses_a_model_of_another_family(family: Family, task: str) -> None:
    """``generate``, ``fill_mask`` and ``infill`` each take one family's model, refused
    otherwise in one line naming the call, the family it needs and the model's: a GPT given
    to ``fill_mask`` ranked a causal model's guesses as candidates, silently; the other
    pairs failed on a method the model lacks."""
    model = tiny(family.value)
    pre = Pretrained(model, char_tokenizer(bos=False), model.cfg, Path("m.ckpt"))
    need = next(f for f, t in INFER_TASKS.items() if t == task)
    named = rf"^{task} needs a {need} checkpoint; .* is {family} \(a {family} model's task is "
    with pytest.raises(ConfigError, match=named):
        CALLS[task](pre)


def test_python_calls_take_numpy_and_torch_integers() -> None:
    """QA: ``generate(..., top_k=numpy.int64(50))`` and ``fill_mask``'s were refused (the
    checks asked for a Python int): an integer of any kind (``operator.index``) is one, and
    samples as the int does. ``infill`` refuses a float length before its encoder runs."""
    import numpy as np

    model = tiny()

    def sample(**kw: object) -> torch.Tensor:
        return generate(model, PROMPT, generator=torch.Generator().manual_seed(0), **kw)

    want = sample(max_new_tokens=4, top_k=3, top_p=0.9, temperature=0.8)
    for top_k, new in ((np.int64(3), np.int32(4)), (torch.tensor(3), torch.tensor(4))):
        got = sample(max_new_tokens=new, top_k=top_k, top_p=np.float64(0.9), temperature=0.8)
        assert torch.equal(got, want)
    tok = char_tokenizer(bos=False)
    bert = tiny("bert", vocab_size=max(VOCAB, tok.get_vocab_size()))
    pre = Pretrained(bert, tok, bert.cfg, Path("m.ckpt"))
    assert [len(c) for c in fill_mask(pre, "a <mask>", top_k=np.int64(2))[0]] == [2]
    t5 = tiny("t5")
    pre = Pretrained(t5, char_tokenizer(bos=False), t5.cfg, Path("m.ckpt"))
    t5.encode = None  # called, it fails: the refusal comes first
    with pytest.raises(ConfigError, match=r"^max_new_tokens=2.0 must be an int >= 0$"):
        infill(pre, "a <extra_id_0>", max_new_tokens=2.0)


def test_python_api_takes_a_path_as_str_or_pathlike(smoke_ckpts: dict[str, Path]) -> None:
    """QA: ``checkpoint_digest`` took a ``Path`` only (a ``str`` failed on ``.is_file``)."""
    from lmlab.infer.pretrained import checkpoint_digest

    ckpt = smoke_ckpts["gpt"]
    assert checkpoint_digest(str(ckpt)) == checkpoint_digest(ckpt) is not None


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True])
def test_fill_mask_refuses_a_top_k_below_one_in_one_line(top_k: object) -> None:
    """``top_k=0`` failed on an empty candidate list (IndexError), a negative one inside
    ``torch.topk``."""
    model = tiny("bert")
    pre = Pretrained(model, char_tokenizer(bos=False), model.cfg, Path("m.ckpt"))
    with pytest.raises(ConfigError, match=rf"^top_k={top_k} must be an int >= 1 \(the candidates"):
        fill_mask(pre, "a <mask>", top_k=top_k)


def test_fixed_seed_reproduces_samples_and_another_seed_does_not() -> None:
    model = tiny(init_std=0.02)  # flat logits: samples differ between seeds
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def sample(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return generate(model, prompt, 20, 1.0, top_k=40, top_p=0.95, generator=gen)

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_debug_attention_path_equals_sdpa_and_rows_sum_to_one() -> None:
    for family, kw in [("gpt", {"n_kv_heads": 2}), ("gpt", {"positional": "alibi"}), ("bert", {})]:
        model = tiny(family, **kw)
        ids = torch.randint(0, VOCAB, (1, 10))
        with torch.no_grad():
            expected = model(ids)
            maps = attention_maps(model, ids[0].tolist())
            from lmlab.infer.probe import record_attention

            with record_attention(model):
                torch.testing.assert_close(model(ids), expected, atol=FP64_ATOL, rtol=0)
        assert list(maps) == ["blocks.0", "blocks.1"]
        for w_HTT in maps.values():
            # fp32 maps: 10 weights, each rounded to eps32 (6e-8), summed in fp32
            torch.testing.assert_close(w_HTT.sum(-1), torch.ones(4, 10), atol=1e-6, rtol=0)
            upper = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)
            if family == "gpt":
                assert (w_HTT[:, upper] == 0).all()  # causal: lower-triangular
            else:
                assert (w_HTT[:, upper] > 0).all()  # bidirectional


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_per_layer_parameter_rows_add_up_to_the_total(family: str) -> None:
    model = tiny(family)
    rows = dict(param_rows(model))
    assert sum(sum(c.values()) for c in rows.values()) == param_breakdown(model)["total"]
    layers = [n for n in rows if n.split(".")[-1].isdigit()]
    assert len(layers) == (2 if family != "t5" else 4)
    assert len({sum(rows[n].values()) for n in layers if n.startswith(layers[0][:3])}) == 1


def test_parse_spans() -> None:
    spans = parse_spans("<extra_id_0> a b<extra_id_1>(c)<|endoftext|><extra_id_2> junk", EOS)
    assert spans == {"<extra_id_0>": " a b", "<extra_id_1>": "(c)"}
    assert parse_spans("<extra_id_0> x</s><extra_id_1> y", "</s>") == {"<extra_id_0>": " x"}


# --- trained checkpoints, through the command lines ---------------------------------------


def cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "src" / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


# What one fresh Python does for the two tests below (a process each cost a Python and torch
# start-up more): ``lmlab probe`` and ``lmlab generate`` given a missing checkpoint, then an
# import of the checkpoint tools' modules, which load the model code.
FRESH_PROCESS = """
import contextlib, io, json, sys
from lmlab.cli.main import command

said = {}
for name in ("probe", "generate"):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            command(name, ["ckpt=/nonexistent.ckpt"])
        except SystemExit as exited:
            said[name] = [exited.code, err.getvalue()]
loaded = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "lmlab.model")))
with contextlib.redirect_stderr(io.StringIO()):  # stderr: the commands' alone
    import lmlab.infer.pretrained, lmlab.infer.probe, lmlab.infer.fill, lmlab.cli.main
    import lmlab.cli.generate, lmlab.cli.probe, lmlab.cli.train, lmlab.train.budget
lightning = sorted({m.split(".")[0] for m in sys.modules} & {"lightning", "torchmetrics"})
print(json.dumps({"said": said, "loaded": loaded, "lightning": lightning}))
"""


@pytest.fixture(scope="module")
def fresh_process() -> subprocess.CompletedProcess:
    """``FRESH_PROCESS`` run once: its stdout is one JSON line, ``said`` (each command's exit
    code and stderr), ``loaded`` (the model modules loaded once both commands have exited)
    and ``lightning`` (the Lightning packages loaded once the tools' modules are imported)."""
    return subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def test_checkpoint_tools_and_input_checks_load_no_lightning(
    fresh_process: subprocess.CompletedProcess,
) -> None:
    """generate.py, probe.py and train.py's input check import no Lightning (nor torchmetrics,
    which it pulls in): that import alone takes ~4 s here, before the first line of output.
    (In the fresh process the two commands ran first: what they loaded counts too.)"""
    assert fresh_process.returncode == 0, fresh_process.stderr
    (line,) = fresh_process.stdout.splitlines()
    assert json.loads(line)["lightning"] == []


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus where every masked word follows from its neighbours: counting in words."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 10, (6000,), generator=gen).tolist()
    lines = [" ".join(words[(s + j) % 10] for j in range(6)) for s in starts]
    path = tmp_path_factory.mktemp("counting") / "count.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def bert_ckpt(tmp_path_factory: pytest.TempPathFactory, counting: Path, cache_dir: Path) -> Path:
    """300 steps of a small BERT on ``counting``, in this process's data cache (``cache_dir``,
    where smoke_ckpts trained before): a fresh cache measured the CPU's peak FLOP/s again, a
    second of its first run."""
    out = tmp_path_factory.mktemp("bert")
    overrides = [
        "+debug=smoke",
        "model=bert_tiny",
        "model.d_model=64",
        "model.n_layers=2",
        "model.norm_placement=pre",
        "model.positional=rope",
        "data=text",
        f"data.path={counting}",
        "data.vocab_size=400",
        "data.max_bytes=null",
        "data.seq_len=16",
        "data.batch_size=32",
        "trainer.max_steps=300",
        "trainer.val_check_interval=300",
        "checkpoint.every_n_steps=300",
        "optim.lr=3e-3",
        "scheduler.warmup_steps=10",
        "logger=none",
    ]
    train(compose_train(overrides, out, cache_dir))
    return out / "checkpoints" / "last.ckpt"


def test_fill_mask_after_brief_training_knows_the_pattern(
    bert_ckpt: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """300 steps of a small BERT on counting text: the masked word is the next number, in the
    library and through ``lmlab generate`` (in this process)."""
    pre = load(bert_ckpt)
    (candidates,), filled = fill_mask(pre, "three four [MASK] six seven", top_k=3)
    assert " five" in [c.token for c in candidates]
    assert [c.probability for c in candidates] == sorted(
        (c.probability for c in candidates), reverse=True
    )
    with pytest.raises(ConfigError, match="has no <mask>"):
        fill_mask(pre, "three four five", top_k=3)
    (every,), _ = fill_mask(pre, "three four [MASK] six", top_k=10**6)  # at most every token
    assert len(every) == pre.cfg.vocab_size and every[0].token == candidates[0].token
    assert run_command("generate", f"ckpt={bert_ckpt}", "text=six <mask> eight") == 0
    out = capsys.readouterr().out
    assert "' seven'" in out and "filled:" in out, out
    with torch.no_grad():  # a diverged BERT: nan probabilities were ranked and printed
        for p in pre.model.parameters():
            p.fill_(float("nan"))
    from lmlab.infer.generation import NonFiniteLogits

    with pytest.raises(NonFiniteLogits, match="not finite at a <mask>$"):
        fill_mask(pre, "three four [MASK] six", top_k=3)


def char_bert(path: Path, tok: Tokenizer, favourite: str) -> Path:
    """A random BERT over ``tok`` whose top choice everywhere is the token ``favourite``."""
    cfg = ModelConfig(
        family="bert", d_model=32, n_layers=1, n_heads=2, vocab_size=len(tok.get_vocab())
    )
    model = build_model(cfg)
    with torch.no_grad():
        model.head.out.bias[tok.token_to_id(favourite)] += 100.0
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"state_dict": state, "model_config": model_config_dict(cfg), "tokenizer": tok.to_str()},
        path,
    )
    return path


def test_fill_mask_keeps_the_space_a_character_vocabulary_has_as_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A character BERT's masked-LM training masks one character in place, the space before it
    a token of its own: fill-mask reads ``the <mask>at`` so and fills ``the cat``, not
    ``thecat`` (the space dropped, as it is for byte-level BPE, whose token brings its own)."""
    tok = train_char(["the cat sat on the mat."])
    pre = load(char_bert(tmp_path / "char_bert.ckpt", tok, favourite="c"))
    read = []
    forward = pre.model.forward
    monkeypatch.setattr(pre.model, "forward", lambda ids, **kw: read.append(ids) or forward(ids))
    (candidates,), filled = fill_mask(pre, "the <mask>at sat", top_k=1)
    assert (
        tok.decode(read[0][0].tolist(), skip_special_tokens=False) == "<cls>the <mask>at sat<sep>"
    )
    assert candidates[0].token == "c" and filled == "the cat sat"


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_a_mask_marker_is_not_called_text_the_vocabulary_lacks(
    family: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``[MASK]`` (a converted BERT's spelling) and ``<mask>`` both stand for the mask or the
    next sentinel, so the model never reads their characters: a character vocabulary without
    ``[``, ``M``, ... draws no warning of unknown text for them, while a character it lacks in
    the rest of the text still does, counted over the tokens the model reads."""
    tok = train_char(["the cat sat on the mat."])
    path = tmp_path / "m.ckpt"
    ckpt = (
        char_bert(path, tok, favourite="c")
        if family == "bert"
        else save_ckpt(tiny("t5", vocab_size=tok.get_vocab_size()).float(), tok, path)
    )
    args = [f"ckpt={ckpt}"] + (["max_new_tokens=2"] if family == "t5" else [])
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        for marker in ("[MASK]", "<mask>"):
            generate_main([*args, f"text=the {marker}at sat"])
        assert "unknown token" not in caplog.text
        generate_main([*args, "text=thé [MASK]at sat"])
    (line,) = [r.getMessage() for r in caplog.records if "unknown token" in r.getMessage()]
    assert line.startswith("1 of the ") and "'é' x1" in line and "MASK" not in line
    capsys.readouterr()


def test_fill_mask_names_a_special_token_candidate(tmp_path: Path) -> None:
    """A special token among a mask's candidates is shown by its name, as transformers'
    fill-mask shows ``[PAD]``: it read '' (decoding skipped it), which names no token."""
    tok = train_char(["the cat sat on the mat."])
    pre = load(char_bert(tmp_path / "char_bert.ckpt", tok, favourite=EOS))
    (candidates,), _ = fill_mask(pre, "the <mask>at", top_k=2)
    assert candidates[0].token == EOS and candidates[0].token_id == tok.token_to_id(EOS)


def test_probe_writes_the_attention_image_and_the_parameter_table(
    bert_ckpt: Path, tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lmlab probe`` (in this process)."""
    out = f"out={tmp_path / 'a.png'}"
    assert run_command("probe", f"ckpt={bert_ckpt}", "text=one two three", out) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "blocks.1" in printed and "FLOPs per token" in printed
    total = param_breakdown(load(bert_ckpt).model)["total"]
    assert f"{total:,}" in printed


@pytest.fixture(scope="module")
def smoke_ckpts(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """Smoke runs of GPT (W&B offline, attention maps at each validation) and T5."""
    out = {}
    for family, extra in (("gpt", ["callbacks=attention_maps", "logger=wandb"]), ("t5", [])):
        run_dir = tmp_path_factory.mktemp(family)
        overrides = [*SMOKE, f"model={family}_tiny", "logger=none", *extra]
        train(compose_train(overrides, run_dir, cache_dir))
        out[family] = run_dir / "checkpoints" / "last.ckpt"
    return out


def test_attention_maps_callback_draws_at_each_validation(
    smoke_ckpts: dict[str, Path], wandb_records
) -> None:
    run_dir = smoke_ckpts["gpt"].parent.parent
    pngs = sorted(p.name for p in (run_dir / "attention").glob("*.png"))
    assert pngs == ["step000002.png", "step000004.png"]  # +debug=smoke validates every 2 steps
    history = [r["history"]["item"] for r in wandb_records(run_dir) if r["type"] == "history"]
    images = [h for h in history if h.get("attention._type") == "images/separated"]
    assert [h["trainer/global_step"] for h in images] == [2, 4]


def test_generate_cli_streams_reproducible_samples(
    smoke_ckpts: dict[str, Path], run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two processes (a fresh one through the script, and this one through ``lmlab
    generate``), same seed, cache on and off: the same samples (seeds are also checked
    in-process above), streamed after the prompt."""
    args = [f"ckpt={smoke_ckpts['gpt']}", "prompt=def fib(", "max_new_tokens=12", "num_samples=2"]
    cached = cli("generate.py", *args, "seed=5")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.count("def fib(") == 2 and "sample 2 of 2" in cached.stdout
    assert len(cached.stdout.split("sample 2 of 2")[1].strip()) > len("def fib(")
    capsys.readouterr()
    assert run_command("generate", *args, "seed=5", "cache=false") == 0
    no_cache = capsys.readouterr().out
    assert no_cache == cached.stdout, "cache=false in this process: other samples"


def test_t5_infill_cli_fills_every_sentinel(
    smoke_ckpts: dict[str, Path], run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lmlab generate`` (in this process) on a T5 checkpoint."""
    text = "text=def <mask>(self): <mask>"
    assert run_command("generate", f"ckpt={smoke_ckpts['t5']}", text, "max_new_tokens=8") == 0
    stdout = capsys.readouterr().out
    printed = re.findall(r"^(<extra_id_\d+>) -> (.*)$", stdout, re.MULTILINE)
    spans = {sentinel: ast.literal_eval(span) for sentinel, span in printed}
    # the sentinels (and the space before each) replaced by the generated spans
    filled = stdout.split("filled: ")[1].removesuffix("\n")
    assert filled == "def" + spans.get("<extra_id_0>", "") + "(self):" + spans.get(
        "<extra_id_1>", ""
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prompt=x"], "ckpt is required: add ckpt=<value>"),
        (["ckpt="], "ckpt is empty: give ckpt=<value>"),
        (["ckpt=/nonexistent.ckpt"], "ckpt=/nonexistent.ckpt: no such file or folder"),
        (["ckpt=RUN"], "ckpt=RUN is a run directory: give one of its checkpoints, e.g. ckpt=RUN/"),
        (["ckpt=RUN/csv"], "ckpt=RUN/csv is a folder but no sharded checkpoint (no meta.pt"),
        (
            ["ckpt=GPT", "tmperature=0"],
            "unknown key 'tmperature'; allowed: cache, chat, chat_template, ckpt",
        ),
        (["ckpt=GPT", "prompt"], "argument 'prompt' is not key=value"),
        (["ckpt=GPT", "max_new_tokens=many"], "max_new_tokens=many: allowed: an integer"),
        (["ckpt=GPT", "num_samples=0"], "num_samples=0, max_new_tokens=200: both must be >= 1"),
        (["ckpt=GPT", "task=fill_mask"], "task=fill_mask needs a bert checkpoint"),
        (["ckpt=GPT", "task=translate"], "task='translate': allowed generate, fill_mask, infill"),
        (["ckpt=GPT", "dtype=fp8"], "dtype='fp8': allowed fp32, bf16, fp16"),
    ],
)
def test_generate_bad_input_is_named(
    smoke_ckpts: dict[str, Path], args: list[str], message: str
) -> None:
    run_dir = str(smoke_ckpts["gpt"].parent.parent)
    args = [a.replace("GPT", str(smoke_ckpts["gpt"])).replace("RUN", run_dir) for a in args]
    message = message.replace("RUN", run_dir)
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate_main(args)


def test_cli_error_is_one_line_and_exit_code_2_before_the_model_code_loads(
    fresh_process: subprocess.CompletedProcess,
) -> None:
    """A missing checkpoint is named before the model code is imported (torch._dynamo,
    seconds of a command's start-up). ``probe`` and ``generate`` in one fresh process: each
    command's exit code and stderr are its own, and the modules loaded once both exited are
    both commands' together; they print nothing else."""
    assert fresh_process.returncode == 0 and fresh_process.stderr == "", fresh_process.stderr
    (line,) = fresh_process.stdout.splitlines()
    result = json.loads(line)
    message = (
        "error: ckpt=/nonexistent.ckpt: no such file or folder (allowed: a checkpoint file or "
        "a sharded checkpoint folder)\n"
    )
    assert result["said"] == {"probe": [2, message], "generate": [2, message]}
    assert result["loaded"] == []


def test_checkpoint_loads_with_wrapper_prefixes_stripped(
    smoke_ckpts: dict[str, Path], tmp_path: Path
) -> None:
    """A checkpoint whose keys carry DDP/compile wrapper prefixes loads into a plain model."""
    ckpt = torch.load(smoke_ckpts["gpt"], weights_only=True)
    ckpt["state_dict"] = {
        k.replace("model.", "model._orig_mod.module.", 1): v for k, v in ckpt["state_dict"].items()
    }
    torch.save(ckpt, tmp_path / "wrapped.ckpt")
    plain, wrapped = load(smoke_ckpts["gpt"]), load(tmp_path / "wrapped.ckpt", dtype="bf16")
    assert next(wrapped.model.parameters()).dtype == torch.bfloat16
    for (k, a), (k2, b) in zip(
        plain.model.state_dict().items(), wrapped.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a.to(torch.bfloat16), b)


def test_checkpoint_and_tokenizer_inputs_are_named(
    smoke_ckpts: dict[str, Path], tmp_path: Path
) -> None:
    """What a user may pass by mistake: one line naming the argument, never a traceback from
    torch, OmegaConf or tokenizers (an IndexError in the embedding, for a larger tokenizer)."""
    gpt = smoke_ckpts["gpt"]
    ckpt = torch.load(gpt, weights_only=True)
    tensor, newer = tmp_path / "tensor.ckpt", tmp_path / "newer.ckpt"
    torch.save(torch.zeros(3), tensor)
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "new_knob": 1}}, newer)
    notjson = tmp_path / "tok.json"
    notjson.write_text("not json")
    big = tmp_path / "big.json"
    from lmlab.data.tokenizer import train_char

    train_char(["".join(chr(0x4E00 + i) for i in range(ckpt["model_config"]["vocab_size"]))]).save(
        str(big)
    )
    cases = [
        (
            dict(path=tensor),
            "is not an lmlab checkpoint: it holds a Tensor, where a checkpoint is a dict",
        ),
        (dict(path=newer), "its model_config does not fit this lmlab's ModelConfig"),
        (dict(path=gpt, tokenizer=tmp_path / "none.json"), "none.json: no such file"),
        (dict(path=gpt, tokenizer=notjson), "tok.json: not a tokenizers JSON file"),
        (dict(path=gpt, tokenizer=big), "more than the model's vocabulary of"),
        (dict(path=tmp_path, key="to_hf"), "to_hf="),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(**kwargs)


def test_generation_edge_values_give_answers(smoke_ckpts: dict[str, Path]) -> None:
    """A temperature so small that logits / T overflow samples the argmax (was nan); a T5
    sentinel past the tokenizer's is refused (was dropped from the output)."""
    from lmlab.infer.fill import infill
    from lmlab.infer.generation import pick

    logits = torch.tensor([[0.0, 3.0, -2.0, float("-inf")]])
    picked = pick(logits, 1e-40, None, None, torch.Generator().manual_seed(0))
    assert picked.tolist() == [[1]]
    t5 = load(smoke_ckpts["t5"])
    last = len(t5.specials.sentinels)
    with pytest.raises(ConfigError, match=rf"<extra_id_{last}>, but the tokenizer's sentinels"):
        infill(t5, f"def <extra_id_{last}>(self):", max_new_tokens=2)


# --- checkpoints saved here (no training): prompts, damaged files, probe's output ------------

CODE = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nmemo = [fib(k)]  # a/b\n"


def char_tokenizer(bos: bool) -> Tokenizer:
    """lmlab's character tokenizer of ``CODE``; with ``bos``, also Llama's ``<s>``, put
    before every text as Llama's tokenizer does (``Specials`` finds it, and packing starts
    every document with it)."""
    from tokenizers import processors

    tok = train_char([CODE])
    if bos:
        tok.add_special_tokens(["<s>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return tok


def save_ckpt(model: torch.nn.Module, tok: Tokenizer, path: Path) -> Path:
    """``model`` and ``tok`` as an lmlab checkpoint file, in the keys training saves."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    config = model_config_dict(model.cfg)
    torch.save({"state_dict": state, "model_config": config, "tokenizer": tok.to_str()}, path)
    return path


def char_ckpt(path: Path, bos: bool = False, family: str = "gpt") -> tuple[Path, Tokenizer]:
    tok = char_tokenizer(bos)
    model = tiny(family, vocab_size=tok.get_vocab_size(), max_seq_len=48).float()
    return save_ckpt(model, tok, path), tok


@pytest.mark.parametrize("bos", [True, False], ids=["bos", "no-bos"])
def test_generate_prompt_starts_as_training_started_documents(
    bos: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's greedy text is the definition's: at each step the argmax of one forward
    pass over [BOS] + the prompt's tokens + what came before (no BOS where the tokenizer has
    none). The definition runs in float64 and the command in fp32: every step's top two
    logits are checked to differ by far more than fp32's rounding (eps32 x |logit| ~ 1e-5)."""
    ckpt, tok = char_ckpt(tmp_path / "m.ckpt", bos)
    n = 12
    generate_main([f"ckpt={ckpt}", "prompt=def fib(", "temperature=0", f"max_new_tokens={n}"])
    model = load(ckpt).model.double()
    ids = [tok.token_to_id("<s>")] * bos + encode(tok, "def fib(")
    with torch.no_grad():
        for _ in range(n):
            top2 = model(torch.tensor([ids]))[0, -1].topk(2)
            assert float(top2.values[0] - top2.values[1]) > 1e-3  # no near tie
            ids.append(int(top2.indices[0]))
    assert capsys.readouterr().out == "def fib(" + tok.decode(ids[-n:]) + "\n"


def test_generate_warns_of_prompt_text_the_vocabulary_has_no_token_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A character model reads characters its training text never had as ``<unk>``: the
    command says so once, naming them, as training warns of its data's; a prompt it can
    spell draws no warning."""
    ckpt, _ = char_ckpt(tmp_path / "m.ckpt")
    args = [f"ckpt={ckpt}", "temperature=0", "max_new_tokens=2"]
    with caplog.at_level(logging.WARNING):
        generate_main([*args, "prompt=def fib(n):"])
        assert "unknown token" not in caplog.text
        generate_main([*args, "prompt=déf fïb(n):"])
    (line,) = [r.getMessage() for r in caplog.records if "unknown token" in r.getMessage()]
    assert line.startswith("2 of the 11 tokens of the prompt (18.18%)")
    assert "'é' x1, 'ï' x1" in line and "never saw that text in training" in line
    capsys.readouterr()


def test_converted_llama_generates_transformers_greedy_tokens_after_its_bos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Llama whose tokenizer adds ``<s>`` (``tok(prompt)`` starts with it): lmlab's greedy
    continuation of the prompt is transformers' ``generate(tok(prompt))``."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import processors

    from lmlab.infer.hf.convert import from_hf

    tok = char_tokenizer(bos=True)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token=EOS
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=64,
        initializer_range=0.1,
        bos_token_id=bos,
        eos_token_id=None,
        pad_token_id=None,
    )
    hf_model = transformers.LlamaForCausalLM(config).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    ckpt = from_hf(str(tmp_path / "hf"), tmp_path / "llama.ckpt")
    ids = hf_tok("def fib(", return_tensors="pt").input_ids
    assert ids[0, 0] == bos  # the tokenizer adds it, as Llama's does
    n = 12
    with torch.no_grad():
        expected = hf_model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
    generate_main([f"ckpt={ckpt}", "prompt=def fib(", "temperature=0", f"max_new_tokens={n}"])
    new = expected[0, ids.shape[1] :].tolist()
    assert capsys.readouterr().out == "def fib(" + tok.decode(new) + "\n"


def sentencepiece_tokenizer() -> Tokenizer:
    """A tokenizer as Llama 2's and Mistral's ``tokenizer.json`` spell SentencePiece: words
    carry their leading space as ``▁``, ``<s>`` starts every text, and the decoder strips the
    one space a text's first token then starts with."""
    from tokenizers import decoders, models, normalizers, processors

    words = ["▁the", "▁meaning", "▁of", "▁life", "▁is"]
    pieces = ["<unk>", "<s>", "</s>", *words, "▁", *sorted(set("".join(words)) - {"▁"})]
    tok = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0))
    tok.add_special_tokens(pieces[:3])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spaces = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence([*spaces, decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def test_streamed_sample_is_the_decoded_text_with_a_sentencepiece_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The streamed text is the prompt and continuation decoded together (what the end-of-run
    sample prints): the first word written keeps its space (``▁is`` alone decodes to ``is``,
    so the stream printed ``the meaning of lifeis is is``)."""
    tok = sentencepiece_tokenizer()
    model = tiny("gpt", vocab_size=tok.get_vocab_size(), tie_embeddings=False, bias=True)
    with torch.no_grad():  # every position's output is the final norm's bias: ``▁is``'s row
        model.norm_f.weight.zero_()
        model.head.weight.zero_()
        model.head.weight[tok.token_to_id("▁is")] = model.norm_f.bias.fill_(1.0)
    ckpt = save_ckpt(model.float(), tok, tmp_path / "m.ckpt")
    prompt = "the meaning of life"
    generate_main([f"ckpt={ckpt}", f"prompt={prompt}", "temperature=0", "max_new_tokens=3"])
    assert capsys.readouterr().out == "the meaning of life is is is\n"


def test_a_cut_prompt_is_said_once_before_the_prompt_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warning that a prompt longer than the context keeps its last tokens comes once,
    before the streamed prompt: it came after it, glued to the prompt's last line and
    splitting it from the continuation, once per sample."""
    ckpt, _ = char_ckpt(tmp_path / "m.ckpt")  # max_seq_len=48, fewer than CODE's characters
    handler = logging.StreamHandler(sys.stdout)  # a terminal's one stream: the order shows
    logger = logging.getLogger("lmlab.infer.generation")
    logger.addHandler(handler)
    try:
        generate_main(
            [f"ckpt={ckpt}", f"prompt={CODE}", "max_new_tokens=2", "num_samples=2"],
        )
    finally:
        logger.removeHandler(handler)
    out = capsys.readouterr().out
    warning = f"the prompt has {len(CODE)} tokens, more than the model's context of 48"
    assert out.startswith(warning) and out.count(warning) == 1, out
    assert out.count(CODE) == 2


def test_generate_takes_text_as_a_gpt_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``text=`` and ``prompt=`` name one input for every family (the help says so); two
    different ones are refused, not one of them silently dropped."""
    ckpt, _ = char_ckpt(tmp_path / "m.ckpt")
    args = [f"ckpt={ckpt}", "temperature=0", "max_new_tokens=8"]
    generate_main([*args, "prompt=def fib("])
    as_prompt = capsys.readouterr().out
    generate_main([*args, "text=def fib("])
    assert capsys.readouterr().out == as_prompt and as_prompt.startswith("def fib(")
    with pytest.raises(ConfigError, match=r"prompt='def' and text='fib': two inputs"):
        generate_main([*args, "prompt=def", "text=fib"])


def test_a_sample_ends_at_the_models_eos_unless_asked_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EOS ends training's documents, so a sample ends where the model writes it (as
    transformers' ``generate`` stops at ``eos_token_id``); it went on into another document.
    ``stop_at_eos=false`` writes to ``max_new_tokens``; infill and fill_mask refuse it."""
    from lmlab.cli import generate as command

    tok = char_tokenizer(bos=False)
    model = tiny("gpt", vocab_size=tok.get_vocab_size(), tie_embeddings=False, bias=True)
    with torch.no_grad():  # every position's output is the final norm's bias: EOS's row
        model.norm_f.weight.zero_()
        model.head.weight.zero_()
        model.head.weight[tok.token_to_id(EOS)] = model.norm_f.bias.fill_(1.0)
    ckpt = save_ckpt(model.float(), tok, tmp_path / "m.ckpt")
    written = []
    stream = command.Stream.__call__
    monkeypatch.setattr(command.Stream, "__call__", lambda s, t: written.append(t) or stream(s, t))
    args = [f"ckpt={ckpt}", "prompt=def", "temperature=0", "max_new_tokens=6"]
    generate_main(args)
    assert len(written) == 1 and capsys.readouterr().out == "def\n"
    generate_main([*args, "stop_at_eos=false"])
    assert len(written) == 7
    # the end-of-run sample too
    from types import SimpleNamespace

    from lmlab.train.callbacks import sample as callbacks

    outs = []
    sample = callbacks.generate
    monkeypatch.setattr(
        callbacks, "generate", lambda *a, **k: outs.append(sample(*a, **k)) or outs[-1]
    )
    trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=tok), is_global_zero=True)
    module = SimpleNamespace(model=model, device=torch.device("cpu"), declared=Declared())
    callbacks.Sample("def", max_new_tokens=6, temperature=0.0).sample(trainer, module)
    assert outs[0][0].tolist() == [*encode(tok, "def"), tok.token_to_id(EOS)]
    for family, named in (("t5", "infill"), ("bert", "fill_mask")):
        other, _ = char_ckpt(tmp_path / f"{family}.ckpt", family=family)
        with pytest.raises(ConfigError, match=rf"^stop_at_eos=false: {named} "):
            generate_main([f"ckpt={other}", "text=def <mask>", "stop_at_eos=false"])


def test_the_end_of_run_sample_ends_where_the_run_is_asked_to_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop signal or Ctrl-C once training has ended: the end-of-run sample ended only at
    its max_new_tokens (minutes at thousands of tokens, past a scheduler's grace period). It
    now ends at the next token, said in its log line, and is left out when the stop came
    before it started."""
    from types import SimpleNamespace

    from lmlab.train.callbacks import sample as callbacks
    from lmlab.train.preemption import Preemption

    tok = char_tokenizer(bos=False)
    model = tiny("gpt", vocab_size=tok.get_vocab_size(), max_seq_len=48).float().eval()
    stop = Preemption(str(tmp_path))
    asks = []
    stop.stop_asked = lambda: asks.append(1) or len(asks) > 3  # asked after the 3rd token
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(tokenizer=tok), is_global_zero=True, callbacks=[stop]
    )
    module = SimpleNamespace(
        model=model, device=torch.device("cpu"), model_cfg=model.cfg, declared=Declared()
    )
    sample = callbacks.Sample("def", max_new_tokens=40, temperature=1.0, top_k=None)
    with caplog.at_level(logging.INFO):
        sample.sample(trainer, module)
    prompt = len(encode(tok, "def"))
    assert len(tok.encode(sample.text).ids) <= prompt + 4  # at most one token past the ask
    assert "(cut short: the run was asked to stop)" in caplog.text
    caplog.clear()
    sample.text = None
    trainer.callbacks[0].stop_asked = lambda: True  # asked before the sample began
    with caplog.at_level(logging.INFO):
        sample.on_train_end(trainer, module)
    assert sample.text is None and "end-of-run sample is left out" in caplog.text


def test_a_damaged_checkpoint_is_one_line_naming_it(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights that do not fit the checkpoint's model_config (a key lost, n_layers or d_model
    edited) and a tokenizer that does not parse: generate and probe say so in one line, exit
    2, naming the file and what is wrong; ``load`` raises ``ConfigError``."""
    good, _ = char_ckpt(tmp_path / "good.ckpt")
    ckpt = torch.load(good, weights_only=True)
    config = ckpt["model_config"]
    lost = {k: v for k, v in ckpt["state_dict"].items() if k != "model.blocks.1.attn.wq.weight"}
    cases = {
        "lost": ({**ckpt, "state_dict": lost}, "missing blocks.1.attn.wq.weight"),
        "deeper": (
            {**ckpt, "model_config": {**config, "n_layers": 3}},
            "missing blocks.2.attn_res.norm.weight",
        ),
        "shallower": (
            {**ckpt, "model_config": {**config, "n_layers": 1}},
            "unexpected blocks.1.attn_res.norm.weight",
        ),
        "wider": (
            {**ckpt, "model_config": {**config, "d_model": 64}},
            f"shape embed.weight ({config['vocab_size']}, 32) where the model has",
        ),
        "tokenizer": ({**ckpt, "tokenizer": '{"version": 1'}, "its tokenizer is unreadable ("),
    }
    for name, (damaged, message) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(damaged, path)
        with pytest.raises(ConfigError, match=re.escape(f"ckpt={path}: ")):
            load(path)
        for command in ("generate", "probe"):
            assert run_command(command, f"ckpt={path}") == 2, (name, command)
            err = capsys.readouterr().err
            assert err.startswith(f"error: ckpt={path}: ") and err.count("\n") == 1, err
            assert message in err, err
    assert not (tmp_path / "attention.png").exists()


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_infill_fills_the_text_the_model_read(
    kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Byte-level BPE: the one space before a sentinel is dropped from the input (the span
    brings its own, `` fib``), and the spans fill that text with no doubled space. A character
    vocabulary keeps it (a token of its own: the span is ``fib``). A sentinel the model wrote
    no span for is left empty with a warning showing what it wrote (it was dropped unsaid)."""
    tok = train_bpe([CODE * 4], 380) if kind == "bpe" else char_tokenizer(bos=False)
    model = tiny("t5", vocab_size=tok.get_vocab_size()).float()
    pre = Pretrained(model, tok, model.cfg, Path("t5.ckpt"))
    read = []
    encode_ = model.encode
    monkeypatch.setattr(model, "encode", lambda ids, *a: read.append(ids) or encode_(ids, *a))
    space = " " if kind == "bpe" else ""
    written = f"<extra_id_0>{space}fib<extra_id_1>{space}n"
    target = encode(tok, written) + [tok.token_to_id(EOS)]
    start = tok.token_to_id("<pad>")
    monkeypatch.setattr(fill, "decode_loop", lambda *_, **__: torch.tensor([[start, *target]]))
    spans, filled = infill(pre, "def <extra_id_0>(self): <mask>")
    typed = "def <extra_id_0>(self): <extra_id_1>"
    assert read[0][0].tolist()[:-1] == encode(
        tok, typed if kind == "char" else typed.replace(" <", "<")
    )
    assert spans == {"<extra_id_0>": f"{space}fib", "<extra_id_1>": f"{space}n"}
    assert filled == "def fib(self): n" and not caplog.messages
    if kind == "bpe":
        return
    target = encode(tok, "<extra_id_0>fib fib") + [tok.token_to_id(EOS)]
    with caplog.at_level(logging.WARNING, logger="lmlab.infer.fill"):
        assert infill(pre, "def <extra_id_0>(self): <mask>")[1] == "def fib fib(self): "
    assert caplog.messages == [
        "the model wrote no span for <extra_id_1> (left empty in the filled text); its output: "
        "'<extra_id_0>fib fib'"
    ]


def test_infill_command_prints_spans_and_filled_text_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the model wrote, whole: one space before each span, brackets kept (code, not
    rich markup: ``[/b]`` was a MarkupError), long lines unwrapped."""
    ckpt, tok = char_ckpt(tmp_path / "t5.ckpt", family="t5")
    spans = (" memo[k]" + " + fib(n - 1)" * 6, " [/b]")
    target = encode(tok, f"<extra_id_0>{spans[0]}<extra_id_1>{spans[1]}") + [tok.token_to_id(EOS)]
    start = tok.token_to_id("<pad>")
    monkeypatch.setattr(fill, "decode_loop", lambda *_, **__: torch.tensor([[start, *target]]))
    generate_main([f"ckpt={ckpt}", "text=def <extra_id_0>(self): <mask>"])
    assert capsys.readouterr().out == (  # a character vocabulary keeps the typed spaces
        f"<extra_id_0> -> {spans[0]!r}\n<extra_id_1> -> {spans[1]!r}\n"
        f"filled: def {spans[0]}(self): {spans[1]}\n"
    )


@pytest.mark.parametrize(
    ("family", "bos"), [("gpt", False), ("gpt", True), ("bert", False), ("t5", False)]
)
def test_probe_frames_the_text_as_training_does_and_keeps_its_first_tokens(
    family: str, bos: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe draws the ids the model reads in training and generation: BERT's [CLS] ..
    [SEP], a decoder's BOS where the tokenizer adds one (Llama's <s>: it left it out), T5's
    encoder input ending with EOS (left out too). A text past the context is cut to the tokens
    that fit inside that frame, with a warning; a text that fits is whole, silently."""
    tok = char_tokenizer(bos=bos)
    model = tiny(family, vocab_size=tok.get_vocab_size())  # max_seq_len=24 < len(CODE)
    before, after = {
        "bert": (["<cls>"], ["<sep>"]),
        "t5": ([], [EOS]),
        "gpt": (["<s>"] if bos else [], []),
    }[family]
    ids_of = lambda names: [tok.token_to_id(n) for n in names]  # noqa: E731
    frame = lambda ids: [*ids_of(before), *ids, *ids_of(after)]  # noqa: E731
    room = 24 - len(before) - len(after)
    assert probe_ids(model, tok, "def f") == frame(encode(tok, "def f")) and not caplog.text
    ids = probe_ids(model, tok, CODE)
    assert ids == frame(encode(tok, CODE)[:room]) and len(ids) == 24
    assert f"the text has {len(CODE)} tokens, more than the model's context of 24" in caplog.text
    assert f"only its first {room} are drawn" in caplog.text


def test_probe_redraws_its_own_plot_and_refuses_any_other_file(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``out=`` (or the default, ``attention.png`` beside the checkpoint) that holds a file
    probe did not draw (a user's image, another matplotlib figure) is refused before the
    checkpoint is read, and kept; a plot probe drew is redrawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ckpt, _ = char_ckpt(tmp_path / "m.ckpt")
    figure = tmp_path / "figure.png"
    plt.figure()
    plt.savefig(figure)
    plt.close()
    (tmp_path / "mine.svg").write_text(f"<svg><!-- not by {CREATOR[:5]} --></svg>")
    (tmp_path / "attention.png").write_bytes(b"\x89PNG\r\n\x1a\n the user's own")
    kept = {p: p.read_bytes() for p in tmp_path.iterdir() if p.suffix != ".ckpt"}
    for out in ([f"out={figure}"], [f"out={tmp_path / 'mine.svg'}"], []):
        assert run_command("probe", f"ckpt={ckpt}", *out) == 2, out
        err = capsys.readouterr().err
        assert "exists and is not a plot probe drew" in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in kept} == kept
    for suffix in ("png", "svg", "pdf"):
        out = tmp_path / f"maps.{suffix}"
        for _ in range(2):  # new, then redrawn
            assert run_command("probe", f"ckpt={ckpt}", f"out={out}", "text=def f") == 0
            assert drawn_by_probe(out), suffix


def test_a_tokenizer_that_cannot_be_the_models_is_refused_before_any_work(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tokenizer=`` of fewer tokens than the one the checkpoint was trained with (its ids fit
    the embedding, so nothing failed: other ids, wrong numbers) is refused by generate, probe
    and evaluate in one line naming both sizes, before any output, and so is one of the same
    size that is not the checkpoint's; the checkpoint's own tokenizer as a file is taken. Where
    the checkpoint carries no tokenizer, only one larger than the embedding can be ruled out."""
    ckpt, tok = char_ckpt(tmp_path / "m.ckpt")
    small = tmp_path / "small.json"
    train_char(["def"]).save(str(small))
    sizes = (Tokenizer.from_file(str(small)).get_vocab_size(), tok.get_vocab_size())
    assert sizes[0] < sizes[1]
    message = (
        f"tokenizer={small} has {sizes[0]} tokens, the model was trained with a tokenizer "
        f"of {sizes[1]}"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(ckpt, tokenizer=str(small))
    out = tmp_path / "out"
    commands = {
        "generate": ["prompt=def", "max_new_tokens=2"],
        "probe": [f"out={out}.png"],
        "evaluate": ["tasks=stdlib_nextline", "limit=2", f"out={out}.json", "wandb=false"],
    }
    for name, args in commands.items():
        assert run_command(name, f"ckpt={ckpt}", f"tokenizer={small}", *args) == 2, name
        printed, err = capsys.readouterr()
        assert printed == "" and err.startswith(f"error: {message}"), err
        assert err.count("\n") == 1, err
    assert not list(tmp_path.glob("out*"))
    # the same size (which the size check passes), its plain tokens at other ids: every text
    # would read as other ids, silently (tokenizer= is for checkpoints that carry none)
    spec = json.loads(tok.to_str())
    plain = {t: i for t, i in spec["model"]["vocab"].items() if i >= len(spec["added_tokens"])}
    spec["model"]["vocab"].update(zip(plain, reversed(sorted(plain.values())), strict=True))
    permuted = tmp_path / "permuted.json"
    permuted.write_text(json.dumps(spec))
    message = f"tokenizer={permuted}: ckpt={ckpt} carries its own tokenizer, the one it was"
    for name, args in commands.items():
        assert run_command(name, f"ckpt={ckpt}", f"tokenizer={permuted}", *args) == 2, name
        printed, err = capsys.readouterr()
        assert printed == "" and err.startswith(f"error: {message}"), err
    assert not list(tmp_path.glob("out*"))
    own = tmp_path / "own.json"
    tok.save(str(own))
    assert load(ckpt, tokenizer=str(own)).tokenizer.get_vocab_size() == sizes[1]
    bare = torch.load(ckpt, weights_only=True)
    bare.pop("tokenizer")
    torch.save(bare, tmp_path / "bare.ckpt")
    assert load(tmp_path / "bare.ckpt", tokenizer=str(small)).tokenizer.get_vocab_size() == sizes[0]


def test_t5_infill_draws_num_samples_fills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``num_samples=3`` fills the text three times, one draw after another from the seeded
    generator, as GPT's samples are (it printed one fill)."""
    ckpt, _ = char_ckpt(tmp_path / "t5.ckpt", family="t5")
    args = [f"ckpt={ckpt}", "text=def <extra_id_0>(self):", "max_new_tokens=6", "temperature=1"]
    generate_main([*args, "num_samples=3", "seed=1"])
    three = capsys.readouterr().out
    assert three.count("filled: ") == 3 and "sample 3 of 3" in three
    pre = load(ckpt)
    gen = torch.Generator().manual_seed(1)
    fills = [infill(pre, "def <extra_id_0>(self):", 6, 1.0, None, None, gen)[1] for _ in range(3)]
    assert re.findall(r"^filled: (.*)$", three, re.MULTILINE) == fills


def test_fill_mask_refuses_the_sampling_options_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BERT's fill_mask ranks candidates in one forward pass: an option given for sampling
    is refused, naming it, its value and what fill_mask takes; the defaults (options not
    given) and ``top_k`` are not."""
    ckpt, _ = char_ckpt(tmp_path / "bert.ckpt", family="bert")
    base = [f"ckpt={ckpt}", "text=def <mask>"]
    given = {
        "max_new_tokens": "5",
        "temperature": "0.5",
        "top_p": "0.9",
        "seed": "3",
        "num_samples": "2",
        "cache": "false",
    }
    for key, value in given.items():
        with pytest.raises(ConfigError, match=rf"^{key}={value}: fill_mask .* top_k= only"):
            generate_main([*base, f"{key}={value}"])
    with pytest.raises(ConfigError, match=r"^temperature=0.5, seed=3: fill_mask"):
        generate_main([*base, "temperature=0.5", "seed=3"])
    generate_main(base)
    generate_main([*base, "top_k=2"])
    assert capsys.readouterr().out.count("filled:") == 2


def test_probe_refuses_pgf_without_latex_before_reading_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_command, capsys
) -> None:
    """matplotlib writes ``.pgf`` by running LaTeX (xelatex): without it on the PATH, one
    line saying so, exit 2, before any work (it was a traceback after the parameter table)."""
    ckpt, _ = char_ckpt(tmp_path / "m.ckpt")
    monkeypatch.setenv("PATH", str(tmp_path))  # no LaTeX here
    assert run_command("probe", f"ckpt={ckpt}", f"out={tmp_path / 'q.pgf'}") == 2
    printed, err = capsys.readouterr()
    assert printed == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert "xelatex is not on the PATH" in err, err
    assert not (tmp_path / "q.pgf").exists()


def test_probe_says_why_it_keeps_its_own_earlier_unmarked_output(
    tmp_path: Path, run_command, capsys
) -> None:
    """A ``.jpg`` (or .tif, .raw, ...) probe drew carries no mark, so it is not replaced;
    the refusal says that, not that probe did not draw it."""
    ckpt, _ = char_ckpt(tmp_path / "m.ckpt")
    out = tmp_path / "maps.jpg"
    assert run_command("probe", f"ckpt={ckpt}", f"out={out}", "text=def f") == 0
    drawn = out.read_bytes()
    capsys.readouterr()
    assert run_command("probe", f"ckpt={ckpt}", f"out={out}", "text=def f") == 2
    err = capsys.readouterr().err
    assert "is not a plot probe drew" not in err and err.count("\n") == 1, err
    assert "probe replaces only the plots it marked as its own, in .eps, .pdf, .png" in err
    assert out.read_bytes() == drawn


def test_non_finite_logits_are_one_line_greedy_or_sampled(
    tmp_path: Path, run_command, capsys
) -> None:
    """A model whose logits hold nan (a diverged run, an overflowing dtype) is refused at the
    first token, naming the checkpoint: sampling raised multinomial's RuntimeError with a
    traceback, and greedy decoding printed garbage."""
    from lmlab.infer.generation import NonFiniteLogits

    ckpt, tok = char_ckpt(tmp_path / "nan.ckpt")
    model = load(ckpt).model
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    ids = torch.tensor([encode(tok, "def fib(")])
    for temperature in (0.0, 0.8):
        with pytest.raises(NonFiniteLogits, match="not finite at generated token 1$"):
            generate(model, ids, 4, temperature, generator=torch.Generator().manual_seed(0))
    # finite weights whose activations overflow fp16 (|w| = 6e4 < 65504): said at the first
    # token, naming the dtype
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(6e4)
    save_ckpt(model, tok, ckpt)
    capsys.readouterr()
    assert run_command("generate", f"ckpt={ckpt}", "prompt=def fib(", "dtype=fp16") == 2
    out, err = capsys.readouterr()
    assert out == "def fib(\n" and err == (
        "error: the model's logits are not finite at generated token 1 (checkpoint "
        f"{ckpt} overflows dtype=fp16; try dtype=fp32)\n"
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e6])
def test_weights_that_are_not_finite_are_refused_by_every_reader(
    value: float, tmp_path: Path, run_command, capsys
) -> None:
    """A checkpoint holding nan or inf (a diverged model another tool saved: lmlab's guard
    saves none) gave nan scores, a nan attention picture and a nan Hugging Face folder
    silently: generate, probe, evaluate, to_hf and init_from refuse it in one line naming the
    tensors, before any work. 1e6 is finite in fp32 and bf16 but past fp16's 65504: refused
    in dtype=fp16, naming it."""
    ckpt, tok = char_ckpt(tmp_path / "bad.ckpt")
    model = load(ckpt).model
    with torch.no_grad():
        model.blocks[0].attn_res.norm.weight[3] = value
    save_ckpt(model, tok, ckpt)
    named = "blocks.0.attn_res.norm.weight (1 of 32)"
    if value == 1e6:
        assert load(ckpt).model is not None
        with pytest.raises(ConfigError) as err:
            load(ckpt, dtype="fp16")
        assert str(err.value) == (
            f"ckpt={ckpt} in dtype=fp16: weights that are not finite (nan or inf): {named}; "
            "they overflow fp16's range; load them in fp32 or bf16"
        )
        return
    message = (
        f"weights that are not finite (nan or inf): {named}; a diverged model: lmlab's "
        "non-finite guard saves none, so another tool wrote or edited it"
    )
    for command, args in [
        ("generate", ["prompt=def fib("]),
        ("probe", ["text=def fib(", f"out={tmp_path / 'a.png'}"]),
        ("convert", ["to_hf=" + str(ckpt), f"out={tmp_path / 'hf'}"]),
        ("evaluate", ["tasks=stdlib_nextline", "limit=2", f"out={tmp_path / 'eval'}"]),
    ]:
        key = "to_hf" if command == "convert" else "ckpt"
        ckpt_arg = [] if command == "convert" else [f"ckpt={ckpt}"]
        capsys.readouterr()
        assert run_command(command, *ckpt_arg, *args) == 2, command
        assert capsys.readouterr().err == f"error: {key}={ckpt}: {message}\n", command
    assert not any((tmp_path / name).exists() for name in ("a.png", "hf", "eval"))
    from lmlab.train.init_from import InitFrom, load_weights

    with pytest.raises(ConfigError, match=rf"^init_from={re.escape(str(ckpt))}: weights that"):
        load_weights(model, InitFrom(ckpt, model.cfg, tok.to_str()))


def test_infill_cut_by_max_new_tokens_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Spans cut by ``max_new_tokens`` before the model's EOS were filled in silently (a cut
    span, later ones empty with only their own warning): the cut is said, with the way out;
    spans that end with EOS within the limit say nothing."""
    tok = char_tokenizer(bos=False)
    model = tiny("t5", vocab_size=tok.get_vocab_size()).float()
    pre = Pretrained(model, tok, model.cfg, Path("t5.ckpt"))
    start, eos = tok.token_to_id("<pad>"), tok.token_to_id(EOS)
    written = encode(tok, "<extra_id_0> fib")
    for row, cut in (([*written, eos], False), (written, True)):
        monkeypatch.setattr(
            fill, "decode_loop", lambda *_, r=row, **__: torch.tensor([[start, *r]])
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lmlab.infer.fill"):
            infill(pre, "def <extra_id_0>(self): return", max_new_tokens=len(row))
        said = [m for m in caplog.messages if "stopped at max_new_tokens" in m]
        assert said == (
            [
                f"infilling stopped at max_new_tokens={len(row)} before the model ended its "
                "spans (EOS): the last span may be cut, later ones missing; raise max_new_tokens"
            ]
            if cut
            else []
        )


def test_infill_lists_only_the_sentinels_of_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans the model wrote for sentinels not in the text are ignored (the command printed
    ``<extra_id_3> -> ...`` for a text with only <extra_id_0>); the text's come in its order."""
    tok = char_tokenizer(bos=False)
    model = tiny("t5", vocab_size=tok.get_vocab_size()).float()
    pre = Pretrained(model, tok, model.cfg, Path("t5.ckpt"))
    start, eos = tok.token_to_id("<pad>"), tok.token_to_id(EOS)
    for written, spans, filled in [
        ("<extra_id_3>fib", {}, "def (self): return"),  # characters: the typed space stays
        ("<extra_id_2>n<extra_id_1>x<extra_id_0>fib", {"<extra_id_0>": "fib"}, None),
    ]:
        target = torch.tensor([[start, *encode(tok, written), eos]])
        monkeypatch.setattr(fill, "decode_loop", lambda *_, target=target, **__: target)
        got = infill(pre, "def <extra_id_0>(self): return")
        assert got[0] == spans
        assert got[1] == (filled or "def fib(self): return")


@pytest.mark.parametrize(
    ("text", "numbered"),
    [
        ("a [MASK] b <mask>", "a <extra_id_0> b <extra_id_1>"),  # in the text's order
        ("<extra_id_0> a <mask> b [MASK]", "<extra_id_0> a <extra_id_1> b <extra_id_2>"),
        ("a <mask> b <extra_id_0> c", None),  # <mask> became <extra_id_1>, before <extra_id_0>
        ("<extra_id_1> a [MASK] b <extra_id_0>", None),
    ],
)
def test_masks_take_sentinels_in_the_texts_order_or_are_refused(text: str, numbered) -> None:
    sentinels = tuple(f"<extra_id_{k}>" for k in range(4))
    if numbered is not None:
        assert fill._sentinels(text, sentinels) == numbered
    else:
        with pytest.raises(ConfigError, match=r"^text: mixes .* and <extra_id_N>, with a mask"):
            fill._sentinels(text, sentinels)


def test_interrupted_sample_ends_its_line_before_the_message(
    tmp_path: Path, run_command, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a streamed sample: the partial line is ended, so ``interrupted (Ctrl-C)``
    is not glued to the sample's last word."""
    from lmlab.cli.generate import Stream

    ckpt, _ = char_ckpt(tmp_path / "m.ckpt")
    streamed = Stream.__call__

    def interrupted_once_written(self, next_B1) -> None:
        streamed(self, next_B1)
        if self.written:  # some of the sample is out
            raise KeyboardInterrupt

    monkeypatch.setattr(Stream, "__call__", interrupted_once_written)
    capsys.readouterr()
    assert run_command("generate", f"ckpt={ckpt}", "prompt=def fib(", "temperature=0") == 130
    out, err = capsys.readouterr()
    assert out.startswith("def fib(") and len(out.rstrip("\n")) > len("def fib("), out
    assert out.endswith("\n") and not out.endswith("\n\n"), repr(out)
    assert err == "interrupted (Ctrl-C)\n"
