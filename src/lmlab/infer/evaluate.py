"""lmlab models in EleutherAI's lm-evaluation-harness: ``LmlabLM``, registered as ``lmlab``.

The harness asks three things of a model, as text in and numbers or text out:

- ``loglikelihood(context, continuation)``: the summed log-probability of the continuation's
  tokens and whether greedy decoding gives exactly them (multiple choice, cloze);
- ``loglikelihood_rolling(text)``: the whole text's log-probability, in windows of the
  model's context (perplexity);
- ``generate_until(context, until)``: greedy (or sampled) text up to a stop sequence.

GPT checkpoints are scored as causal LMs (context and continuation in one sequence); T5 as an
encoder-decoder, as the harness does for seq2seq models: the context (a text with the EOS
T5's tokenizer ends it with; an empty context, EOS alone) goes to the encoder and the
decoder, started from T5's start token, scores or writes the continuation.
BERT is refused: an encoder with a masked-LM head gives no probability of a continuation.

A GPT whose training started every document with BOS (a tokenizer that has one, as Llama's)
reads every context after BOS, as the harness's ``HFLM`` with ``add_bos_token`` does: the
continuation's tokens and what they are scored on are the same, only conditioned as in
training. An empty context, and the first window of a rolling text, is conditioned on BOS,
else on EOS (what a document follows in training).

Requests are batched with right padding, which is exact for a causal decoder: no position
attends to the padding after it (batched and unbatched scores agree; tested). Generation uses
the KV cache and ``decode_loop``'s forced tokens, so prompts of different lengths share a
batch without padding. Tokenisation, window making, request sorting and the parsing of
generation arguments are the harness's own (``TemplateLM``, ``Collator``,
``get_rolling_token_windows``, ``normalize_gen_kwargs``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, postprocess_generated_text
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from lmlab.config import MAX_GEN_TOKS, Family
from lmlab.errors import ConfigError
from lmlab.infer.eval_tokens import TokenizedLM, TokenRequest
from lmlab.infer.gen_kwargs import checked_gen_kwargs
from lmlab.infer.generation import decode_loop
from lmlab.infer.harness import check_family
from lmlab.infer.pretrained import DTYPES, Pretrained, load
from lmlab.model.context import varying_shapes


class EvalStopped(Exception):
    """An evaluation ended between two batches because ``LmlabLM.should_stop`` said so."""


# What ``simple_evaluate`` passes every model beside ``model_args`` (and ``batch_size`` and
# ``device``, which LmlabLM reads): taken and left unused, as lmlab batches by ``batch_size``.
HARNESS_ARGS = ("max_batch_size",)


def check_model_args(extra: dict[str, Any]) -> None:
    """``extra``: the keyword arguments ``LmlabLM`` was given past its own (from
    ``model_args="pretrained=...,<key>=<value>"``); any but ``HARNESS_ARGS`` is refused in
    one line naming it and what is allowed. A typo (``dtyp=bf16``) or another model class's
    argument (HFLM's ``max_length``) was dropped in silence, the evaluation run without it."""
    unknown = [f"{key}={value!r}" for key, value in extra.items() if key not in HARNESS_ARGS]
    if unknown:
        own = inspect.signature(LmlabLM.__init__).parameters
        allowed = [name for name, p in own.items() if p.kind == p.POSITIONAL_OR_KEYWORD][1:]
        raise ConfigError(
            f"model_args {', '.join(unknown)}: not an argument of the lmlab model; allowed: "
            f"{', '.join(allowed)}"
        )


@register_model("lmlab")
class LmlabLM(TokenizedLM):
    """An lmlab GPT or T5 model (a checkpoint path, a ``str`` or any ``os.PathLike``, or a
    loaded ``Pretrained``) for lm-eval."""

    def __init__(
        self,
        pretrained: Pretrained | str | os.PathLike,
        batch_size: int | str | None = 16,
        device: str | None = None,
        dtype: str = "fp32",
        max_gen_toks: int = MAX_GEN_TOKS,
        seed: int = 1234,
        progress: bool = False,
        should_stop: Callable[[], bool] | None = None,
        length_option: str = "max_gen_toks",
        **harness_args: Any,
    ) -> None:
        check_model_args(harness_args)
        if not isinstance(pretrained, Pretrained):
            pretrained = load(pretrained, device or "cpu", dtype)
        check_family(pretrained.family, f"ckpt={pretrained.path}")
        size = 16 if batch_size is None else batch_size  # the harness passes None, ints, "8"
        if not str(size).isdigit() or int(size) < 1:
            raise ConfigError(f"batch_size={batch_size!r}: allowed an integer >= 1 (not auto)")
        # the text side: TokenizedLM
        super().__init__(pretrained.tokenizer, pretrained.cfg, pretrained.declared)
        self.pre, self.model = pretrained, pretrained.model
        self.end_ids = pretrained.end_ids  # where an answer ends (read once, not per answer)
        self.batch_size = int(size)
        self.max_gen_toks, self.seed, self.progress = max_gen_toks, seed, progress
        self.length_option = length_option  # the setting max_gen_toks came from, for errors
        # asked before each batch (a training run's stop): EvalStopped ends the evaluation
        self.should_stop = should_stop or (lambda: False)
        self.chat: bool | str = True  # under apply_chat_template: the template asked for

    @property
    def device(self) -> torch.device:
        return self.pre.device

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records in ``results["config"]`` (``dtype``: lmlab's name of the
        weights' dtype, as ``dtype=`` takes it, for the eval record)."""
        dtype = next(self.model.parameters()).dtype
        names = {v: k for k, v in DTYPES.items()}
        return {
            "model_family": Family(self.pre.family).value,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(dtype),
            "dtype": names.get(dtype, str(dtype).removeprefix("torch.")),
            "max_gen_toks": self.max_gen_toks,
            "checkpoint": str(self.pre.path),
            "global_step": self.pre.global_step,
        }

    # ---------------------------------------------------------------- chat

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template lm-eval's ``apply_chat_template`` formats each request with: the one
        the checkpoint declares (``Declared.chat``: a converted instruct model's, kept by the
        runs started from it), which ``apply_chat_template`` below renders; None where not
        asked."""
        if chat_template is False or chat_template is None:
            return None
        text = self.pre.declared.chat(chat_template, f"ckpt={self.pre.path}")
        self.chat = chat_template  # a name among several, or True: the one (or "default")
        return text

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """A chat as text in the declared template, as HFLM renders it
        (``Pretrained.chat_text``), and without the system message where the template
        refuses that role, as HFLM retries."""
        import jinja2

        try:
            return self.pre.chat_text(chat_history, add_generation_prompt, self.chat)
        except jinja2.exceptions.TemplateError:
            kept = [m for m in chat_history if m["role"] != "system"]
            return self.pre.chat_text(kept, add_generation_prompt, self.chat)

    # ---------------------------------------------------------------- scoring

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation token), greedy) per request, longest first in batches.
        An empty continuation has probability 1. A context longer than the model reads keeps
        its end (``HFLM``'s left truncation); a continuation longer is refused before any
        request is scored (``check_continuations``)."""
        self.check_continuations(requests)
        collator = Collator(
            requests, sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1] + r[2]))
        )
        results = []
        bar = tqdm(total=len(requests), desc="scoring", disable=disable_tqdm or not self.progress)
        for chunk in collator.get_batched(n=self.batch_size):
            self._check_stop()
            bar.update(len(chunk))
            scored = self._score([r for r in chunk if r[2]])[::-1]
            for key, _, cont in chunk:
                answer = scored.pop() if cont else (0.0, True)
                results.append(answer)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
        bar.close()
        return collator.get_original(results)

    def _check_stop(self) -> None:
        if self.should_stop():
            raise EvalStopped("the run was asked to stop")

    @torch.no_grad()
    @varying_shapes()  # each batch its own width
    def _score(self, chunk: Sequence[TokenRequest]) -> list[tuple[float, bool]]:
        """One forward for a batch; each row's continuation logits, scored in float64."""
        if not chunk:
            return []
        if self.backend == "causal":
            # The last max_length + 1 tokens (a longer context loses its start, as in the
            # harness; the continuation fits whole): the model reads ..-1 and predicts 1..
            rows = [(ctx + cont)[-(self.max_length + 1) :] for _, ctx, cont in chunk]
            targets = [cont for _, _, cont in chunk]
            ids_BT, _ = self._right_pad([r[:-1] for r in rows], self.eos_id)
            logits_BTV = self.model(ids_BT)
            ends = [len(r) - 1 for r in rows]  # each row's own length: its padding comes after
        else:
            targets = [cont for _, _, cont in chunk]  # fits whole (check_continuations)
            enc = [ctx[-self.max_length :] for _, ctx, _ in chunk]  # a text's ends with EOS
            dec = [[self.pad_id, *t[:-1]] for t in targets]  # shifted behind the start token
            enc_BT, mask_BT = self._right_pad(enc, self.pad_id)
            dec_BS, _ = self._right_pad(dec, self.pad_id)
            logits_BTV = self.model(enc_BT, dec_BS, mask_BT)
            ends = [len(t) for t in targets]
        spans = [
            (logits_TV[end - len(target) : end], target)
            for logits_TV, end, target in zip(logits_BTV, ends, targets, strict=True)
        ]
        return [answer for group in _groups(spans) for answer in _continuation_scores(group)]

    def _right_pad(self, rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids padded on the right with ``value``, and the mask of real tokens."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), value, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids.to(self.device), mask.to(self.device)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Each text scored whole: the harness's disjoint windows of ``max_length`` tokens, the
        first conditioned on ``prefix_token_id`` (BOS or EOS), every token of the text
        predicted once (BOS is the condition, not a token to predict); the windows' sum per
        text."""
        windows: list[TokenRequest] = []
        owners: list[int] = []
        for i, (text,) in enumerate(req.args for req in requests):
            pairs = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(lm_utils.make_disjoint_window, pairs):
                windows.append((None, ctx, cont))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[i] += logp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---------------------------------------------------------------- generation

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (``temperature`` > 0: sampled, seeded) continuations, cut before the first
        stop sequence (EOS is always one); batched per set of generation arguments, every
        request's checked (``_gen_kwargs``) before the first is generated."""
        for gen_kwargs in {repr(req.args[1]): req.args[1] for req in requests}.values():
            self._gen_kwargs(gen_kwargs)
        collator = Collator(
            [req.args for req in requests],
            sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
            group_by="gen_kwargs",
            group_fn=lambda a: a[1],
        )
        out = []
        for chunk in collator.get_batched(n=self.batch_size):
            self._check_stop()
            contexts, all_kwargs = zip(*chunk, strict=True)
            kwargs = self._gen_kwargs(all_kwargs[0])
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.eos)
            texts = self._generate(list(contexts), until, kwargs)
            for context, gen_kwargs, text in zip(contexts, all_kwargs, texts, strict=True):
                out.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return collator.get_original(out)

    def _gen_kwargs(self, gen_kwargs: dict) -> dict:
        """A task's generation arguments as the harness normalizes them (``max_gen_toks``:
        this model's where the task sets no length), refused where lmlab's decoder cannot do
        what they ask or a causal model's context would have no room (``checked_gen_kwargs``)."""
        return checked_gen_kwargs(gen_kwargs, self.max_gen_toks, self.pre.cfg, self.length_option)

    @torch.no_grad()
    def _generate(self, contexts: list[str], until: list[str], kwargs: dict) -> list[str]:
        max_new = int(kwargs["max_gen_toks"])
        temperature = float(kwargs.get("temperature") or 0.0)
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        sampling = (temperature, kwargs.get("top_k"), kwargs.get("top_p"), gen)
        if self.backend == "causal":
            # room for the new tokens (``_gen_kwargs``); a longer context keeps its end
            keep = self.max_length - max_new
            prompts = [self.tok_encode(c)[-keep:] or [self.prefix_token_id] for c in contexts]
            starts = [len(p) for p in prompts]
            common = min(starts)
            ragged = max(starts) > common  # the rest of the longer prompts is forced
            forced_BF = self._right_pad([p[common:] for p in prompts], -1)[0] if ragged else None
            out_BT = decode_loop(
                lambda ids, cache: self.model(ids, cache=cache),
                self.model.new_cache,
                torch.tensor([p[:common] for p in prompts], device=self.device),
                self.max_length,
                max(starts) - common + max_new,
                *sampling,
                eos_id=self.end_ids,
                forced_BF=forced_BF,
                stop=StopAt(self.tok_decode, starts, until),
                n_vocab=self.tok.get_vocab_size(),
            )
        else:
            enc = [self.tok_encode(c)[-self.max_length :] for c in contexts]  # ends with EOS
            enc_BT, mask_BT = self._right_pad(enc, self.pad_id)
            memory_BTD = self.model.encode(enc_BT, mask_BT)
            starts = [1] * len(contexts)  # after the decoder's start token
            # the answer is decoded whole, never cropped, as transformers' generate does:
            # within max_seq_len where positions are a table (``check_decoder_room``), past
            # it (beyond the KV cache, recomputed) for relative bias and ALiBi
            out_BT = decode_loop(
                lambda ids, cache: self.model.decode(ids, memory_BTD, mask_BT, cache=cache),
                self.model.new_cache,
                torch.full((len(contexts), 1), self.pad_id, device=self.device),
                1 + max_new,
                max_new,
                *sampling,
                eos_id=self.end_ids,
                stop=StopAt(self.tok_decode, starts, until),
                n_vocab=self.tok.get_vocab_size(),
            )
        rows = out_BT.tolist()
        return [
            self._text(row[s : s + max_new], until) for row, s in zip(rows, starts, strict=True)
        ]

    def _text(self, ids: list[int], until: list[str]) -> str:
        """A continuation's text as the harness's HFLM returns it: up to its end (EOS, or
        any end a converted model declares: ``Pretrained.end_ids``), without special tokens
        (T5's sentinels: a span-corruption model starts its answer with ``<extra_id_0>``,
        which would fail every exact match), cut before a stop sequence."""
        ends = set(self.end_ids)
        ids = ids[: next((i for i, t in enumerate(ids) if t in ends), len(ids))]
        text = self.tok.decode(ids, skip_special_tokens=True)
        return postprocess_generated_text(text, until, None)


