"""The run plan: what a run will do, resolved once from the composed config, frozen, and saved
as ``plan.json`` in the run directory beside Hydra's ``.hydra/config.yaml``.

The composed config is never written to after Hydra saved it. Everything a run derives from it
is here instead: the global batch (micro-batch, devices, accumulation), the precision
(``trainer.precision=auto`` resolved), the vocabulary and parameter count, and the budget
(steps, tokens, FLOPs). The Trainer is built with the plan's steps, accumulation and precision,
the sampler draws the plan's rows, and a resumed run is checked against the plan it continues
(``check_resumable``). ``results.json`` repeats the budget and batch for the tools that read
only it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmlab.config import (
    PRETRAINING,
    AttentionKernel,
    BudgetConfig,
    DataConfig,
    ModelConfig,
    TaskKind,
    TaskSpec,
)
from lmlab.config.task import EXAMPLES_DIGEST
from lmlab.errors import ConfigError
from lmlab.model import build_task_model, param_breakdown
from lmlab.train.batch import GlobalBatch, device_count, resolve_global_batch, world_size
from lmlab.train.budget import Budget, budget_params, resolve_budget

PLAN_FILE = "plan.json"
# What a plan records of a prepared corpus (the rows entry's meta.json): rows, tokens and bytes
# per split, and a digest of its text (``packing.text_digest``; plans and cached rows written
# before it have none, and are compared by their counts alone).
CORPUS_RECORD = ("train", "val", "text_sha256")
# what of the plan a checkpoint keeps (``run_state``), for a resume whose plan.json was lost
RESUME_RECORD = ("batch", "corpus", "task")


@dataclass(frozen=True)
class RunPlan:
    batch: GlobalBatch
    precision: str  # Lightning's precision, resolved: "32-true", "bf16-mixed", ...
    budget: Budget
    vocab_size: int
    params: int  # total parameters
    active_params: int  # what one token runs through (a MoE: top_k of its experts)
    task: TaskSpec = PRETRAINING  # fine-tuning: its kind, labels and example counts
    # pre-training: the prepared corpus's rows, tokens and bytes per split ("train", "val")
    # and its text's digest (CORPUS_RECORD), which a resume must find again (None: not read,
    # as in a dry run or a sweep's checks)
    corpus: dict[str, Any] | None = None

    @property
    def steps(self) -> int:
        return self.budget.steps

    @property
    def train_samples(self) -> int:
        """Training rows the sampler draws over the whole run (steps x global batch)."""
        return self.steps * self.batch.rows

    def start_sample(self, global_step: int) -> int:
        """The data position after ``global_step`` optimizer steps: one integer."""
        return global_step * self.batch.rows

    def trainer_args(self, trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """What the Trainer takes from the plan instead of from ``cfg.trainer``; with
        ``val_check_interval`` in micro-batches. lmlab counts it in optimizer steps, as
        ``log_every_n_steps`` is counted; Lightning counts micro-batches, so its validations
        moved with the accumulation, and with it the device count (null: once, at the end)."""
        args: dict[str, Any] = {
            "max_steps": self.steps,
            "accumulate_grad_batches": self.batch.accumulation,
            "precision": self.precision,
        }
        every = trainer_cfg.get("val_check_interval")
        if every is not None:
            args["val_check_interval"] = every * self.batch.accumulation
        return args

    def as_dict(self) -> dict[str, Any]:
        plan = {
            "steps": self.steps,
            "batch": self.batch.as_dict(),
            "precision": self.precision,
            "vocab_size": self.vocab_size,
            "params": self.params,
            "active_params": self.active_params,
            "train_samples": self.train_samples,
            "budget": self.budget.as_dict(),
        }
        if self.corpus is not None:
            plan["corpus"] = self.corpus
        if self.task.kind != TaskKind.lm:  # a pre-training plan stays as it was
            plan["task"] = self.task.record() | {
                "train_examples": self.task.train_examples,
                "val_examples": self.task.val_examples,
            }
        return plan

    def resume_record(self) -> dict[str, Any]:
        """What a resume checks (``check_resumable``): the global batch, the corpus's record
        and a fine-tuning run's examples, for checkpoints to keep."""
        return {key: v for key, v in self.as_dict().items() if key in RESUME_RECORD}


