"""What a run of several processes needs for its ranks to meet, checked before any data is
prepared or any rank starts (each a one-line ConfigError naming the field, the value and what
is allowed): a process-group backend this torch has and the run's tensors can use, a
launcher's world size equal to the planned one, a free ``MASTER_PORT``."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping

import torch
from omegaconf import DictConfig

from lmlab.errors import ConfigError
from lmlab.train.batch import device_count, world_size
from lmlab.train.machine import on_cuda
from lmlab.train.runfiles import launcher_processes

# torch.distributed's communication backends (its Backend list, less "undefined" and "fake")
PROCESS_GROUP_BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")


def check_process_group_backend(trainer_cfg: DictConfig) -> None:
    """``trainer.strategy.process_group_backend`` is one this torch has and the run's tensors
    can use (NCCL reduces CUDA tensors only): ``nccl`` on a CPU build started every rank and
    failed in each, after the data was prepared, with a traceback (``Distributed package
    doesn't have NCCL built in``)."""
    import torch.distributed as dist

    from lmlab.train.strategy_check import strategy_arguments

    backend = strategy_arguments(trainer_cfg).get("process_group_backend")
    if backend is None:
        return
    gpu = on_cuda(trainer_cfg)
    here = [
        name
        for name in PROCESS_GROUP_BACKENDS
        if dist.is_available() and dist.is_backend_available(name) and (gpu or name != "nccl")
    ]
    if backend in here:
        return
    cpu_nccl = backend == "nccl" and not gpu
    why = "NCCL reduces CUDA tensors only" if cpu_nccl else "not a backend this torch has"
    raise ConfigError(
        f"trainer.strategy.process_group_backend={backend}: {why} (torch "
        f"{torch.__version__}, trainer.accelerator={trainer_cfg.accelerator}); allowed here: "
        f"{', '.join(here) or 'none'}, or null (the device's own: nccl on a GPU, gloo on a CPU)"
    )


def check_world_size(trainer_cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Under a launcher, ``trainer.devices x trainer.num_nodes`` is the number of processes it
    started: Lightning refuses any other once the data is prepared (one traceback per rank).
    ``devices`` auto or -1 counts as Lightning counts it on this node (every GPU torch sees, 1
    on a CPU: ``lmlab.train.batch.device_count``), so torchrun's two CPU processes with
    ``trainer.devices=auto`` are refused too, as Lightning would refuse them."""
    launched = launcher_processes(environ)
    planned = world_size(trainer_cfg)
    if launched is None or launched[1] == planned:
        return
    variable, world = launched
    devices = trainer_cfg.get("devices", "auto")
    counted = device_count(devices, trainer_cfg.accelerator)
    here = "" if str(devices).isdigit() else f" ({counted} on this node)"
    raise ConfigError(
        f"trainer.devices={devices}{here} x trainer.num_nodes={trainer_cfg.num_nodes} is "
        f"{planned} process(es), but the launcher started {world} ({variable}={world}): set "
        "trainer.devices to the processes per node (torchrun --nproc-per-node, SLURM "
        "--ntasks-per-node) and trainer.num_nodes to the nodes"
    )


def check_master_port(trainer_cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> None:
    """A ``MASTER_PORT`` another program listens on, in the process that starts the ranks of
    a single-node run itself (no torchrun, SLURM or other launcher in the environment, no
    ``LOCAL_RANK``: not one of the ranks it started): rank 0 failed to bind it (recorded only
    in results.json) and the other ranks waited for it forever, saying nothing. A
    ``MASTER_ADDR`` that is not this machine's (a store elsewhere) is left alone."""
    from lmlab.config.resolve import LAUNCHER_VARIABLES

    port = environ.get("MASTER_PORT")
    if port is None or any(name in environ for name in (*LAUNCHER_VARIABLES, "LOCAL_RANK", "RANK")):
        return
    if int(trainer_cfg.get("num_nodes") or 1) != 1 or world_size(trainer_cfg) < 2:
        return
    if not port.strip().isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"MASTER_PORT={port}: not a port number; allowed: 1 to 65535, or unset it (a free "
            "port is chosen)"
        )
    if port_in_use(environ.get("MASTER_ADDR") or "127.0.0.1", int(port)):
        raise ConfigError(
            f"MASTER_PORT={port} is in use on this machine (another run, or another program): "
            "unset it (a free port is chosen) or pick another"
        )


def port_in_use(address: str, port: int) -> bool:
    """Whether ``port`` is taken on this machine, ``address`` being one of its addresses:
    bound as torch's TCPStore binds it (every interface, SO_REUSEADDR, so a port a finished
    run left in TIME_WAIT is free). False for an address of another machine, or one that does
    not resolve (Lightning says so itself)."""
    try:
        family, kind, _, _, sockaddr = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)[0]
    except OSError:
        return False
    with socket.socket(family, kind) as probe:
        try:
            probe.bind((sockaddr[0], 0))
        except OSError:
            return False  # not this machine's address: the store is elsewhere
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False