# Values per float64 log-softmax (128 MiB): the rows of a batch are scored together, since a
# call per row costs more than its arithmetic, but a batch of long windows over a large
# vocabulary at once would not fit.
LOGP_ELEMENTS = 1 << 24
Span = tuple[torch.Tensor, list[int]]  # one row's continuation logits (K, V) and its K targets


def _groups(spans: list[Span]) -> list[list[Span]]:
    """Consecutive rows, as many per group as fit in ``LOGP_ELEMENTS`` (at least one)."""
    groups: list[list[Span]] = [[]]
    size = 0
    for span in spans:
        if groups[-1] and size + span[0].numel() > LOGP_ELEMENTS:
            groups.append([])
            size = 0
        groups[-1].append(span)
        size += span[0].numel()
    return groups


def _continuation_scores(group: list[Span]) -> list[tuple[float, bool]]:
    """(sum of log p(target), every target the argmax) per row: one float64 log-softmax over
    the group's rows, per-row sums over a zero-padded (rows, K) table (a fixed order: the same
    numbers on every run and device), one read back to the host."""
    logp_NV = torch.cat([logits for logits, _ in group]).double().log_softmax(-1)
    target_N = torch.tensor([t for _, ts in group for t in ts], device=logp_NV.device)
    sizes = [len(ts) for _, ts in group]
    logp_RK = pad_sequence(logp_NV.gather(-1, target_N[:, None])[:, 0].split(sizes), True)
    miss_RK = pad_sequence((logp_NV.argmax(-1) != target_N).split(sizes), True)
    return list(zip(logp_RK.sum(1).tolist(), (~miss_RK.any(1)).tolist(), strict=True))


class StopAt:
    """``decode_loop``'s ``stop``: the rows whose generated text (from each row's own start)
    holds a stop sequence."""

    def __init__(self, decode: Any, starts: list[int], until: list[str]) -> None:
        self.decode, self.starts, self.until = decode, starts, [s for s in until if s]

    def __call__(self, ids_BT: torch.Tensor) -> torch.Tensor:
        rows = ids_BT.tolist()
        done = [
            any(s in self.decode(row[start:]) for s in self.until)
            for row, start in zip(rows, self.starts, strict=True)
        ]
        return torch.tensor(done, device=ids_BT.device)
