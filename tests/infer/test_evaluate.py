"""lmlab models in lm-evaluation-harness: the three request types against hand computation,
batching, stop sequences, the shipped offline tasks end to end, and ``lmlab evaluate``.

Tiny models are built in-process from a ModelConfig with a small BPE trained on a few
standard-library files; nothing is downloaded."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmlab.config import CONF_DIR, Family, ModelConfig, Positional, model_config_dict
from lmlab.data.collators import IGNORE
from lmlab.data.tokenizer import EOS, PAD, encode, train_bpe
from lmlab.errors import ConfigError
from lmlab.infer import eval_records, harness
from lmlab.infer.evaluate import LmlabLM
from lmlab.infer.generation import generate
from lmlab.infer.pretrained import Pretrained
from lmlab.model import build_model
from lmlab.train.task import LMTask

# Same function, two paths, in float64: rounding differences are about eps64 (1.1e-16) x
# accumulation length (< 10^3) x magnitude (log-probabilities < 10^2 per token, < 50 tokens),
# far below this, while a misplaced token or position moves a score by > 1e-3.
FP64_ATOL = 1e-9
# The task's loss is computed from float32 logits (task.py casts them): eps32 (6e-8) x the
# log-sum-exp over the vocabulary, per token, relative.
FP32_RTOL = 1e-5
CONTEXTS = ["def add(a, b):\n    return", "import os\n", "x", "class Foo:\n    def __init__(self"]
CONTINUATIONS = [" a + b", "import sys", " = 1", "):\n        pass"]


# Python source that ships with the repository (the perplexity task's snippets): the same
# text on every Python version, unlike the standard library's own files.
SNIPPETS = [
    json.loads(line)["text"]
    for line in (harness.TASKS_DIR / "stdlib_perplexity.jsonl").read_text().splitlines()
]


@pytest.fixture(scope="module")
def tok():
    """A 400-token byte-level BPE of those snippets (a fraction of a second)."""
    return train_bpe(SNIPPETS, 400)


@pytest.fixture(scope="module")
def bos_tok():
    """The same BPE with Llama's ``<s>``, put before every text as Llama's tokenizer does:
    training starts every document with it."""
    from tokenizers import processors

    with_bos = train_bpe(SNIPPETS, 400)
    with_bos.add_special_tokens(["<s>"])
    bos = with_bos.token_to_id("<s>")
    with_bos.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    return with_bos


def bos_of(pre: Pretrained) -> list[int]:
    """What training put before a document: ``<s>`` when the tokenizer has it (a GPT)."""
    bos = pre.tokenizer.token_to_id("<s>")
    return [bos] if bos is not None and pre.family == Family.gpt else []


def tiny(tok, family: str = "gpt", dtype=torch.float64, **kw) -> Pretrained:
    torch.manual_seed(0)
    base = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=64, init_std=0.3)
    cfg = ModelConfig(family=Family(family), vocab_size=tok.get_vocab_size(), **{**base, **kw})
    return Pretrained(build_model(cfg).eval().to(dtype), tok, cfg, Path("tiny.ckpt"), 0)


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def hand_loglikelihood(pre: Pretrained, context: str, continuation: str) -> tuple[float, bool]:
    """The definition: log-softmax of the model's logits, summed over the continuation's
    tokens (context and continuation split as the harness splits them); a GPT reads the
    context after BOS, where training started documents with one (an empty context: BOS,
    else EOS)."""
    enc = lambda s: encode(pre.tokenizer, s)  # noqa: E731
    spaces = len(context) - len(context.rstrip())  # the harness moves them to the continuation
    context, continuation = (
        context[: len(context) - spaces],
        context[len(context) - spaces :] + continuation,
    )
    if pre.family == Family.gpt:
        start = bos_of(pre) or ([] if context else [pre.tokenizer.token_to_id(EOS)])
        whole, ctx = start + enc(context + continuation), start + enc(context)
        cont = whole[len(ctx) :]
        logits = pre.model(torch.tensor([whole[:-1]]))[0, len(ctx) - 1 :]
    else:  # T5: the context and EOS (an empty one: EOS alone) to the encoder
        cont = enc(continuation)
        return t5_loglikelihood(pre, enc(context) + [pre.tokenizer.token_to_id(EOS)], cont)
    logp = logits.detach().log_softmax(-1)
    target = torch.tensor(cont)
    return float(logp[torch.arange(len(cont)), target].sum()), bool(
        (logp.argmax(-1) == target).all()
    )


def t5_loglikelihood(pre: Pretrained, encoder: list[int], cont: list[int]) -> tuple[float, bool]:
    """The T5 definition: ``encoder`` ids to the encoder, the decoder started from the pad
    token and fed ``cont`` shifted, the log-softmax summed over ``cont``."""
    pad = pre.tokenizer.token_to_id(PAD)
    logits = pre.model(torch.tensor([encoder]), torch.tensor([[pad, *cont[:-1]]]))[0]
    logp = logits.detach().log_softmax(-1)
    target = torch.tensor(cont)
    return float(logp[torch.arange(len(cont)), target].sum()), bool(
        (logp.argmax(-1) == target).all()
    )


@pytest.mark.parametrize(
    ("family", "bos"), [("gpt", False), ("gpt", True), ("t5", False)], ids=["gpt", "gpt-bos", "t5"]
)
def test_loglikelihood_is_the_summed_log_softmax_of_the_continuation(
    tok, bos_tok, family: str, bos: bool
) -> None:
    pre = tiny(bos_tok if bos else tok, family)
    pairs = list(zip(CONTEXTS, CONTINUATIONS, strict=True))
    pairs.append(("", "import sys"))  # an empty context: the harness's prefix token alone
    got = LmlabLM(pre).loglikelihood(requests("loglikelihood", pairs))
    for (logp, greedy), (ctx, cont) in zip(got, pairs, strict=True):
        want_logp, want_greedy = hand_loglikelihood(pre, ctx, cont)
        assert logp == pytest.approx(want_logp, abs=FP64_ATOL) and greedy == want_greedy
        assert logp < -1.0  # a random model is far from certain: the check can fail


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_a_long_context_keeps_its_end_and_a_long_continuation_is_refused(
    tok, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the harness's HFLM: a context longer than the model reads loses its start (a
    GPT reads the last max_seq_len + 1 tokens of context and continuation, a T5's encoder
    the context's last max_seq_len), and a continuation of max_seq_len tokens is scored
    whole; one token more has no score of all its tokens and is refused, naming it, before
    any request is scored (a GPT scored its last 16 tokens, a T5 its first, in silence)."""
    pre = tiny(tok, family, max_seq_len=16)
    lm = LmlabLM(pre, batch_size=2)
    ids = encode(tok, SNIPPETS[0])
    ctx, cont = ids[:40], ids[40:56]  # a 40-token context, a 16-token continuation
    kept = ctx[-1:] if family == "gpt" else ctx[-16:]
    (whole,), (cut,) = (lm._loglikelihood_tokens([(None, c, cont)]) for c in (ctx, kept))
    assert whole == pytest.approx(cut, abs=FP64_ATOL) and whole[0] < -1.0
    if family == "t5":
        assert whole[0] == pytest.approx(t5_loglikelihood(pre, kept, cont)[0], abs=FP64_ATOL)

    def scored(*_: object, **__: object) -> None:
        raise AssertionError("a request was scored before the refusal")

    monkeypatch.setattr(pre.model, "forward", scored)
    long = ("def f():", tok.decode(ids[40:57]))
    with pytest.raises(
        ConfigError,
        match=r"^a loglikelihood request's continuation \(.*\) is 17 "
        r"tokens, more than the model reads \(model.max_seq_len=16\)",
    ):
        lm._loglikelihood_tokens([(None, ctx, cont), (long, ctx, ids[40:57])])