def on_cuda(trainer_cfg: DictConfig) -> bool:
    """Whether the run's accelerator is a CUDA GPU (``auto`` takes one when there is one)."""
    accelerator = str(trainer_cfg.accelerator)
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def trainer_precisions() -> list[str]:
    """What ``trainer.precision`` may be: lmlab's ``auto`` and Lightning's own values."""
    from lightning.fabric.connector import _PRECISION_INPUT  # Lightning's list of them

    values = (str(v) for kind in get_args(_PRECISION_INPUT) for v in get_args(kind))
    return list(dict.fromkeys(["auto", *values]))


def check_trainer_choices(trainer_cfg: DictConfig) -> None:
    """``trainer.precision``, ``accelerator`` and ``devices`` are values Lightning takes, on
    any machine: refused here, in one line, rather than by the Trainer once the data is
    prepared (through a traceback)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from lmlab.train.distributed import check_strategy

    check_strategy(trainer_cfg)
    precision = str(trainer_cfg.get("precision", "32-true"))
    if precision not in (allowed := trainer_precisions()):
        raise ConfigError(f"trainer.precision={precision}: allowed {', '.join(allowed)}")
    check_strategy_precision(trainer_cfg, precision)
    accelerator = trainer_cfg.get("accelerator", "auto")
    names = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
    if isinstance(accelerator, str) and accelerator not in names:
        raise ConfigError(f"trainer.accelerator={accelerator}: allowed {', '.join(names)}")
    devices = trainer_cfg.get("devices", "auto")
    ids = list(devices) if OmegaConf.is_list(devices) or isinstance(devices, list) else None
    text = str(devices).strip()
    if ids is not None:
        valid = bool(ids) and all(isinstance(i, int) and i >= 0 for i in ids)
    elif "," in text:  # "0,1": those device ids
        valid = all(part.strip().isdigit() for part in text.split(",") if part.strip())
    else:
        valid = text == "auto" or text == "-1" or (text.isdigit() and int(text) >= 1)
    if not valid:
        shown = str(devices).lower() if isinstance(devices, bool) else devices  # as typed
        raise ConfigError(
            f"trainer.devices={shown}: allowed an int >= 1 (that many devices), -1 or auto "
            "(every one), or a list of device ids ([0, 1] or '0,1')"
        )
    if accelerator == "cpu" and not (text == "auto" or text.isdigit()):  # Lightning's rule
        raise ConfigError(
            f"trainer.devices={devices} with trainer.accelerator=cpu: allowed an int >= 1 "
            "(that many processes) or auto (one)"
        )
    check_one_process(trainer_cfg)


def check_one_process(trainer_cfg: DictConfig) -> None:
    """``trainer=cpu`` is one process: with ``trainer.devices`` above 1 and no strategy,
    Lightning quietly ran its own DDP instead, with its defaults, not ``trainer=ddp``'s."""
    devices = str(trainer_cfg.get("devices", "auto"))
    strategy = trainer_cfg.get("strategy") or "auto"
    if trainer_cfg.get("accelerator") != "cpu" or strategy != "auto" or not devices.isdigit():
        return
    if int(devices) > 1:
        raise ConfigError(
            f"trainer.devices={devices}: trainer=cpu (trainer.accelerator=cpu, no "
            f"trainer.strategy) trains in one process; for {devices} CPU processes use "
            f"trainer=ddp trainer.devices={devices} trainer.accelerator=cpu (or trainer=fsdp); "
            "allowed: 1 or auto"
        )


