"""What a finished bf16 FSDP run started as a child process leaves, checked alike on two CPU
ranks (``tests/train/test_hot_path.py``) and on one GPU (``tests/train/test_gpu.py``): its
exit, results.json, the end-of-run sample and the sharded final checkpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def finished_fsdp_run(proc: subprocess.Popen, out: Path) -> tuple[dict[str, Any], str]:
    """The run's results and console output, once it has exited 0 with its status completed
    in bf16-mixed, a sample, a sharded final checkpoint and no extra that failed."""
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["precision"] == "bf16-mixed"
    assert results["sample"]
    assert (out / "checkpoints" / "last.ckpt" / "meta.pt").exists()  # sharded, final
    assert "failed, the run goes on" not in output
    return results, output
