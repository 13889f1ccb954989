"""``data.*``: corpus, tokenizer and batching (DataConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.config.knobs import Choice
from lmlab.errors import ConfigError


class Source(Choice):
    stdlib = "stdlib"  # the Python standard library's own .py sources (no download)
    text = "text"  # a local UTF-8 file or a folder of them
    shakespeare = "shakespeare"  # Tiny Shakespeare (1.1 MB, public domain), shipped with lmlab
    hf = "hf"  # a Hugging Face `datasets` name (online users)


class TokenizerKind(Choice):
    bpe = "bpe"  # byte-level BPE trained on the training split
    char = "char"  # one token per character seen in the training split
    checkpoint = "checkpoint"  # the tokenizer of the init_from checkpoint (a converted model's)


# The fields one source reads (with their defaults): set for another source, they would be
# ignored, and the run would train on another corpus than the one named.
SOURCE_FIELDS: dict[str, tuple[tuple[Source, ...], object]] = {
    "path": ((Source.text,), None),
    "val_path": ((Source.text,), None),
    "name": ((Source.hf,), None),
    "subset": ((Source.hf,), None),
    "split": ((Source.hf,), "train"),
    "val_split": ((Source.hf,), None),
    "text_column": ((Source.hf,), "text"),
}


@dataclass
class DataConfig:
    """Corpus, tokenizer and batching. ``seq_len=None`` follows ``model.max_seq_len``.

    ``batch_size`` is the micro-batch of one device. ``global_batch_size`` (sequences) or
    ``global_batch_tokens`` fixes the batch of one optimizer step across devices, nodes and
    accumulation; gradient accumulation is then derived (``lmlab.train.distributed``), so a run on
    1 device and on 8 trains on the same batches. Null: micro-batch x devices x
    ``trainer.accumulate_grad_batches``.
    ``val_batch_size`` (null: ``batch_size``) with ``trainer.limit_val_batches`` fixes the
    validation rows: set it when comparing runs whose micro-batches differ.

    ``max_bytes`` keeps only the first documents up to that many bytes (deterministic order;
    the one that crosses it is cut at its last line end under the limit), which
    ``+debug=smoke`` uses for a fast slice (of each split, where validation has its own).

    ``stride`` (tokens, null: one row) is where training windows start in the packed token
    stream: null cuts it into rows that do not overlap, each token seen once per epoch; 1
    starts a window at every token, as nanoGPT's random crops do, which helps small corpora
    seen for many epochs (Tiny Shakespeare). Validation always uses the non-overlapping rows.
    """

    source: Source = Source.stdlib
    path: str | None = None
    val_path: str | None = None
    """data=text: the validation file or folder (null: ``val_fraction`` of ``path`` held out)."""
    name: str | None = None
    subset: str | None = None
    split: str = "train"
    val_split: str | None = None
    """data=hf: the dataset's validation split, ``validation`` or ``test`` (null:
    ``val_fraction`` of ``split`` held out), as Hugging Face's ``run_clm`` and litgpt read it."""
    text_column: str = "text"
    tokenizer: TokenizerKind = TokenizerKind.bpe
    vocab_size: int = 4096
    seq_len: int | None = None
    batch_size: int = 16
    global_batch_size: int | None = None
    global_batch_tokens: int | None = None
    val_batch_size: int | None = None
    stride: int | None = None
    val_fraction: float = 0.05
    """Without ``val_split`` or ``val_path``: the share of the text held out for validation,
    whole documents by a stable hash of their names or, for fewer than 20 documents, the tail
    of each, as nanoGPT does."""
    max_bytes: int | None = None
    cache_dir: str = "${oc.env:LMLAB_CACHE,${oc.env:HOME}/.cache/lmlab}"
    num_workers: int | None = None  # null: 0 on a CPU; on a GPU up to 4 per process (0 for GPT)
    # fine-tuning: each batch padded to its longest example, rounded up to a multiple of this
    # (never past the longest a row can be); null: 64 on a GPU, 1 (no rounding) on a CPU
    pad_to_multiple_of: int | None = None
    # Not a key of the config (no override sets it, no .hydra/ file holds it): the folders this
    # run writes in, its own and its sweep's, filled in from the run's paths by
    # ``lmlab.train.preflight.check_run``. A data=text folder that holds one leaves it out of
    # the corpus before anything is written there, and one that is data.path is refused.
    run_folders: tuple[str, ...] = field(default=(), metadata={"omegaconf_ignore": True})

    def unused_fields(self, padded: bool = False) -> dict[str, str]:
        """{field: the setting it has no effect under} (``ModelConfig.unused_fields``'s
        counterpart): ``vocab_size`` sizes a trained BPE only; ``pad_to_multiple_of`` rounds
        padded batches only (``padded``: fine-tuning's), and pre-training packs its rows."""
        unused = {}
        if self.tokenizer != TokenizerKind.bpe:
            unused["vocab_size"] = f"data.tokenizer={self.tokenizer.value}"
        own = "data.val_split" if self.val_split is not None else "data.val_path"
        if self.val_split is not None or self.val_path is not None:
            unused["val_fraction"] = f"{own} (validation is a split of its own)"
        if not padded:
            unused["pad_to_multiple_of"] = "task=lm (packed rows, never padded)"
        return unused

    def __post_init__(self) -> None:
        if not str(self.cache_dir).strip():  # Path("") is the working directory
            raise ConfigError(
                "data.cache_dir is empty (an empty LMLAB_CACHE gives it): the cache would go "
                "into the working directory; allowed: a folder (unset LMLAB_CACHE for "
                "~/.cache/lmlab)"
            )
        for name, (sources, default) in SOURCE_FIELDS.items():
            value = getattr(self, name)
            if value != default and self.source not in sources:
                users = " or ".join(f"data={s.value}" for s in sources)
                raise ConfigError(
                    f"data.{name}={value!r} is read only by {users}; this run's data is "
                    f"{self.source.value}, which would ignore it: add {users}, or leave "
                    f"data.{name} out"
                )
        if self.source == Source.text and not self.path:
            raise ConfigError("data.source=text needs data.path=<file or folder>")
        if self.source == Source.hf and not self.name:
            raise ConfigError("data.source=hf needs data.name=<datasets hub name>")
        if self.val_split is not None and self.val_split == self.split:
            raise ConfigError(
                f"data.val_split={self.val_split!r} is data.split, the training split: the run "
                "would validate on what it trains on; allowed: another split of the dataset, or "
                "null (data.val_fraction of it held out)"
            )
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} must be >= 1")
        if self.vocab_size < 2:
            raise ConfigError(f"data.vocab_size={self.vocab_size} must be >= 2")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0 (or null: auto)")
        for name in (
            "seq_len",
            "global_batch_size",
            "global_batch_tokens",
            "val_batch_size",
            "stride",
            "max_bytes",
            "pad_to_multiple_of",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name}={value} must be >= 1 (or null)")
