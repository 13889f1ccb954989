"""Convert between Hugging Face models and lmlab checkpoints.

    python src/convert.py from_hf=<HF model folder or hub name> out=<file.ckpt>
    python src/convert.py to_hf=<checkpoint file or sharded folder> out=<folder> [dtype=auto]

``from_hf`` reads a ``save_pretrained`` folder (config.json, safetensors or pytorch_model.bin,
the tokenizer files when present) of GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM,
MixtralForCausalLM, BertForMaskedLM or T5ForConditionalGeneration and writes a checkpoint
that ``generate``, ``probe``, ``lmlab.infer.pretrained.load`` and ``train init_from=`` read.
``to_hf`` writes a
folder that transformers' ``AutoModelFor*`` and ``AutoTokenizer`` load, when the checkpoint's
knobs have a transformers equivalent (the refusal names each knob that has none). ``dtype``:
the weights' type in the folder (auto: as in the checkpoint; fp32, bf16, fp16).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from lmlab.cli.args import parse
from lmlab.errors import ConfigError


@dataclass
class ConvertConfig:
    out: str = MISSING
    from_hf: str | None = None
    to_hf: str | None = None
    dtype: str = "auto"
    tokenizer: str | None = None  # to_hf: a tokenizer.json, for checkpoints that carry none

    def __post_init__(self) -> None:
        if (self.from_hf is None) == (self.to_hf is None):
            raise ConfigError(
                "give exactly one of from_hf=<Hugging Face folder or hub name> and "
                "to_hf=<lmlab checkpoint>"
            )
        if self.from_hf is not None and self.dtype != "auto":
            raise ConfigError(f"dtype={self.dtype} applies to to_hf; from_hf keeps the dtype")
        if self.from_hf is not None and self.tokenizer is not None:
            raise ConfigError(
                "tokenizer= applies to to_hf; from_hf takes the folder's own tokenizer files"
            )


def main(argv: list[str]) -> int | None:
    cfg = parse(ConvertConfig, argv)
    from lmlab.infer.hf.convert import from_hf, to_hf

    if cfg.from_hf is not None:
        out = from_hf(cfg.from_hf, cfg.out)
        print(f"{out}: lmlab checkpoint of {cfg.from_hf}")
    else:
        out = to_hf(cfg.to_hf, cfg.out, cfg.dtype, cfg.tokenizer)
        print(f"{out}: Hugging Face model folder of {cfg.to_hf}")
    return 0
