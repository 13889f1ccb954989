"""Write the data of lmlab's shipped offline eval tasks (``src/lmlab/infer/tasks/*.jsonl``).

    python scripts/make_eval_tasks.py          # rewrites the .jsonl files

Every scored item comes from the documents that the default corpus (``data=stdlib``, the
Python standard library's own sources) holds out for validation, chosen by a stable hash of
their names (``lmlab.data.splits.held_out``): a model trained with ``data=stdlib`` has never
seen them in training. The few-shot examples of the two tasks that take them
(``<task>.fewshot.jsonl``, the task's ``fewshot_split``) are drawn the same way from the
other documents, the training ones, so no example is ever an item scored, nor from the files
scored. Draws are seeded, so the output is the same on every run of this script with the
same Python (the files in the repository were made with Python 3.11).

- ``stdlib_nextline`` (multiple choice): the preceding lines of a source file, and four
  candidate next lines: the true one and three drawn from the same pool of lines that answers
  are drawn from. The answer is therefore exchangeable with the distractors, and anything that
  ignores the context scores 25% in expectation (over draws of the item set: a fixed set of
  300 items has a standard error of 2.5 points for any fixed context-blind rule).
- ``stdlib_cloze`` (LAMBADA-style cloze): the code up to the identifier that ends a line, where
  that identifier already occurs in the context; the target is the identifier.
- ``stdlib_perplexity`` (rolling log-likelihood): snippets of about 1,000 characters.
"""

from __future__ import annotations

import io
import json
import keyword
import random
import re
import sys
import tokenize
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmlab.config import DataConfig  # noqa: E402
from lmlab.data.sources import load_documents  # noqa: E402
from lmlab.data.splits import held_out  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "src" / "lmlab" / "infer" / "tasks"
SEED = 21
CONTEXT_CHARS = 320  # at most this much preceding code (whole lines): ~100 BPE tokens
N_NEXTLINE, N_CLOZE, N_SNIPPETS = 300, 200, 30
N_FEWSHOT = 50  # examples in each few-shot pool
SNIPPET_CHARS = 1000
IDENTIFIER_END = re.compile(r"(?<!\w)([A-Za-z_]\w{3,})$")  # a name of 4+ characters ends the line
TRIVIAL = {"self", "None", "True", "False", "pass"}


def prose_lines(source: str) -> set[int]:
    """0-based numbers of the lines that are comments or inside a string literal (docstrings):
    left out as answers, which are to be code."""
    rows: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING:
                rows.update(range(tok.start[0] - 1, tok.end[0]))
            elif tok.type == tokenize.COMMENT:
                rows.add(tok.start[0] - 1)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return set(range(source.count("\n") + 1))  # not parseable: use none of its lines
    return rows


def context_before(lines: list[str], i: int) -> str:
    """Whole lines before line ``i``, as many as fit in ``CONTEXT_CHARS``, each ending in \\n."""
    out: list[str] = []
    size = 0
    for line in reversed(lines[:i]):
        if size + len(line) + 1 > CONTEXT_CHARS:
            break
        out.append(line + "\n")
        size += len(line) + 1
    return "".join(reversed(out))


