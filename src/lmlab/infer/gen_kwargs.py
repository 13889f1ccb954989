"""What a harness task may ask of lmlab's decoder: its ``generation_kwargs`` (as lm-eval's
``normalize_gen_kwargs`` gives them), checked before anything is generated and refused in one
line where lmlab would not do what they ask (``checked_gen_kwargs``). ``LmlabLM.generate_until``
is their user; ``harness.check_generation`` checks them before a model is loaded or trained."""

from __future__ import annotations

from lmlab.config import TABLED_POSITIONS, ModelConfig
from lmlab.errors import ConfigError
from lmlab.infer.generation import check_decoding

# Generation arguments a task may set that change nothing at these values (lm-eval's own tasks
# set ``num_beams: 1``); any other value asks for a decoding lmlab does not do.
NEUTRAL_GEN_KWARGS: dict[str, object] = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
}
# read by ``generate_until`` (``do_sample``: ``normalize_gen_kwargs`` has made it agree with
# the temperature) or only meaningful with beams (ignored as transformers ignores them there)
READ_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}
BEAM_ONLY_GEN_KWARGS = {"length_penalty", "early_stopping", "use_cache"}


def checked_gen_kwargs(
    asked: dict,
    max_gen_toks: int,
    cfg: ModelConfig,
    option: str = "max_gen_toks",
    task: str | None = None,
) -> dict:
    """A task's generation arguments ``asked`` as the harness normalizes them (the answers'
    length: ``max_gen_toks`` where the task sets none, the setting ``option`` names), refused
    where lmlab's decoder would not do what they ask (``check_gen_kwargs``) or where the
    length does not fit the model of ``cfg``: a causal model's context would have no room
    (``check_room``), an encoder-decoder's decoder no positions (``check_decoder_room``)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    from lmlab.infer.harness import BACKENDS

    kwargs = check_gen_kwargs(normalize_gen_kwargs(asked, max_gen_toks), task)
    max_new = int(kwargs["max_gen_toks"])
    if BACKENDS.get(cfg.family) == "causal":
        check_room(max_new, cfg.max_seq_len, asked, option, task)
    else:
        check_decoder_room(max_new, cfg, asked, option, task)
    return kwargs


def _where(task: str | None) -> str:
    return f"the generation_kwargs of task {task!r}" if task else "the task's generation_kwargs"


def check_gen_kwargs(kwargs: dict, task: str | None = None) -> dict:
    """A task's generation arguments, refused in one line where lmlab's decoder (greedy, or
    sampling with temperature, top-k and top-p) would not do what they ask: a negative
    temperature (which would sample the least likely tokens), a negative top_k, a top_p
    outside [0, 1], and any other argument at a value that changes decoding (beams, a
    repetition penalty, ...), which HFLM would hand to transformers and lmlab would ignore.
    ``top_k=0`` and ``top_p=0`` read as transformers reads them (``filter_logits``)."""
    where = _where(task)
    temperature = float(kwargs.get("temperature") or 0.0)
    check_decoding(temperature, kwargs.get("top_k"), kwargs.get("top_p"), f"{where}: ")
    for key, value in kwargs.items():
        if key in READ_GEN_KWARGS or key in BEAM_ONLY_GEN_KWARGS:
            continue
        if key in NEUTRAL_GEN_KWARGS and value == NEUTRAL_GEN_KWARGS[key]:
            continue
        neutral = ", ".join(f"{k}={v}" for k, v in NEUTRAL_GEN_KWARGS.items())
        raise ConfigError(
            f"{where}: {key}={value!r} is not something lmlab's decoder does (it decodes "
            f"greedily or samples with temperature, top_k and top_p; allowed at their "
            f"neutral values: {neutral})"
        )
    return kwargs


# the names a task may give its answers' length by (``normalize_gen_kwargs``'s aliases)
LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def check_room(
    max_new: int,
    max_length: int,
    asked: dict,
    option: str = "max_gen_toks",
    task: str | None = None,
) -> None:
    """A causal model's prompt keeps its last ``max_length - max_new`` tokens, so that every
    new token is written with it in view (the harness's rule; ``HFLM`` asserts the same):
    ``max_new >= max_length`` is refused, naming where it came from (the task's ``asked``
    arguments, else the setting ``option``: ``lmlab evaluate``'s ``max_gen_toks=``, training's
    ``eval.max_gen_toks``). At that length the answer was written from the context's last
    token alone, in silence."""
    if max_new < max_length:
        return
    source, own = _length_source(asked, option, task)
    allowed = f"a model whose model.max_seq_len is above {max_new}"
    allowed = allowed if own else f"{option} <= {max_length - 1}"
    raise ConfigError(
        f"{source}={max_new} leaves no room for the context: the model reads {max_length} "
        "tokens (model.max_seq_len) and a prompt keeps its last max_seq_len - max_gen_toks, "
        f"so that every new token sees it; allowed: {allowed}"
    )


def _length_source(asked: dict, option: str, task: str | None) -> tuple[str, bool]:
    """Where an answers' length came from, and whether it is the task's own (which wins over
    ``option``: only another model fits it)."""
    own = [key for key in LENGTH_KEYS if key in asked]
    if own:
        return f"{_where(task)}: {own[0]}", True
    who = f"task {task!r}" if task else "a task"
    return f"{option} (the answers' length where {who} sets none)", False


def check_decoder_room(
    max_new: int,
    cfg: ModelConfig,
    asked: dict,
    option: str = "max_gen_toks",
    task: str | None = None,
) -> None:
    """An encoder-decoder writes the last of ``max_new`` tokens from its start token and the
    ``max_new - 1`` before it: ``max_new`` decoder positions. ``LmlabLM`` decodes the answer
    whole, as transformers' ``generate`` does (the harness lets a seq2seq model run on past
    its length), which a scheme with a table of ``max_seq_len`` positions
    (``TABLED_POSITIONS``) cannot do past it: refused there, naming where the length came
    from. T5's relative bias and ALiBi read any length."""
    if max_new <= cfg.max_seq_len or cfg.positional not in TABLED_POSITIONS:
        return
    source, own = _length_source(asked, option, task)
    allowed = f"a model whose model.max_seq_len is at least {max_new}"
    allowed = allowed if own else f"{option} <= {cfg.max_seq_len}"
    raise ConfigError(
        f"{source}={max_new} is more than the decoder has positions: "
        f"model.positional={cfg.positional.value} holds {cfg.max_seq_len} (model.max_seq_len) "
        "and an answer's last token is written from as many as the answer is long; allowed: "
        f"{allowed} (or model.positional=relative or alibi, which read any length)"
    )
