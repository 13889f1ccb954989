"""The benchmark cases, one module per group. Each takes the run's ``Settings`` and returns
``CaseResult``s; ``CASES`` and ``INTROS`` gather them in the order ``make bench`` runs and
reports them.

- ``training``: ``train_*``, steady-state tokens/s and MFU of the real lmlab stack against the
  matmul peak measured in the same benchmark run; ``overhead*``, lmlab's Trainer against
  ``plain_loop.plain_fit`` on the same config, interleaved so that drift in load cancels.
- ``host``: lmlab's host time per compiled step, on a step with almost no arithmetic.
- ``data``: a cold ``prepare`` of the embedded corpus, the tokenizer's throughput, and each
  family's collator (``collate``).
- ``generate``: tokens/s of greedy generation with gpt_mini, with and without the KV cache.
- ``memory``: peak memory of a training step with and without activation checkpointing.
- ``moe``: step time of a Mixture-of-Experts model against the dense one with the same active
  parameters, interleaved.
- ``ops``: one operation alone: AdamW foreach against fused (``adamw``), the output layer's
  loss full against chunked (``cross_entropy``).
- ``startup``: a fresh process's import of what ``lmlab train`` loads, and its exit, with and
  without ``lmlab.cli.heap``'s collector settings.
- ``profile``: a py-spy profile of lmlab's training loop, Lightning's own share of a step.
- ``shakespeare``: nanoGPT's char-level CPU run raced against nanoGPT's own recipe, then
  Llama's (not in the default set: minutes each).
- ``gpu``: ``make bench-gpu``, the cases of ``bench/gpu_cases.py`` (not in the default set).
"""

from bench.cases import (
    data,
    generate,
    gpu,
    host,
    memory,
    moe,
    ops,
    profile,
    shakespeare,
    startup,
    training,
)
from bench.cases.common import Case, Settings

# The order make bench runs the groups in, and BENCHMARKS.md shows them.
GROUPS = [training, host, data, generate, memory, moe, ops, startup, profile, shakespeare, gpu]
CASES: dict[str, Case] = {name: case for m in GROUPS for name, case in m.CASES.items()}
INTROS: dict[str, str] = {group: text for m in GROUPS for group, text in m.INTROS.items()}

__all__ = ["CASES", "INTROS", "Case", "Settings"]
