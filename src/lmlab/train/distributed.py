"""Many processes through Lightning: the FSDP2 strategy and Hydra multiruns (the global batch
is ``lmlab.train.batch``; ``trainer.strategy`` is checked in ``lmlab.train.strategy_check``).

- ``FSDPStrategy`` is Lightning's ``ModelParallelStrategy`` (FSDP2, which also runs on CPU
  with gloo) with the whole world as the data-parallel (sharding) dimension, and sharded
  checkpoints written atomically: into a temporary folder, renamed into place once every rank
  has written its shard.
- ``RankLostError``: a rank whose peer's process is gone stops in one line.
- ``job_command`` and ``JobScope`` make Hydra multiruns work with DDP/FSDP (a long-standing
  breakage of Lightning + Hydra): Lightning starts the other ranks by re-running the command
  line, which in a multirun is the whole sweep. The children instead get this job's own
  overrides and output folder, and the next job starts only when this job's processes have
  exited, with the environment Lightning set for them removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import ModelParallelStrategy

from lmlab.config.asked import as_typed
from lmlab.errors import ConfigError, refused_save

log = logging.getLogger(__name__)


class FSDPStrategy(ModelParallelStrategy):
    """FSDP2 sharding over every process (data_parallel = world size, tensor_parallel = 1).
    ``LMTask.configure_model`` applies ``fully_shard`` per block on ``device_mesh``."""

    # What this class passes ModelParallelStrategy itself, not settings of a node: one given
    # as ``+trainer.strategy.tensor_parallel_size=2`` would be a second value for the same
    # argument (a TypeError once the data is prepared), so ``check_strategy`` refuses it.
    FIXED_ARGUMENTS = {"data_parallel_size": "auto", "tensor_parallel_size": 1}

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(
            **self.FIXED_ARGUMENTS,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        """Every rank on this node's share of the cores, as under DDP. Lightning sets it in
        the launcher, which ``ModelParallelStrategy`` gives rank 0 alone (after starting the
        others), so a child rank would run on torch's default of every core, and take the
        share only where rank 0's environment already held ``OMP_NUM_THREADS`` (a multirun's
        later jobs): its sums would run in another order, and a run resumed from a multirun
        job's checkpoint would not reproduce it to the last bit."""
        self._data_parallel_size = self.num_nodes * self.num_processes
        _set_num_threads_if_needed(num_processes=self.num_processes)
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        """A sharded folder as Lightning loads it; a single file (a run of one process or of
        DDP, continued sharded) with its optimizer states keyed by parameter name in the
        optimizer's own order. Lightning names them in the module's order, which lmlab's two
        weight-decay groups do not follow: each Adam moment went to another parameter, a
        size-mismatch traceback (or, between two tensors of one shape, a wrong resume)."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if path.is_dir():
            return super().load_checkpoint(path, weights_only=weights_only)
        from lightning.fabric.strategies.model_parallel import _load_raw_module_state
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        strict = self.lightning_module.strict_loading
        safe = True if weights_only is None else weights_only
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=safe)
        _load_raw_module_state(checkpoint.pop("state_dict"), self.model, strict=strict)
        options = StateDictOptions(broadcast_from_rank0=True, full_state_dict=True, strict=strict)
        for optimizer, state in zip(self.optimizers, checkpoint["optimizer_states"], strict=True):
            named = keyed_by_name(state, optimizer, self.model)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=named, options=options)
        return checkpoint

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Every rank writes its shard into ``.<name>.tmp``; after all have, rank 0 renames it
        over ``<name>``: a kill during a save leaves the previous checkpoint whole. A save the
        storage refused (a full disk, a folder that cannot be written) names the checkpoint
        (``refused_save``), and its partial shards are removed."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was killed
        self.barrier("lmlab_ckpt_clean")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        except BaseException as err:
            refused = refused_save(err, path)
            if refused is None:
                raise
            if self.is_global_zero:  # every rank's writes have ended: the save is collective
                shutil.rmtree(tmp, ignore_errors=True)
            raise refused from err
        self.barrier("lmlab_ckpt_written")
        if self.is_global_zero:
            old = path.with_name(f".{path.name}.old")
            if os.path.lexists(path):  # a folder, or last.ckpt's link to a step checkpoint
                path.rename(old)
            tmp.rename(path)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif os.path.lexists(old):
                old.unlink()
        self.barrier("lmlab_ckpt_renamed")


def keyed_by_name(state: dict[str, Any], optimizer: Any, model: Any) -> dict[str, Any]:
    """A saved optimizer state (torch's: parameters numbered in the order of its groups) keyed
    by ``model``'s parameter names instead: the saved groups' numbers, in order, are
    ``optimizer``'s parameters, group by group."""
    names = {id(p): name for name, p in model.named_parameters()}
    numbers = [i for group in state["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if [len(g["params"]) for g in state["param_groups"]] != [
        len(g["params"]) for g in optimizer.param_groups
    ]:
        raise ConfigError(
            "the checkpoint's optimizer has other parameter groups than this run's "
            f"({[len(g['params']) for g in state['param_groups']]} parameters per group, "
            f"this run {[len(g['params']) for g in optimizer.param_groups]})"
        )
    name = {i: names[id(p)] for i, p in zip(numbers, params, strict=True)}
    return {
        "state": {name[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [name[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


# What a collective says when another rank's process is gone (killed, out of memory): gloo's
# and NCCL's words, and torch's store's.
RANK_GONE = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "remote process exited",
    "NCCL communicator was aborted",
)


class RankLostError(RuntimeError):
    """This rank could not go on because another rank of the run stopped (its process killed
    or out of memory): said in one line, with the resume command where there is a
    checkpoint, instead of a collective's traceback."""


def lost_rank(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank's process is gone."""
    return isinstance(err, RuntimeError) and any(words in str(err) for words in RANK_GONE)


def job_command(local_rank: int) -> tuple[Sequence[str], str]:
    """The command Lightning runs for rank ``local_rank`` under Hydra: this job alone (its own
    overrides, its output folder), never the sweep. Replaces Lightning's
    ``_hydra_subprocess_cmd``, which re-runs ``sys.argv`` (``-m`` and all sweep values)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hydra_cfg = HydraConfig.get()
    command = [*train_command(), *as_typed(hydra_cfg.overrides.task)]
    command += [
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        f"hydra.job.name=rank{local_rank}",
        "hydra.output_subdir=null",  # the .hydra/ of the job is rank 0's
    ]
    return command, get_original_cwd()


def train_command() -> list[str]:
    """How to start ``lmlab train`` in a child process, whichever way this one was started
    (``python src/train.py``, the ``lmlab`` console script, ``python -m``): the checkout's
    ``src/train.py`` when there is one, else the module."""
    script = Path(__file__).resolve().parents[2] / "train.py"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "lmlab.cli.train"]


def install_job_command() -> None:
    """Point Lightning's launcher at ``job_command`` (tested by the DDP multirun test) and at
    ``StopAwareObserver``."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = job_command
    subprocess_script._launch_process_observer = launch_observer


# The exit codes of a rank that stopped as lmlab stops a run: preempted (SIGTERM, SIGUSR1)
# after its checkpoint, interrupted (Ctrl-C). Every rank agreed on the stop.
STOP_CODES = (143, 130)
# How long rank 0 may take to end after a child stopped so (its save, results.json), before
# every process is ended as Lightning ends them after a crash (one stuck would hang the job).
STOP_GRACE_S = 300.0


class StopAwareObserver(_ChildProcessObserver):
    """Lightning's watcher of the child ranks, which SIGKILLs the main process (rank 0) and
    every rank once a child exits with a code that is not 0: a child that stopped as the run
    agreed (``STOP_CODES``: its checkpoint saved, results.json written by rank 0) often exited
    first, and rank 0, still writing, was killed (exit 137, not the 143 of a SIGTERM stop that
    SLURM and wrapper scripts read). Such an exit is left to rank 0, which stops on its own;
    any other (a crash, a signal) still ends every process."""

    standing_down = False  # rank 0 failed and ends its children itself (JobScope.close)

    def _run(self) -> bool:
        if self.standing_down:
            return True
        for proc in self._child_processes:
            proc.poll()
        codes = [proc.returncode for proc in self._child_processes]
        if all(code == 0 for code in codes):
            return True  # every child is done: the run ended
        failed = [code for code in codes if code not in (None, 0, *STOP_CODES)]
        if not failed and any(code in STOP_CODES for code in codes):
            self.stopping_since = getattr(self, "stopping_since", None) or time.monotonic()
            if time.monotonic() - self.stopping_since < STOP_GRACE_S:
                return False  # a stop under way: the other ranks stop on their own
        return super()._run()  # a crash, or a stop rank 0 did not end in time: all ended


def launch_observer(child_processes: list[subprocess.Popen]) -> None:
    """Lightning's ``_launch_process_observer``, with ``StopAwareObserver``."""
    observer = StopAwareObserver(main_pid=os.getpid(), child_processes=child_processes)
    OBSERVERS.append(observer)
    observer.start()


OBSERVERS: list[StopAwareObserver] = []  # this process's, one per job that started ranks


# How long rank 0, failed alone, waits for its children before it ends them: a failure every
# rank met (the non-finite guard's) ends them within seconds.
FAILED_GRACE_S = 30.0

# Set by Lightning's launcher in the main process for its children; left in place they make
# the next job of a multirun believe it is a child (LOCAL_RANK) and wait for a world forever,
# and (OMP_NUM_THREADS, with torch's thread count) would run a later job of one process on a
# DDP rank's share of the cores, summing in another order than the same job run alone.
LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
)


class JobScope:
    """One job's processes, from start to exit: ``close()`` waits for the child ranks,
    destroys the process group and restores the launch environment and thread count."""

    def __init__(self) -> None:
        self.env = {k: os.environ.get(k) for k in LAUNCH_ENV}
        self.threads = torch.get_num_threads()
        self.trainer: Any | None = None  # set once built
        self.failed = False  # this process failed: its ranks may wait for it in a collective

    def close(self, timeout: float = 300.0) -> None:
        """Wait for the child ranks (at most ``timeout`` in all), then end the process group.
        Where this process (rank 0) failed alone (its CSV log unwritable, its run directory
        removed), the children wait for it in their next collective, which fails only once
        this process has exited: they are waited for ``FAILED_GRACE_S`` (a failure every rank
        met ends them sooner), then ended, where they waited out ``timeout`` and were killed
        then. Its record is written already. Lightning's watcher of the children stands down
        first: their end is this job's, not a crash to SIGKILL this process for."""
        launcher = getattr(getattr(self.trainer, "strategy", None), "launcher", None)
        procs = getattr(launcher, "procs", []) or []
        if self.failed:
            for observer in OBSERVERS:
                observer.standing_down = True
        limit = min(timeout, FAILED_GRACE_S) if self.failed else timeout
        deadline = time.monotonic() + limit
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                waited = "waiting for this failed rank" if self.failed else "still running"
                log.warning("rank process %d %s after %.0f s: kill", proc.pid, waited, limit)
                proc.kill()
                proc.wait()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        OBSERVERS.clear()
        torch.set_num_threads(self.threads)
        for key, value in self.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
