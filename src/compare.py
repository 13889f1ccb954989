"""Compare the jobs of a Hydra multirun: ranked table, winner, compare.png and compare.json.

Usage: python src/compare.py MULTIRUN_DIR [--metric val_loss] [--out DIR] [--higher-is-better]
"""

import sys
from pathlib import Path

try:
    from lmlab.compare import main
except ModuleNotFoundError as exc:  # run as a script without `pip install -e .`
    if exc.name != "lmlab":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lmlab.compare import main

if __name__ == "__main__":
    sys.exit(main())