# What Lightning's ModelParallelStrategy (trainer=fsdp) trains with: the list is local to its
# AcceleratorConnector._validate_precision_choice (Lightning 2.6), not exposed, so it is
# stated here; the Trainer raises for any other once the data is prepared.
MODEL_PARALLEL_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")


def check_strategy_precision(trainer_cfg: DictConfig, precision: str) -> None:
    """A precision the configured strategy refuses (``trainer=fsdp`` with ``16-mixed``) is
    refused here, in one line; lmlab's ``auto`` resolves to one every strategy takes."""
    from lightning.fabric.connector import _PRECISION_INPUT_STR_ALIAS_CONVERSION as ALIASES
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lmlab.train.distributed import strategy_class

    strategy = strategy_class(trainer_cfg)
    if precision == "auto" or strategy is None or not issubclass(strategy, ModelParallelStrategy):
        return
    if ALIASES.get(precision, precision) not in MODEL_PARALLEL_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not one {strategy.__name__} (trainer=fsdp) "
            f"trains with: allowed {', '.join(MODEL_PARALLEL_PRECISIONS)}, or auto (bf16-mixed "
            "on a GPU with bf16, 32-true otherwise)"
        )


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """A run that asks for a GPU runs on one: ``trainer.accelerator`` gpu or cuda where torch
    sees none, or ``trainer.devices`` above the GPUs it sees, is refused before any data is
    read (Lightning would raise once the Trainer is built, through a traceback)."""
    accelerator = str(trainer_cfg.accelerator)
    if accelerator not in ("gpu", "cuda"):
        check_available(accelerator)
        return
    mps = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's gpu
    if not torch.cuda.is_available() and not mps:
        build = (
            f"torch {torch.__version__} is a CPU build"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no device: "
            "check the driver and CUDA_VISIBLE_DEVICES"
        )
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and torch sees none ({build}); "
            "use trainer=cpu, or trainer.accelerator=auto to take a GPU where there is one"
        )
    devices, count = str(trainer_cfg.get("devices", 1)), torch.cuda.device_count()
    if not mps and devices.isdigit() and int(devices) > count:
        raise ConfigError(
            f"trainer.devices={devices} but torch sees {count} CUDA GPU(s) here; "
            f"use trainer.devices={count} or fewer, or auto (every GPU)"
        )


def check_available(accelerator: str) -> None:
    """An accelerator Lightning knows but this machine lacks (``tpu`` without torch_xla,
    ``mps`` off a Mac): refused in one line, as the Trainer would refuse it through a
    traceback. ``gpu`` and ``cuda`` are ``check_accelerator``'s."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    if accelerator == "auto" or accelerator not in AcceleratorRegistry:
        return  # auto takes what there is; an unknown name is check_trainer_choices'
    found = AcceleratorRegistry[accelerator]["accelerator"]
    if accelerator_available(found):
        return
    here = ["auto"] + [
        name
        for name in sorted(AcceleratorRegistry.available_accelerators())
        if accelerator_available(AcceleratorRegistry[name]["accelerator"])
    ]
    here += ["gpu"] if "cuda" in here or "mps" in here else []
    raise ConfigError(
        f"trainer.accelerator={accelerator}: not available on this machine (Lightning's "
        f"{found.__name__} finds none here); allowed here: {', '.join(here)}"
    )


def accelerator_available(accelerator: type) -> bool:
    """Lightning's ``is_available()`` of an accelerator class; False where asking fails."""
    try:
        return bool(accelerator.is_available())
    except Exception:  # noqa: BLE001 (a backend that cannot even be asked is not here)
        return False


