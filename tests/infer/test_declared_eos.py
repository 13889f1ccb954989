"""What a converted model's publisher declares travels with it (``lmlab.infer.declared``):
where its text ends (an instruct model's tokenizer names ``<|eot_id|>``, Llama 3 Instruct's,
whose generation config lists ``<|end_of_text|>`` too, or ``<|im_end|>``, SmolLM2 Instruct's:
names lmlab does not give EOS by itself) and its chat template. ``lmlab generate`` stops, and
``lmlab evaluate`` ends and prefixes, as transformers' ``generate`` and lm-eval's ``HFLM`` do
on the original folder; a run started from the conversion keeps the record in its
checkpoints; ``to_hf`` writes it back. Tiny models built in-process; nothing is
downloaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, processors

transformers = pytest.importorskip("transformers")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from lmlab.analysis import multirun as mrun  # noqa: E402
from lmlab.analysis.runs import load_runs  # noqa: E402
from lmlab.cli.args import parse  # noqa: E402
from lmlab.cli.generate import GenerateConfig, published_sampling  # noqa: E402
from lmlab.cli.generate import main as generate_main  # noqa: E402
from lmlab.config.prompts import PLAIN_PROMPTS, prompt_format  # noqa: E402
from lmlab.data.tokenizer import EOS, Specials, train_bpe  # noqa: E402
from lmlab.errors import ConfigError  # noqa: E402
from lmlab.infer.declared import DECLARED  # noqa: E402
from lmlab.infer.evaluate import LmlabLM  # noqa: E402
from lmlab.infer.harness import TASKS_DIR  # noqa: E402
from lmlab.infer.hf.convert import from_hf, to_hf  # noqa: E402
from lmlab.infer.pretrained import load  # noqa: E402

TEXTS = [
    json.loads(line)["text"]
    for line in (TASKS_DIR / "stdlib_perplexity.jsonl").read_text().split("\n")
    if line
]
PROMPT = "def main("
N_NEW = 24
# The two instruct tokenizers: (their BOS, added before every text, or None; the declared
# eos_token; generation_config.json's eos_token_id, by name)
LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>", ["<|end_of_text|>", "<|eot_id|>"])
SMOLLM2 = (None, "<|im_end|>", ["<|im_end|>"])
# a BOS under a name of its own, which the tokenizer puts before every text
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ["<｜end▁of▁sentence｜>"])
KINDS = {"llama3": LLAMA3, "smollm2": SMOLLM2, "deepseek": DEEPSEEK}
# A chat template as an instruct model's tokenizer holds one (Jinja)
TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHAT = [{"role": "user", "content": "hi"}]


def tokenizer(bos: str | None, declared: list[str]) -> Tokenizer:
    """lmlab's byte-level BPE (its EOS, ``<|endoftext|>``, is the one lmlab finds by name)
    with an instruct model's specials; ``bos`` before every text where given."""
    tok = train_bpe(TEXTS, 400)
    tok.add_special_tokens([*([bos] if bos else []), *declared])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


