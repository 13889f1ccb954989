"""``python src/evaluate.py ...`` is ``lmlab evaluate ...``: see ``lmlab.cli.evaluate``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a checkout without pip install -e .
from lmlab.cli.main import command  # noqa: E402

if __name__ == "__main__":
    command("evaluate")
