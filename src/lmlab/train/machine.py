"""What of the trainer's settings this machine can run, checked before any data is prepared
or any rank starts (each a one-line ConfigError naming the field, the value and what is
allowed): precision, accelerator and its availability, devices, the strategy's precision, the
attention kernel; and ``trainer.precision=auto`` resolved for this machine, and what
``cuda_graphs=true`` needs. The run plan (``lmlab.train.plan``) takes its precision from here.
How several processes' ranks meet (backend, world size, ``MASTER_PORT``): ``rank_check``."""

from __future__ import annotations

import logging
from typing import get_args

import torch
from omegaconf import DictConfig, OmegaConf

from lmlab.config import AttentionKernel, ModelConfig
from lmlab.errors import ConfigError, say_once
from lmlab.train.batch import GlobalBatch, check_rank_sharding

log = logging.getLogger(__name__)


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

    from lmlab.train.strategy_check import (
        check_lightning_fsdp,
        check_start_method,
        check_strategy,
    )

    check_strategy(trainer_cfg)
    check_start_method(trainer_cfg)
    check_lightning_fsdp(trainer_cfg)
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
    check_rank_sharding(trainer_cfg)


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

    from lmlab.train.strategy_check import strategy_class

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
    from lmlab.train.strategy_check import check_lightning_fsdp

    accelerator = str(trainer_cfg.accelerator)
    if accelerator not in ("gpu", "cuda"):
        check_available(accelerator)
        check_lightning_fsdp(trainer_cfg, cuda=torch.cuda.is_available())  # auto: here's
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


# Lightning's precisions that need NVIDIA's Transformer Engine package installed
TRANSFORMER_ENGINE_PRECISIONS = ("transformer-engine", "transformer-engine-float16")


def transformer_engine_missing() -> str | None:
    """Why Lightning cannot build its Transformer Engine precision here (its own requirement
    check's words), or None where it can."""
    from lightning.fabric.plugins.precision.transformer_engine import (
        _TRANSFORMER_ENGINE_AVAILABLE as AVAILABLE,
    )

    return None if AVAILABLE else str(AVAILABLE)