def instruct_folder(root: Path, kind: tuple) -> tuple[Path, torch.nn.Module, object]:
    """A Hugging Face Llama folder whose greedy text from ``PROMPT`` reaches its declared EOS
    after a few tokens of its own: its head writes text (the rows of special tokens and of
    bytes that are part of a character are zero), and the declared EOS's row is a scaled copy
    of the row of the token it would write third."""
    bos, declared, ends = kind
    tok = tokenizer(bos, list(dict.fromkeys([*ends, declared])))
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=declared, **({"bos_token": bos} if bos else {})
    )
    hf_tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=128,
        initializer_range=0.3,
        bos_token_id=tok.token_to_id(bos) if bos else None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        for i in range(tok.get_vocab_size()):  # it writes text: no specials, no bytes alone
            if not tok.decode([i]) or "\ufffd" in tok.decode([i]):
                model.lm_head.weight[i] = 0.0
        third = model.generate(ids, do_sample=False, max_new_tokens=3)[0, -1]
        model.lm_head.weight[tok.token_to_id(declared)] = 1.5 * model.lm_head.weight[third]
    model.generation_config.eos_token_id = [tok.token_to_id(n) for n in ends]
    model.generation_config.bos_token_id = config.bos_token_id
    folder = root / "hf"
    model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder, model, hf_tok


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS)
def test_a_converted_instruct_model_stops_where_transformers_does(
    kind: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    """``lmlab generate`` on the conversion writes what transformers' ``generate`` writes on
    the folder: up to the declared EOS (it went on past it, to ``max_new_tokens``, stopping at
    lmlab's ``<|endoftext|>`` only). The conversion records the declared ends, the
    tokenizer's first, the chat template, the tokenizer's roles and the generation config,
    and says where generation stops and that training ends documents otherwise. The prompt
    follows the BOS the tokenizer puts before a text, whatever its name (DeepSeek's was left
    out: lmlab knew a BOS by name only)."""
    folder, model, hf_tok = instruct_folder(tmp_path, kind)
    bos, declared, ends = kind
    with caplog.at_level(logging.WARNING, logger="lmlab.infer.hf.tokenizer_io"):
        ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    eos_tokens = list(dict.fromkeys([declared, *ends]))  # the tokenizer's first
    record = torch.load(ckpt, weights_only=True)[DECLARED]
    assert (record["eos_tokens"], record["chat_template"]) == (eos_tokens, TEMPLATE)
    assert record["roles"] == {"eos_token": declared, **({"bos_token": bos} if bos else {})}
    assert record["generation"]["eos_token_id"] == model.generation_config.eos_token_id
    stops = " or ".join(repr(n) for n in ends)
    said = f"the model ends its text at {declared!r}"
    assert said in caplog.text and f"training ends documents with {EOS!r}" in caplog.text
    assert f"generation stops at {stops} (its generation config's ends)" in caplog.text
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model.generate(ids, do_sample=False, max_new_tokens=N_NEW)[0, ids.shape[1] :]
    new = expected.tolist()
    assert 1 < len(new) < N_NEW and new[-1] == hf_tok.convert_tokens_to_ids(declared), new
    generate_main([f"ckpt={ckpt}", f"prompt={PROMPT}", "temperature=0", f"max_new_tokens={N_NEW}"])
    assert capsys.readouterr().out == PROMPT + hf_tok.decode(new, skip_special_tokens=True) + "\n"
    pre = load(ckpt)
    assert pre.end_ids == model.generation_config.eos_token_id  # generate()'s
    assert pre.prompt_ids(PROMPT) == ids[0].tolist()  # after the BOS, whatever its name
    # an empty prompt: the BOS, else the declared EOS (HFLM's prefix of an empty context)
    assert pre.prompt_ids("") == [hf_tok.convert_tokens_to_ids(bos or declared)]


def test_generation_stops_where_the_generation_config_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tokenizer whose ``eos_token`` is none of its generation config's ends: transformers'
    ``generate`` writes on past it, and so does ``lmlab generate`` (it stopped there)."""
    kind = ("<|begin_of_text|>", "<|end_of_text|>", ["<|eot_id|>"])
    folder, model, hf_tok = instruct_folder(tmp_path, kind)
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model.generate(ids, do_sample=False, max_new_tokens=N_NEW)[0, ids.shape[1] :]
    new = expected.tolist()
    assert len(new) == N_NEW and hf_tok.convert_tokens_to_ids(kind[1]) in new, new
    generate_main([f"ckpt={ckpt}", f"prompt={PROMPT}", "temperature=0", f"max_new_tokens={N_NEW}"])
    assert capsys.readouterr().out == PROMPT + hf_tok.decode(new, skip_special_tokens=True) + "\n"


def both_models(root: Path, kind: tuple) -> tuple[LmlabLM, HFLM]:
    """``LmlabLM`` on the conversion of an instruct folder, and ``HFLM`` on the folder."""
    folder, _, _ = instruct_folder(root, kind)
    ours = LmlabLM(from_hf(str(folder), root / "m.ckpt"), batch_size=4)
    theirs = HFLM(
        pretrained=str(folder),
        dtype="float32",
        batch_size=4,
        device="cpu",
        add_bos_token=kind[0] is not None,  # the BOS its tokenizer puts before a text
    )
    return ours, theirs


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS)
def test_lmlab_evaluates_a_converted_instruct_model_as_hflm_does(
    kind: tuple, tmp_path: Path
) -> None:
    """``LmlabLM`` on the conversion and lm-eval's ``HFLM`` on the folder end a text with the
    declared EOS (their ``eot_token_id``), condition an empty context and a rolling text on
    the same token (SmolLM2's: no BOS, so its EOS) and write the same answers, ended at the
    declared EOS; with lmlab's ``<|endoftext|>`` the rolling scores and answers differed.
    A context follows the BOS the tokenizer puts before a text, DeepSeek's too."""
    ours, theirs = both_models(tmp_path, kind)
    bos = kind[0]
    assert ours.eot_token_id == theirs.eot_token_id
    assert ours.prefix_token_id == theirs.prefix_token_id
    if bos is None:  # with add_bos_token HFLM scores a rolling text's BOS too (test_hflm)
        rolled = requests("loglikelihood_rolling", [(t,) for t in TEXTS[:4]])
        for a, b in zip(
            ours.loglikelihood_rolling(rolled), theirs.loglikelihood_rolling(rolled), strict=True
        ):
            # float32 log-softmax sums of tens of tokens: within 1e-5 of their size (test_hflm)
            assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    until = {"until": ["\n\n"], "do_sample": False, "max_gen_toks": N_NEW}
    asked = requests("generate_until", [(p, until) for p in (PROMPT, "import os\n", "x = [")])
    written = ours.generate_until(asked)
    assert written == theirs.generate_until(asked) and written[0], written


def test_to_hf_writes_the_declared_ends_and_chat_template_back(tmp_path: Path) -> None:
    """The export's tokenizer declares the converted model's EOS and chat template (it lost
    the template) and its generation config is the original's, every end and the sampling
    defaults (it kept the ends alone), so transformers stops the export where it stopped the
    original and formats a chat as it did; a conversion of the export records the same."""
    folder, model, hf_tok = instruct_folder(tmp_path, LLAMA3)
    # Llama 2 Chat's: sampling settings without do_sample, which transformers loads with a
    # warning and refuses to save (to_hf failed with a traceback)
    sampling = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 77}
    published = json.loads((folder / "generation_config.json").read_text()) | sampling
    published = {k: v for k, v in published.items() if k[0] != "_" and k != "transformers_version"}
    (folder / "generation_config.json").write_text(json.dumps(published))
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    out = to_hf(ckpt, tmp_path / "out")
    again = transformers.AutoTokenizer.from_pretrained(out)
    assert again.eos_token == "<|eot_id|>"
    assert again.apply_chat_template(CHAT, tokenize=False) == hf_tok.apply_chat_template(
        CHAT, tokenize=False
    )
    export = transformers.AutoModelForCausalLM.from_pretrained(out)
    written = json.loads((out / "generation_config.json").read_text())
    assert {k: v for k, v in written.items() if k in published} == published
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():  # greedy, as the original
        assert torch.equal(
            export.generate(ids, do_sample=False, max_new_tokens=N_NEW),
            model.generate(ids, do_sample=False, max_new_tokens=N_NEW),
        )
    back = from_hf(str(out), tmp_path / "back.ckpt")
    record = torch.load(back, weights_only=True)[DECLARED]
    assert record["eos_tokens"][0] == "<|eot_id|>"
    assert set(record["eos_tokens"]) == {"<|eot_id|>", "<|end_of_text|>"}
    assert record["chat_template"] == TEMPLATE


@pytest.mark.slow
def test_a_run_started_from_a_conversion_keeps_what_it_declares(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``init_from`` a converted instruct model: the run's checkpoints keep its record, as a
    fine-tuned Hugging Face model keeps its tokenizer and generation config, so the trained
    model stops at the declared ends too and goes out with them and the chat template (both
    were dropped: the run's checkpoints carried the tokenizer alone). The run ends its
    documents with lmlab's EOS, which its generation config then lists too. Its evals run in
    the chat template (``eval.apply_chat_template=true``), which results.json records for
    ``compare``; a run whose model declares no template is refused that before training."""
    folder, _, hf_tok = instruct_folder(tmp_path, LLAMA3)
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    run = tmp_path / "run"
    args = ["+debug=smoke", "data.seq_len=64", "logger=csv", f"hydra.run.dir={run}"]
    evals = ["eval.tasks=[stdlib_cloze]", "eval.limit=2", "eval.apply_chat_template=true"]
    assert (
        run_command("train", *args, *evals, f"init_from={ckpt}", "data.tokenizer=checkpoint") == 0
    )
    results = json.loads((run / "results.json").read_text())
    assert "eval/stdlib_cloze/acc" in results
    assert results["eval_prompts"]["apply_chat_template"] is True
    assert mrun.eval_format(load_runs(run)[0], "eval/stdlib_cloze/acc") == "chat template"
    alone = [*args[:3], f"hydra.run.dir={tmp_path / 'alone'}", *evals]
    assert run_command("train", *alone) == 2
    assert "eval.apply_chat_template=true: the model it trains declares no chat template" in (
        capsys.readouterr().err
    )
    named = [*alone, f"init_from={ckpt}", "data.tokenizer=checkpoint", "eval.chat_template=x"]
    assert run_command("train", *named) == 2
    assert "not several by name: eval.chat_template='x' names none" in capsys.readouterr().err
    trained = run / "checkpoints" / "last.ckpt"
    record, source = torch.load(trained, weights_only=True)[DECLARED], torch.load(ckpt)[DECLARED]
    ends = [
        *(hf_tok.convert_tokens_to_ids(n) for n in LLAMA3[2]),
        hf_tok.convert_tokens_to_ids(EOS),
    ]
    assert record == source | {"generation": source["generation"] | {"eos_token_id": ends}}
    assert load(trained).end_ids == ends
    out = to_hf(trained, tmp_path / "out")
    again = transformers.AutoTokenizer.from_pretrained(out)
    assert again.eos_token == "<|eot_id|>" and again.chat_template == TEMPLATE
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == ends


def test_a_checkpoints_declared_record_must_fit_its_tokenizer(tmp_path: Path) -> None:
    """A checkpoint whose declared ends are no list of names, or name a token its tokenizer
    lacks, or whose chat template is no text, is refused in one line before the model is
    built."""
    folder, _, _ = instruct_folder(tmp_path, SMOLLM2)
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    for record, said in (
        ({"eos_tokens": "<|im_end|>"}, r"its declared record is .*; allowed: eos_tokens, a list"),
        (
            {"eos_tokens": ["<|im_end|>", "<|nope|>"]},
            r"its declared tokens \['<\|nope\|>'\] are no tokens of its tokenizer",
        ),
        ({"roles": {"bos_token": "<|nope|>"}}, r"its declared tokens \['<\|nope\|>'\] are no"),
        ({"roles": {"bos_token": 1}}, "allowed: eos_tokens, a list of token names, chat_temp"),
        ({"generation": [1]}, "allowed: eos_tokens, a list of token names, chat_template, r"),
        ({"generation": {"eos_token_id": [3, -1]}}, r"generation eos_token_id \[-1\] are no"),
        ({"chat_template": 3}, "its declared chat_template is int; allowed: a Jinja template"),
    ):
        torch.save(saved | {DECLARED: record}, tmp_path / "bad.ckpt")
        with pytest.raises(ConfigError, match=said):
            load(tmp_path / "bad.ckpt")
    assert Specials.of(load(ckpt).tokenizer).eos == EOS  # by name, as before
    # an end past the tokenizer (a padded embedding's row: from_hf warns) loads
    past = {"generation": {"eos_token_id": [3, 9999]}}
    torch.save(saved | {DECLARED: saved[DECLARED] | past}, tmp_path / "past.ckpt")
    assert load(tmp_path / "past.ckpt").end_ids == [3, 9999]


def chat_responses(lm: object, **chat: object) -> dict[str, list]:
    """A multiple-choice task's prompts and responses by document, lm-eval formatting every
    request in the model's chat template."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model=lm,
        tasks=["stdlib_cloze"],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        limit=4,
        num_fewshot=2,
        bootstrap_iters=0,
        log_samples=True,
        apply_chat_template=True,
        **chat,
    )
    return {
        task: [
            (s["arguments"], [r[0] for r in s["resps"]])
            for s in sorted(samples, key=lambda s: s["doc_id"])
        ]
        for task, samples in out["samples"].items()
    }


@pytest.mark.parametrize("kind", [LLAMA3, SMOLLM2], ids=["llama3", "smollm2"])
def test_an_instruct_model_is_evaluated_in_its_chat_template_as_hflm_does(
    kind: tuple, tmp_path: Path
) -> None:
    """lm-eval's ``apply_chat_template`` (few-shot examples as turns, a system turn): lmlab
    renders every request in the declared template as HFLM renders it on the original
    folder, and scores it alike (lm-eval refused lmlab's model: "please implement the
    'apply_chat_template' method")."""
    ours, theirs = both_models(tmp_path, kind)
    chat = {"system_instruction": "Finish the code.", "fewshot_as_multiturn": True}
    a, b = chat_responses(ours, **chat), chat_responses(theirs, **chat)
    assert set(a) == set(b) == {"stdlib_cloze"}
    for task in a:
        for doc, ((asked, got), (asked_b, got_b)) in enumerate(zip(a[task], b[task], strict=True)):
            assert asked == asked_b, (task, doc)  # the same rendered contexts
            context = asked[0][0]  # each choice's request has the same
            assert context.startswith("<|start_header_id|>system<|end_header_id|>\n\nFinish")
            assert context.count("<|start_header_id|>user<|end_header_id|>") == 3  # 2 shots
            for (x, g), (y, h) in zip(got, got_b, strict=True):
                assert g == h and x == pytest.approx(y, rel=1e-5, abs=1e-5), (task, doc)


def test_evaluate_applies_the_chat_template_and_records_it(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lmlab evaluate apply_chat_template=true`` formats every request in the declared
    template and its record says so; a checkpoint that declares none is refused before its
    weights are read, and a system turn without the template in one line."""
    folder, _, _ = instruct_folder(tmp_path, SMOLLM2)
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    args = [f"ckpt={ckpt}", "tasks=stdlib_cloze", "limit=4", "bootstrap_iters=0", "wandb=false"]
    out = tmp_path / "chat.json"
    chat = ["apply_chat_template=true", "system_instruction=Finish the code."]
    assert run_command("evaluate", *args, *chat, f"out={out}") == 0
    entry = json.loads(out.read_text())["tasks"]["stdlib_cloze"]
    settings = entry["lm_eval"]
    assert settings["apply_chat_template"] is True
    assert settings["system_instruction"] == "Finish the code."
    # as compare reads it (its warning where runs' formats differ); the task is 0-shot
    assert prompt_format(settings, entry["n_shot"]) == (
        "chat template, system instruction 'Finish the code.'"
    )
    plain = tmp_path / "plain.json"
    assert run_command("evaluate", *args, f"out={plain}") == 0
    entry = json.loads(plain.read_text())["tasks"]["stdlib_cloze"]
    assert entry["lm_eval"]["apply_chat_template"] is False
    assert prompt_format(entry["lm_eval"], entry["n_shot"]) == PLAIN_PROMPTS
    capsys.readouterr()
    saved = torch.load(ckpt, weights_only=True)
    torch.save(saved | {DECLARED: {"eos_tokens": ["<|im_end|>"]}}, tmp_path / "none.ckpt")
    none = [f"ckpt={tmp_path / 'none.ckpt'}", *args[1:], "apply_chat_template=true"]
    assert run_command("evaluate", *none) == 2
    assert "none.ckpt declares no chat template" in capsys.readouterr().err
    assert run_command("evaluate", *args, "system_instruction=Be brief.") == 2
    assert "allowed with apply_chat_template=true" in capsys.readouterr().err


def test_generate_chats_with_an_instruct_model_as_transformers_does(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lmlab generate chat=true``: the prompt as a user's turn in the declared template,
    the assistant's turn opened, the answer to the declared end of turn: transformers'
    ``generate`` of ``apply_chat_template`` on the original folder writes the same. Refused
    before the weights for a checkpoint that declares no template."""
    folder, model, hf_tok = instruct_folder(tmp_path, LLAMA3)
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    ids = hf_tok.apply_chat_template(
        CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        new = model.generate(ids, do_sample=False, max_new_tokens=N_NEW)[0, ids.shape[1] :]
    assert new[-1] == hf_tok.convert_tokens_to_ids("<|eot_id|>") and len(new) < N_NEW
    args = [f"ckpt={ckpt}", "prompt=hi", "temperature=0", f"max_new_tokens={N_NEW}"]
    capsys.readouterr()
    assert run_command("generate", *args, "chat=true") == 0
    answer = hf_tok.decode(new.tolist(), skip_special_tokens=True)
    assert capsys.readouterr().out == f"hi\n{answer}\n"
    saved = torch.load(ckpt, weights_only=True)
    torch.save(saved | {DECLARED: {"eos_tokens": ["<|eot_id|>"]}}, tmp_path / "none.ckpt")
    none = [f"ckpt={tmp_path / 'none.ckpt'}", *args[1:], "chat=true"]
    assert run_command("generate", *none) == 2
    assert "none.ckpt declares no chat template" in capsys.readouterr().err


# A second template, chosen by name (a tokenizer's templates by name: chat_template.jinja and
# additional_chat_templates/), and one that reads the BOS its tokenizer declares (Mistral's)
TOOL_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
BOS_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"


def refolded(folder: Path, **tokenizer: object) -> object:
    """The folder's tokenizer with the ``tokenizer`` attributes set, saved over it."""
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    for name, value in tokenizer.items():
        setattr(hf_tok, name, value)
    hf_tok.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def test_a_template_among_several_is_chosen_by_name(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A model with templates by name: evaluation renders the ``default`` one, or the one
    ``chat_template=`` names, as transformers renders that name on the original folder
    (evaluation refused every request: it looked the template's text up as a name; then,
    through the harness, rendered the default whatever the name); a name it lacks, or
    ``chat_template=`` without the chat, is refused in one line."""
    folder, _, _ = instruct_folder(tmp_path, SMOLLM2)
    templates = {"default": TEMPLATE, "tool_use": TOOL_TEMPLATE}
    hf_tok = refolded(folder, chat_template=templates)
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    lm = LmlabLM(load(ckpt), batch_size=4)
    for name in (True, "tool_use"):
        assert lm.chat_template(name) == templates["default" if name is True else name]
        expected = hf_tok.apply_chat_template(
            CHAT, tokenize=False, add_generation_prompt=True, chat_template=templates.get(name)
        )
        assert lm.apply_chat_template(CHAT) == expected
    args = [f"ckpt={ckpt}", "tasks=stdlib_cloze", "limit=2", "bootstrap_iters=0", "wandb=false"]
    out = tmp_path / "tool.json"
    chat = ["apply_chat_template=true", "chat_template=tool_use", f"out={out}"]
    rendered = []
    render = LmlabLM.apply_chat_template
    spy = lambda self, *a, **k: rendered.append(render(self, *a, **k)) or rendered[-1]  # noqa: E731
    monkeypatch.setattr(LmlabLM, "apply_chat_template", spy)
    assert run_command("evaluate", *args, *chat) == 0
    assert rendered and all(text.startswith("[user] ") for text in rendered), rendered[:1]
    tasks = json.loads(out.read_text())["tasks"]
    assert tasks["stdlib_cloze"]["lm_eval"]["apply_chat_template"] == "tool_use"
    capsys.readouterr()
    assert run_command("evaluate", *args, "apply_chat_template=true", "chat_template=x") == 2
    assert "none named 'x'; allowed: chat_template= one of default, tool_use" in (
        capsys.readouterr().err
    )
    assert run_command("generate", f"ckpt={ckpt}", "chat_template=tool_use") == 2
    assert "allowed with chat=true" in capsys.readouterr().err


def test_a_template_reads_the_bos_its_tokenizer_declares(tmp_path: Path) -> None:
    """A tokenizer that declares a BOS it does not put before a text (Mistral's ``<s>``,
    which its chat template writes): lmlab renders the chat as transformers does on the
    original folder (the template's ``bos_token`` was undefined: a traceback), and ``to_hf``
    writes the BOS back (transformers could no longer render the export's chat). An empty
    context is conditioned on that BOS, as lm-eval's HFLM conditions it (it was the EOS)."""
    folder, _, _ = instruct_folder(tmp_path, (None, "</s>", ["</s>", "<s>"]))
    hf_tok = refolded(folder, bos_token="<s>", chat_template=BOS_TEMPLATE)
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    expected = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert expected.startswith("<s>[INST] hi")
    pre = load(ckpt)
    assert pre.chat_text(CHAT) == expected and pre.bos_id is None  # training adds none
    chat = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)
    assert pre.chat_ids("hi") == chat["input_ids"]
    theirs = HFLM(pretrained=str(folder), dtype="float32", batch_size=1, device="cpu")
    assert LmlabLM(pre).prefix_token_id == theirs.prefix_token_id == hf_tok.bos_token_id
    assert pre.prompt_ids("") == [hf_tok.bos_token_id]
    again = transformers.AutoTokenizer.from_pretrained(to_hf(ckpt, tmp_path / "out"))
    assert again.bos_token == "<s>" and again("hi").input_ids == hf_tok("hi").input_ids
    assert again.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == expected


def test_generate_samples_as_the_generation_config_publishes(
    tmp_path: Path, run_command, capsys: pytest.CaptureFixture[str]
) -> None:
    """A converted model whose generation config publishes its sampling (here top_k 1: the
    most likely token, whatever the temperature) samples so where the command line sets none
    of it, as vLLM takes a model's defaults: ``lmlab generate`` writes transformers' greedy
    text (it sampled at its own temperature 0.8 and top_k 50), and says so on stderr. The
    command line's win; transformers' top_k of 0 is every token; ``temperature=0`` is
    greedy, whatever the model publishes."""
    folder, model, hf_tok = instruct_folder(tmp_path, SMOLLM2)
    published = json.loads((folder / "generation_config.json").read_text())
    published |= {"do_sample": True, "top_k": 1, "temperature": 0.9}
    (folder / "generation_config.json").write_text(json.dumps(published))
    ckpt = from_hf(str(folder), tmp_path / "m.ckpt")
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        greedy = model.generate(ids, do_sample=False, max_new_tokens=N_NEW)[0, ids.shape[1] :]
    args = [f"ckpt={ckpt}", f"prompt={PROMPT}", f"max_new_tokens={N_NEW}", "seed=3"]
    capsys.readouterr()
    assert run_command("generate", *args) == 0
    text = PROMPT + hf_tok.decode(greedy.tolist(), skip_special_tokens=True)
    out = capsys.readouterr()
    assert out.out == text + "\n"
    assert "generation config publishes it: temperature=0.9, top_k=1 (temperature=" in out.err
    cfg = parse(GenerateConfig, [f"ckpt={ckpt}"])
    every = published_sampling(cfg, {"top_k": 0, "top_p": 0.9}, {}, 405)
    assert (every.top_k, every.top_p) == (405, 0.9)
    assert "top_k=0 (every token), top_p=0.9" in capsys.readouterr().err
    greedy_cfg = parse(GenerateConfig, [f"ckpt={ckpt}", "temperature=0"])
    asked = {"temperature": "0"}
    assert published_sampling(greedy_cfg, published, asked, 405) == greedy_cfg
    assert capsys.readouterr().err == ""
    assert run_command("generate", *args, "top_k=50", "temperature=5") == 0
    assert capsys.readouterr().out != text + "\n"  # at temperature 5 over 50 tokens
    assert run_command("generate", *args, "top_p=0") == 2  # the command line's checked
    published["temperature"] = -1.0
    (folder / "generation_config.json").write_text(json.dumps(published))
    bad = from_hf(str(folder), tmp_path / "bad.ckpt")
    capsys.readouterr()
    assert run_command("generate", f"ckpt={bad}", "prompt=x") == 2
    err = capsys.readouterr().err
    assert "generation config publishes temperature=-1.0, top_k=1; set temperature, top_k" in err
