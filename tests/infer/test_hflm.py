"""lmlab's harness model (``LmlabLM``) against lm-evaluation-harness's own ``HFLM`` on the
same weights, exported by ``to_hf``: the two share nothing but the weights and the tokenizer,
so a context cut otherwise, a position, a BOS, a window or a stop sequence handled otherwise
moves a score or a word. Every request type, on the shipped tasks and a generating one.

Tiny models with large random weights (varied greedy text), built in-process; nothing is
downloaded."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import lm_eval
import pytest
import torch
from tokenizers import processors

import lmlab.infer.evaluate  # noqa: F401 (registers model="lmlab" with the harness)
from eval_tasks import GENERATING_TASK
from lmlab.config import ModelConfig, model_config_dict
from lmlab.data.tokenizer import train_bpe
from lmlab.infer import harness
from lmlab.infer.hf.convert import to_hf
from lmlab.model import build_model

# Python source that ships with the repository (the perplexity task's snippets)
SNIPPETS = [
    json.loads(line)["text"]
    for line in (harness.TASKS_DIR / "stdlib_perplexity.jsonl").read_text().splitlines()
]
# What transformers builds from each export: GPT-2 (learned positions, LayerNorm, GELU, a
# tied head), Llama (RoPE, RMSNorm, SwiGLU, an untied head, a BOS before every text: the
# harness's add_bos_token) and T5 (relative buckets, 2 heads of 16). A GPT reads 64
# positions, so the tasks' longer contexts are cut and the rolling texts windowed; the T5's
# encoder reads 512, as HFLM gives a T5 every context whole.
MODELS = {
    "gpt2": dict(family="gpt", max_seq_len=64),
    "llama": dict(
        positional="rope",
        norm="rmsnorm",
        activation="swiglu",
        bias=False,
        tie_embeddings=False,
        max_seq_len=64,
    ),
    "t5": dict(
        family="t5",
        positional="relative",
        norm="rmsnorm",
        bias=False,
        n_heads=2,
        activation="relu",
        max_seq_len=512,
    ),
}
# A greedy answer of at most 12 tokens, cut at a line's end or "(" (the harness's until)
GENERATED = "stdlib_cloze_generated"
ANSWERS = {"until": ["\n", "("], "do_sample": False, "max_gen_toks": 12}
TASKS = ["stdlib_cloze", "stdlib_nextline", "stdlib_perplexity", GENERATED]
# Each score is a sum of per-token log-probabilities from float32 logits (the model's width
# 32, logits of a few units): each token's log-softmax agrees to a few float32 ulps (eps
# 1.2e-7) of its magnitude, so a sum agrees to well within 1e-5 of its own size (and a
# near-zero one within 1e-5 nats); a token scored at another position or context moves a
# sum by far more.
REL = 1e-5


def exported(name: str, root: Path) -> tuple[Path, Path]:
    """A checkpoint of model ``name`` with large random weights, and its ``to_hf`` folder."""
    tok = train_bpe(SNIPPETS, 400)
    if name == "llama":  # Llama's <s> before every text, as its tokenizer puts it
        tok.add_special_tokens(["<s>"])
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", bos)]
        )
    torch.manual_seed(0)
    cfg = ModelConfig(
        **{
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "init_std": 0.3,
            "vocab_size": tok.get_vocab_size(),
            **MODELS[name],
        }
    )
    state = build_model(cfg).state_dict()
    ckpt = root / "last.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "model_config": model_config_dict(cfg),
            "tokenizer": tok.to_str(),
            "global_step": 1,
        },
        ckpt,
    )
    return ckpt, to_hf(ckpt, root / "hf")


def responses(model: str, args: str, folder: Path, tasks: list[str]) -> dict[str, list]:
    """Each task's responses by document: per request, its log-likelihood (and whether it is
    the greedy continuation), a rolling text's score, or the generated text."""
    from lm_eval.tasks import TaskManager

    found = TaskManager(include_path=[str(harness.TASKS_DIR), str(folder)], include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=model,
        model_args=args,
        tasks=tasks,
        limit=16,
        task_manager=found,
        bootstrap_iters=0,
        device="cpu",
        log_samples=True,
    )
    # per document, each request's one response (repeats: 1)
    return {
        task: [[r[0] for r in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]
        for task, samples in out["samples"].items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_lmlab_scores_and_writes_what_the_harnesss_hflm_does(name: str, tmp_path: Path) -> None:
    """Every log-likelihood (and its greedy flag), multiple-choice score, rolling score and
    generated answer of the shipped tasks and a generating task equals what lm-eval's own
    ``HFLM`` gives the ``to_hf`` export, but for two things HFLM does otherwise (README):
    - a rolling text: lmlab scores the text's own tokens after BOS. HFLM with add_bos_token
      encodes the text with its BOS as well, so it scores that BOS too (after the BOS it
      conditions on: lm-eval issue #3333), and its T5 also scores the EOS its tokenizer puts
      after the text. The Llama's rolling scores are compared with HFLM's without
      add_bos_token, which is lmlab's scoring; the T5's are higher by their EOS's term.
    - a T5's answer: HFLM lets transformers write the context's length plus max_gen_toks
      tokens (its seq2seq max_length), lmlab max_gen_toks: HFLM's T5 is given transformers'
      max_length for 12 tokens after the decoder's start token."""
    ours_folder, their_folder = tmp_path / "tasks", tmp_path / "hf_tasks"
    for folder, asked in ((ours_folder, ANSWERS), (their_folder, ANSWERS | {"max_length": 13})):
        folder.mkdir()
        shutil.copy(harness.TASKS_DIR / "loaders.py", folder)
        shutil.copy(harness.TASKS_DIR / "stdlib_cloze.jsonl", folder / f"{GENERATED}.jsonl")
        kwargs = json.dumps(asked if name == "t5" else ANSWERS)
        (folder / f"{GENERATED}.yaml").write_text(
            GENERATING_TASK.format(name=GENERATED, kwargs=kwargs)
        )
    ckpt, hf = exported(name, tmp_path)
    ours = responses("lmlab", f"pretrained={ckpt}", ours_folder, TASKS)
    hf_args = f"pretrained={hf},dtype=float32"
    if name == "llama":  # its BOS before every context, and once before a rolling text
        scored = [t for t in TASKS if t != "stdlib_perplexity"]
        theirs = responses("hf", f"{hf_args},add_bos_token=True", their_folder, scored)
        rolled = ["stdlib_perplexity"]
        theirs |= responses("hf", f"{hf_args},add_bos_token=False", their_folder, rolled)
    else:
        theirs = responses("hf", hf_args, their_folder, TASKS)
    assert set(ours) == set(theirs) == set(TASKS)
    words = [r[0] for r in ours[GENERATED]]
    assert len(set(words)) > 3, words  # varied text, ended at "\n" or "(" or at 12 tokens
    for task in TASKS:
        assert len(ours[task]) == len(theirs[task]) == 16, task
        for doc, (a, b) in enumerate(zip(ours[task], theirs[task], strict=True)):
            where = f"{task} document {doc}"
            if task == GENERATED:
                assert a == b, (where, a, b)
            elif task == "stdlib_perplexity":
                if name == "t5":  # one term more in HFLM's, its EOS's: lower
                    assert a[0] > b[0], (where, a, b)
                else:
                    assert math.isclose(a[0], b[0], rel_tol=REL, abs_tol=REL), (where, a, b)
            else:  # each choice's (log-likelihood, greedy)
                assert [g for _, g in a] == [g for _, g in b], where
                for (x, _), (y, _) in zip(a, b, strict=True):
                    assert math.isclose(x, y, rel_tol=REL, abs_tol=REL), (where, x, y)