@pytest.mark.parametrize(
    "family,knobs",
    [("gpt", {"positional": p}) for p in Positional]
    + [("gpt", {"attention_window": 5}), ("t5", {"positional": Positional.relative})],
    ids=lambda v: v if isinstance(v, str) else "-".join(str(x) for x in v.values()),
)
def test_batched_scores_equal_unbatched(tok, family: str, knobs: dict) -> None:
    """Right padding is exact: scores of a batch of requests of different lengths (and of a
    rolling text longer than the context) equal those of one request at a time."""
    pre = tiny(tok, family, **knobs)
    pairs = requests("loglikelihood", list(zip(CONTEXTS, CONTINUATIONS, strict=True)))
    text = requests("loglikelihood_rolling", [(SNIPPETS[0][:600],)])
    one, many = LmlabLM(pre, batch_size=1), LmlabLM(pre, batch_size=8)
    for (a, ga), (b, gb) in zip(one.loglikelihood(pairs), many.loglikelihood(pairs), strict=True):
        assert a == pytest.approx(b, abs=FP64_ATOL) and ga == gb
    rolled_one, rolled_many = one.loglikelihood_rolling(text), many.loglikelihood_rolling(text)
    assert rolled_one[0] == pytest.approx(rolled_many[0], abs=FP64_ATOL)


