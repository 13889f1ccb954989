"""Split, tokenise and pack a corpus into fixed-length rows with ``datasets``, cached on disk.

Cache layout under ``data.cache_dir``: ``tok-<key>/tokenizer.json`` (keyed by corpus, split,
tokenizer settings and the special-token list) and ``blocks-<key>/{train,val}``
(``datasets.save_to_disk``, keyed also by the row length) with ``meta.json`` and a copy of
the tokenizer, so that an entry is whole in itself: the cache can be moved or copied, and
``tok-*`` is read only to build rows. Each entry is built in a temporary folder and renamed
into place, so an interrupted build or two processes building at once never leave a broken
cache. An entry that cannot be used (a damaged ``meta.json`` or ``tokenizer.json``, rows that
another ``datasets`` wrote) is discarded with a warning and built again (``discard``). A
cache folder lmlab cannot write is refused (``writing``) unless it holds the rows already.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer

from lmlab.config import DataConfig, TokenizerKind
from lmlab.config.locks import hold_folder
from lmlab.data.abandoned import STALE, building_prefix, remove_abandoned
from lmlab.data.sources import Documents, row_names
from lmlab.data.splits import (
    name_bytes,
    read_splits,
    split_identity,
    split_texts,
    validation_field,
)
from lmlab.data.tokenizer import (
    SPECIAL_TOKENS,
    Specials,
    encode_ordinary,
    save_tokenizer,
    train_tokenizer,
    unknown_pieces,
    unknown_record,
)
from lmlab.errors import ConfigError, disk_full

log = logging.getLogger(__name__)
# In every entry's key. 2: ``pack`` reads a corpus as ordinary text (``encode_ordinary``):
# rows of version 1 held a control token where the text spelled one (the standard library's
# "<sep>"), so they are not reused; a tokenizer entry is keyed too, and trained again once.
CACHE_VERSION = 2
# The version of data preparation (split, tokenizer training, packing), recorded in each run's
# plan.json and checkpoints (``data_preparation``): raise it, with a line below saying what
# changed, whenever preparation gives other rows or another tokenizer for the same corpus and
# settings (a cache key that changes alone, with the same rows, does not raise it). A resume
# by an lmlab of another version is refused before the data is prepared: the data position
# (step x global batch) would point at other rows. Runs that record none started before it
# was recorded: theirs is found once the data is prepared (``plan.split_moved``).
PREPARATION_CHANGES = {
    1: "since 2026-12-05 lmlab holds validation out otherwise (a document over "
    "data.val_fraction of the text is no longer held out whole) and trains BPE on words cut "
    "to 256 bytes",
}
PREPARATION_VERSION = max(PREPARATION_CHANGES)
# How ``pack`` cuts rows, in the key of rows: rows cut per 1000-document batch, each batch's
# tail dropped (18% of the tokens of a file of short lines at a row of 1025), are not reused.
PACKING = "one stream per split, only its last partial row dropped"
TOKENIZER = "tokenizer.json"


class UnusableEntry(Exception):
    """A cache entry that cannot be used (damaged, gone, or rows another ``datasets`` wrote),
    with why: it is discarded and built again."""


def text_digest(docs: Documents, val_docs: Documents | None = None) -> str:
    """A digest of the documents' names and text, recorded with the rows (``meta.json``) and
    in a run's plan: a resume checks it, so that a corpus edited to the same size (a word
    changed, the same characters) is not taken for the one the run trained on. A validation
    split of its own (``val_docs``) follows the training split's, after a marker, so that a
    document moved from one to the other changes it. The cache key (``fingerprint``) reads no
    text; this is computed once per build, as the text is read."""
    digest = hashlib.sha256()
    marker = [("validation split", "")] if val_docs is not None else []
    for name, text in [*docs, *marker, *(val_docs or [])]:
        for part in (name, text):
            encoded = name_bytes(part)
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()[:16]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[
        :16
    ]


@contextlib.contextmanager
def writing(cfg: DataConfig) -> Iterator[None]:
    """Writes to the cache folder (making it, a temporary folder in it, a discard): one that
    fails (a file of that name, a read-only file system, another user's folder) is refused
    as one line naming ``data.cache_dir``, and ``LMLAB_CACHE`` where its value is the
    environment's (``conf/train.yaml`` reads it), not a traceback."""
    try:
        yield
    except OSError as err:
        cache = Path(cfg.cache_dir).expanduser()
        why = "a file, not a folder" if cache.exists() and not cache.is_dir() else err.strerror
        origin = " (from LMLAB_CACHE)" if os.environ.get("LMLAB_CACHE") == cfg.cache_dir else ""
        raise ConfigError(
            f"data.cache_dir={cfg.cache_dir!r}{origin} is not a writable folder ({why}); "
            "allowed: a folder lmlab can create and write in, or one that holds this data already"
        ) from None


def cache_root(cfg: DataConfig) -> Path:
    """The cache folder, made if it is missing."""
    cache = Path(cfg.cache_dir).expanduser()
    with writing(cfg):
        cache.mkdir(parents=True, exist_ok=True)
    return cache


@contextlib.contextmanager
def new_entry(cfg: DataConfig, final: Path) -> Iterator[Path]:
    """A temporary folder in the cache to build the entry ``final`` in, put in place when the
    block ends (``_publish``) and removed where the build is refused or stopped (an error,
    Ctrl-C, SIGTERM): no half-built entry stays in the cache. A full disk (``disk_full``) is
    raised naming ``final``. The build holds its folder until
    then, so that the next build removes one a ``kill -9`` left (``lmlab.data.abandoned``)."""
    cache = final.parent
    with writing(cfg):
        remove_abandoned(cache)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=building_prefix()))
    held = hold_folder(tmp)  # until published or removed: a kill -9 lets it go
    try:
        umask = os.umask(0)
        os.umask(umask)
        with writing(cfg):
            tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 kept a shared cache from its other users
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full(err)
        if full is not None and (not full.filename or str(full.filename).startswith(str(tmp))):
            # the rows' writer (Arrow) names no file, and a temporary one is gone: the entry
            # names the cache, where the run's stop says space must be freed
            raise OSError(full.errno, full.strerror, str(final)) from err
        raise
    else:
        _publish(tmp, final)
    finally:
        if held is not None:
            os.close(held)


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError:  # another process published the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def pack(texts: list[str], tok: Tokenizer, row_len: int) -> tuple[datasets.Dataset, int, int, dict]:
    """Tokenise (batched ``map``), end every document with EOS (and start it with BOS when the
    tokenizer has one, as Llama's does), concatenate, and cut rows of ``row_len`` tokens (only
    the last, partial row is dropped: ``PACKING``). A tokenizer without EOS, as BERT's WordPiece
    is, ends each document with [SEP] instead, which separates BERT's pre-training segments.
    The documents are read as ordinary text (``encode_ordinary``): a special token's string in
    one is its characters, so EOS (or [SEP]) and BOS are the rows' only control tokens. Returns
    the rows, the token count, the UTF-8 byte count (for bits per byte) and what the unknown
    token stood for (``unknown_record``)."""
    specials = Specials.of(tok)
    eos = [specials.id(tok, specials.document_end, "packing documents")]
    bos = [specials.id(tok, "bos", "")] if specials.bos else []

    def tokenize(batch: dict) -> dict:
        encoded = encode_ordinary(tok, batch["text"])  # a "<sep>" in the text is text
        ids = [bos + e.ids + eos for e in encoded]
        unknown = unknown_pieces(tok, batch["text"], encoded)
        return {"ids": ids, "n_bytes": [len(t.encode()) for t in batch["text"]], "unknown": unknown}

    def chunk(batch: dict) -> dict:
        flat = np.fromiter((i for ids in batch["ids"] for i in ids), dtype=np.int32)
        n = len(flat) // row_len
        return {"input_ids": flat[: n * row_len].reshape(n, row_len)}

    ds = datasets.Dataset.from_dict({"text": texts})
    tokenized = datasets.Features(  # given: a batch without unknown pieces has no type for them
        {
            "ids": datasets.List(datasets.Value("int64")),
            "n_bytes": datasets.Value("int64"),
            "unknown": datasets.List(datasets.Value("string")),
        }
    )
    ds = ds.map(tokenize, batched=True, remove_columns=["text"], features=tokenized)
    n_tokens, n_bytes = sum(len(x) for x in ds["ids"]), sum(ds["n_bytes"])
    unknown = unknown_record(Counter(p for pieces in ds["unknown"] for p in pieces))
    # one batch: the whole split's stream. Cut per batch of documents, each batch's tail was
    # dropped, up to row_len - 1 tokens a batch (a file of short lines, a document a line, lost
    # 18% of its tokens at a row of 1025); ``ds["ids"]`` above holds the stream in memory anyway
    ds = ds.map(chunk, batched=True, batch_size=None, remove_columns=["ids", "n_bytes", "unknown"])
    return ds, n_tokens, n_bytes, unknown


