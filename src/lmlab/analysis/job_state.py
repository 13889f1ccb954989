"""The state of a job that has not ended well, read from its folder: whether a live process
holds it (its run lock, or the lock of a sweep folder it sits in), was killed, or was refused
before it trained; and what ``resume=auto`` does with it. :mod:`lmlab.analysis.runs` reads
each job's ``results.json`` and asks here where that does not say how the run ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.analysis.run_files import results_or_failed
from lmlab.config.locks import LOCK_FILE, SWEEP_LOCK_FILE, live_holder
from lmlab.files import PLAN, RESULTS, checkpoints_in, read_json

# results.json statuses of a run stopped by a signal, with a checkpoint to resume from.
STOPPED = ("preempted", "interrupted")
# statuses of a job that has not ended: a live process holds its lock, or none does.
RUNNING, KILLED = "running", "killed"
UNFINISHED = (*STOPPED, RUNNING, KILLED)


def started(job_dir: Path) -> bool:
    """Whether a run passed its checks in ``job_dir``: it writes plan.json then (a dry run's
    is marked ``dry_run``), before it trains."""
    plan = read_json(job_dir / PLAN)
    return isinstance(plan, dict) and plan.get("dry_run") is not True


def live_holder_of(job_dir: Path, root: Path) -> str | None:
    """The pid of a live process holding the job's run lock, else None; a job without a lock
    file (not yet taken, or released as it ended) asks the lock of a sweep folder it sits in
    (up to ``root``: a sweep's job as it starts). A lock file that nobody holds is a killed
    job's, whether or not its sweep goes on (a launcher running jobs in other processes). A
    live run whose lock file was deleted by hand still holds its folder: pid ``unknown``."""
    holder = live_holder(job_dir / LOCK_FILE)
    if holder is not None or (job_dir / LOCK_FILE).exists():
        return holder
    folder = job_dir
    while holder is None and folder != root and root in folder.parents:
        folder = folder.parent
        holder = live_holder(folder / SWEEP_LOCK_FILE)
    return holder


def resume_does(job_dir: Path) -> str:
    """What ``resume=auto`` does with the unfinished run in ``job_dir``: continues it from its
    newest checkpoint, or, with none (killed before its first), starts it again."""
    if checkpoints_in(job_dir):
        return "resume=auto continues it"
    return "no checkpoint yet, so resume=auto starts it again"


def unfinished(job_dir: Path, root: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The results of a job that has not ended (none, or ``running``) with the status it has
    now: ``running`` where a live process holds its lock or its sweep's; ``killed`` where it
    trained (results.json says ``running``), left its lock file behind (a ``kill -9``) or
    wrote the plan.json of a run that passed its checks (the lock file a kill left is removed
    by the next command in the folder, refused or not); else ``failed``: refused before it
    took its lock, with nothing written but ``.hydra/``."""
    holder = live_holder_of(job_dir, root)
    if holder is not None:
        error = f"pid {holder} holds its lock"
        return {**results, "status": RUNNING, "error": error, "holder": holder}
    # nothing live: a results.json written since the folders were listed is the job's own
    # (a run writes it before it lets go of its lock)
    if (job_dir / RESULTS).is_file():
        current = results_or_failed(job_dir / RESULTS)
        if current.get("status") != RUNNING:
            return current
    if results or (job_dir / LOCK_FILE).exists() or started(job_dir):
        unwritten = "" if results else "no results.json, and "
        return {
            **results,
            "status": KILLED,
            "error": f"{unwritten}no live process holds its lock: {resume_does(job_dir)}",
        }
    return {"status": "failed", "error": NEVER_TRAINED}


NEVER_TRAINED = (
    "no results.json: refused before training (train.log or its command's output says why)"
)


def tally(states: list[dict[str, Any]], checkpointed: list[bool]) -> list[str]:
    """What the jobs without a results.json are (``states``; whether each has a checkpoint),
    one clause per kind."""
    holders = [s["holder"] for s in states if s.get("status") == RUNNING]
    killed = sum(s.get("status") == KILLED for s in states)
    afresh = sum(
        s.get("status") == KILLED and not c for s, c in zip(states, checkpointed, strict=True)
    )
    refused = sum(s.get("error") == NEVER_TRAINED for s in states)
    clauses = []
    if holders:
        clauses.append(
            f"{len(holders)} still running (pid {', '.join(sorted(set(holders)))}): compare "
            "again when they end"
        )
    if killed > afresh:
        clauses.append(f"{killed - afresh} killed before they ended: resume=auto continues them")
    if afresh:
        clauses.append(
            f"{afresh} killed before their first checkpoint: resume=auto starts them again"
        )
    if refused:
        clauses.append(f"{refused} refused before training: train.log or the command says why")
    if len(states) > len(holders) + killed + refused:  # ended since they were listed
        clauses.append("the others ended meanwhile: compare again")
    return clauses


def continued(job_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """A run whose results.json says how it ended that a later process took up (a resume
    extending or finishing it), which writes its record only at its own end: ``running``
    while that process holds the run's lock; ``killed`` where its lock file, newer than
    results.json, is held by nobody (a kill before it wrote a record). Else the record as it
    is: no lock file, or one older than the record (its own run, killed once it was written)."""
    lock = job_dir / LOCK_FILE
    holder = live_holder(lock)
    before = "its results.json is of the run before"
    if holder is not None:
        error = f"pid {holder} holds its lock: a process continues the run ({before})"
        return {**results, "status": RUNNING, "error": error, "holder": holder}
    try:
        later = lock.stat().st_mtime_ns > (job_dir / RESULTS).stat().st_mtime_ns
    except OSError:  # no lock file
        return results
    if not later:
        return results
    error = f"a process that continued the run was killed ({before}): {resume_does(job_dir)}"
    return {**results, "status": KILLED, "error": error}
