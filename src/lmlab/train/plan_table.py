"""The dry run's plan (``lmlab.train.estimate``) as the terminal shows it: parameters by kind,
then budget, FLOPs, throughput, wall time and memory; and a run's parameter table."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from lmlab.train.budget import overshoot


def plan_table(plan: dict[str, Any]) -> Table:
    """The plan for the terminal: parameters by kind, then budget, FLOPs and wall time."""
    table = Table(title="plan", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right", overflow="fold")  # a long path whole
    for kind, n in plan["param_breakdown"].items():
        if n or kind in ("total", "non_embedding"):
            table.add_row(f"params: {kind}", f"{n:,}")
    table.add_section()
    speed = plan["throughput"]
    budget = plan["budget"]
    rows = {
        "budget": f"{budget['kind']}, N = {budget['params']} params ({budget['n_params']:,})",
        "tokens per step": f"{plan['tokens_per_step']:,}",
        "steps": f"{plan['steps']:,}",
        "tokens": f"{plan['tokens']:,} ({plan['tokens'] / budget['n_params']:,.3g} per param)"
        + (f"; {over}" if (over := overshoot(budget)) else ""),
        "FLOPs (6ND)": f"{plan['flops']:.3g}",
        "FLOPs per token": f"{plan['flops_per_token']:.3g}",
        f"tokens/s ({speed['method']})": _maybe(
            plan["tokens_per_second"],
            "{:,.0f}" if (plan["tokens_per_second"] or 0) >= 100 else "{:.3g}",
        ),
        "MFU" + (" (assumed)" if speed["method"] == "estimated" else ""): _maybe(
            speed["mfu"], "{:.1%}"
        ),
        "estimated wall time": plan["wall_time"],
    }
    if "vocab_from" in plan:  # a dry run's: where its vocabulary size comes from
        rows = {"vocabulary": f"{plan['vocab_size']:,} ({plan['vocab_from']})", **rows}
    if source := plan.get("init_source"):  # init_from: the file whose weights it starts from
        step = source["global_step"]
        rows = {"init_from": source["file"] + ("" if step is None else f" (step {step})"), **rows}
    memory = plan.get("memory")
    if memory:  # lmlab.train.memory: per node's CPU, or per GPU
        each = memory_scope(memory)
        rows["memory: weights, grads, optimizer"] = f"{_size(memory['state'])} (at least{each})"
        rows["memory: a training step"] = f"~{_size(memory['step'])} (coarse{each})"
        if memory["free"] is not None:
            rows[f"memory free ({memory['where'].removesuffix(' has')})"] = _size(memory["free"])
    for name, value in rows.items():
        table.add_row(name, value)
    table.caption = f"{speed['device']}, {speed['precision']}: {speed['reason']}"
    return table


def memory_scope(memory: dict[str, Any]) -> str:
    """What the memory rows count, where it is not one process's whole model: ``", per GPU"``,
    or the processes of this machine's CPU and the state's shards."""
    parts = ["per GPU"] if memory["where"].startswith("GPU") else []
    if memory.get("processes", 1) > 1 and not parts:
        parts.append(f"{memory['processes']} processes")
    if memory["shards"] > 1:
        parts.append(f"state sharded {memory['shards']} ways")
    return "".join(f", {part}" for part in parts)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def _maybe(value: float | None, fmt: str) -> str:
    return "unknown" if value is None else fmt.format(value)


def param_table(counts: dict[str, int]) -> Table:
    table = Table(title="parameters", show_header=True)
    table.add_column("kind")
    table.add_column("count", justify="right")
    for kind, n in counts.items():
        if n or kind in ("total", "non_embedding"):
            table.add_row(kind, f"{n:,}")
    return table
