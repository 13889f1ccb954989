"""Where a training step's time goes inside lmlab's Trainer, from a py-spy sampling profile.

``profile_run`` runs ``python src/train.py <overrides>`` under ``py-spy record -f raw`` (one
line per distinct stack: ``frame;frame;...;frame count``, each frame ``name (file:line)``).
``classify`` keeps the samples inside Lightning's training loop and sorts each into one part
of the step by the frames on its stack. What the Trainer adds to a step (its loop, hooks,
callbacks, logging, progress bar) is a number the plain-loop comparison cannot resolve on a
noisy machine; a profile of one run can.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# A sample belongs to the training loop when one of its frames is in this file.
TRAIN_LOOP = "training_epoch_loop.py"
TRAINER = "the Trainer: loop, hooks, callbacks, logging, progress bar"
# Phases: a sample with one of these frames anywhere on its stack belongs to the phase.
# Validation comes first: Lightning runs it from inside the training loop.
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("validation", ("evaluation_loop.py",)),
    ("checkpoint saves", ("save_checkpoint",)),
    ("data", ("torch/utils/data/",)),
]
# Work: otherwise the deepest frame that is one of these, or Lightning's, decides. Lightning's
# closure runs forward, backward and clipping inside AdamW's step, and ``self.log`` runs
# inside ``training_step``: the deepest frame puts each sample where its time is spent.
WORK: list[tuple[str, tuple[str, ...]]] = [
    ("backward", ("backward (torch/_tensor.py",)),
    ("forward and loss", ("training_step (",)),  # lmlab's; Lightning's frames are the Trainer's
    ("clipping", ("clip_grad_norm_ (",)),
    ("AdamW and LR schedule", ("torch/optim/",)),
    (TRAINER, ("lightning/", "lightning_utilities/")),
]
ORDER = [TRAINER, *(part for part, _ in WORK[:-1]), *(part for part, _ in PHASES)]


def parse_raw(text: str) -> Counter[tuple[str, ...]]:
    """py-spy's raw output as ``{stack (root first): samples}``."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def classify(stacks: Counter[tuple[str, ...]]) -> Counter[str]:
    """Samples per part, for the stacks inside the training loop only. What no part claims
    (frames of the loop itself, lmlab's callbacks) is the Trainer's."""
    parts: Counter[str] = Counter()
    for stack, count in stacks.items():
        if any(TRAIN_LOOP in frame for frame in stack):
            parts[_part(stack)] += count
    return parts


def _part(stack: tuple[str, ...]) -> str:
    for name, marks in PHASES:
        if any(m in frame for frame in stack for m in marks):
            return name
    for frame in reversed(stack):  # leaf first
        if "lightning/" in frame:  # its own training_step and closure wrap lmlab's
            return TRAINER
        for name, marks in WORK:
            if any(m in frame for m in marks):
                return name
    return TRAINER


def py_spy() -> str | None:
    """The py-spy executable next to this Python, else on PATH; None when not installed."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.is_file() else shutil.which("py-spy")


def profile_run(overrides: list[str], out: Path, root: Path, rate: int = 100) -> Counter[str]:
    """Profile one ``src/train.py`` run (Hydra output under ``out``); samples per part."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed: pip install py-spy")
    raw = out / "profile.txt"
    cmd = [exe, "record", "--nonblocking", "-r", str(rate), "-f", "raw", "-o", str(raw), "--"]
    cmd += [sys.executable, str(root / "src" / "train.py"), *overrides, f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"py-spy run failed (exit {done.returncode}): {tail}")
    return classify(parse_raw(raw.read_text()))