def tokenizer_dir(cache: Path, corpus: list, cfg: DataConfig, tokenizer: str | None) -> Path:
    """Where the tokenizer of ``corpus`` (a JSON-able identity of the training text) is
    cached: keyed by the corpus and the tokenizer settings, or by the given tokenizer's JSON
    (``data.tokenizer=checkpoint``)."""
    if cfg.tokenizer == TokenizerKind.checkpoint:
        if tokenizer is None:
            raise ConfigError("data.tokenizer=checkpoint needs init_from=<checkpoint>")
        return cache / f"tok-{_key(corpus, cfg.tokenizer.value, tokenizer)}"
    return cache / f"tok-{_key(corpus, cfg.tokenizer.value, cfg.vocab_size, SPECIAL_TOKENS)}"


def tokenizer_entry(cfg: DataConfig, cache: Path, tokenizer: str | None) -> Path:
    """Where the tokenizer of this data is cached: ``tokenizer_dir`` of the corpus's
    ``fingerprint`` and its split (``split_identity``)."""
    return tokenizer_dir(cache, split_identity(cfg), cfg, tokenizer)


def prepared_vocab_size(cfg: DataConfig) -> int | None:
    """The size of the tokenizer this data trains where an earlier run of it left that in the
    cache, else None (and for ``data.tokenizer=checkpoint``, whose tokenizer is the
    checkpoint's). Reads no corpus and writes nothing: a dry run plans with it."""
    if cfg.tokenizer == TokenizerKind.checkpoint:
        return None
    try:
        entry = tokenizer_entry(cfg, Path(cfg.cache_dir).expanduser(), None)
        return read_tokenizer(entry / TOKENIZER).get_vocab_size()
    except UnusableEntry:  # not prepared yet (or damaged: the run builds it again)
        return None
    except ConfigError:  # a corpus not here (a dry run plans for another machine): not prepared
        return None


