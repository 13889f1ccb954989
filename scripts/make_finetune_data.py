"""Write the fine-tuning example sets shipped in ``src/lmlab/data/corpora/`` (``task.source=
shipped``), from text every machine has: the Python standard library's sources and the Tiny
Shakespeare text shipped with lmlab. Deterministic: the same Python version writes the same
files (the shipped ones were written with the version ``python --version`` printed then:
see the README's Fine-tuning section).

- ``code_or_play`` (task=classify): one line, stripped, 20 to 100 characters; label
  ``python`` (a line of the standard library: code, comments, docstrings) or ``shakespeare``
  (a line of the plays). Balanced.
- ``def_name`` (task=seq2seq): input a ``def`` line of the standard library, stripped; target
  the function's name.
- ``next_line`` (task=classify with ``task.text_pair_column=text_pair``): a pair of stripped
  lines of 20 to 100 characters, ``text`` and ``text_pair``; label ``next`` when
  ``text_pair`` is the non-blank line that follows ``text`` in the same standard-library file
  (or in the plays), ``random`` when it is another line of the same corpus drawn at random.
  Half from each corpus, each half balanced; no first line twice.

    python scripts/make_finetune_data.py            # rewrites every set
    python scripts/make_finetune_data.py next_line  # rewrites the sets named
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Iterable

from lmlab.data.examples import CORPORA
from lmlab.data.sources import SHAKESPEARE, stdlib_files

TRAIN, VAL = 2048, 256  # examples per split
DEF = re.compile(r"^\s*(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(")


def unique_lines(texts: Iterable[str], keep: re.Pattern | None = None) -> list[str]:
    """Stripped lines of 20 to 100 characters, first occurrences only, in reading order."""
    seen: dict[str, None] = {}
    for text in texts:
        for line in text.splitlines():
            if keep is not None and not keep.match(line):
                continue
            line = line.strip()
            if 20 <= len(line) <= 100:
                seen.setdefault(line)
    return list(seen)


def stdlib_texts() -> Iterable[str]:
    for path in stdlib_files():
        yield path.read_text(encoding="utf-8", errors="replace")


def next_pairs(texts: Iterable[str]) -> list[tuple[str, str]]:
    """(line, the non-blank line after it) for each stripped line of 20 to 100 characters
    whose next line is one too, within each text; a line's first occurrence only."""
    pairs: dict[str, str] = {}
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for a, b in zip(lines, lines[1:], strict=False):
            if 20 <= len(a) <= 100 and 20 <= len(b) <= 100 and a != b:
                pairs.setdefault(a, b)
    return list(pairs.items())


def next_or_random(texts: list[str], n: int, rng: random.Random) -> list[dict]:
    """``n`` pairs of one corpus, half with the line that follows (``next``), half with a
    random line of the corpus in its place (``random``: neither the first line nor its next)."""
    chosen = rng.sample(next_pairs(texts), n)
    pool = unique_lines(texts)
    rows = [{"text": a, "text_pair": b, "label": "next"} for a, b in chosen[: n // 2]]
    for a, b in chosen[n // 2 :]:
        other = rng.choice(pool)
        while other in (a, b):
            other = rng.choice(pool)
        rows.append({"text": a, "text_pair": other, "label": "random"})
    return rows


def write(name: str, rows: list[dict], rng: random.Random, names: Iterable[str]) -> None:
    """Shuffle ``rows`` (always: the next set's draws follow), then write the two splits if
    ``name`` is one of ``names``."""
    rng.shuffle(rows)
    if name not in names:
        return
    for split, part in (("train", rows[:TRAIN]), ("val", rows[TRAIN : TRAIN + VAL])):
        path = CORPORA / f"{name}.{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
        print(f"{path}: {len(part)} examples")


SETS = ("code_or_play", "def_name", "next_line")


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(SETS))
    if unknown:
        sys.exit(f"unknown set {', '.join(unknown)}; allowed: {', '.join(SETS)}")
    rng = random.Random(0)  # code_or_play and def_name: one stream, as first written
    half = (TRAIN + VAL) // 2
    python = rng.sample(unique_lines(stdlib_texts()), half)
    plays = rng.sample(unique_lines([SHAKESPEARE.read_text()]), half)
    rows = [{"text": t, "label": "python"} for t in python]
    rows += [{"text": t, "label": "shakespeare"} for t in plays]
    write("code_or_play", rows, rng, names)

    defs = rng.sample(unique_lines(stdlib_texts(), keep=DEF), TRAIN + VAL)
    write("def_name", [{"input": d, "target": DEF.match(d).group(1)} for d in defs], rng, names)

    if "next_line" in names:
        rng = random.Random(0)  # a stream of its own: the sets above do not move it
        rows = next_or_random(list(stdlib_texts()), half, rng)
        rows += next_or_random([SHAKESPEARE.read_text()], half, rng)
        write("next_line", rows, rng, names)


if __name__ == "__main__":
    main(sys.argv[1:] or list(SETS))