def code_positions(docs: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """(document, line) of every code line that can be an answer: 6 to 80 characters, not a
    comment or string, with at least two non-blank lines of context before it."""
    found = []
    for d, (_, text) in enumerate(docs):
        lines, prose = text.split("\n"), prose_lines(text)
        for i, line in enumerate(lines):
            if i in prose or not 6 <= len(line.strip()) <= 80:
                continue
            if sum(bool(x.strip()) for x in context_before(lines, i).split("\n")) >= 2:
                found.append((d, i))
    return found


def nextline_items(docs: list[tuple[str, str]], rng: random.Random, n: int) -> list[dict]:
    """Four lines drawn independently from the same pool, the first being the answer, kept
    only when all four differ: the draws stay exchangeable (redrawing a repeated distractor
    alone would make the answer likelier to be a common line than the distractors are)."""
    positions = code_positions(docs)
    text = {pos: docs[pos[0]][1].split("\n")[pos[1]] for pos in positions}
    items: list[dict] = []
    while len(items) < n:
        drawn = [rng.choice(positions) for _ in range(4)]
        choices = [text[pos] for pos in drawn]
        if len(set(choices)) < 4 or any(it["source"] == _source(docs, drawn[0]) for it in items):
            continue
        order = list(range(4))
        rng.shuffle(order)
        d, i = drawn[0]
        items.append(
            {
                "source": _source(docs, drawn[0]),
                # the newline belongs to each choice, so that scoring a choice alone (the
                # unconditional term of acc_mutual_info) scores the same tokens
                "context": context_before(docs[d][1].split("\n"), i).removesuffix("\n"),
                "choices": ["\n" + choices[k] for k in order],
                "answer": order.index(0),
            }
        )
    return items


def _source(docs: list[tuple[str, str]], pos: tuple[int, int]) -> str:
    return f"{docs[pos[0]][0]}:{pos[1] + 1}"


def cloze_items(docs: list[tuple[str, str]], rng: random.Random, n: int) -> list[dict]:
    candidates = []
    for d, (_, text) in enumerate(docs):
        lines, prose = text.split("\n"), prose_lines(text)
        for i, line in enumerate(lines):
            m = IDENTIFIER_END.search(line.rstrip())
            if i in prose or m is None:
                continue
            word = m.group(1)
            prefix = line.rstrip()[: m.start()]
            if keyword.iskeyword(word) or word in TRIVIAL or not prefix.strip():
                continue
            context = context_before(lines, i) + prefix
            if re.search(rf"\b{re.escape(word)}\b", context):  # inferable from the context
                candidates.append((d, i, context, word))
    items = []
    for d, i, context, word in rng.sample(candidates, n):
        items.append({"source": f"{docs[d][0]}:{i + 1}", "context": context, "target": word})
    return items


def snippet_items(docs: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    items = []
    for _ in range(N_SNIPPETS):
        d = rng.randrange(len(docs))
        lines = docs[d][1].split("\n")
        start = rng.randrange(max(1, len(lines) - 40))
        text, i = "", start
        while i < len(lines) and len(text) + len(lines[i]) + 1 <= SNIPPET_CHARS:
            text += lines[i] + "\n"
            i += 1
        if text.strip():
            items.append({"source": f"{docs[d][0]}:{start + 1}", "text": text})
    return items


def write_jsonl(path: Path, items: list[dict]) -> None:
    with path.open("w") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(OUT.parents[3])}: {len(items)} items, {path.stat().st_size:,} bytes")


def main() -> None:
    cfg = DataConfig()
    docs = load_documents(cfg)
    ids = held_out(docs, cfg.val_fraction)
    val_docs = sorted(docs[i] for i in ids)
    train_docs = sorted(doc for i, doc in enumerate(docs) if i not in ids)
    print(f"{len(val_docs)} held-out documents of {len(docs)} (Python {sys.version.split()[0]})")
    nextline = nextline_items(val_docs, random.Random(SEED), N_NEXTLINE)
    write_jsonl(OUT / "stdlib_nextline.jsonl", nextline)
    cloze = cloze_items(val_docs, random.Random(SEED + 1), N_CLOZE)
    write_jsonl(OUT / "stdlib_cloze.jsonl", cloze)
    write_jsonl(OUT / "stdlib_perplexity.jsonl", snippet_items(val_docs, random.Random(SEED + 2)))
    write_jsonl(
        OUT / "stdlib_nextline.fewshot.jsonl",
        nextline_items(train_docs, random.Random(SEED + 3), N_FEWSHOT),
    )
    write_jsonl(
        OUT / "stdlib_cloze.fewshot.jsonl",
        cloze_items(train_docs, random.Random(SEED + 4), N_FEWSHOT),
    )


if __name__ == "__main__":
    main()