@pytest.mark.parametrize("bos", [False, True], ids=["eos", "bos"])
def test_rolling_loglikelihood_equals_the_training_loss(tok, bos_tok, bos: bool) -> None:
    """``loglikelihood_rolling`` of a text is minus the task's own summed cross-entropy over
    it: one window when it fits the context (conditioned on what a training document
    follows: BOS where the tokenizer has one, else the EOS before), and the harness's
    disjoint windows when it does not."""
    tok = bos_tok if bos else tok
    pre = tiny(tok, dtype=torch.float32)
    task = LMTask(pre.cfg, None, None)
    task.model.load_state_dict(pre.model.state_dict())
    task.eval()
    lm, start = LmlabLM(pre), (bos_of(pre) or [tok.token_to_id(EOS)])[0]
    for text in ("def f(x):\n    return x * 2\n", SNIPPETS[1]):
        ids = encode(tok, text)
        windows = list(get_rolling_token_windows(ids, start, pre.cfg.max_seq_len, context_len=1))
        total = 0.0
        for ctx, cont in map(make_disjoint_window, windows):
            row = ctx + cont  # the model reads row[:-1]; labels only where the window scores
            labels = [IGNORE] * (len(ctx) - 1) + cont
            batch = {"input_ids": torch.tensor([row[:-1]]), "labels": torch.tensor([labels])}
            with torch.no_grad():
                total -= float(task.loss(batch)[0]) * len(cont)
        (rolled,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
        assert (len(windows) > 1) == (len(ids) > pre.cfg.max_seq_len)
        assert rolled == pytest.approx(total, rel=FP32_RTOL)


def test_t5_rolling_windows_reach_the_encoder_as_the_harness_gives_them(tok) -> None:
    """As lm-eval's HFLM scores a seq2seq model: each window's context (the first: EOS) alone
    to the encoder, the decoder predicting the window; a second EOS after the context moved
    perplexities off HFLM's (and an empty context's score, ``acc_mutual_info``'s)."""
    pre = tiny(tok, "t5")
    eos = pre.tokenizer.token_to_id(EOS)
    text = SNIPPETS[1]
    windows = get_rolling_token_windows(encode(tok, text), eos, pre.cfg.max_seq_len, context_len=1)
    pairs = list(map(make_disjoint_window, windows))
    total = sum(t5_loglikelihood(pre, ctx, cont)[0] for ctx, cont in pairs)
    (rolled,) = LmlabLM(pre).loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    assert len(pairs) > 1 and rolled == pytest.approx(total, abs=FP64_ATOL)


@pytest.mark.parametrize("bos", [False, True], ids=["eos", "bos"])
def test_rolling_windows_predict_every_token_of_the_text_once(
    tok, bos_tok, bos: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BOS is the first window's condition, never a token to predict: the windows' targets,
    in order, are the text's tokens, each once, every window within the context."""
    pre = tiny(bos_tok if bos else tok)
    lm = LmlabLM(pre)
    windows = []
    score = lm._loglikelihood_tokens
    monkeypatch.setattr(lm, "_loglikelihood_tokens", lambda r: windows.extend(r) or score(r))
    text = SNIPPETS[1]
    lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    assert [t for _, _, cont in windows for t in cont] == encode(pre.tokenizer, text)
    assert windows[0][1] == (bos_of(pre) or [pre.tokenizer.token_to_id(EOS)])
    assert len(windows) > 1 and all(len(c + t) <= 65 for _, c, t in windows)  # 64 + 1 each


def test_generate_until_continues_the_context_after_bos(bos_tok) -> None:
    """With a BOS tokenizer, the greedy text is the model's greedy continuation of
    [BOS] + the context's tokens up to EOS, its special tokens left out as HFLM leaves them
    (float64: the same function by two paths)."""
    pre = tiny(bos_tok)
    kwargs = {"max_gen_toks": 10, "until": ["\n\n"]}
    (got,) = LmlabLM(pre).generate_until(requests("generate_until", [(CONTEXTS[0], kwargs)]))
    ids = bos_of(pre) + encode(bos_tok, CONTEXTS[0])
    out = generate(pre.model, torch.tensor([ids]), 10, temperature=0)[0, len(ids) :]
    out, eos = out.tolist(), bos_tok.token_to_id(EOS)
    want = bos_tok.decode(out[: out.index(eos)] if eos in out else out, skip_special_tokens=True)
    assert got == want.split("\n\n")[0] and got


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_generate_until_stops_at_the_stop_sequence(tok, family: str) -> None:
    pre = tiny(tok, family)
    lm = LmlabLM(pre, batch_size=4)
    free = lm.generate_until(requests("generate_until", [(CONTEXTS[0], {"max_gen_toks": 30})]))[0]
    stop = free[4:7]  # text the model writes, first seen at or before character 4
    first = free.index(stop)
    forwards = []
    pre.model.register_forward_hook(lambda *_: forwards.append(1))
    kwargs = {"until": [stop], "max_gen_toks": 30}
    (cut,) = lm.generate_until(requests("generate_until", [(CONTEXTS[0], kwargs)]))
    assert cut == free[:first] and len(cut) < len(free)
    assert len(forwards) < 30  # the loop ended at the stop sequence, not after 30 tokens


@pytest.mark.parametrize(
    ("kwargs", "refused"),
    [
        ({"do_sample": True, "temperature": -1.0}, r"temperature=-1.0 must be >= 0"),
        ({"top_k": -2}, r"top_k=-2 must be an int >= 0"),
        ({"top_p": 1.5}, r"top_p=1.5 must be in \[0, 1\]"),
        ({"num_beams": 4}, r"num_beams=4 is not something lmlab's decoder does"),
        ({"repetition_penalty": 1.3}, r"repetition_penalty=1.3 is not something"),
        ({"typical_p": 0.9}, r"typical_p=0.9 is not something"),
    ],
)
def test_generation_arguments_lmlab_cannot_honour_are_refused(
    tok, kwargs: dict, refused: str
) -> None:
    """A task's generation argument that lmlab's decoder would ignore or misread (a negative
    temperature sampled the least likely tokens; beams and penalties were dropped) is refused
    in one line naming it, as transformers refuses what it cannot use; at their neutral
    values (lm-eval's own tasks set ``num_beams: 1``) they are accepted."""
    lm = LmlabLM(tiny(tok))
    with pytest.raises(ConfigError, match=rf"^the task's generation_kwargs: {refused}"):
        lm.generate_until(requests("generate_until", [(CONTEXTS[0], kwargs)]))
    neutral = {"num_beams": 1, "repetition_penalty": 1.0, "top_k": 0, "max_gen_toks": 3}
    (text,) = lm.generate_until(requests("generate_until", [(CONTEXTS[0], neutral)]))
    assert (
        text
        == lm.generate_until(requests("generate_until", [(CONTEXTS[0], {"max_gen_toks": 3})]))[0]
    )


def test_a_causal_answer_as_long_as_the_context_is_refused_before_any_is_generated(
    tok, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A causal prompt keeps its last ``max_seq_len - max_gen_toks`` tokens (the harness's
    rule). At ``max_gen_toks >= max_seq_len`` (the default 256 on gpt_tiny's 256 positions) it
    kept one token and wrote every answer from it in silence; it is refused in one line that
    says where the length came from, before any request of the call is generated. One token
    less still sees the context's last token; a T5's encoder holds its context apart."""
    from lmlab.infer import evaluate

    lm = LmlabLM(tiny(tok), max_gen_toks=64)  # tiny's max_seq_len=64
    generated: list[torch.Tensor] = []
    real = evaluate.decode_loop
    monkeypatch.setattr(
        evaluate,
        "decode_loop",
        lambda f, c, ids, *a, **kw: generated.append(ids) or real(f, c, ids, *a, **kw),
    )
    fits = (CONTEXTS[0], {"max_gen_toks": 3})
    for asked, source, allowed in [
        (
            {},
            r"max_gen_toks \(the answers' length where a task sets none\)=64",
            "max_gen_toks <= 63",
        ),
        (
            {"max_new_tokens": 100},
            r"the task's generation_kwargs: max_new_tokens=100",
            "a model whose model.max_seq_len is above 100",
        ),
    ]:
        with pytest.raises(ConfigError, match=rf"^{source} leaves no room .* allowed: {allowed}$"):
            lm.generate_until(requests("generate_until", [fits, (CONTEXTS[3], asked)]))
    assert generated == []
    lm.generate_until(requests("generate_until", [(CONTEXTS[0], {"max_gen_toks": 63})]))
    assert generated[0].tolist() == [encode(tok, CONTEXTS[0])[-1:]]
    LmlabLM(tiny(tok, "t5"), max_gen_toks=64).generate_until(
        requests("generate_until", [(CONTEXTS[0], {})])
    )


def test_decoding_and_scoring_leave_cudnn_attention_out(tok) -> None:
    """On an H200, gpt_small generated 15 tokens/s: cuDNN's SDPA kernel, which PyTorch prefers
    on Hopper, builds an execution plan for each new shape, and a KV cache's every token is
    one (so is each evaluation batch's width). Every forward of decoding (``generate``, the
    harness's ``generate_until``) and of scoring runs with cuDNN's kernel off, and the
    process's setting comes back after. A CPU runs no cuDNN, but reads the same flag."""
    pre = tiny(tok)
    seen: list[bool] = []
    pre.model.register_forward_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    assert torch.backends.cuda.cudnn_sdp_enabled()
    lm = LmlabLM(pre, batch_size=2)
    lm.loglikelihood(requests("loglikelihood", list(zip(CONTEXTS, CONTINUATIONS, strict=True))))
    lm.generate_until(requests("generate_until", [(CONTEXTS[0], {"max_gen_toks": 5})]))
    generate(pre.model, torch.tensor([encode(tok, CONTEXTS[1])]), 5, temperature=0)
    assert len(seen) > 10 and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # as it was: training keeps its kernel


def test_generated_text_leaves_out_special_tokens_as_the_harness_does(
    tok, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A T5 trained on span corruption answers ``<extra_id_0> text <extra_id_1>``: the text
    is what follows, without the sentinels (HFLM decodes with ``skip_special_tokens``), and
    ends at EOS whatever the loop wrote after it."""
    from lmlab.infer import evaluate

    ids = lambda s: encode(tok, s)  # noqa: E731
    sentinel = [tok.token_to_id(f"<extra_id_{i}>") for i in range(2)]
    row = [tok.token_to_id(PAD), sentinel[0], *ids(" return a"), sentinel[1], *ids(" + b")]
    row += [tok.token_to_id(EOS), *ids(" after")]
    monkeypatch.setattr(evaluate, "decode_loop", lambda *a, **kw: torch.tensor([row]))
    lm = LmlabLM(tiny(tok, "t5"))
    (got,) = lm.generate_until(requests("generate_until", [(CONTEXTS[0], {"max_gen_toks": 30})]))
    assert got == " return a + b"


def test_batched_generation_equals_one_prompt_at_a_time(tok) -> None:
    """Prompts of different lengths in one batch (the longer ones' extra tokens forced)."""
    lm = LmlabLM(tiny(tok), batch_size=4)
    args = [(c, {"max_gen_toks": 12, "until": ["\n\n"]}) for c in CONTEXTS]
    batched = lm.generate_until(requests("generate_until", args))
    lm.batch_size = 1
    assert batched == lm.generate_until(requests("generate_until", args))
    assert len(set(batched)) > 1


def test_a_bert_checkpoint_is_refused(tok) -> None:
    with pytest.raises(ConfigError, match="bert model is an encoder"):
        LmlabLM(tiny(tok, "bert"))


def test_shipped_tasks_run_offline_and_twice_the_same(tok) -> None:
    """Every shipped task through lm-eval's ``simple_evaluate``: offline, in seconds, the same
    numbers twice."""
    lm = LmlabLM(tiny(tok, dtype=torch.float32, max_seq_len=128), batch_size=32)
    first = harness.flat_metrics(harness.run_tasks(lm, harness.shipped_tasks(), limit=6))
    again = harness.flat_metrics(harness.run_tasks(lm, harness.shipped_tasks(), limit=6))
    assert first == again
    expected = {"stdlib_nextline/acc", "stdlib_cloze/acc", "stdlib_perplexity/bits_per_byte"}
    assert expected <= {k.removeprefix("eval/") for k in first}
    assert all(math.isfinite(v) for v in first.values())


def test_a_model_arg_lmlab_does_not_read_is_refused_naming_it(tok) -> None:
    """``model_args="pretrained=...,dtyp=bf16"`` (a typo) or HFLM's ``max_length`` ran the
    evaluation without them, in silence; what the harness passes every model is taken."""
    pre = tiny(tok)
    with pytest.raises(ConfigError, match=r"^model_args dtyp='bf16', max_length=32: not an "):
        LmlabLM(pre, dtyp="bf16", max_length=32)
    with pytest.raises(ConfigError, match=r"allowed: pretrained, batch_size, device, dtype, "):
        LmlabLM.create_from_arg_string("pretrained=x.ckpt,dtyp=bf16", {"max_batch_size": 64})
    assert LmlabLM(pre, batch_size=2, max_batch_size=64).batch_size == 2


def test_the_readme_python_evaluation_runs_as_written(tok, tmp_path: Path, capsys) -> None:
    """The README's ``simple_evaluate`` block, on a checkpoint file: lm-eval's own task
    manager does not know the shipped tasks (a KeyError), lmlab's does."""
    readme = (CONF_DIR.parent / "README.md").read_text()
    block = re.search(r"```python\n(import lm_eval\n.*?)```", readme, re.S)
    assert block, "the README shows no simple_evaluate block"
    pre = tiny(tok, dtype=torch.float32)
    ckpt = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in pre.model.state_dict().items()}
    config = model_config_dict(pre.cfg)
    torch.save({"state_dict": state, "model_config": config, "tokenizer": tok.to_str()}, ckpt)
    code = block[1].replace("outputs/<date>/<time>/checkpoints/last.ckpt", str(ckpt))
    exec(code.replace("limit=100", "limit=2"), {})
    assert 0.0 <= float(capsys.readouterr().out.splitlines()[-1]) <= 1.0


def test_few_shot_examples_come_from_the_training_files_never_from_the_items_scored(
    tok,
) -> None:
    """The shipped tasks' few-shot examples are drawn from their ``fewshot`` split, made from
    the documents the default corpus trains on. With a test split alone, lm-eval drew them
    from the other items being scored."""

    def read(file: str) -> list[dict]:
        return [json.loads(line) for line in (harness.TASKS_DIR / file).open()]

    pools = {n: read(f"{n}.fewshot.jsonl") for n in ("stdlib_nextline", "stdlib_cloze")}
    items = {n: read(f"{n}.jsonl") for n in pools}
    for name in pools:  # not one file scored lends an example
        assert not {i["source"].split(":")[0] for i in items[name]} & {
            i["source"].split(":")[0] for i in pools[name]
        }
    contexts: list[str] = []

    class Recording(LmlabLM):
        def loglikelihood(self, reqs, disable_tqdm: bool = False):
            contexts.extend(r.args[0] for r in reqs if r.args[0])
            return super().loglikelihood(reqs, disable_tqdm)

    lm = Recording(tiny(tok, dtype=torch.float32, max_seq_len=64), batch_size=32)
    results = harness.run_tasks(lm, list(pools), limit=3, num_fewshot=2, bootstrap_iters=0)
    assert results["n-shot"] == {name: 2 for name in pools}
    assert contexts
    for context in contexts:
        (name,) = [n for n in pools if any(context.endswith(i["context"]) for i in items[n])]
        examples = [i for i in pools[name] if i["context"] in context]
        scored = [i for i in items[name] if i["context"] in context]
        assert len(examples) == 2 and len(scored) == 1, context[:200]


def test_evals_leave_the_global_random_state_alone(tok) -> None:
    """The harness seeds the global generators; a training run must draw on as before."""
    lm = LmlabLM(tiny(tok, dtype=torch.float32, max_seq_len=256))
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    harness.run_tasks(lm, ["stdlib_nextline"], limit=4)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_an_evaluation_runs_no_git(tok, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval records the git commit of the working directory, which is not the model's, and
    outside a repository git printed 'fatal: not a git repository' on every evaluation."""
    import subprocess

    real = subprocess.check_output

    def no_git(args, *rest, **kw):
        assert args[0] != "git", args
        return real(args, *rest, **kw)

    monkeypatch.setattr(subprocess, "check_output", no_git)
    lm = LmlabLM(tiny(tok, dtype=torch.float32, max_seq_len=256))
    assert harness.run_tasks(lm, ["stdlib_nextline"], limit=2).get("git_hash") is None


def test_random_weights_score_at_chance_on_the_multiple_choice_task(tok) -> None:
    """Four choices drawn alike: a model that knows nothing gets 25%, within the sampling
    error of 300 items. The bound is two of the standard errors the harness reports (a 95%
    interval); within one would fail about one random model in three by chance alone."""
    # The smallest model, 80 positions (contexts keep their end, the harness's rule; the
    # longest choice is 68 of this tokenizer's tokens, and a continuation must fit whole):
    # all the same to weights that know nothing, and a fraction of the work
    small = dict(d_model=16, n_layers=1, n_heads=2, max_seq_len=80, init_std=0.02)
    lm = LmlabLM(tiny(tok, dtype=torch.float32, **small), batch_size=64)
    m = harness.flat_metrics(harness.run_tasks(lm, ["stdlib_nextline"]))
    for metric in ("acc", "acc_mutual_info"):  # measured: 0.260 and 0.267, stderr 0.025
        acc, stderr = (
            m[f"eval/stdlib_nextline/{metric}"],
            m[f"eval/stdlib_nextline/{metric}_stderr"],
        )
        assert stderr == pytest.approx(math.sqrt(0.25 * 0.75 / 299), rel=0.2)
        assert abs(acc - 0.25) <= 2 * stderr, (metric, acc, stderr)


class HubIndex:
    """Stands in for lm-eval's index of its own tasks (building it takes seconds): it knows
    hellaswag, and loading it fails the way the hub fails without a network."""

    all_tasks = ["hellaswag", *harness.shipped_tasks()]

    def load(self, names: list[str]) -> None:
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (OfflineModeIsEnabled)")


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "task_manager", lambda hub, folders=(): HubIndex())
    monkeypatch.setattr(harness, "hub_reachable", lambda: False)


def test_task_names_parse_as_a_comma_list_or_the_training_configs_list() -> None:
    expected = ["stdlib_cloze", "stdlib_nextline"]
    for given in ("stdlib_cloze,stdlib_nextline", "[stdlib_cloze, stdlib_nextline]", expected):
        assert harness.parse_tasks(given) == expected
    assert harness.parse_tasks(None) == harness.shipped_tasks()
    with pytest.raises(ConfigError, match=r"tasks='\[\]' names no task"):
        harness.parse_tasks("[]")


def test_unknown_or_unreachable_tasks_are_refused_naming_them(offline_hub) -> None:
    assert harness.check_tasks(harness.shipped_tasks()) is False  # no hub index needed
    with pytest.raises(ConfigError, match="unknown task 'no_such_task'; allowed: the shipped"):
        harness.check_tasks(["stdlib_nextline", "no_such_task"])
    offline = r"task 'hellaswag' needs its dataset .* unreachable \(offline\)"
    with pytest.raises(ConfigError, match=offline):
        harness.check_tasks(["hellaswag"])


def test_evaluate_command_refuses_a_hub_task_offline_before_reading_the_checkpoint(
    offline_hub, run_command, capsys, tmp_path: Path
) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")  # a checkpoint that is there: its path passes the checks
    code = run_command("evaluate", f"ckpt={ckpt}", "tasks=hellaswag")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'hellaswag'" in err, err


def test_evaluate_checks_its_inputs_before_importing_the_harness(tmp_path: Path) -> None:
    """A missing checkpoint or a bad dtype is one line before lm-eval is imported (seconds:
    the error came after it). A fresh process: this one has lm-eval imported."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")
    code = (
        "import json, sys\n"
        "from lmlab.cli.evaluate import main\n"
        "from lmlab.errors import ConfigError\n"
        "out = []\n"
        f"for argv in (['ckpt={tmp_path / 'missing.ckpt'}'], ['ckpt={ckpt}', 'dtype=int8']):\n"
        "    try:\n"
        "        main(argv + ['wandb=false'])\n"
        "    except ConfigError as err:\n"
        "        out.append(str(err))\n"
        "print(json.dumps([out, 'lm_eval' in sys.modules]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    errors, harness_imported = json.loads(res.stdout.splitlines()[-1])
    assert errors == [
        f"ckpt={tmp_path / 'missing.ckpt'}: no such file or folder (allowed: a checkpoint "
        "file or a sharded checkpoint folder)",
        "dtype='int8': allowed fp32, bf16, fp16, auto",
    ]
    assert harness_imported is False


def harness_results(limit: int, tasks: dict[str, dict[str, float]]) -> dict:
    """What ``simple_evaluate`` returns, in the parts a record reads, for ``tasks`` run with
    ``limit`` items each: {task: {metric: value}}."""
    return {
        "results": {t: {f"{m},none": v for m, v in ms.items()} for t, ms in tasks.items()},
        "n-samples": {t: {"original": 300, "effective": limit} for t in tasks},
        "n-shot": {t: 0 for t in tasks},
        "config": {"limit": limit, "bootstrap_iters": 1000, "batch_size": 16},
    }


def test_eval_record_keeps_the_settings_each_task_ran_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every task, then one again with fewer items: the other tasks keep their results and
    their own ``limit``; the task run again has the new run's results and settings, none of
    its older metrics; nothing states one setting for all. The replaced result is said (a
    quick ``limit=`` run had replaced a full one in silence)."""
    import logging

    ckpt, path = str(tmp_path / "model.ckpt"), tmp_path / "eval" / "model.json"
    everything = {"a": {"acc": 0.5, "acc_norm": 0.4}, "b": {"acc": 0.25, "acc_norm": 0.3}}
    eval_records.write_record(
        path, eval_records.eval_record(harness_results(20, everything), ckpt, None)
    )
    again = eval_records.eval_record(harness_results(5, {"b": {"acc": 0.6}}), ckpt, None)
    with caplog.at_level(logging.WARNING, logger="lmlab.infer.eval_records"):
        eval_records.write_record(path, again)
        eval_records.write_record(path, again)  # the same settings again: nothing to say
    shots = harness_results(5, {"b": {"acc": 0.6}})
    shots["n-shot"] = {"b": 2}
    with caplog.at_level(logging.WARNING, logger="lmlab.infer.eval_records"):
        eval_records.write_record(path, eval_records.eval_record(shots, ckpt, None))
    assert caplog.messages == [
        "b: replaces its earlier result (20 items) with this one (5 items; limit=5 (was 20))",
        "b: replaces its earlier result (5 items) with this one (5 items; n_shot=2 (was 0))",
    ]
    caplog.clear()  # in the chat template: said as the prompts it makes, not its settings
    chat = {"apply_chat_template": True, "fewshot_as_multiturn": True, "system_instruction": None}
    for template in (True, "default"):  # the default template, named or not: the same prompts
        shots["config"] |= chat | {"apply_chat_template": template}
        with caplog.at_level(logging.WARNING, logger="lmlab.infer.eval_records"):
            eval_records.write_record(path, eval_records.eval_record(shots, ckpt, None))
    assert caplog.messages == [
        "b: replaces its earlier result (5 items) with this one (5 items; prompts=chat "
        "template, shots as turns (was plain prompts))"
    ]
    eval_records.write_record(path, again)  # put back: the rest of the test reads it
    record = json.loads(path.read_text())
    assert "lm_eval" not in record  # a record-wide block would misstate a task's settings
    tasks = record["tasks"]
    assert (tasks["a"]["lm_eval"]["limit"], tasks["b"]["lm_eval"]["limit"]) == (20, 5)
    assert tasks["b"]["n_samples"]["effective"] == 5 and tasks["b"]["results"] == {"acc,none": 0.6}
    assert tasks["a"]["lm_eval"]["version"] and tasks["a"]["lm_eval"]["bootstrap_iters"] == 1000
    assert record["metrics"] == {"eval/a/acc": 0.5, "eval/a/acc_norm": 0.4, "eval/b/acc": 0.6}


@pytest.mark.parametrize(
    "damage",
    [
        {"metrics": []},
        {"tasks": {"stdlib_cloze": 5}},
        {"tasks": []},
        {"checkpoint": 3},
        {"global_step": "4"},
        {"lm_eval": "x"},
        {"tasks": {"a": {"n_samples": "lots"}}},
        {"tasks": {"a": {"lm_eval": [1]}}},
        {"tasks": {"a": {"results": 0.5}}},
    ],
    ids=["metrics", "task", "tasks", "checkpoint", "step", "lm_eval", "items", "settings", "res"],
)
def test_a_damaged_record_is_refused_before_any_task(tmp_path: Path, damage: dict) -> None:
    """QA: a record edited by hand into the wrong shape passed the check, then the merge
    failed in a TypeError once every task had run, writing nothing."""
    ckpt, path = str(tmp_path / "model.ckpt"), tmp_path / "eval" / "model.json"
    eval_records.write_record(
        path, eval_records.eval_record(harness_results(5, {"a": {"acc": 1}}), ckpt, 4)
    )
    path.write_text(json.dumps({**json.loads(path.read_text()), **damage}))
    with pytest.raises(ConfigError, match="exists and is not an lmlab eval record"):
        eval_records.check_record(path, ckpt, 4)


def test_a_record_of_another_step_names_a_checkpoint_without_one_so(tmp_path: Path) -> None:
    """A converted checkpoint holds no step: the refusal said ``this checkpoint is of step
    None``."""
    ckpt, path = str(tmp_path / "model.ckpt"), tmp_path / "eval" / "model.json"
    eval_records.write_record(
        path, eval_records.eval_record(harness_results(5, {"a": {"acc": 1}}), ckpt, 4)
    )
    with pytest.raises(
        ConfigError, match=r"\(.*model.ckpt, step 4; this checkpoint is of no step\)"
    ):
        eval_records.check_record(path, ckpt, None)


def test_two_evaluations_ending_together_both_keep_their_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: two processes writing one record at the same moment, with different tasks: 16 of
    40 kept one task (four writers here, each waiting on a lock file the one before it
    removes). The read, merge and write hold the record's lock (threads here: a
    ``flock`` of two open files excludes within a process too). The lock is not the
    record's folder, which a live run holds when the record is put there."""
    import threading
    import time

    ckpt, path = str(tmp_path / "model.ckpt"), tmp_path / "eval" / "model.json"
    merge = eval_records.merge_records

    def slow(old: dict, new: dict) -> dict:
        time.sleep(0.2)  # between the read and the write
        return merge(old, new)

    monkeypatch.setattr(eval_records, "merge_records", slow)
    eval_records.write_record(
        path, eval_records.eval_record(harness_results(5, {"a": {"acc": 1}}), ckpt, 4)
    )
    writers = [
        threading.Thread(
            target=eval_records.write_record,
            args=(path, eval_records.eval_record(harness_results(5, {t: {"acc": 1}}), ckpt, 4)),
        )
        for t in ("b", "c", "d", "e")
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert set(json.loads(path.read_text())["tasks"]) == {"a", "b", "c", "d", "e"}
    # the lock's file goes with its last holder: none is left per record (the test suite
    # left one in the temporary folder for every record it wrote)
    assert not eval_records.record_lock(path).exists()
    from lmlab.train.dirlock import lock_run_dir, unlock_run_dir

    lock_run_dir(tmp_path)  # a live run's folder, and a record put straight into it
    try:
        record = eval_records.eval_record(harness_results(5, {"d": {"acc": 1}}), ckpt, 4)
        writer = threading.Thread(
            target=eval_records.write_record, args=(tmp_path / "mine.json", record), daemon=True
        )
        writer.start()
        writer.join(60)  # it waited for the run's end, hours; a deadlock, not a speed bound
        assert not writer.is_alive() and (tmp_path / "mine.json").exists()
    finally:
        unlock_run_dir(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"eval", "mine.json"}  # no lock file


def test_num_fewshot_beyond_a_tasks_pool_is_refused_before_the_model(tmp_path: Path) -> None:
    """QA: ``num_fewshot=100000`` failed in the harness's sampler after the checkpoint was
    read, with a traceback."""
    harness.check_fewshot(harness.shipped_tasks(), 50)  # stdlib_perplexity takes none
    for name, pool in [("stdlib_cloze", 50), ("stdlib_nextline", 50)]:
        with pytest.raises(ConfigError) as refused:
            harness.check_fewshot([name], pool + 1)
        assert str(refused.value) == (
            f"num_fewshot={pool + 1}: task {name!r} has {pool} few-shot examples; allowed: 0 "
            f"to {pool}"
        )


def test_an_older_record_gives_its_settings_to_its_tasks_when_merged(tmp_path: Path) -> None:
    """A record written before tasks held their settings (one top-level ``lm_eval``): its
    tasks keep those settings when a new run of another task merges in."""
    ckpt, path = str(tmp_path / "model.ckpt"), tmp_path / "eval" / "model.json"
    old = eval_records.eval_record(harness_results(20, {"a": {"acc": 0.5}}), ckpt, None)
    settings = old["tasks"]["a"].pop("lm_eval")
    path.parent.mkdir()
    path.write_text(json.dumps({**old, "lm_eval": settings}))
    eval_records.write_record(
        path, eval_records.eval_record(harness_results(5, {"b": {"acc": 0.6}}), ckpt, None)
    )
    tasks = json.loads(path.read_text())["tasks"]
    assert (tasks["a"]["lm_eval"]["limit"], tasks["b"]["lm_eval"]["limit"]) == (20, 5)


def test_eval_record_is_written_beside_the_run_and_merged(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "step000300.ckpt"
    path = eval_records.eval_path(ckpt, 300)
    assert path == tmp_path / "run" / "eval" / "step000300.json"
    assert eval_records.eval_path(tmp_path / "model.ckpt", None) == tmp_path / "eval" / "model.json"
    # loose checkpoints (one folder may hold several of one step): named by their file
    assert eval_records.eval_path(tmp_path / "v1.ckpt", 300) == tmp_path / "eval" / "v1.json"
    first = {"checkpoint": str(ckpt), "metrics": {"eval/a/acc": 0.5}, "tasks": {"a": {}}}
    eval_records.write_record(path, {**first, "global_step": 300})
    last = str(ckpt.with_name("last.ckpt"))  # the same run's checkpoint of the same step
    second = {"checkpoint": last, "metrics": {"eval/b/acc": 0.7}, "tasks": {"b": {}}}
    eval_records.write_record(path, {**second, "global_step": 300})
    merged = json.loads(path.read_text())
    assert merged["metrics"] == {"eval/a/acc": 0.5, "eval/b/acc": 0.7}
    assert set(merged["tasks"]) == {"a", "b"}
    # each task names the file it scored (a record before that: the record's checkpoint)
    assert merged["checkpoint"] == last
    assert {t: e["checkpoint"] for t, e in merged["tasks"].items()} == {"a": str(ckpt), "b": last}
    before = path.read_bytes()
    other = {**second, "checkpoint": str(tmp_path / "other" / "checkpoints" / "x.ckpt")}
    for record in ({**other, "global_step": 300}, {**second, "global_step": 200}):
        with pytest.raises(ConfigError, match=r"holds the eval of another checkpoint .*step 300"):
            eval_records.write_record(path, record)
    assert path.read_bytes() == before  # never two checkpoints' metrics in one record


def test_record_paths_name_the_run_for_every_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: ``ckpt=../a/checkpoints/last.ckpt`` typed in ``runs/b`` printed ``results:
    <...>/runs/b/../a/eval/step000004.json`` (and probe's ``<...>/b/../a/attention.png``),
    and gave that record another lock than its absolute path: two evaluations of one record
    did not take turns. The run's folder and the record's lock follow ``source_name``."""
    from lmlab.infer.checkpoint import run_dir_of

    run = tmp_path / "runs" / "a"
    (tmp_path / "runs" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "runs" / "b")
    typed = "../a/checkpoints/last.ckpt"
    assert run_dir_of(Path(typed)) == run
    assert run_dir_of(typed) == run  # a str, as the Python API takes paths
    assert eval_records.eval_path(Path(typed), 4) == run / "eval" / "step000004.json"
    assert eval_records.eval_path("../a/v1.ckpt", 4) == run / "eval" / "v1.json"
    record = run / "eval" / "step000004.json"
    lock = eval_records.record_lock(record)
    assert eval_records.record_lock(Path("../a/eval/step000004.json")) == lock
    assert eval_records.record_lock(Path("../b/../a/eval/./step000004.json")) == lock


def test_same_weights_reads_each_spelling_of_a_runs_checkpoints(tmp_path: Path) -> None:
    """QA: a record without ``model_digest`` of ``<run>/x/../checkpoints/last.ckpt`` was taken
    for other weights than ``<run>/checkpoints/step-4.ckpt`` of the same step: the two
    ``checkpoints/`` folders were compared as spelt."""
    folder = tmp_path / "run" / "checkpoints"
    step_file = str(folder / "step-4.ckpt")
    for spelt in (f"{tmp_path}/run/x/../checkpoints/last.ckpt", f"{folder}/./last.ckpt"):
        assert eval_records.same_weights(spelt, step_file, 4, 4)
        assert not eval_records.same_weights(spelt, step_file, 4, 3)
    other = f"{tmp_path}/other/../other/checkpoints/last.ckpt"
    assert not eval_records.same_weights(other, step_file, 4, 4)


def test_evaluate_refuses_an_out_it_would_damage_before_any_task(
    tok, tmp_path: Path, run_command, capsys
) -> None:
    """``out=`` that is not an eval record (the checkpoint itself, results.json), a folder, a
    path under a file, or a link to nothing: one line, exit 2, before the checkpoint is read;
    the file (the link) is kept."""
    pre = tiny(tok, dtype=torch.float32, max_seq_len=256)
    ckpt = tmp_path / "model.ckpt"
    state = {f"model.{k}": v for k, v in pre.model.state_dict().items()}
    config = model_config_dict(pre.cfg)
    torch.save({"state_dict": state, "model_config": config, "tokenizer": tok.to_str()}, ckpt)
    results = tmp_path / "results.json"
    results.write_text('{"status": "completed", "val_loss": 2.5}')
    kept = {p: p.read_bytes() for p in (ckpt, results)}
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone.json")
    cases = [
        (dangling, "is a symbolic link to"),  # it was replaced by a file
        (ckpt, "exists and is not an lmlab eval record"),
        (results, "exists and is not an lmlab eval record"),
        (tmp_path, "is a folder: name the file to write"),
        (results / "eval.json", "is a file, not a folder"),
    ]
    for out, message in cases:
        capsys.readouterr()
        argv = [f"ckpt={ckpt}", "tasks=stdlib_nextline", "limit=2", f"out={out}", "wandb=false"]
        assert run_command("evaluate", *argv) == 2, out
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in kept} == kept
    assert dangling.is_symlink() and not (tmp_path / "gone.json").exists()


def test_evaluate_refuses_a_generating_task_without_room_before_any_task_runs(
    tok, tmp_path: Path, run_command, capsys, generating_tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generating task whose answers (``max_gen_toks=``, 256) leave a 64-position GPT's
    prompt no room is refused once the checkpoint is read, before the harness runs any task
    (it refused at the first generation, after every scoring task had run)."""
    pre = tiny(tok, dtype=torch.float32)  # max_seq_len=64
    ckpt = tmp_path / "model.ckpt"
    state = {f"model.{k}": v for k, v in pre.model.state_dict().items()}
    config = model_config_dict(pre.cfg)
    torch.save({"state_dict": state, "model_config": config, "tokenizer": tok.to_str()}, ckpt)
    task = generating_tasks("gen_cloze")
    ran = []
    real = harness.run_tasks
    monkeypatch.setattr(harness, "run_tasks", lambda *a, **kw: ran.append(a) or real(*a, **kw))
    argv = [f"ckpt={ckpt}", f"tasks={task}", "limit=2", "wandb=false"]
    assert run_command("evaluate", *argv) == 2
    err = capsys.readouterr().err
    expected = "max_gen_toks (the answers' length where task 'gen_cloze' sets none)=256 leaves"
    assert expected in err and "allowed: max_gen_toks <= 63" in err and err.count("\n") == 1
    assert ran == [] and not (tmp_path / "eval").exists()
    assert run_command("evaluate", *argv, "max_gen_toks=8") == 0
    record = json.loads((tmp_path / "eval" / "model.json").read_text())
    assert "eval/gen_cloze/exact_match" in record["metrics"]
    assert record["tasks"]["gen_cloze"]["lm_eval"]["max_gen_toks"] == 8


def test_a_folder_of_ones_own_tasks_runs_beside_the_shipped_ones(
    tok, tmp_path: Path, run_command, capsys, own_tasks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``include_path=<folder>`` (lm-eval's ``--include_path``): the tasks in a folder of the
    user's task YAML files run as the shipped ones do; ``my_nextline``, a copy of
    ``stdlib_nextline`` under its own name, scores exactly what the shipped task scores. The
    folder is checked before the checkpoint is read: missing, a file, holding no YAML, or a
    task named as a shipped one (lm-eval takes the later path's, lmlab reads the shipped file:
    they would disagree) are one line each; an unknown task names the folder's tasks."""
    pre = tiny(tok, dtype=torch.float32, max_seq_len=256)
    ckpt = tmp_path / "model.ckpt"
    state = {f"model.{k}": v for k, v in pre.model.state_dict().items()}
    config = model_config_dict(pre.cfg)
    torch.save({"state_dict": state, "model_config": config, "tokenizer": tok.to_str()}, ckpt)
    both = ["tasks=my_nextline,stdlib_nextline", "limit=6", "wandb=false"]
    assert run_command("evaluate", f"ckpt={ckpt}", f"include_path={own_tasks}", *both) == 0
    metrics = json.loads((tmp_path / "eval" / "model.json").read_text())["metrics"]
    assert metrics["eval/my_nextline/acc"] == metrics["eval/stdlib_nextline/acc"]
    assert metrics["eval/my_nextline/acc_stderr"] == metrics["eval/stdlib_nextline/acc_stderr"]
    capsys.readouterr()

    def refused(*argv: str) -> str:
        out = tmp_path / "not-written.json"
        assert run_command("evaluate", f"ckpt={ckpt}", f"out={out}", *argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and not out.exists(), err
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    shadowing = tmp_path / "shadowing"
    shadowing.mkdir()
    (shadowing / "cloze.yaml").write_text("task: stdlib_cloze\ntest_split: test\n")
    nowhere = tmp_path / "nowhere"
    assert "does not exist: name a folder of lm-eval" in refused(f"include_path={nowhere}")
    assert f"include_path={ckpt} is a file" in refused(f"include_path={ckpt}")
    assert "holds no .yaml file" in refused(f"include_path={empty}")
    shadows = "its task 'stdlib_cloze' has the name of a task lmlab ships"
    assert shadows in refused(f"include_path={shadowing}")
    # the harness's own index (30 s to build) stands empty here: the name is no task at all
    real = harness.task_manager
    monkeypatch.setattr(harness, "task_manager", lambda hub, folders=(): real(False, folders))
    err = refused(f"include_path={own_tasks}", "tasks=my_nextlin")
    assert "unknown task 'my_nextlin'; allowed: the shipped offline tasks" in err
    assert f"a task of {own_tasks} (my_nextline)" in err


def test_evaluate_command_writes_the_run_eval_file_and_its_wandb_run(
    tok, tmp_path: Path, run_command, capsys, wandb_records, monkeypatch
) -> None:
    """``lmlab evaluate`` on a checkpoint in ``<run>/checkpoints/``: the table, then
    ``<run>/eval/step<N>.json`` and the metrics in the run's (offline) W&B run, at N - 1 on
    its ``trainer/global_step`` axis, where training logged the rows of the same weights.
    The record names the checkpoint it scored by its whole path, not as typed (relative to
    the folder the command ran in, or through it: ``<cwd>/../checkpoints`` names nothing once
    that folder is removed)."""
    pre = tiny(tok, dtype=torch.float32, max_seq_len=256)
    ckpt = tmp_path / "checkpoints" / "step000007.ckpt"
    ckpt.parent.mkdir()
    state = {f"model.{k}": v for k, v in pre.model.state_dict().items()}
    config = model_config_dict(pre.cfg)
    torch.save(
        {"state_dict": state, "model_config": config, "tokenizer": tok.to_str(), "global_step": 7},
        ckpt,
    )
    (tmp_path / "wandb_id").write_text("abcd1234")
    (tmp_path / "wandb_project").write_text("agentproj")  # a W&B sweep agent's project
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    typed = "ckpt=../checkpoints/step000007.ckpt"
    assert run_command("evaluate", typed, "tasks=stdlib_nextline", "limit=4") == 0
    assert "stdlib_nextline" in capsys.readouterr().out
    record = json.loads((tmp_path / "eval" / "step000007.json").read_text())
    assert record["global_step"] == 7 and record["tasks"]["stdlib_nextline"]["n_samples"]
    scored = str(ckpt.resolve())
    assert record["checkpoint"] == record["tasks"]["stdlib_nextline"]["checkpoint"] == scored
    records = wandb_records(tmp_path)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert (run["run_id"], run["project"]) == ("abcd1234", "agentproj")  # the run's own
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    (logged,) = [h for h in history if "eval/stdlib_nextline/acc" in h]
    assert float(json.loads(str(logged["trainer/global_step"]))) == 6


def test_evaluate_logs_into_the_wandb_run_a_resume_would_reopen(
    tmp_path: Path, wandb_records
) -> None:
    """A run directory whose ``wandb_id`` file was lost keeps its W&B run's id in
    results.json, which a resume reopens (``recorded_wandb_id``); ``lmlab evaluate`` read
    the file alone and logged nowhere, in silence."""
    from lmlab.cli.evaluate import log_to_wandb

    (tmp_path / "results.json").write_text(json.dumps({"wandb_id": "abcd1234"}))
    assert log_to_wandb(tmp_path, {"eval/stdlib_nextline/acc": 0.5}, 7) == "abcd1234"
    records = wandb_records(tmp_path)
    assert next(r["run"] for r in records if r["type"] == "run")["run_id"] == "abcd1234"


def save_checkpoint(pre: Pretrained, path: Path, step: int) -> Path:
    """``pre`` as a checkpoint of training step ``step``, in the keys training saves."""
    state = {f"model.{k}": v for k, v in pre.model.state_dict().items()}
    config = model_config_dict(pre.cfg)
    torch.save(
        {"state_dict": state, "model_config": config, "tokenizer": pre.tokenizer.to_str()}
        | {"global_step": step},
        path,
    )
    return path


def test_a_record_never_mixes_two_models_saved_at_one_path(
    tok, tmp_path: Path, run_command, capsys
) -> None:
    """One path, one step, two models (a GPT evaluated, then a T5 copied over its file): the
    second evaluation is refused before any task runs, saying why, and the record is kept;
    the GPT's weights in another file (a copy, evaluated in bf16) add their task to it."""
    ckpt = tmp_path / "loose" / "model.ckpt"
    ckpt.parent.mkdir()
    save_checkpoint(tiny(tok, dtype=torch.float32, max_seq_len=256), ckpt, 7)
    args = ["limit=2", "bootstrap_iters=0", "wandb=false"]
    assert run_command("evaluate", f"ckpt={ckpt}", "tasks=stdlib_nextline", *args) == 0
    record_path = tmp_path / "loose" / "eval" / "model.json"
    first = record_path.read_bytes()
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    save_checkpoint(tiny(tok, "t5", dtype=torch.float32, max_seq_len=256), ckpt, 7)
    capsys.readouterr()
    assert run_command("evaluate", f"ckpt={ckpt}", "tasks=stdlib_cloze", *args) == 2
    err = capsys.readouterr().err
    assert f"out={record_path} holds the eval of another checkpoint ({ckpt}, step 7;" in err
    assert "weights, model config or tokenizer differ" in err and err.count("\n") == 1, err
    assert record_path.read_bytes() == first
    out = f"out={record_path}"
    assert (
        run_command("evaluate", f"ckpt={copy}", "tasks=stdlib_cloze", out, "dtype=bf16", *args) == 0
    )
    record = json.loads(record_path.read_text())
    assert set(record["tasks"]) == {"stdlib_nextline", "stdlib_cloze"}
    assert record["model_digest"] == json.loads(first)["model_digest"]


def test_a_checkpoint_saved_before_a_model_field_was_added_keeps_its_digest(
    tok, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint whose saved model config lacks fields added to ModelConfig since
    (``embed_scale``, ``moe.granularity``: an older lmlab's) has the digest that lmlab gave it,
    which its eval records and results.json hold: ``lmlab evaluate`` of an older run refused
    its own record as another checkpoint's."""
    from lmlab.infer import digest, pretrained

    pre = tiny(tok, dtype=torch.float32)
    state = {f"model.{k}": v for k, v in pre.model.state_dict().items()}

    def older(config: dict) -> dict:  # as the ModelConfig of 2026-12-04 wrote it
        moe = {k: v for k, v in config["moe"].items() if k != "granularity"}
        return {**{k: v for k, v in config.items() if k != "embed_scale"}, "moe": moe}

    ckpt = tmp_path / "last.ckpt"
    saved = older(model_config_dict(pre.cfg))
    torch.save({"state_dict": state, "model_config": saved, "tokenizer": tok.to_str()}, ckpt)
    with monkeypatch.context() as then:  # the older lmlab, whose config had no such fields
        then.setattr(digest, "model_config_dict", lambda cfg: older(model_config_dict(cfg)))
        recorded = pretrained.checkpoint_digest(ckpt)
    assert pretrained.checkpoint_digest(ckpt) == recorded
    assert pretrained.load(ckpt).digest == recorded


def test_a_record_without_a_digest_is_refused_for_a_checkpoint_written_after_it(
    tmp_path: Path,
) -> None:
    """A record written before records held ``model_digest``: the same file (and step) adds
    its tasks while the file is as old as the record; a file written after the record (one
    copied over it) holds weights the record never saw, and is refused."""
    ckpt, path = tmp_path / "model.ckpt", tmp_path / "eval" / "model.json"
    ckpt.write_bytes(b"weights")
    old = eval_records.eval_record(harness_results(20, {"a": {"acc": 0.5}}), str(ckpt), 7)
    old.pop("model_digest", None)
    path.parent.mkdir()
    new = eval_records.eval_record(harness_results(5, {"b": {"acc": 0.6}}), str(ckpt), 7)
    new["model_digest"] = "d1"
    t = 1_700_000_000 * 10**9
    for ckpt_ns, record_ns in ((t, t + 10**9), (t + 10**9, t)):
        path.write_text(json.dumps(old))
        os.utime(ckpt, ns=(ckpt_ns, ckpt_ns))
        os.utime(path, ns=(record_ns, record_ns))
        if ckpt_ns <= record_ns:
            eval_records.write_record(path, new)
            merged = json.loads(path.read_text())
            assert set(merged["tasks"]) == {"a", "b"} and merged["model_digest"] == "d1"
        else:
            with pytest.raises(ConfigError, match=f"{ckpt} was written after that record"):
                eval_records.write_record(path, new)
            assert json.loads(path.read_text()) == old


def test_eval_record_holds_the_batch_size_and_dtype_it_ran_with(tok) -> None:
    """Each task's settings name the batch size and dtype the model ran with (the harness
    records its own ``batch_size`` argument, None for a model passed built)."""
    lm = LmlabLM(tiny(tok, dtype=torch.bfloat16, max_seq_len=256), batch_size=3)
    results = harness.run_tasks(lm, ["stdlib_nextline"], limit=2, bootstrap_iters=0)
    record = eval_records.eval_record(results, "tiny.ckpt", 0)
    settings = record["tasks"]["stdlib_nextline"]["lm_eval"]
    assert (settings["batch_size"], settings["dtype"]) == (3, "bf16")


def test_the_corpus_of_a_run_copied_without_its_hydra_folder_is_still_known(
    tmp_path: Path,
) -> None:
    """``cp -r run/* copy/`` leaves ``.hydra/`` behind; ``compare`` reads such a copy's config
    from the ``run_config.yaml`` training wrote, while ``lmlab evaluate`` read ``.hydra/``
    alone and said nothing of a split that trains on the shipped tasks' files."""
    from lmlab.cli.evaluate import trained_data
    from lmlab.config import DataConfig

    (tmp_path / "run_config.yaml").write_text(
        "data: {source: stdlib, val_fraction: 0.02, max_bytes: null}\nseed: 0\n"
    )
    assert trained_data(tmp_path / "checkpoints" / "last.ckpt") == DataConfig(val_fraction=0.02)


def test_a_corpus_setting_that_trains_on_the_shipped_tasks_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: at ``data.val_fraction=0.02`` 203 of ``stdlib_nextline``'s 300 items were in the
    training text, and nothing said so. Held out at the default settings (the smoke slice
    too); at another split, each shipped task says how many of its files the run trains on,
    in training's checks and in ``lmlab evaluate`` of that run's checkpoint."""
    import logging

    from lmlab.cli.evaluate import trained_data
    from lmlab.config import DataConfig, Source

    names = harness.shipped_tasks()
    if sys.version_info[:2] == (3, 11):  # the standard library the tasks were drawn from
        assert harness.trained_items(names, DataConfig()) == []
        assert harness.trained_items(names, DataConfig(max_bytes=1_000_000)) == []
    assert harness.trained_items(names, DataConfig(source=Source.shakespeare)) == []
    lines = harness.trained_items(names, DataConfig(val_fraction=0.02))
    assert [line.split(":")[0] for line in lines] == names
    assert all("files its items come from are in this run's training split" in x for x in lines)

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "data: {source: stdlib, val_fraction: 0.02, max_bytes: null}\ntask: {kind: lm}\n"
    )
    assert trained_data(run / "checkpoints" / "last.ckpt") == DataConfig(val_fraction=0.02)
    assert trained_data(tmp_path / "loose.ckpt") is None
    (run / ".hydra" / "config.yaml").write_text("task: {kind: classify}\n")  # a fine-tune
    assert trained_data(run / "checkpoints" / "last.ckpt") is None

    from omegaconf import OmegaConf

    from lmlab import errors
    from lmlab.train.preflight import check_evals

    monkeypatch.setattr(errors, "_SAID", set())  # said once per process: this test's
    cfg = OmegaConf.create({"eval": {"tasks": ["stdlib_cloze"]}})
    with caplog.at_level(logging.WARNING, logger="lmlab.train.preflight"):
        for _ in range(2):  # a sweep's job is checked twice: said once
            check_evals(cfg, ModelConfig(), DataConfig(val_fraction=0.02))
    (said,) = caplog.messages
    assert said.startswith("eval.tasks: stdlib_cloze: ")


def test_a_long_answer_is_refused_naming_its_task_with_or_without_a_model(tok) -> None:
    """The harness's requests carry their task: the refusal of a continuation longer than
    the model reads names it, in an evaluation and in the check a training run makes with its
    tokenizer alone (``harness.check_answers``: the task's requests built as the harness
    builds them; its first ``limit`` items only)."""
    pre = tiny(tok, max_seq_len=16)
    long = (CONTEXTS[0], SNIPPETS[0][:400])
    asked = [Instance("loglikelihood", {}, long, 0, ("my_task", 0, 1))]
    with pytest.raises(ConfigError, match=r"^task 'my_task': a loglikelihood request's cont"):
        LmlabLM(pre).loglikelihood(asked)
    with pytest.raises(
        ConfigError, match=r"^eval.tasks: task 'stdlib_nextline': a loglikelihood request's"
    ):
        harness.check_answers(["stdlib_nextline"], None, tok, pre.cfg, "eval.tasks")
    longest = max(
        len(encode(tok, choice))
        for item in harness.task_items("stdlib_nextline.jsonl")
        for choice in item["choices"]
    )
    fits = ModelConfig(**{**model_config_dict(pre.cfg), "max_seq_len": 2 * longest})
    harness.check_answers(["stdlib_nextline", "stdlib_perplexity"], None, tok, fits, "x")


# every scheme a T5 takes (NoPE needs a decoder-only model)
@pytest.mark.parametrize("positional", [p for p in Positional if p != Positional.none])
def test_a_t5_answer_past_max_seq_len_is_decoded_whole_or_refused(tok, positional) -> None:
    """A T5's answer of more tokens than max_seq_len: its decoder reads the whole answer so
    far, as transformers' generate does where the harness lets a seq2seq model run on
    (lmlab cropped it to the start token and the latest max_seq_len - 1, forgetting the
    answer's start), where the positional scheme reads any length; a scheme with a table of
    max_seq_len positions has none past it and is refused before anything is generated.
    Sampled (seeded) so that the answer varies: each token as the full, uncropped decoder
    picks it with the same generator."""
    from lmlab.config import TABLED_POSITIONS
    from lmlab.infer.generation import pick

    pre = tiny(tok, "t5", max_seq_len=8, positional=positional)
    lm = LmlabLM(pre)
    asked = (CONTEXTS[0], {"max_gen_toks": 20, "until": ["never"], "temperature": 1.0})
    if positional in TABLED_POSITIONS:
        with pytest.raises(
            ConfigError,
            match=r"^the task's generation_kwargs: max_gen_toks=20 is more than the decoder has "
            rf"positions: model.positional={positional.value} holds 8 .* allowed: a model whose "
            r"model.max_seq_len is at least 20",
        ):
            lm.generate_until(requests("generate_until", [asked]))
        return
    decode, read = pre.model.decode, []

    def reading(ids, *args, **kwargs):  # the decoder's input, where no cache holds the rest
        read.append(ids.shape[1] if kwargs.get("cache") is None else 0)
        return decode(ids, *args, **kwargs)

    pre.model.decode = reading
    (text,) = lm.generate_until(requests("generate_until", [asked]))
    pre.model.decode = decode
    assert max(read) == 20  # the last token written from the start token and 19 before it
    enc = torch.tensor([lm.tok_encode(CONTEXTS[0])[-8:]])
    memory = pre.model.encode(enc)
    gen = torch.Generator().manual_seed(lm.seed)
    dec = [lm.pad_id]
    with torch.no_grad():
        for _ in range(20):
            logits = pre.model.decode(torch.tensor([dec]), memory)[:, -1, : tok.get_vocab_size()]
            dec.append(int(pick(logits, 1.0, None, None, gen)))
    assert len(set(dec[9:])) > 1  # a varied answer: a crop would change it
    assert text == lm._text(dec[1:], ["never"])
