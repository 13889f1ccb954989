"""Look inside a model: attention weights per layer and head, drawn as a grid of heat maps.

The maps come from the debug attention path (``Attention.keep_weights``): the same attention
computed explicitly so its weights can be kept; training stays on SDPA. The callback that draws
them during training is ``lmlab.train.callbacks.AttentionMaps``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from lmlab.data.tokenizer import Specials, encode
from lmlab.files import save_figure
from lmlab.model.attention import Attention

log = logging.getLogger(__name__)

# Written into every plot ``plot_attention`` saves (its Creator), so ``lmlab probe`` can tell a
# plot it may redraw from someone's file it must not replace. The formats whose metadata holds
# it as plain bytes; a file of another format is never replaced.
CREATOR = "lmlab probe: attention maps"
MARKED_FORMATS = ("eps", "pdf", "png", "ps", "svg")


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, Attention]]:
    """Within the block, every self-attention layer keeps its weights of the last forward:
    yields {layer name: Attention}, read ``.weights`` (B, H, T, S) after a forward."""
    layers = {
        name.removesuffix(".attn"): m
        for name, m in model.named_modules()
        if isinstance(m, Attention) and name.endswith(".attn")  # not T5's cross-attention
    }
    for m in layers.values():
        m.keep_weights = True
    try:
        yield layers
    finally:
        for m in layers.values():
            m.keep_weights, m.weights = False, None


def probe_ids(model: nn.Module, tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids the model sees for ``text``, framed as in training and generation: BERT's
    input by [CLS] .. [SEP], a decoder's after the tokenizer's BOS where it adds one (Llama's
    ``<s>``, which often draws much of the attention), T5's encoder input ending with EOS. A
    text longer than the model's context keeps its first tokens (inside the frame), with a
    warning."""
    ids = encode(tokenizer, text)
    specials = Specials.of(tokenizer)
    family = model.cfg.family
    before, after = specials.frame(tokenizer, family, "the probe's input")
    room = model.cfg.max_seq_len - len(before) - len(after)
    if len(ids) > room:
        names = [getattr(specials, r) for side in specials.frame_roles(family) for r in side]
        log.warning(
            "the text has %d tokens, more than the model's context of %d holds%s: only its "
            "first %d are drawn",
            len(ids),
            model.cfg.max_seq_len,
            f" with {' and '.join(names)}" if names else "",
            room,
        )
    return [*before, *ids[:room], *after]


def drawn_by_probe(path: Path) -> bool:
    """Whether the file at ``path`` is a plot ``plot_attention`` saved (its ``CREATOR``)."""
    if path.suffix.lstrip(".").lower() not in MARKED_FORMATS:
        return False
    try:
        return CREATOR.encode() in path.read_bytes()
    except OSError:  # unreadable: not known to be a plot, so not replaced
        return False


@torch.no_grad()
def attention_maps(model: nn.Module, ids: list[int]) -> dict[str, torch.Tensor]:
    """{layer: weights (H, T, T)} of one eval-mode forward over ``ids`` (T5: its encoder)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids_1T = torch.tensor([ids], device=device)
    with record_attention(model) as layers, torch.random.fork_rng(devices=[]):
        model.encode(ids_1T) if hasattr(model, "encode") else model(ids_1T)
        maps = {
            name: m.weights[0].float().cpu() for name, m in layers.items() if m.weights is not None
        }
    model.train(was_training)
    return maps


def plot_attention(
    maps: dict[str, torch.Tensor], tokens: list[str], path: str | Path, title: str = ""
) -> Path:
    """One heat map per (layer, head): rows are layers, columns heads, query tokens down the
    side and key tokens along the bottom (labelled when there are at most 40)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    n_heads = maps[names[0]].shape[0]
    T = len(tokens)
    cell = max(1.6, min(4.0, 0.12 * T))
    fig, axes = plt.subplots(
        len(names), n_heads, figsize=(cell * n_heads, cell * len(names)), squeeze=False
    )
    labels = T <= 40
    for r, name in enumerate(names):
        for h in range(n_heads):
            ax = axes[r][h]
            ax.imshow(maps[name][h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(T) if labels and r == len(names) - 1 else [])
            ax.set_yticks(range(T) if labels and h == 0 else [])
            if labels and r == len(names) - 1:
                ax.set_xticklabels(tokens, rotation=90, fontsize=6)
            if labels and h == 0:
                ax.set_yticklabels(tokens, fontsize=6)
            if r == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)  # its folder made by save_figure
    marked = path.suffix.lstrip(".").lower() in MARKED_FORMATS
    save_figure(fig, path, dpi=100, metadata={"Creator": CREATOR} if marked else None)
    plt.close(fig)
    return path


def token_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Readable labels: each token decoded on its own, whitespace made visible."""
    return [
        tokenizer.decode([i], skip_special_tokens=False).replace("\n", "\\n").replace(" ", "·")
        or tokenizer.id_to_token(i)
        for i in ids
    ]
