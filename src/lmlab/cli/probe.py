"""Inspect a trained checkpoint: its parameter table (per layer and total), FLOPs per token,
and a PNG grid of its attention weights (one heat map per layer and head) over a text.

    python src/probe.py ckpt=<run dir>/checkpoints/last.ckpt text="def add(a, b): return a + b"

Writes ``out`` (default: ``attention.png`` in the checkpoint's run directory, or beside a
checkpoint outside one; any image format matplotlib writes, by its suffix; ``.pgf`` needs
LaTeX, ``xelatex``, on the PATH). An existing file there is replaced only when probe drew it (a
PNG, PDF, SVG or PostScript plot whose metadata names probe): any other file, an earlier
``.jpg`` of probe's too, is refused before the checkpoint is read. For T5 the maps are the
encoder's; for BERT the text is framed by [CLS] .. [SEP] as in training. A text longer than
the model's context is cut to its first tokens, with a warning (BERT's [SEP] stays).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from lmlab.cli.args import parse
from lmlab.config.outpath import check_file_out
from lmlab.errors import ConfigError


@dataclass
class ProbeConfig:
    ckpt: str = MISSING
    text: str = "def add(a, b):\n    return a + b\n"
    out: str | None = None  # the image; default <run dir>/attention.png
    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | bf16 | fp16 | auto (as stored)
    tokenizer: str | None = None  # a tokenizer.json, for checkpoints that carry none

    def __post_init__(self) -> None:
        if not self.text:
            raise ConfigError("text='' is empty: give the text whose attention maps to draw")


def main(argv: list[str]) -> int | None:
    cfg = parse(ProbeConfig, argv)
    from lmlab.infer.checkpoint import run_dir_of
    from lmlab.infer.pretrained import load

    # the default too: a file there that probe did not draw stays
    out = check_image_out(cfg.out or run_dir_of(Path(cfg.ckpt)) / "attention.png")
    # the checkpoint's checks first: the model code's imports (torch._dynamo) take seconds
    pre = load(cfg.ckpt, cfg.device, cfg.dtype, cfg.tokenizer)
    from rich.console import Console
    from rich.table import Table

    from lmlab.data.collators import decoder_tokens
    from lmlab.infer.probe import attention_maps, plot_attention, probe_ids, token_labels
    from lmlab.model import flops_per_token, param_breakdown
    from lmlab.model.params import param_rows

    model, console = pre.model, Console(highlight=False)
    kinds = ["embeddings", "attention", "feed_forward", "norms", "head"]
    table = Table(title=f"parameters of {pre.path}")
    table.add_column("part")
    for kind in [*kinds, "total"]:
        table.add_column(kind, justify="right")
    for name, counts in param_rows(model):
        table.add_row(name, *(f"{counts[k]:,}" for k in kinds), f"{sum(counts.values()):,}")
    totals = param_breakdown(model)
    table.add_row(
        "total", *(f"{totals[k]:,}" for k in kinds), f"{totals['total']:,}", end_section=True
    )
    console.print(table)
    seq_len = pre.cfg.max_seq_len
    fpt = flops_per_token(model, seq_len, decoder_tokens(pre.family, seq_len))
    active = f"; active per token: {totals['active']:,}" * (totals["active"] < totals["total"])
    console.print(
        f"non-embedding parameters: {totals['non_embedding']:,}{active}; training FLOPs per "
        f"token at context {seq_len}: {fpt:,.0f} (forward: a third of that)"
    )
    ids = probe_ids(model, pre.tokenizer, cfg.text)
    plot_attention(
        attention_maps(model, ids),
        token_labels(pre.tokenizer, ids),
        out,
        f"{pre.family.value} attention: {pre.path.name}",
    )
    console.print(f"attention maps ({len(ids)} token{'s' * (len(ids) != 1)}): {out}")


def check_image_out(out: str | Path) -> Path:
    """``out`` (as typed: a name ending with a slash is a folder's) is an image file
    matplotlib writes (by its suffix), in a folder, and new or a plot probe drew (which it
    redraws): nothing else is overwritten."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = check_file_out(out, new=False)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise ConfigError(
            f"out={out}: {out.suffix or 'no suffix'} is not an image format; allowed: "
            + ", ".join(f".{f}" for f in sorted(formats))
        )
    if out.suffix.lower() == ".pgf":  # matplotlib runs LaTeX to measure the labels
        import matplotlib

        tex = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(tex) is None:
            raise ConfigError(
                f"out={out}: matplotlib writes .pgf with LaTeX, and {tex} is not on the PATH: "
                "install it, or choose another format (.pdf and .svg are vector graphics too)"
            )
    if not (out.exists() or out.is_symlink()):
        return out
    from lmlab.infer.probe import MARKED_FORMATS, drawn_by_probe  # imports the model code

    if out.suffix.lstrip(".").lower() not in MARKED_FORMATS:
        raise ConfigError(
            f"out={out} exists, and probe replaces only the plots it marked as its own, in "
            f"{', '.join(f'.{f}' for f in MARKED_FORMATS)} (their metadata names probe; a "
            f"{out.suffix} file holds no mark): choose a new file with out= (nothing is "
            "overwritten)"
        )
    if not drawn_by_probe(out):
        raise ConfigError(
            f"out={out} exists and is not a plot probe drew: choose a new file with out= "
            "(nothing is overwritten)"
        )
    return out
