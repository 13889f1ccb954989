"""What a run directory holds, and who may guard it: the files whose presence means a run
was there (``RUN_FILES``, named in ``lmlab.files``; ``holds_run``), its checkpoints, the runs
a sweep's folder holds; whether this process is global rank 0 (only rank 0 guards a run
directory; the other ranks of a DDP/FSDP job run in the same one). Folders are named as
Hydra names them (``absolute``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from lmlab.errors import ConfigError
from lmlab.files import CHECKPOINTS, EVAL_RECORDS, PLAN, RESULTS, RUN_CONFIG, read_record

# What a run writes: their presence means the directory holds an earlier run. ``eval/``:
# ``lmlab evaluate``'s records of its checkpoints, which ``compare`` reads as the run's (a new
# run there would be ranked by another model's evaluation); an empty folder is none.
RUN_FILES = (RESULTS, PLAN, RUN_CONFIG, CHECKPOINTS, EVAL_RECORDS)
# The folders every run makes in its directory (Hydra's, the checkpoints), and the one of each
# logger it has (``logger.csv``: csv/, ``logger.wandb``: wandb/): a file of the user's in one's
# place stopped the run midway.
RUN_FOLDERS = (".hydra", CHECKPOINTS)
LOGGER_FOLDERS = ("csv", "wandb")
# Launchers' rank variables: Lightning's DDP children, torchrun, other nodes, srun tasks.
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def absolute(path: str | os.PathLike) -> Path:
    """``path`` as lmlab names a run's or sweep's folder to Hydra (``os.path.abspath``): ``..``
    taken by name, so ``runs/x/../y`` is ``runs/y`` whether or not ``runs/x`` exists, and a
    leading ``~`` the home folder, as a shell reads it (Hydra took ``'~/runs/a'`` as a folder
    named ``~`` in the working directory). Every lock and check keys folders so, as the
    process's own lock is found again under any spelling."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def asked_checkpoint(cfg: Mapping) -> Path | None:
    """The checkpoint ``ckpt_path`` names, as typed but for a leading ``~`` (the home folder:
    quoted for Hydra, or from zsh, it reaches lmlab); None without one."""
    return Path(cfg["ckpt_path"]).expanduser() if cfg.get("ckpt_path") else None


