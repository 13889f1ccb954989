"""How a corpus file's bytes become a document's text: UTF-8 (a byte-order mark dropped),
universal newlines, ``data.max_bytes``' cut at a line end, and files that are not text (another
encoding, an archive, a NUL byte) refused all at once, naming what each one is."""

from __future__ import annotations

import codecs
from pathlib import Path

from lmlab.errors import ConfigError


def universal_newlines(text: str) -> str:
    """``\\r\\n`` and a lone ``\\r`` as ``\\n``, as Python's text mode and ``datasets``' text
    loader read files: a corpus saved with Windows line ends (Project Gutenberg's books are)
    is the same text, the same tokens and the same bits per byte as its copy with Unix ones."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# How files become text (``read_files``), in the data cache's key: rows built by an earlier
# reading (before universal newlines, a CR was kept as text; before a NUL byte was refused, a
# UTF-16 file without a byte-order mark was read as text) are not reused.
READING = "utf-8-sig, universal newlines, a NUL byte refused"
# How ``data.max_bytes`` slices a corpus (``cut``), in the key of a slice: a slice read before
# the document crossing the limit was cut (it was kept whole) is not reused.
SLICING = "the document crossing max_bytes cut at its last line end"


def cut(raw: bytes, limit: int) -> bytes:
    """The part of a document that fits in the ``limit`` bytes left under ``data.max_bytes``:
    all of it if it fits; else up to its last newline in those bytes, or, with none there, up
    to the limit, moved back to the start of a UTF-8 character it would split."""
    if len(raw) <= limit:
        return raw
    end = raw.rfind(b"\n", 0, limit) + 1
    if end == 0:
        end = limit
        while end > 0 and raw[end] & 0xC0 == 0x80:  # a continuation byte: inside a character
            end -= 1
    return raw[:end]


# What a file that is not UTF-8 is, told by its first bytes, and what makes it text. UTF-32
# before UTF-16: its little-endian mark begins with UTF-16's. UTF-16 without a mark is not told.
MAGIC: dict[bytes, str] = {
    codecs.BOM_UTF32_LE: "UTF-32 text: convert it to UTF-8, e.g. iconv -f UTF-32 -t UTF-8",
    codecs.BOM_UTF32_BE: "UTF-32 text: convert it to UTF-8, e.g. iconv -f UTF-32 -t UTF-8",
    codecs.BOM_UTF16_LE: "UTF-16 text: convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8",
    codecs.BOM_UTF16_BE: "UTF-16 text: convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8",
    b"\x1f\x8b": "gzip-compressed: decompress it first, e.g. gunzip",
    b"\xfd7zXZ\x00": "xz-compressed: decompress it first, e.g. unxz",
    b"BZh": "bzip2-compressed: decompress it first, e.g. bunzip2",
    b"\x28\xb5\x2f\xfd": "zstd-compressed: decompress it first, e.g. unzstd",
    b"PK\x03\x04": "a zip archive: unpack it first, e.g. unzip",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive: unpack it first, e.g. 7z x",
    b"%PDF-": "a PDF: extract its text first, e.g. pdftotext",
}


def what_it_is(head: bytes) -> str | None:
    """What ``MAGIC`` says a file that begins with ``head`` is, or None."""
    return next((what for magic, what in MAGIC.items() if head.startswith(magic)), None)


# How much of a file holding a NUL byte ``what_nul_is`` looks at.
NUL_HEAD = 4096


def what_nul_is(raw: bytes) -> str:
    """What a file that holds a NUL byte is, where ``MAGIC`` does not tell. NUL is valid UTF-8,
    but no text holds it: UTF-16 text without a byte-order mark (Latin text in it is every
    other byte NUL: little-endian after each character, big-endian before), or binary data
    (a database, an image of zeros) that happens to decode. Either was trained on as text."""
    head = raw[:NUL_HEAD]
    even, odd = head[0::2], head[1::2]
    for name, nul, other in (("UTF-16LE", odd, even), ("UTF-16BE", even, odd)):
        if nul.count(0) >= 0.9 * len(nul) and other.count(0) <= 0.1 * len(other):
            return (
                f"a NUL byte: {name} text without a byte-order mark? convert it to UTF-8, e.g. "
                f"iconv -f {name} -t UTF-8"
            )
    return "a NUL byte, which no text holds: binary data, or UTF-16 or UTF-32 text without a mark"


def not_text(binary: list[tuple[str, int, str | None]]) -> ConfigError:
    """The files of a corpus that are not UTF-8 text, (path, offset of the first bad byte,
    what its first bytes say it is) each: all named at once (four, then a count), not one per
    try."""
    if len(binary) == 1:
        path, offset, what = binary[0]
        told = f": {what}" if what else ""
        named = f"{path!r} is not UTF-8 text (invalid byte at offset {offset}){told}"
    else:
        shown = ", ".join(
            f"{path!r} (offset {offset}{f': {what}' if what else ''})"
            for path, offset, what in binary[:4]
        )
        more = f" and {len(binary) - 4} more" if len(binary) > 4 else ""
        named = f"{len(binary)} files are not UTF-8 text: {shown}{more}"
    return ConfigError(f"data.path: {named}; allowed: UTF-8 text files")


def read_files(files: list[Path], root: Path, max_bytes: int | None) -> list[tuple[str, str]]:
    """Documents named by their path relative to ``root``, so the train/val split (a hash of
    the name) is the same on every machine. With ``max_bytes``, the documents up to that many
    bytes: the one that crosses it is ``cut`` and is the last (a single 5 MB file gives its
    first lines up to ``max_bytes``), and no more of a file is read than is kept."""
    docs, total, binary = [], 0, []
    for path in files:
        left = None if max_bytes is None else max_bytes - total
        with path.open("rb") as f:
            raw = f.read() if left is None else f.read(left + 1)  # one byte more: does it fit?
        kept = raw if left is None else cut(raw, left)
        try:
            # utf-8-sig: a byte-order mark that an editor put first is no text to learn
            text = kept.decode("utf-8-sig")
        except UnicodeDecodeError as err:  # every such file is named at once, not one a try
            binary.append((str(path), err.start, what_it_is(raw)))
            continue
        if (nul := kept.find(b"\0")) >= 0:  # valid UTF-8, and yet no text
            binary.append((str(path), nul, what_it_is(raw) or what_nul_is(raw)))
            continue
        docs.append((path.relative_to(root).as_posix(), universal_newlines(text)))
        total += len(kept)
        if max_bytes is not None and (total >= max_bytes or len(kept) < len(raw)):
            break
    if binary:
        raise not_text(binary)
    return docs
