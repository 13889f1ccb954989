"""What lm-evaluation-harness asks of an lmlab model's tokenizer alone: ``TokenizedLM``, the
text side of ``LmlabLM`` (``lmlab.infer.evaluate``), and ``ContinuationCheck``, which turns a
task's requests into tokens as ``LmlabLM`` does and checks them without a model.

A request's tokens are the harness's own split (``TemplateLM.loglikelihood``: trailing spaces
of the context moved to the continuation, the pair encoded whole for a causal model, apart for
a seq2seq one; an empty context read as ``prefix_token_id``), so the check before training and
the evaluation itself see the same continuation lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import TemplateLM
from tokenizers import Tokenizer

from lmlab.config import ModelConfig
from lmlab.data.tokenizer import encode
from lmlab.errors import ConfigError
from lmlab.infer.declared import NOTHING, Declared
from lmlab.infer.harness import BACKENDS
from lmlab.infer.pretrained import bos_token_id

# (request key or None, context tokens, continuation tokens): TemplateLM's request form
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]


class TokenizedLM(TemplateLM):
    """An lmlab model of ``cfg`` as the harness sees its text: the tokens of a context and a
    continuation, the prefix of an empty context, and the rule that a continuation fits the
    model whole (``check_continuations``)."""

    def __init__(
        self, tokenizer: Tokenizer, cfg: ModelConfig, declared: Declared = NOTHING
    ) -> None:
        super().__init__()
        self.tok = tokenizer
        self.backend = BACKENDS[cfg.family]
        self.max_length = cfg.max_seq_len
        # the special tokens by role: lmlab's names, or a converted tokenizer's (</s>, [PAD]);
        # EOS the one a converted model declares (``Declared.specials``: an instruct model's
        # <|eot_id|>), as HFLM takes the tokenizer's ``eos_token``
        specials = declared.specials(tokenizer)
        self.eos = specials.eos
        self.eos_id = specials.id(tokenizer, "eos", "evaluation")
        self.bos_id = bos_token_id(tokenizer, cfg.family)  # None: lmlab's, GPT-2's, T5
        self.prefix_id = declared.prefix_id(tokenizer, self.bos_id, self.eos_id)
        self.pad_id = specials.id(tokenizer, "pad", "evaluation") if specials.pad else self.eos_id
        # (context, continuation) -> the task that asked for it (``loglikelihood``)
        self.task_of: dict[tuple[str, str], str] = {}

    @property
    def eot_token_id(self) -> int:
        """EOS ends the documents in training, and generation."""
        return self.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context, and a rolling text's first window, is conditioned on: BOS
        (``HFLM``'s rule: a converted model's declared ``bos_token``; else the BOS training
        starts documents with), else EOS, which the document before ends with
        (``Declared.prefix_id``)."""
        return self.prefix_id

    @property
    def tokenizer_name(self) -> str:
        return f"lmlab-{self.tok.get_vocab_size()}"

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **_: Any
    ) -> list[int]:
        """``string``'s ids after the model's BOS, if it has one (``HFLM`` with
        ``add_bos_token``; a string that starts with BOS gets no second one); for T5, before
        EOS, which T5's tokenizer ends a text with (``HFLM``'s seq2seq contexts). The
        harness's contexts without text (an empty one: the prefix token; a rolling window's)
        reach the encoder as they are, as in ``HFLM``. ``add_special_tokens=False`` (the
        harness's continuations) leaves BOS and EOS out."""
        ids = encode(self.tok, string)
        if add_special_tokens is False:
            return ids
        if self.backend == "seq2seq":
            return [*ids, self.eos_id]
        if self.bos_id is None or ids[:1] == [self.bos_id]:
            return ids
        return [self.bos_id, *ids]

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
        """The harness's ``loglikelihood``, remembering which task asked each pair (an
        ``Instance``'s ``task_name``), for ``check_continuations`` to name it."""
        self.task_of = {
            tuple(req.args): req.task_name for req in requests if req.task_name is not None
        }
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def check_continuations(self, requests: list[TokenRequest]) -> None:
        """Every continuation fits the model's ``max_length`` tokens (``HFLM`` asserts it):
        a longer one has no score of all its tokens, and one scored in part would be compared
        with answers scored whole. A rolling text's windows always fit. The refusal names the
        task where the harness gave it."""
        for key, _, cont in requests:
            if len(cont) > self.max_length:
                task = self.task_of.get(key) if key else None
                named = f"task {task!r}: " if task else ""
                shown = f" ({key[1][:40]!r}...)" if key else ""
                raise ConfigError(
                    f"{named}a loglikelihood request's continuation{shown} is {len(cont)} "
                    f"tokens, more than the model reads (model.max_seq_len={self.max_length}): "
                    "no score of all its tokens exists, and lm-eval's HFLM refuses it too; "
                    f"allowed: continuations of at most {self.max_length} tokens (a task with "
                    "shorter answers, or a model with a longer max_seq_len)"
                )


class ContinuationCheck(TokenizedLM):
    """No model: ``loglikelihood(instances)`` tokenises a task's requests as ``LmlabLM`` does
    and refuses, naming the task, a continuation the model could not score whole
    (``check_continuations``); it scores nothing."""

    def _loglikelihood_tokens(self, requests: list[TokenRequest], **_: Any) -> list:
        self.check_continuations(requests)
        return [(0.0, False)] * len(requests)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
        raise NotImplementedError("a rolling text's windows always fit: nothing to check")

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
        raise NotImplementedError("generation is checked by harness.check_generation")
