"""lmlab writes its text files in UTF-8 (``files.write_text``; tokenizers, Hugging Face and
Hydra write theirs so too) and reads them as UTF-8 whatever the locale: read in the locale's
encoding (ASCII under ``LC_ALL=C PYTHONUTF8=0``, cp1252 on Windows), a cached tokenizer with a
non-ASCII token was "damaged" and the run failed, and a results.json with a non-ASCII sample
read as empty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# non-ASCII written as escapes: the child's command line is decoded in ASCII too
SCRIPT = r"""
import sys
from pathlib import Path

from tokenizers import Tokenizer, models

from lmlab.data.packing import read_tokenizer
from lmlab.files import read_record, write_text

folder = Path(sys.argv[1])
pi = "\u03c0 \u2248 3.14"
write_text(folder / "results.json", '{"sample": "\u03c0 \u2248 3.14"}')
vocab = {"\u03c0": 0, "[UNK]": 1}
Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))
print(read_record(folder / "results.json").get("sample") == pi)
print(read_tokenizer(folder / "tokenizer.json").get_vocab() == vocab)
"""


def test_what_lmlab_writes_reads_back_under_an_ascii_locale(tmp_path: Path) -> None:
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr[-2000:]
