"""Hugging Face interop: published models in (``from_hf``) and lmlab checkpoints out
(``to_hf``), one ``Architecture`` per transformers class."""

from __future__ import annotations

from lmlab.config import Family
from lmlab.infer.hf.bert import BERT
from lmlab.infer.hf.gpt2 import GPT2
from lmlab.infer.hf.llama import LLAMA, MISTRAL
from lmlab.infer.hf.mapping import Architecture
from lmlab.infer.hf.mixtral import MIXTRAL
from lmlab.infer.hf.t5 import T5

# config.json's model_type -> its architecture; per family, in the order to_hf tries them
ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a for a in (GPT2, LLAMA, MISTRAL, MIXTRAL, BERT, T5)
}


def architectures_of(family: Family) -> list[Architecture]:
    return [a for a in ARCHITECTURES.values() if a.family == family]


__all__ = ["ARCHITECTURES", "Architecture", "architectures_of"]
