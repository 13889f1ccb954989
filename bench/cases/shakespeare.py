"""``shakespeare``: nanoGPT's char-level CPU run raced against nanoGPT's own recipe,
then Llama's (not in the default set: minutes each)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.cases.common import Case, Settings
from bench.harness import ROOT
from bench.report import CaseResult, Stat

NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, the CPU run at iter 2000
RECIPES = {"gpt2": "shakespeare_char_cpu", "llama": "[shakespeare_char_cpu,llama]"}


# Lightning's line when training ends (max_steps reached), in the run's train.log
FIT_STOPPED = re.compile(r"^\[([\d-]+ [\d:]+),(\d+)\].*`Trainer.fit` stopped", re.M)
# lmlab's kernel report, logged when training starts (on_train_start), just before step 1
TRAIN_STARTS = re.compile(r"^\[([\d-]+ [\d:]+),(\d+)\].*attention kernel: ", re.M)


def log_time(pattern: re.Pattern, log: str) -> float:
    """``time.time()`` of the last train.log line that ``pattern`` matches (its timestamp is
    local time, to the millisecond)."""
    stamp, ms = pattern.findall(log)[-1]
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1e3


def lmlab_process(experiment: str, out: Path, quick: bool) -> tuple[float, float, float, dict]:
    """``python src/train.py +experiment=...`` as a user runs it: seconds from the process's
    start to its exit, to the start of training (train.log's kernel report, just before the
    first step) and to the end of training (train.log's line when ``Trainer.fit`` stops:
    after the last step's validation and checkpoint, before the whole-split score, the
    sample and the exit), and its results.json."""
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), f"+experiment={experiment}"]
    cmd += ["logger=csv", f"hydra.run.dir={out}"]
    if quick:
        cmd += ["trainer.max_steps=20", "trainer.val_check_interval=10"]
    start = time.time()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    wall = time.time() - start
    log = (out / "train.log").read_text()
    began, trained = log_time(TRAIN_STARTS, log) - start, log_time(FIT_STOPPED, log) - start
    return wall, began, trained, json.loads((out / "results.json").read_text())


def nanogpt_process(seed: int, out: Path, quick: bool) -> tuple[float, float, dict]:
    """``bench/nanogpt_shakespeare.py``: seconds from the process's start to the end of its
    last iteration (its whole-split score after that is not timed) and to the start of its
    training loop, and what it printed."""
    cmd = [sys.executable, str(ROOT / "bench" / "nanogpt_shakespeare.py"), f"--seed={seed}"]
    cmd += [f"--out={out}"] + (["--max-iters=20"] if quick else [])
    start = time.time()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["done_at"] - start, result["loop_at"] - start, result


def shakespeare_case(s: Settings) -> list[CaseResult]:
    """nanoGPT's CPU run, raced: nanoGPT's own ``train.py`` recipe
    (``bench/nanogpt_shakespeare.py``) and lmlab's ``+experiment=shakespeare_char_cpu``
    alternate (nanoGPT, lmlab, lmlab, nanoGPT, ...), each a fresh process timed from its start,
    ``repeats`` runs each; then one run of lmlab with Llama's recipe. lmlab's outputs are kept
    under outputs/bench/shakespeare/."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    root = ROOT / "outputs" / "bench" / "shakespeare" / stamp
    nano: dict[str, list[float]] = {"wall": [], "began": [], "estimate": [], "whole": []}
    lm: dict[str, list[float]] = {"wall": [], "began": [], "trained": [], "whole": [], "tps": []}
    for i in range(s.repeats):
        for who in ("nanogpt", "lmlab") if i % 2 == 0 else ("lmlab", "nanogpt"):
            if who == "nanogpt":
                wall, began, r = nanogpt_process(1337, s.work / f"nanogpt-{i}", s.quick)
                nano["wall"].append(wall)
                nano["began"].append(began)
                nano["estimate"].append(r["val_loss_estimate"])
                nano["whole"].append(r["val_loss_whole_split"])
            else:
                wall, began, trained, r = lmlab_process(
                    RECIPES["gpt2"], root / f"gpt2-{i}", s.quick
                )
                lm["wall"].append(wall)
                lm["began"].append(began)
                lm["trained"].append(trained)
                lm["whole"].append(r["val_loss"])
                lm["tps"].append(r["tokens_per_second"])

    def speed(lmlab_seconds: list[float]) -> list[float]:  # nanoGPT's wall / lmlab's, by pair
        return [n / m for n, m in zip(nano["wall"], lmlab_seconds, strict=True)]

    # the training loop alone, first step to the end of training: validation and checkpoints
    # inside it, start-up and what follows it outside
    nano_loop = [w - b for w, b in zip(nano["wall"], nano["began"], strict=True)]
    lm_loop = [t - b for t, b in zip(lm["trained"], lm["began"], strict=True)]
    loop_speed = [n / m for n, m in zip(nano_loop, lm_loop, strict=True)]

    results = [
        CaseResult(
            "shakespeare",
            "nanoGPT train.py",
            [
                Stat("whole process, start to last iteration", "s", nano["wall"]),
                Stat("start-up, start to the first iteration", "s", nano["began"]),
                Stat("training loop, first iteration to last", "s", nano_loop),
                Stat("val loss, whole split", "nats", nano["whole"]),
                Stat("val loss, its 20-batch estimate", "nats", nano["estimate"]),
            ],
            "seed 1337 (its default); the whole-split score is computed after the timed part",
        ),
        CaseResult(
            "shakespeare",
            "lmlab gpt2 char",
            [
                Stat("whole process, start to exit", "s", lm["wall"]),
                Stat("speed against nanoGPT (its wall / lmlab's)", "x", speed(lm["wall"])),
                Stat("start to the end of training (nanoGPT's measure)", "s", lm["trained"]),
                Stat(
                    "speed to the end of training (its wall / lmlab's)",
                    "x",
                    speed(lm["trained"]),
                ),
                Stat("start-up, start to the first step", "s", lm["began"]),
                Stat("training loop, first step to the end of training", "s", lm_loop),
                Stat("loop speed against nanoGPT (its loop / lmlab's)", "x", loop_speed),
                Stat("val loss, whole split", "nats", lm["whole"]),
                Stat("tokens/s (training steps)", "tok/s", lm["tps"]),
            ],
            f"seed 1337 (the default); outputs in {root.relative_to(ROOT)}",
        ),
    ]
    wall, _, _, r = lmlab_process(RECIPES["llama"], root / "llama", s.quick)
    stats = [Stat("whole process, start to exit", "s", [wall])]
    stats += [Stat("val loss, whole split", "nats", [r["val_loss"]])]
    results.append(CaseResult("shakespeare", "lmlab llama char", stats, "one run"))
    return results