def launch_rank_is_zero() -> bool:
    """True unless a launcher started this process as another rank than global 0."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def launcher_processes(environ: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """How many processes a launcher started, as Lightning reads it, and the variable that
    says so: SLURM's ``SLURM_NTASKS`` under srun (Lightning looks for SLURM first; a job named
    bash or interactive is not srun's), else torchrun's ``WORLD_SIZE`` (with its
    ``TORCHELASTIC_RUN_ID``). None where Lightning starts the processes itself: the
    ``WORLD_SIZE`` it gives its own children comes from this same config."""
    if "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        variable = "SLURM_NTASKS"
    elif "TORCHELASTIC_RUN_ID" in environ and "WORLD_SIZE" in environ:
        variable = "WORLD_SIZE"
    else:
        return None
    value = environ[variable].strip()
    return (variable, int(value)) if value.isdigit() else None


def launched_processes() -> tuple[str, int]:
    """How many processes were started for this run, each with this command, and the variable
    that says so: a launcher's (``launcher_processes``: srun's tasks, which Lightning reads as
    the run's ranks, or torchrun's), else ``WORLD_SIZE`` (Lightning's DDP children); 1
    without."""
    launched = launcher_processes()
    if launched is not None:
        return launched
    count = os.environ.get("WORLD_SIZE", "1")
    return ("WORLD_SIZE", int(count) if count.isdigit() else 1)


def in_the_way(folder: Path) -> Path | None:
    """The file that keeps ``folder`` from being created (``folder`` itself, or the nearest
    existing parent, where it is not a folder), or None."""
    for path in (absolute(folder), *absolute(folder).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def holds_run(path: Path, evals: bool = True) -> bool:
    """Whether ``path`` holds what a run writes (``RUN_FILES``). Two records, alone or
    together, are not a run, and the next command may use the directory: a ``results.json``
    that says ``failed`` (a start refused or failed before training: the plan and config are
    written when training starts), and a dry run's ``plan.json`` (``dry_run: true``), which a
    new dry run rewrites and a run replaces. An empty ``eval/`` or ``checkpoints/`` is
    nothing either (a ``checkpoints`` link to a larger disk, made before the first run).
    ``evals=False``: ``eval/`` alone is no run (``lmlab evaluate`` writes one beside loose
    checkpoints too)."""
    present = {name for name in RUN_FILES if (path / name).exists()}
    if not evals:
        present.discard(EVAL_RECORDS)
    for folder in (EVAL_RECORDS, CHECKPOINTS):
        if folder in present and not _holds_anything(path / folder):
            present.discard(folder)
    if RESULTS in present and read_record(path / RESULTS).get("status") == "failed":
        present.discard(RESULTS)  # with a plan and a config, that of a run that trained
    if PLAN in present and read_record(path / PLAN).get("dry_run") is True:
        present.discard(PLAN)
    return bool(present)


def refuse_files_in_the_way(run_dir: Path, loggers: Iterable[str]) -> None:
    """Refuse (``ConfigError``) a run directory where a file stands in the place of a folder
    the run makes (``RUN_FOLDERS``, and ``loggers``' own): the run failed midway in a
    traceback (FileExistsError, after Hydra's files and the plan were written) and the next
    command took it for an earlier run."""
    for name in [*RUN_FOLDERS, *(n for n in LOGGER_FOLDERS if n in loggers)]:
        path = run_dir / name
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"hydra.run.dir={run_dir}: {path} is a file where the run makes its {name}/ "
                "folder: move it away, or choose another directory"
            )


def _holds_anything(folder: Path) -> bool:
    """Whether ``folder`` is a file, or a folder that is not empty (unreadable: taken as
    holding something)."""
    try:
        return not folder.is_dir() or any(folder.iterdir())
    except OSError:
        return True


def run_files_in(path: Path) -> str:
    """The run files ``path`` holds (``RUN_FILES``), as a message lists them, a folder with
    its slash: ``results.json, plan.json, checkpoints/``."""
    folders = (CHECKPOINTS, EVAL_RECORDS)
    present = [n for n in RUN_FILES if (path / n).exists()]
    return ", ".join(f"{n}/" if n in folders else n for n in present)


# The callbacks that write checkpoints, each told the folder (conf/callbacks/default.yaml).
CHECKPOINT_WRITERS = ("checkpoint", "preemption", "guard")


def check_checkpoint_folder(callbacks: dict, out_dir: str | Path | None) -> None:
    """A checkpoint writer's ``dirpath`` other than the run directory's ``checkpoints/`` is
    refused: resume, ``compare`` and the fresh-run check find a run's checkpoints there only,
    and two runs given one folder overwrote each other's ``last.ckpt``, both completing. A
    config composed without a run directory (a sweep's check of its jobs' values) has none."""
    if out_dir is None:
        return
    expected = absolute(Path(out_dir) / CHECKPOINTS)
    for name in CHECKPOINT_WRITERS:
        node = callbacks.get(name)
        folder = node.get("dirpath") if node is not None else None
        if folder is not None and absolute(folder) != expected:
            raise ConfigError(
                f"callbacks.{name}.dirpath={folder}: a run's checkpoints go in its directory "
                f"({expected}), where resume and compare find them and no other run writes; "
                "for checkpoints on another disk, put the run there (hydra.run.dir=...)"
            )


def listed(names: list[str], most: int = 5) -> str:
    """``a, b, c``: the first ``most`` names, then how many more."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


SWEEP_DEPTH = 3  # how deep a sweep's jobs may sit: hydra.sweep.subdir=a/${hydra.job.num} is 2


def earlier_sweep_runs(sweep_dir: Path, depth: int = SWEEP_DEPTH) -> list[str]:
    """The folders at or under ``sweep_dir``, ``depth`` levels down at most, that hold a run
    (``RUN_FILES``), by their paths relative to it: ``0``, ``a/0`` (a nested
    ``hydra.sweep.subdir``), ``.`` (jobs that ran in the sweep folder itself,
    ``hydra.sweep.subdir=.``). A run's folder and hidden folders are not searched further.
    Hydra's launcher writes ``multirun.yaml`` in the sweep folder, and each job's ``.hydra/``,
    before any job's checks run: a new sweep into such a folder would overwrite what
    describes them."""
    found: list[str] = []

    def search(folder: Path, level: int) -> None:
        if holds_run(folder):
            found.append(folder.relative_to(sweep_dir).as_posix())
        elif level < depth:
            for child in folder.iterdir():
                if child.is_dir() and not child.name.startswith("."):
                    search(child, level + 1)

    if sweep_dir.is_dir():
        search(sweep_dir, 0)
    return sorted(found)
