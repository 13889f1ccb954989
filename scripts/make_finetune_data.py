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

    python scripts/make_finetune_data.py            # rewrites both sets
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

from lmlab.data.finetune import CORPORA
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


def write(name: str, rows: list[dict], rng: random.Random) -> None:
    rng.shuffle(rows)
    for split, part in (("train", rows[:TRAIN]), ("val", rows[TRAIN : TRAIN + VAL])):
        path = CORPORA / f"{name}.{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
        print(f"{path}: {len(part)} examples")


def main() -> None:
    rng = random.Random(0)
    half = (TRAIN + VAL) // 2
    python = rng.sample(unique_lines(stdlib_texts()), half)
    plays = rng.sample(unique_lines([SHAKESPEARE.read_text()]), half)
    rows = [{"text": t, "label": "python"} for t in python]
    rows += [{"text": t, "label": "shakespeare"} for t in plays]
    write("code_or_play", rows, rng)

    defs = rng.sample(unique_lines(stdlib_texts(), keep=DEF), TRAIN + VAL)
    write("def_name", [{"input": d, "target": DEF.match(d).group(1)} for d in defs], rng)


if __name__ == "__main__":
    main()