def check_precision_installed(trainer_cfg: DictConfig) -> None:
    """``trainer.precision=transformer-engine`` (or ``-float16``) where the package is not
    installed: refused in one line, rather than by the Trainer once the data is prepared,
    through a traceback. A dry run plans for another machine, which may have it."""
    precision = str(trainer_cfg.get("precision", "32-true"))
    if precision in TRANSFORMER_ENGINE_PRECISIONS and (why := transformer_engine_missing()):
        raise ConfigError(
            f"trainer.precision={precision} needs NVIDIA's transformer_engine package, which "
            f"this machine lacks ({why}); use bf16-mixed, or auto (bf16-mixed on a GPU with "
            "bf16, 32-true otherwise)"
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


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """The precision the run trains in, as Lightning's full name. ``auto``: bf16-mixed where
    the run's accelerator is a GPU with bf16, 32-true otherwise (CPUs without native bf16 run
    bf16 many times slower). Lightning's short spellings (``16``, ``bf16``, ``32``, ``64``) as
    the names Lightning reads them as, and fp16 autocast (``16-mixed``) on a CPU as the
    ``bf16-mixed`` Lightning then runs instead (said once): plan.json named ``16-mixed``
    and a dry run timed fp16 steps (215 tokens/s against bf16's 3,211 in one pair of dry
    runs on the 2-core CPU) for a run that took bf16."""
    from lightning.fabric.connector import _PRECISION_INPUT_STR_ALIAS_CONVERSION as ALIASES

    asked = str(trainer_cfg.precision)
    if asked == "auto":
        cuda = on_cuda(trainer_cfg) and torch.cuda.is_bf16_supported()
        return "bf16-mixed" if cuda else "32-true"
    precision = ALIASES.get(asked, asked)
    if precision == "16-mixed" and on_cpu(trainer_cfg):
        say_once(
            log,
            logging.WARNING,
            f"trainer.precision={asked} runs as bf16-mixed on a CPU (Lightning has no fp16 "
            "autocast there)",
        )
        return "bf16-mixed"
    if precision in ROUNDED_UPDATES:
        say_once(log, logging.WARNING, rounded_updates(asked, precision))
    return precision


# The true 16-bit precisions: weights, AdamW's moments and its update in 16 bits, whose
# spacing near a weight w is 2^-8 to 2^-7 of it (bf16) or 2^-11 to 2^-10 (fp16): an update
# below half of that rounds to no change, and more of them do as the learning rate decays
# (its dtype, half its spacing as a share of the weight)
ROUNDED_UPDATES = {"bf16-true": ("bf16", "0.2 to 0.4%"), "16-true": ("fp16", "0.02 to 0.05%")}


def rounded_updates(asked: str, precision: str) -> str:
    """Why a true 16-bit run learns less than a mixed one at the same settings (measured on
    the 2-core CPU: 2 layers, d_model 64, 400 steps at lr 1e-3 decayed to 1e-4, validation loss
    5.637 under bf16-true against 5.488 under bf16-mixed and fp32, 0.15 nats apart)."""
    dtype, share = ROUNDED_UPDATES[precision]
    return (
        f"trainer.precision={asked} keeps the weights and AdamW's state in {dtype}: an update "
        f"smaller than half a weight's {dtype} spacing ({share} of it) rounds away, "
        "more of them as the learning rate decays, so the run learns less than at "
        "bf16-mixed, which updates fp32 weights (a 400-step run: validation loss 5.64 against "
        "5.49); compare runs of one precision"
    )


def on_cpu(trainer_cfg: DictConfig) -> bool:
    """Whether the run's accelerator is the CPU, as Lightning picks it (``auto``: where there
    is neither a CUDA GPU nor Apple's MPS)."""
    accelerator = str(trainer_cfg.accelerator)
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    return accelerator == "cpu" or (accelerator == "auto" and not gpu)


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


def check_cuda_graphs(cfg: DictConfig, batch: GlobalBatch, machine: bool = True) -> None:
    """``cuda_graphs=true`` (``compile=model`` is checked with the field) needs one process
    on one device under Lightning's single-device strategy, one micro-batch a step, and, on
    this machine, a CUDA GPU. Accumulation: torch's CUDA graph trees hand the first
    micro-batch's gradients out of the graphs' own memory, which the next micro-batch's
    replay overwrites (pytorch/pytorch#169545: wrong gradients, or an error). Several
    devices: DDP's and FSDP's hooks run inside the backward, which one graph cannot hold."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from lmlab.train.strategy_check import strategy_class

    if not cfg.get("cuda_graphs"):
        return
    trainer = cfg.trainer
    strategy = strategy_class(trainer)
    if batch.devices != 1 or (
        strategy is not None and not issubclass(strategy, SingleDeviceStrategy)
    ):
        name = trainer.get("strategy") or "auto"
        name = name if isinstance(name, str) else name.get("_target_")
        raise ConfigError(
            f"cuda_graphs=true runs on one device with no distributed strategy; this run has "
            f"{batch.devices} device(s) (trainer.devices x trainer.num_nodes) and "
            f"trainer.strategy={name}: use trainer.devices=1 without trainer=ddp or fsdp, or "
            "cuda_graphs=false"
        )
    if batch.accumulation != 1:
        raise ConfigError(
            f"cuda_graphs=true needs one micro-batch a step; this run accumulates "
            f"{batch.accumulation} (trainer.accumulate_grad_batches, or data.global_batch_size "
            f"over data.batch_size={batch.micro_batch}): CUDA graph trees overwrite the first "
            "micro-batch's gradients. Raise data.batch_size to the whole batch, or set "
            "cuda_graphs=false"
        )
    if machine and not on_cuda(trainer):
        raise ConfigError(
            f"cuda_graphs=true needs a CUDA GPU: trainer.accelerator={trainer.accelerator} "
            f"(CUDA available: {torch.cuda.is_available()})"
        )
