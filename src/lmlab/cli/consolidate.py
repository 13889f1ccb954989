"""Consolidate a sharded (FSDP) checkpoint folder into one file that loads on one CPU.

    python src/consolidate.py ckpt=<run>/checkpoints/last.ckpt [out=<file>]

The file holds the full weights, ``model_config``, the tokenizer and the training step, with
the model's own keys (no wrapper prefixes); optimizer states are left out (resume a sharded
run from its folder). ``src/generate.py``, ``src/probe.py`` and ``lmlab.infer.pretrained.load`` read
it, and also read the folder itself, consolidating in memory. Default ``out``: next to the
folder, ``<name>-consolidated.ckpt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from lmlab.cli.args import parse
from lmlab.config.outpath import check_file_out
from lmlab.errors import ConfigError


@dataclass
class ConsolidateConfig:
    ckpt: str = MISSING
    out: str | None = None


def main(argv: list[str]) -> int | None:
    cfg = parse(ConsolidateConfig, argv)
    from lmlab.infer.checkpoint import (
        consolidate,
        is_sharded,
        no_checkpoint,
        read_checkpoint,
        save_new,
    )

    src = Path(cfg.ckpt)
    if not (src.is_file() or is_sharded(src)):
        raise no_checkpoint("ckpt", src)
    if not is_sharded(src):
        read_checkpoint(src)  # a truncated or damaged file is said to be (memory-mapped)
        raise ConfigError(
            f"ckpt={src}: not a sharded checkpoint folder (expected a folder with meta.pt, as "
            "trainer=fsdp writes; a single-file checkpoint needs no consolidation)"
        )
    out = Path(cfg.out) if cfg.out else src.with_name(f"{src.stem}-consolidated.ckpt")
    if out.resolve() == src.resolve():
        raise ConfigError(f"out={out} is the sharded checkpoint itself: choose another file")
    check_file_out(cfg.out or out)  # a new file: nothing is overwritten
    ckpt = consolidate(src)
    save_new(ckpt, out)  # two consolidations into one out: the second is refused
    print(f"{out}: {len(ckpt['state_dict'])} tensors, step {ckpt['global_step']}")