def read_tokenizer(path: Path) -> Tokenizer:
    """A cached tokenizer file; UnusableEntry if it is not there or does not parse (a write
    cut short, a disk error)."""
    try:
        return Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as err:  # tokenizers raises a bare Exception for a broken file
        raise UnusableEntry(
            f"the tokenizer cached in {path} cannot be read ({type(err).__name__}: {err})"
        ) from err


def cached_tokenizer(
    tok_dir: Path, cfg: DataConfig, train_texts: list[str], tokenizer: str | None
) -> Tokenizer:
    """The tokenizer in ``tok_dir``; first trained on ``train_texts`` (or taken from the given
    JSON) and published there if it is not there yet or cannot be read (then with a warning,
    discarded first). Another run's copy of it lives in its rows' entry, so discarding the
    entry breaks no run."""
    try:
        return read_tokenizer(tok_dir / TOKENIZER)
    except UnusableEntry as err:
        if tok_dir.exists():
            log.warning("%s: building it again", err)
            with writing(cfg):
                discard(tok_dir)
    if tokenizer is not None:
        tok = Tokenizer.from_str(tokenizer)
    else:
        log.info("training %s tokenizer on %d documents", cfg.tokenizer.value, len(train_texts))
        tok = train_tokenizer(train_texts, cfg.tokenizer, cfg.vocab_size)
    with new_entry(cfg, tok_dir) as tmp:
        save_tokenizer(tok, tmp / TOKENIZER)
        tok = read_tokenizer(tmp / TOKENIZER)  # as a later run reads it
    return tok