def launched_processes(environ: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
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


def check_world_size(trainer_cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Under a launcher, ``trainer.devices x trainer.num_nodes`` is the number of processes it
    started: Lightning refuses any other once the data is prepared (one traceback per rank).
    ``devices`` auto or -1 counts as Lightning counts it on this node (every GPU torch sees, 1
    on a CPU: ``lmlab.train.batch.device_count``), so torchrun's two CPU processes with
    ``trainer.devices=auto`` are refused too, as Lightning would refuse them."""
    launched = launched_processes(environ)
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


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """``trainer.precision=auto``: bf16-mixed where the run's accelerator is a GPU with bf16,
    32-true otherwise (CPUs without native bf16 run bf16 many times slower)."""
    precision = str(trainer_cfg.precision)
    if precision != "auto":
        return precision
    return "bf16-mixed" if on_cuda(trainer_cfg) and torch.cuda.is_bf16_supported() else "32-true"


def check_attention_kernel(trainer_cfg: DictConfig, model_cfg: ModelConfig) -> None:
    """``model.attention_kernel=flex`` trains on CUDA only: torch's FlexAttention has no
    backward pass on other devices (it raises at the first step)."""
    if model_cfg.attention_kernel == AttentionKernel.flex and not on_cuda(trainer_cfg):
        raise ConfigError(
            f"model.attention_kernel=flex cannot train with trainer.accelerator="
            f"{trainer_cfg.accelerator} (CUDA available: {torch.cuda.is_available()}): "
            "FlexAttention has no backward pass off CUDA; use model.attention_kernel=auto "
            "(FlexAttention on CUDA, SDPA elsewhere) or sdpa"
        )


def meta_model(model_cfg: ModelConfig, task: TaskSpec = PRETRAINING) -> nn.Module:
    """The model ``task`` trains with shapes only (no storage), for parameter and FLOP
    counts."""
    if model_cfg.vocab_size is None:
        raise ConfigError("planning needs model.vocab_size (see planning_model_config)")
    with torch.device("meta"):
        return build_task_model(model_cfg, task)


def make_plan(
    cfg: DictConfig,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    seq_len: int,
    task: TaskSpec = PRETRAINING,
    corpus: dict[str, Any] | None = None,
) -> RunPlan:
    """The plan of the run ``cfg`` describes; ``model_cfg`` has its final ``vocab_size``,
    ``task`` its labels (fine-tuning: the examples are read), ``corpus`` the prepared
    corpus's counts (``RunPlan.corpus``)."""
    batch = resolve_global_batch(cfg.trainer, data_cfg, seq_len)
    counts = param_breakdown(meta_model(model_cfg, task))
    budget_cfg: BudgetConfig = OmegaConf.to_object(cfg.budget)
    n = budget_params(budget_cfg, counts)
    budget = resolve_budget(budget_cfg, n, batch.tokens, int(cfg.trainer.max_steps))
    precision = resolve_precision(cfg.trainer)
    return RunPlan(
        batch,
        precision,
        budget,
        model_cfg.vocab_size,
        counts["total"],
        counts["active"],
        task,
        corpus,
    )


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON atomically: a temporary file, named for this process so that
    processes writing the same file (the CPU peak cache) do not share it, renamed over
    ``path``. A reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


def read_plan(out_dir: Path) -> dict[str, Any] | None:
    """The plan saved in a run directory, or None (a run from before plans were saved, or
    one whose ``plan.json`` was deleted: its checkpoints keep the global batch too)."""
    path = out_dir / PLAN_FILE
    if not path.exists():
        return None
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        plan = f"{type(err).__name__}: {err}"
    if not isinstance(plan, dict) or not isinstance(plan.get("batch"), dict):
        raise ConfigError(
            f"cannot resume {out_dir}: its {PLAN_FILE} cannot be read as a run plan "
            f"({plan if isinstance(plan, str) else 'no batch in it'}): restore it from a copy "
            "of the run, or delete it (the checkpoint's global batch is checked instead)"
        )
    return plan


def corpus_size(corpus: dict[str, Any]) -> str:
    """``1,234 training tokens from 5,678 bytes`` of a plan's ``corpus``."""
    train = corpus.get("train") or {}
    return f"{train.get('tokens', 0):,} training tokens from {train.get('bytes', 0):,} bytes"


def corpus_change(was: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """How the corpus a run trained on (``was``, its plan's record) differs from this run's
    (``now``), said for the message; None when it is the same, or when either was not read.
    Each record is compared on the keys both hold: a plan written before the text digest was
    recorded is checked by its counts."""
    if was is None or now is None:
        return None
    shared = [key for key in CORPUS_RECORD if key in was and key in now]
    if all(was[key] == now[key] for key in shared):
        return None
    if any(was.get(split) != now.get(split) for split in ("train", "val")):
        return f"{PLAN_FILE} has {corpus_size(was)}, this run's data {corpus_size(now)}"
    return (
        f"the same size ({corpus_size(now)}) but other text (its digest "
        f"{was.get('text_sha256')}, now {now.get('text_sha256')})"
    )


def task_change(
    was: dict[str, Any] | None, now: dict[str, Any] | None, source: str = PLAN_FILE
) -> str | None:
    """How the examples a fine-tuning run trained on (``was``, its plan's task record) differ
    from this run's (``now``), said for the message; None when they are the same, or when
    this run's plan holds no task: one made before the examples are read (a sweep's checks,
    which read no corpus either; the job checks again once it has read them), or a
    pre-training run's, which its config has told apart already (``check_same_run``). The
    examples' digest is compared where both records hold one: a plan written before it was
    recorded is checked by its counts and labels."""
    if now is None:
        return None
    digests = [(record or {}).get(EXAMPLES_DIGEST) for record in (was, now)]
    was, now = (
        None if record is None else {k: v for k, v in record.items() if k != EXAMPLES_DIGEST}
        for record in (was, now)
    )
    if was != now:
        return f"its {source} has task {was}, this run {now}"
    if None in digests or digests[0] == digests[1]:
        return None
    return (
        f"the same {now['train_examples']:,} training and {now['val_examples']:,} validation "
        f"examples and labels, other contents (their digest {digests[0]}, now {digests[1]})"
    )


def check_resumable(
    saved: dict[str, Any] | None, plan: RunPlan, out_dir: Path, source: str = PLAN_FILE
) -> None:
    """A resumed run continues the data position ``step x global batch rows`` of the run it
    continues, so its data (the corpus, or a fine-tuning run's examples), global batch and
    sequence length must be the same; its steps (a longer run), precision and device count may
    differ. ``saved``: the run directory's plan, or (``source``: a checkpoint) the part of it
    its checkpoint records (``RESUME_RECORD``; older checkpoints: the batch only). What ``plan``
    has not read (a sweep's checks: no corpus, no examples) is left to the run, which checks
    again once it has read them."""
    if saved is None:
        return
    # a checkpoint written before it kept its task record has none to compare (its task's
    # fields are checked with its model: resume.check_checkpoint_model)
    if (source == PLAN_FILE or "task" in saved) and (
        changed := task_change(saved.get("task"), plan.as_dict().get("task"), source)
    ):
        origin = plan.task.origin or f"task={plan.task.kind.value}"
        raise ConfigError(
            f"cannot resume {out_dir}: the examples of {origin} changed since it "
            f"started: {changed} (the data position would point at other examples): resume "
            "with the examples it was trained on (a relative task.train or task.val is read "
            "from the working directory), or start a new run"
        )
    changed = corpus_change(saved.get("corpus"), plan.corpus)
    if changed:
        raise ConfigError(
            f"cannot resume {out_dir}: its corpus changed since it started: {changed} (the "
            "data position would point at other rows): resume with the data it was trained "
            "on (a relative data.path is read from the working directory), or start a new run"
        )
    was, now = saved["batch"], plan.batch.as_dict()
    for key in ("global_batch_size", "seq_len"):
        if was.get(key) != now[key]:
            raise ConfigError(
                f"cannot resume {out_dir}: its {source} has {key}={was.get(key)}, this run "
                f"{now[key]} (the data position is steps x global batch): keep the global batch "
                "(data.global_batch_size) and sequence length of the run you continue"
            )
