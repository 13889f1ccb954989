r"""Use a trained checkpoint: sample text (GPT), fill masks (BERT) or fill spans (T5).

    python src/generate.py ckpt=<file> prompt="def fib(" max_new_tokens=200 temperature=0.8 \
        top_k=50 top_p=0.95 seed=0 num_samples=3
    python src/generate.py ckpt=<bert run>/checkpoints/last.ckpt text="import <mask>"
    python src/generate.py ckpt=<t5 run>/checkpoints/last.ckpt text="def <extra_id_0>(self):"
    python src/generate.py ckpt=<task=seq2seq run>/checkpoints/last.ckpt text="def f(x):" \
        temperature=0
    python src/generate.py ckpt=<instruct model> prompt="Write fib in Python." chat=true

``task`` follows the checkpoint's family (generate, fill_mask, infill); a T5 fine-tuned with
``task=seq2seq`` answers its input text instead of filling sentinels (``answer``); ``prompt=`` and
``text=`` name the same input, for every task. Generation streams to the terminal and uses a
KV cache (``cache=false`` recomputes the context at every token); ``temperature=0`` is greedy.
A sample ends where the model writes the token its training documents ended with (EOS), as
transformers' ``generate`` stops at ``eos_token_id``; ``stop_at_eos=false`` writes on past it
(into what the model takes for the next document), to ``max_new_tokens``. ``chat=true``
makes the prompt a user's turn in the chat template an instruct model declares (a converted
one's, and the runs started from it) and writes the assistant's answer, which ends at the
model's declared end of turn. A converted model samples as its generation config publishes
(Llama 3 Instruct's temperature 0.6 and top_p 0.9, as vLLM takes them) where the command line
sets none of ``temperature``, ``top_k``, ``top_p``; the command line's win, key by key.
Infilling samples as generation does (``num_samples`` fills, one after another); fill_mask
takes ``top_k`` only (the candidates per mask): a sampling option given to it is refused.
A GPT's prompt starts with the BOS its documents started with in training, where its tokenizer
has one (a Llama's ``<s>``, as ``tok(prompt)`` in transformers). ``device=cuda dtype=bf16``
for a GPU.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from lmlab.cli.args import parse
from lmlab.config import INFER_TASKS, check_infer_task, check_sampling
from lmlab.errors import ConfigError


@dataclass
class GenerateConfig:
    ckpt: str = MISSING
    task: str | None = None  # generate | fill_mask | infill; default: by the model's family
    prompt: str = ""  # generate's prompt (text= works too)
    text: str | None = None  # fill_mask / infill input (prompt= works too)
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = None  # default 50 for generate, 5 candidates for fill_mask
    top_p: float | None = None
    seed: int = 0
    num_samples: int = 1
    cache: bool = True
    stop_at_eos: bool = True  # generate: end a sample at the model's EOS
    chat: bool = False  # generate: the prompt as a user's turn in the model's chat template
    chat_template: str | None = None  # of several named templates, the one (default: default)
    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | bf16 | fp16 | auto (as stored)
    tokenizer: str | None = None  # a tokenizer.json, for checkpoints that carry none

    def __post_init__(self) -> None:
        """Every value is checked here, before the checkpoint is read."""
        if self.task is not None and self.task not in INFER_TASKS.values():
            raise ConfigError(f"task={self.task!r}: allowed {', '.join(INFER_TASKS.values())}")
        if self.text is not None and self.prompt and self.text != self.prompt:
            raise ConfigError(
                f"prompt={self.prompt!r} and text={self.text!r}: two inputs; give one (both "
                "name the model's input, for every task)"
            )
        if self.num_samples < 1 or self.max_new_tokens < 1:
            raise ConfigError(
                f"num_samples={self.num_samples}, max_new_tokens={self.max_new_tokens}: both "
                "must be >= 1"
            )
        no_top_k = "50 for generate, 5 candidates for fill_mask"
        check_sampling("", self.temperature, self.top_k, self.top_p, no_top_k)
        if self.chat_template is not None and not self.chat:
            raise ConfigError(
                f"chat_template={self.chat_template!r} names the template of a chat; allowed "
                "with chat=true"
            )


# The options fill_mask has no use for: it ranks each mask's candidates in one forward pass.
NOT_FOR_FILL_MASK = (
    "max_new_tokens", "temperature", "top_p", "seed", "num_samples", "cache", "stop_at_eos"
)  # fmt: skip


def check_options(task: str, given: dict[str, str]) -> None:
    """An option the user gave (``given``: key -> value, as on the command line) that ``task``
    would ignore is refused, naming it, its value and what the task takes; defaults never
    are."""
    if task != "generate" and "chat" in given:
        raise ConfigError(
            f"chat={given['chat']}: a chat is a gpt checkpoint's (an instruct model's), and "
            f"{task} fills its text's masks or spans; the option is generate's"
        )
    if task == "infill" and "stop_at_eos" in given:
        raise ConfigError(
            f"stop_at_eos={given['stop_at_eos']}: infill (a t5 checkpoint) always ends at the "
            "model's EOS, which ends its spans; the option is generate's (a gpt checkpoint)"
        )
    unused = [k for k in NOT_FOR_FILL_MASK if k in given] if task == "fill_mask" else []
    if unused:
        values = ", ".join(f"{k}={given[k]}" for k in unused)
        raise ConfigError(
            f"{values}: fill_mask (a bert checkpoint) ranks each mask's candidates in one "
            "forward pass, with no sampling; it takes text= (or prompt=) and top_k= only"
        )


# The sampling settings a model's generation config can publish that generate takes.
PUBLISHED_SAMPLING = ("temperature", "top_k", "top_p")


def published_sampling(
    cfg: GenerateConfig, generation: dict, given: dict[str, str], n_vocab: int
) -> GenerateConfig:
    """``cfg`` with the sampling a converted model's generation config publishes
    (``Declared.generation``: temperature, top_k, top_p), each where the command line
    (``given``) sets none of that key, as vLLM takes a model's defaults (transformers' top_k
    of 0, every token, is all ``n_vocab`` here); said in one line on stderr. Nothing where the
    command line asks for greedy decoding (``temperature=0``). A published value generate
    cannot take is refused in one line naming the key that overrides it."""
    if "temperature" in given and cfg.temperature == 0:
        return cfg
    published = {k: generation[k] for k in PUBLISHED_SAMPLING if k in generation and k not in given}
    if not published:
        return cfg
    said = ", ".join(
        f"{k}={v}" + (" (every token)" if (k, v) == ("top_k", 0) else "")
        for k, v in published.items()
    )
    taken = published | ({"top_k": n_vocab} if published.get("top_k") == 0 else {})
    try:
        merged = dataclasses.replace(cfg, **taken)
    except ConfigError as err:
        raise ConfigError(
            f"{err} (ckpt={cfg.ckpt}'s generation config publishes {said}; set "
            f"{', '.join(taken)} on the command line)"
        ) from None
    keys = "=, ".join(PUBLISHED_SAMPLING)
    print(
        f"sampling as the model's generation config publishes it: {said} ({keys}= set them)",
        file=sys.stderr,
    )
    return merged


def main(argv: list[str]) -> int | None:
    cfg = parse(GenerateConfig, argv)
    from lmlab.infer.pretrained import load

    # the checkpoint's checks first: the model code's imports (torch._dynamo) take seconds
    if cfg.chat:  # a chat template to render: refused before the weights where there is none
        from lmlab.infer.declared import check_declares_chat

        check_declares_chat(Path(cfg.ckpt), cfg.chat_template)
    pre = load(cfg.ckpt, cfg.device, cfg.dtype, cfg.tokenizer)
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from lmlab.data.tokenizer import warn_unknown_text
    from lmlab.infer.fill import fill_mask
    from lmlab.infer.generation import NonFiniteLogits

    task = cfg.task or INFER_TASKS[pre.family]
    check_infer_task(pre.family, task, f"task={task}", cfg.ckpt)
    given = dict(arg.split("=", 1) for arg in argv)  # parse checked key=value
    check_options(task, given)
    if task == "generate":
        n_vocab = pre.tokenizer.get_vocab_size()
        cfg = published_sampling(cfg, pre.declared.generation, given, n_vocab)
    console = Console(highlight=False)
    gen = torch.Generator(device=pre.device).manual_seed(cfg.seed)
    text = cfg.text if cfg.text is not None else cfg.prompt
    if task == "generate":  # fill and infill warn of the text as they map its masks
        warn_unknown_text(pre.tokenizer, text, "the prompt" if cfg.text is None else "the text")
    try:
        if task != "fill_mask":
            sample(cfg, pre, task, text, gen, console)
            return
        per_mask, filled = fill_mask(pre, text, cfg.top_k or 5)
    except NonFiniteLogits as err:  # one line naming the checkpoint, not multinomial's traceback
        why = (  # its weights are finite: load checked them
            f"overflows dtype={cfg.dtype}; try dtype=fp32"
            if cfg.dtype != "fp32"
            else "overflows even in fp32: finite weights, activations past fp32's range"
        )
        raise ConfigError(f"{err} (checkpoint {cfg.ckpt} {why})") from None
    for i, candidates in enumerate(per_mask):
        table = Table(title=f"<mask> {i + 1} of {len(per_mask)}")
        table.add_column("token")
        table.add_column("probability", justify="right")
        for c in candidates:
            table.add_row(escape(repr(c.token)), f"{c.probability:.3f}")
        console.print(table)
    # the model's text as it is: brackets are code, not rich markup; lines unwrapped
    console.print(f"[bold]filled:[/bold] {escape(filled)}", soft_wrap=True)


def sample(cfg: GenerateConfig, pre, task: str, text: str, gen, console) -> None:
    """generate's or infill's ``num_samples`` samples, one after another from ``gen``."""
    import torch
    from rich.markup import escape

    from lmlab.infer.fill import answer, infill
    from lmlab.infer.generation import generate, warn_if_cut

    if task == "infill" and pre.task == "seq2seq":  # fine-tuned: the text is its input
        for n in range(cfg.num_samples):
            if cfg.num_samples > 1:
                console.rule(f"sample {n + 1} of {cfg.num_samples}")
            said = answer(
                pre, text, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, gen, cfg.cache
            )
            console.print(escape(said), soft_wrap=True)
        return
    if task == "infill":
        for n in range(cfg.num_samples):  # one generator: each fill draws after the last
            if cfg.num_samples > 1:
                console.rule(f"sample {n + 1} of {cfg.num_samples}")
            spans, filled = infill(
                pre, text, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, gen, cfg.cache
            )
            for sentinel, span in spans.items():
                console.print(escape(f"{sentinel} -> {span!r}"), soft_wrap=True)
            console.print(f"[bold]filled:[/bold] {escape(filled)}", soft_wrap=True)
        return
    tok, max_len = pre.tokenizer, pre.cfg.max_seq_len
    ids = pre.chat_ids(text, cfg.chat_template or True) if cfg.chat else pre.prompt_ids(text)
    warn_if_cut(len(ids), max_len)  # once, and before the prompt is written: not glued to it
    ids = ids[-max_len:]
    for n in range(cfg.num_samples):
        if cfg.num_samples > 1:
            console.rule(f"sample {n + 1} of {cfg.num_samples}")
        stream = Stream(tok, ids)
        try:
            stream.write(f"{text}\n" if cfg.chat else text)  # a chat's answer on its own line
            generate(
                pre.model,
                torch.tensor([ids], device=pre.device),
                cfg.max_new_tokens,
                cfg.temperature,
                cfg.top_k if cfg.top_k is not None else 50,
                cfg.top_p,
                gen,
                use_cache=cfg.cache,
                eos_id=pre.end_ids if cfg.stop_at_eos else None,
                on_token=stream,
                n_vocab=tok.get_vocab_size(),
            )
        except BaseException:  # Ctrl-C or an error: its message starts on a line of its own
            stream.end_line()
            raise
        sys.stdout.write("\n")


class Stream:
    """Writes each new token's text as it comes. Decodes the prompt with the continuation and
    writes what is new past the prompt's text, holding back an incomplete UTF-8 character
    (byte-level BPE can split one). The continuation is not decoded alone: a SentencePiece
    decoder (Llama 2's, Mistral's) drops the leading space of a text's first token, which would
    glue the first word to the prompt. ``line_open``: stdout's last line is unfinished
    (``end_line`` finishes it); ``written``: characters of the continuation written."""

    def __init__(self, tokenizer, prompt_ids: list[int]) -> None:
        self.tok, self.ids = tokenizer, list(prompt_ids)
        self.prompt_chars = len(tokenizer.decode(self.ids))
        self.written = 0
        self.line_open = False

    def __call__(self, next_B1) -> None:
        self.ids.append(int(next_B1[0, 0]))
        text = self.tok.decode(self.ids)[self.prompt_chars :]
        if text.endswith("\ufffd"):
            return
        self.write(text[self.written :])
        self.written = len(text)

    def write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if text:
            self.line_open = not text.endswith("\n")

    def end_line(self) -> None:
        if self.line_open:
            self.write("\n")