def read_entry(blocks_dir: Path) -> tuple[dict, Tokenizer]:
    """The record (``meta.json``) and the tokenizer of a rows entry; UnusableEntry, naming the
    entry, if either is damaged or gone. The tokenizer is the entry's own copy; an entry
    written before it had one names the cache's ``tok-*`` entry by an absolute path, read
    from this cache's folder of that name (the cache may have moved)."""
    where = f"the packed rows cached in {blocks_dir}"
    try:
        meta = json.loads((blocks_dir / "meta.json").read_text(encoding="utf-8"))
        recorded = Path(meta["tokenizer"])
        if not meta["val"]["bytes"] / meta["val"]["tokens"] > 0:  # the data module's bytes/token
            raise ValueError(f"val counts {meta['val']}")
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError) as err:
        raise UnusableEntry(
            f"{where} cannot be used: meta.json is damaged or gone ({type(err).__name__}: {err})"
        ) from err
    if recorded.is_absolute():
        recorded = blocks_dir.parent / recorded.parent.name / recorded.name
    try:
        return meta, read_tokenizer(blocks_dir / recorded)
    except UnusableEntry as err:
        raise UnusableEntry(f"{where} cannot be used: {err}") from err


def discard(entry: Path) -> None:
    """Remove a cache entry that cannot be used (``UnusableEntry``): renamed aside first, so
    that a process that finds it gone builds it again, that of two processes discarding it at
    once one does and the other finds nothing to do, and that a process reading its files
    now keeps the ones it opened."""
    aside = entry.with_name(f"{STALE}{entry.name}-{os.getpid()}")
    try:
        os.replace(entry, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def first_tokens(tokenizer: str | None) -> list[str]:
    """The rows' key's part for the BOS every document starts with, where the tokenizer (a
    converted model's JSON) has one (``Specials.of``): rows packed before lmlab knew a BOS
    under a name of its own (DeepSeek's, until 2026-12-07) start their documents without it,
    and are not reused (a Llama tokenizer's are packed once more, the same). Empty without
    one, so that the rows of lmlab's tokenizers and GPT-2's keep their keys."""
    bos = Specials.of(Tokenizer.from_str(tokenizer)).bos if tokenizer else None
    return [f"documents start with {bos}"] if bos else []


def prepare(cfg: DataConfig, row_len: int, tokenizer: str | None = None) -> Path:
    """Build (or find) the tokenizer and packed rows for this corpus; return the blocks dir.
    ``tokenizer`` (a tokenizer's JSON) is the one ``data.tokenizer=checkpoint`` uses."""
    datasets.disable_progress_bars()
    cache = cache_root(cfg)
    tok_dir = tokenizer_entry(cfg, cache, tokenizer)
    blocks_dir = cache / f"blocks-{_key(tok_dir.name, row_len, PACKING, *first_tokens(tokenizer))}"
    if (blocks_dir / "meta.json").exists():
        return blocks_dir  # read only: a read-only cache that holds the rows serves them
    meta = {
        "tokenizer": TOKENIZER,  # the entry's own copy, named relative to the entry
        "row_len": row_len,
        "datasets": datasets.__version__,  # named if another version cannot read the rows
    }
    # a cache that cannot be written is refused before any work; a refused or stopped build
    # leaves no half-built rows in it
    with new_entry(cfg, blocks_dir) as tmp:
        docs, val_docs = read_splits(cfg)
        if names := row_names(cfg):
            meta["names"] = names  # a resume of a run whose rows had other names is refused
        meta["text_sha256"] = text_digest(docs, val_docs)
        train_texts, val_texts = split_texts(docs, val_docs, cfg.val_fraction)
        tok = cached_tokenizer(tok_dir, cfg, train_texts, tokenizer)
        save_tokenizer(tok, tmp / TOKENIZER)
        for split, texts in (("train", train_texts), ("val", val_texts)):
            ds, n_tokens, n_bytes, unknown = pack(texts, tok, row_len)
            if len(ds) == 0:
                raise ConfigError(
                    f"the {split} split of data source {cfg.source.value} has {n_tokens} "
                    f"tokens, fewer than one row of {row_len}: use a larger corpus (data."
                    f"max_bytes={cfg.max_bytes}, {validation_field(cfg)}) or a shorter "
                    f"data.seq_len (now {cfg.seq_len or 'null: model.max_seq_len'})"
                )
            ds.save_to_disk(str(tmp / split))
            meta[split] = {"rows": len(ds), "tokens": n_tokens, "bytes": n_bytes}
            meta.setdefault("unknown", {})[split] = unknown  # apart: the plan records meta[split]
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return blocks_dir
