"""One forward + backward in a fresh process; prints the growth of the peak resident memory
over the resident size just before the step (weights built) as JSON. Run by the ``memory`` case:

    python bench/memory_probe.py gpt_mini 8 1024 [--activation-checkpointing] [--full-loss]

``ru_maxrss`` only grows, so each measurement needs its own process.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmlab.config import resolve_configs  # noqa: E402
from lmlab.model import build_model  # noqa: E402
from lmlab.train.compose import compose_train  # noqa: E402
from lmlab.train.parallel import layout  # noqa: E402


def status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset the peak to the current resident size (Linux >= 4.0), so the step's peak is not
    hidden by a higher one during imports or the build. False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(model: str, batch: int, seq_len: int, checkpointing: bool, full_loss: bool) -> dict:
    """The training loss (``model.cross_entropy``: the default, or ``full`` with
    ``full_loss``) of random tokens, forward and backward."""
    overrides = [f"model={model}", f"model.max_seq_len={seq_len}"]
    cfg = compose_train(overrides + (["model.cross_entropy=full"] if full_loss else []))
    model_cfg = dataclasses.replace(resolve_configs(cfg)[0], vocab_size=4096)
    torch.manual_seed(0)
    net = build_model(model_cfg)
    layout(net, activation_checkpointing=checkpointing)
    ids_BT = torch.randint(0, 4096, (batch, seq_len))
    labels_BT = torch.randint(0, 4096, (batch, seq_len))
    reset = reset_peak()  # else: growth over the peak so far
    before = status_mib("VmRSS") if reset else peak_mib()
    net(ids_BT, labels=labels_BT).backward()
    after = status_mib("VmHWM") if reset else peak_mib()
    return {"peak_growth_mib": after - before, "before_mib": before}


if __name__ == "__main__":
    args = sys.argv[1:]
    ac, full = "--activation-checkpointing" in args, "--full-loss" in args
    name, b, t = [a for a in args if not a.startswith("--")]
    print(json.dumps(main(name, int(b), int(t), ac, full)))
