"""Split, tokenise and pack a corpus into fixed-length rows with ``datasets``, cached on disk.

Cache layout under ``data.cache_dir``: ``tok-<key>/tokenizer.json`` (keyed by corpus, split,
tokenizer settings and the special-token list) and ``blocks-<key>/{train,val}``
(``datasets.save_to_disk``, keyed also by the row length) with ``meta.json``. Each entry is
built in a temporary folder and renamed into place, so an interrupted build or two processes
building at once never leave a broken cache. Rows that the installed ``datasets`` cannot
read (another version wrote them) are discarded and built again (``discard``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer

from lmlab.config import DataConfig, TokenizerKind
from lmlab.data.sources import Documents, fingerprint, load_documents
from lmlab.data.tokenizer import SPECIAL_TOKENS, Specials, train_tokenizer
from lmlab.errors import ConfigError

log = logging.getLogger(__name__)
CACHE_VERSION = 1
MIN_DOCS_FOR_DOC_SPLIT = 20


def held_out(docs: Documents, val_fraction: float) -> set[int]:
    """Indices of the documents validation holds out whole: taken in the order of a stable
    hash of their names until they hold ``val_fraction`` of the bytes. Empty for fewer than
    ``MIN_DOCS_FOR_DOC_SPLIT`` documents (those are split inside each document instead).
    ``scripts/make_eval_tasks.py`` draws the shipped eval tasks from these documents."""
    if len(docs) < MIN_DOCS_FOR_DOC_SPLIT:
        return set()
    target = val_fraction * sum(len(t) for _, t in docs)
    val_ids: set[int] = set()
    held = 0
    for i in sorted(range(len(docs)), key=lambda i: zlib.crc32(docs[i][0].encode())):
        if held >= target:
            break
        val_ids.add(i)
        held += len(docs[i][1])
    return val_ids


def split_documents(docs: Documents, val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split. Many documents: whole documents, taken in the order of a stable
    hash of their names until they hold ``val_fraction`` of the bytes (``held_out``). Few
    documents (a single book): the last ``val_fraction`` of each, as nanoGPT does."""
    val_ids = held_out(docs, val_fraction)
    if val_ids and len(val_ids) < len(docs):
        train = [t for i, (_, t) in enumerate(docs) if i not in val_ids]
        return train, [t for i, (_, t) in enumerate(docs) if i in val_ids]
    cuts = [int(len(t) * (1 - val_fraction)) for _, t in docs]
    pairs = list(zip(docs, cuts, strict=True))
    return [t[:c] for (_, t), c in pairs], [t[c:] for (_, t), c in pairs]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[
        :16
    ]


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError:  # another process published the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def pack(texts: list[str], tok: Tokenizer, row_len: int) -> tuple[datasets.Dataset, int, int]:
    """Tokenise (batched ``map``), end every document with EOS (and start it with BOS when the
    tokenizer has one, as Llama's does), concatenate, and cut rows of ``row_len`` tokens (the
    tail of each 1000-document batch is dropped). Returns the rows, the token count and the
    UTF-8 byte count (for bits per byte)."""
    specials = Specials.of(tok)
    eos = [specials.id(tok, "eos", "packing documents")]
    bos = [specials.id(tok, "bos", "")] if specials.bos else []

    def tokenize(batch: dict) -> dict:
        encoded = tok.encode_batch(batch["text"], add_special_tokens=False)
        ids = [bos + e.ids + eos for e in encoded]
        return {"ids": ids, "n_bytes": [len(t.encode()) for t in batch["text"]]}

    def chunk(batch: dict) -> dict:
        flat = np.fromiter((i for ids in batch["ids"] for i in ids), dtype=np.int32)
        n = len(flat) // row_len
        return {"input_ids": flat[: n * row_len].reshape(n, row_len)}

    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(tokenize, batched=True, remove_columns=["text"])
    n_tokens, n_bytes = sum(len(x) for x in ds["ids"]), sum(ds["n_bytes"])
    ds = ds.map(chunk, batched=True, batch_size=1000, remove_columns=["ids", "n_bytes"])
    return ds, n_tokens, n_bytes