CASES = {"shakespeare": Case(shakespeare_case, "shakespeare", default=False)}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "shakespeare": (
        "nanoGPT's documented CPU run of Tiny Shakespeare, raced on this machine: "
        "`bench/nanogpt_shakespeare.py` (nanoGPT's `train.py` recipe for that command: "
        "eval_interval 250 with 20-batch estimates of both splits, a checkpoint when the "
        "estimate improves, no compile) against `python src/train.py "
        "+experiment=shakespeare_char_cpu logger=csv` (the same first 20 batches of the "
        "held-out split at every validation, the whole held-out 10% after the last step, "
        "fused AdamW, a checkpoint at steps 1000 and 2000, the end-of-run sample), the two "
        "alternating, each a fresh process timed from its start: nanoGPT to the end of its "
        "last iteration (its whole-split score follows, not timed), lmlab to its exit and, "
        "the same measure as nanoGPT's, to the end of training (train.log's '`Trainer.fit` "
        "stopped': after the last step's validation and checkpoint; the whole-split score, "
        "the sample and the exit follow). 'val loss, whole split' is "
        "the same measure for both: non-overlapping 65-character rows of the last 10%. "
        "Start-up ends at the first training step (nanoGPT: its loop begins; lmlab: "
        "train.log's attention-kernel report, logged when training starts); the training "
        "loop runs from there to the end of training, its validations and checkpoints "
        "included (nanoGPT: 9 estimates of 40 batches; lmlab: 8 of 20). "
        f"nanoGPT's README reports {NANOGPT_VAL_LOSS}, one draw of its 20-batch estimate. "
        "Then lmlab once more with `'+experiment=[shakespeare_char_cpu,llama]'`."
    ),
}