def tokenizer_dir(cache: Path, corpus: list, cfg: DataConfig, tokenizer: str | None) -> Path:
    """Where the tokenizer of ``corpus`` (a JSON-able identity of the training text) is
    cached: keyed by the corpus and the tokenizer settings, or by the given tokenizer's JSON
    (``data.tokenizer=checkpoint``)."""
    if cfg.tokenizer == TokenizerKind.checkpoint:
        if tokenizer is None:
            raise ConfigError("data.tokenizer=checkpoint needs init_from=<checkpoint>")
        return cache / f"tok-{_key(corpus, cfg.tokenizer.value, tokenizer)}"
    return cache / f"tok-{_key(corpus, cfg.tokenizer.value, cfg.vocab_size, SPECIAL_TOKENS)}"


def cached_tokenizer(
    tok_dir: Path, cfg: DataConfig, train_texts: list[str], tokenizer: str | None
) -> Tokenizer:
    """The tokenizer in ``tok_dir``, first trained on ``train_texts`` (or taken from the given
    JSON) and published there if it is not yet."""
    if not (tok_dir / "tokenizer.json").exists():
        if tokenizer is not None:
            tok = Tokenizer.from_str(tokenizer)
        else:
            log.info("training %s tokenizer on %d documents", cfg.tokenizer.value, len(train_texts))
            tok = train_tokenizer(train_texts, cfg.tokenizer, cfg.vocab_size)
        tmp = Path(tempfile.mkdtemp(dir=tok_dir.parent, prefix=".tmp-"))
        tok.save(str(tmp / "tokenizer.json"))
        _publish(tmp, tok_dir)
    return Tokenizer.from_file(str(tok_dir / "tokenizer.json"))


def discard(entry: Path) -> None:
    """Remove a cache entry that cannot be used (rows another ``datasets`` wrote): renamed
    aside first, so that a process that finds it gone builds it again, and that of two
    processes discarding it at once one does and the other finds nothing to do."""
    aside = entry.with_name(f".stale-{entry.name}-{os.getpid()}")
    try:
        os.replace(entry, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def prepare(cfg: DataConfig, row_len: int, tokenizer: str | None = None) -> Path:
    """Build (or find) the tokenizer and packed rows for this corpus; return the blocks dir.
    ``tokenizer`` (a tokenizer's JSON) is the one ``data.tokenizer=checkpoint`` uses."""
    datasets.disable_progress_bars()
    cache = Path(cfg.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    tok_dir = tokenizer_dir(cache, [fingerprint(cfg), cfg.val_fraction], cfg, tokenizer)
    blocks_dir = cache / f"blocks-{_key(tok_dir.name, row_len)}"
    if (blocks_dir / "meta.json").exists():
        return blocks_dir
    docs = load_documents(cfg)
    train_texts, val_texts = split_documents(docs, cfg.val_fraction)
    tok = cached_tokenizer(tok_dir, cfg, train_texts, tokenizer)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
    meta = {
        "tokenizer": str(tok_dir / "tokenizer.json"),
        "row_len": row_len,
        "datasets": datasets.__version__,  # named if another version cannot read the rows
    }
    try:
        for split, texts in (("train", train_texts), ("val", val_texts)):
            ds, n_tokens, n_bytes = pack(texts, tok, row_len)
            if len(ds) == 0:
                raise ConfigError(
                    f"the {split} split of data source {cfg.source.value} has {n_tokens} "
                    f"tokens, fewer than one row of {row_len}: use a larger corpus (data."
                    f"max_bytes={cfg.max_bytes}, data.val_fraction={cfg.val_fraction}) or a "
                    "shorter sequence"
                )
            ds.save_to_disk(str(tmp / split))
            meta[split] = {"rows": len(ds), "tokens": n_tokens, "bytes": n_bytes}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    except BaseException:  # refused or stopped: no half-built rows left in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, blocks_dir)
    return blocks_dir
