"""A run whose training state cannot fit the memory it will have is refused before the model
is built (it was killed by the kernel minutes later), and one whose step probably cannot fit
starts with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError
from lmlab.train import memory
from lmlab.train.activations import training_bytes
from lmlab.train.batch import GlobalBatch
from lmlab.train.estimate import choose_method
from lmlab.train.memory import check_state_fits, state_bytes_per_param
from lmlab.train.plan import RunPlan

GIB = 2**30
ADAMW = {"_target_": "torch.optim.AdamW"}
CPU = OmegaConf.create({"accelerator": "cpu", "num_nodes": 1})
FSDP = OmegaConf.merge(CPU, {"strategy": {"_target_": "lmlab.train.distributed.FSDPStrategy"}})
MODEL = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=256)


def plan(params: int, devices: int = 1, precision: str = "32-true") -> RunPlan:
    batch = GlobalBatch(micro_batch=8, devices=devices, accumulation=1, seq_len=128)
    return RunPlan(batch, precision, None, 256, params, params)


def test_bytes_per_parameter() -> None:
    """Weights and gradients in the parameters' dtype, plus Adam's two moments."""
    assert state_bytes_per_param("32-true", "torch.optim.AdamW") == 16
    assert state_bytes_per_param("bf16-mixed", "torch.optim.AdamW") == 16  # fp32 weights kept
    assert state_bytes_per_param("bf16-true", "torch.optim.Adam") == 8
    assert state_bytes_per_param("64-true", "torch.optim.AdamW") == 32
    assert state_bytes_per_param("32-true", "torch.optim.SGD") == 8


def test_a_state_larger_than_the_memory_is_refused() -> None:
    # 1 GiB of parameters x 16 bytes = 16 GiB: not in 10 GiB, in one process or two
    with pytest.raises(ConfigError) as refused:
        check_state_fits(plan(GIB), MODEL, CPU, ADAMW, (10 * GIB, "this machine has"))
    assert str(refused.value) == (
        f"the model's {GIB:,} parameters need at least 16.0 GiB for weights, gradients and "
        "AdamW state (16 bytes each in 32-true, whole in each process; activations not "
        "counted), and this machine has 10.0 GiB free: use a smaller model, trainer=fsdp over "
        "more devices, or a machine with more memory (dry_run=true plans any size)"
    )
    # 1 GiB of parameters in 20 GiB: fits alone; DDP's 2 processes on one CPU hold 2 copies
    check_state_fits(plan(GIB // 16), MODEL, CPU, ADAMW, (20 * GIB, "this machine has"))
    ddp = OmegaConf.merge(CPU, {"strategy": {"_target_": "lightning.pytorch.strategies.DDP"}})
    with pytest.raises(ConfigError, match=r"need at least 2.0 GiB .* whole in each process"):
        check_state_fits(plan(GIB // 16, 2), MODEL, ddp, ADAMW, (1.5 * GIB, "this machine has"))
    # FSDP shards it, but its processes on one CPU share the machine's memory
    with pytest.raises(ConfigError, match=r"need at least 1.0 GiB .* sharded over 2 FSDP"):
        check_state_fits(plan(GIB // 16, 2), MODEL, FSDP, ADAMW, (0.5 * GIB, "this machine has"))
    check_state_fits(plan(GIB // 16, 2), MODEL, FSDP, ADAMW, (1.5 * GIB, "this machine has"))


def test_a_step_that_probably_does_not_fit_starts_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The state fits, the coarse estimate of the step's activations does not: a warning,
    naming the micro-batch. Activation checkpointing keeps each block's input and one block's
    activations, so a deep model it fits passes; the output layer's logits it does not
    shrink, so a wide vocabulary still warns, and then without suggesting it again."""
    free = (60 * 2**20, "this machine has")  # 60 MiB; the state of 1M parameters is 16 MiB
    deep = ModelConfig(d_model=256, n_layers=8, n_heads=4, vocab_size=256)
    wide = ModelConfig(**{**vars(deep), "vocab_size": 32768})
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        check_state_fits(plan(2**20), deep, CPU, ADAMW, free)  # 131 MiB of activations
        assert "data.batch_size=8 x 128 tokens included" in caplog.text
        assert "or model.activation_checkpointing=true needs less" in caplog.text
        caplog.clear()
        check_state_fits(plan(2**20), MODEL, CPU, ADAMW, free)  # a narrow model's fit
        checkpointed = ModelConfig(**{**vars(deep), "activation_checkpointing": True})
        check_state_fits(plan(2**20), checkpointed, CPU, ADAMW, free)  # 27 MiB of them
        assert caplog.text == ""
        checkpointed = ModelConfig(**{**vars(wide), "activation_checkpointing": True})
        check_state_fits(plan(2**20), checkpointed, CPU, ADAMW, free)  # 3 x 128 MiB of logits
    assert "a training step needs about 0.4 GiB" in caplog.text
    assert "activation_checkpointing" not in caplog.text


def measured_step_peak(cfg: ModelConfig, precision: str = "32-true") -> tuple[int, int]:
    """The tensors a real training step (forward, backward, AdamW) of ``cfg`` at ``plan()``'s
    micro-batch holds at its peak, torch's ``MemTracker`` counting them, and the model's
    parameters; ``precision`` as the dry run's timed steps run it (autocast for a mixed one).

    The step measured is a second one, with AdamW's moments in place. A first step, in fp32
    and untracked, makes them (fp32 under either precision); the tracker, given the model and
    the optimizer, counts them, the weights and the buffers from its start, and every tensor
    the measured step makes. Tracking both steps measured the same peak in every case below
    (the second step holds what the first held, and the moments besides) for twice the
    tracker's CPU, and the first step in bf16 for twice again."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from lmlab.model import build_model, param_breakdown
    from lmlab.train.hardware import autocast
    from lmlab.train.parallel import layout

    torch.manual_seed(0)
    net = build_model(cfg)
    layout(net, activation_checkpointing=cfg.activation_checkpointing)
    optimizer = torch.optim.AdamW(net.parameters())
    ids_BT = torch.randint(0, cfg.vocab_size, (8, 128))  # plan()'s micro-batch

    def step(precision: str) -> None:
        with autocast(torch.device("cpu"), precision):
            loss = net(ids_BT, labels=ids_BT)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step("32-true")  # AdamW's moments made
    tracker = MemTracker()
    tracker.track_external(net, optimizer)
    with tracker:
        step(precision)
    measured = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    return measured, param_breakdown(net)["total"]


def test_a_checkpointed_steps_estimate_covers_what_a_real_step_holds() -> None:
    """With activation checkpointing, the dry run's step figure is at least the tensors a
    real checkpointed training step (forward, backward, AdamW) holds at its peak, torch's
    ``MemTracker`` counting them (8.7 MiB here, against an estimate of 11.4): it had counted
    no activations at all, only the state (3.4 MiB)."""
    cfg = ModelConfig(**{**vars(MODEL), "n_layers": 4, "activation_checkpointing": True})
    measured, params = measured_step_peak(cfg)
    needs = memory.memory_needs(plan(params), cfg, CPU, ADAMW, (None, "this machine has"))
    assert needs.state < measured <= needs.step


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize(
    "block",
    [
        {},  # GPT-2's: pre-LayerNorm, GELU
        {"norm": "rmsnorm", "activation": "swiglu", "positional": "rope", "bias": False},
        {"norm": "rmsnorm", "norm_placement": "sandwich", "activation": "geglu"},
        {"norm_placement": "post", "activation": "relu"},
    ],
)
def test_a_steps_estimate_covers_what_a_real_step_holds(
    block: dict[str, object], precision: str
) -> None:
    """The step's estimate is at least the tensors a real step (forward, backward, AdamW)
    holds at its peak (``MemTracker``), under fp32 and bf16 autocast. Autocast keeps the
    residual stream, the norms' tensors and the cross-entropy's in fp32: counted at 2 bytes,
    a bf16-mixed step was planned under what it held; and a Llama- or sandwich-style block
    keeps more than a GPT-2 one (19 to 22 fp32 d-wide tensors per token, 16 were counted)."""

    cfg = ModelConfig(**{**vars(MODEL), "d_model": 128, "vocab_size": 512, **block})
    measured, params = measured_step_peak(cfg, precision)
    needs = memory.memory_needs(
        plan(params, precision=precision), cfg, CPU, ADAMW, (None, "this machine has")
    )
    assert needs.state < measured <= needs.step


def test_the_activation_counts_cover_every_knob_value() -> None:
    from lmlab.config import Activation, Norm, NormPlacement
    from lmlab.train import activations

    assert set(activations.NORM_ACTIVATIONS) == set(Norm)
    assert set(activations.NORMS_PER_BLOCK) == set(NormPlacement)
    assert set(activations.MATMUL_ACTIVATIONS) == set(Activation)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_a_mixture_of_experts_steps_estimate_covers_what_a_real_step_holds(
    top_k: int, checkpointing: bool
) -> None:
    """Each token passes through k experts' hidden layers: counted as a dense feed-forward's,
    the step of an 8-expert top-2 model was under what it held (740 MiB planned at gpt_mini's
    size, 835 measured). The estimate counts k feed-forwards' activations per MoE layer, and
    covers the tensors a real step holds at its peak (``MemTracker``)."""
    from lmlab.config import Activation, MoEConfig

    moe = MoEConfig(num_experts=8, top_k=top_k)
    cfg = ModelConfig(
        d_model=128, n_layers=2, n_heads=4, vocab_size=256, bias=False,
        activation=Activation.swiglu, moe=moe, activation_checkpointing=checkpointing,
    )  # fmt: skip
    measured, params = measured_step_peak(cfg)
    needs = memory.memory_needs(plan(params), cfg, CPU, ADAMW, (None, "this machine has"))
    assert needs.state < measured <= needs.step


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_the_timings_memory_is_the_steps_of_one_whole_model(
    precision: str, checkpointing: bool
) -> None:
    """The dry run gave two figures for a training step: its table's, and its caption's for
    the timed steps, which counted fp32 activations under bf16 and checkpointing's as if it
    were off (gpt_small under trainer=gpu: 6.2 GiB against 11.1). In one process holding the
    whole model they are one figure; the caption says it is the timing's."""
    cfg = ModelConfig(**{**vars(MODEL), "activation_checkpointing": checkpointing})
    needs = memory.memory_needs(plan(2**20, precision=precision), cfg, CPU, ADAMW, (GIB, ""))
    assert training_bytes(cfg, 2**20, 8, 128, precision) == needs.step
    method, why = choose_method(1.0, 1e12, needs.step, needs.step)
    assert method == "estimated" and why == (
        f"not timed: timing a step of the whole model in this process would take "
        f"~{needs.step / GIB:.1f} GiB, over 50% of the {needs.step / GIB:.1f} GiB free"
    )


def test_the_memory_rows_say_what_they_count() -> None:
    """Per GPU; or this machine's processes together, with the state's shards."""
    from lmlab.train.plan_table import memory_scope

    gpu = memory.MemoryNeeds(16, 1, 1, GIB, 2 * GIB, 8 * GIB, "GPU 0 (H200) has")
    assert memory_scope(gpu.as_dict()) == ", per GPU"
    fsdp = memory.MemoryNeeds(16, 2, 2, GIB, 2 * GIB, 8 * GIB, "this machine has")
    assert memory_scope(fsdp.as_dict()) == ", 2 processes, state sharded 2 ways"
    one = memory.MemoryNeeds(16, 1, 1, GIB, 2 * GIB, 8 * GIB, "this machine has")
    assert memory_scope(one.as_dict()) == ""


def test_a_run_too_large_for_the_machine_is_refused_before_its_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmlab.train import build
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train

    monkeypatch.setattr(memory, "available_bytes", lambda trainer: (2**20, "this machine has"))
    built: list[int] = []
    monkeypatch.setattr(build, "LMTask", lambda *a, **k: built.append(1))
    cfg = compose_train(["+debug=smoke"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"parameters need at least 0\.\d GiB .* 0.0 GiB free"):
        train(cfg)
    assert built == []
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and not (tmp_path / "run" / "plan.json").exists()


def test_a_dry_run_prints_and_saves_both_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train

    monkeypatch.setattr(memory, "available_bytes", lambda trainer: (3 * GIB, "this machine has"))
    # a one-block model of width 32: the dry run times its steps, whose figures these are not
    tiny = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2"]
    train(compose_train(["+debug=smoke", "dry_run=true", *tiny], tmp_path / "run", tmp_path))
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["memory"]["state"] == 16 * plan["params"] and plan["memory"]["free"] == 3 * GIB
    assert plan["memory"]["step"] > plan["memory"]["state"]
    out = capsys.readouterr().out
    assert "memory: weights, grads, optimizer" in out and "memory free (this machine)" in out
    assert "3.0 GiB" in out


def test_on_a_gpu_each_process_has_its_own_devices_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process's GPU (LOCAL_RANK): the driver's free memory plus what this process's
    caching allocator holds unused; DDP's processes each hold the whole state on their own
    GPU, so they do not add up as on a CPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((3 + i) * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 2 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: GIB // 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "H200")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # no CUDA here for the attention probe to run on (lmlab.train.attention_scores)
    monkeypatch.setattr("lmlab.train.activations.score_bytes", lambda *args: 0)
    gpu = OmegaConf.create({"accelerator": "gpu", "num_nodes": 1})
    assert memory.available_bytes(gpu) == (5.5 * GIB, "GPU 1 (H200) has")
    check_state_fits(plan(GIB // 4, devices=2), MODEL, gpu, ADAMW)  # 4 GiB per GPU
    with pytest.raises(ConfigError, match=r"need at least 6.0 GiB .* GPU 1 \(H200\) has 5.5 GiB"):
        check_state_fits(plan(3 * GIB // 8, devices=2), MODEL, gpu, ADAMW)


# the README's figures of a whole step for the presets' defaults (16 rows of their context, fp32,
# AdamW) at the default tokenizer's 4096 tokens: the sentence each one stands in, its GiB
README_STEPS = [
    ("gpt_medium", r"estimates [\d.]+ hours for\s+its [\d,]+ steps and\s+~([\d.]+) GiB for a step"),
    ("gpt_large", r"`model=gpt_large`'s default 16 x 1024 is estimated at ([\d.]+) GiB"),
    ("gpt_7b", r"`model=gpt_7b`\s+there: [\d.]+ GiB at least, about ([\d.]+) GiB a step"),
]


@pytest.mark.parametrize(("preset", "sentence"), README_STEPS)
def test_the_readmes_step_estimates_are_the_dry_runs(preset: str, sentence: str) -> None:
    """The README quoted a step of gpt_medium at ~29 GiB and gpt_large's at 56 GiB, which the
    dry run and the run's warning put at 28.3 and 54.2 GiB (the counts per norm and
    activation changed since): each figure is the estimate rounded as the README rounds it."""
    import re

    from lmlab.config import CONF_DIR
    from lmlab.model.params import param_breakdown
    from lmlab.train.compose import compose_train
    from lmlab.train.plan import meta_model

    cfg = compose_train([f"model={preset}", "model.vocab_size=4096"])
    model_cfg = OmegaConf.to_object(cfg.model)
    params = param_breakdown(meta_model(model_cfg))["total"]
    batch = GlobalBatch(16, devices=1, accumulation=1, seq_len=model_cfg.max_seq_len)
    step_plan = RunPlan(batch, "32-true", None, 4096, params, params)
    step = memory.memory_needs(step_plan, model_cfg, CPU, ADAMW, (None, "")).step / GIB
    readme = (CONF_DIR.parent / "README.md").read_text()
    quoted = re.search(sentence, readme)
    assert quoted, sentence
    decimals = len(quoted[1].partition(".")[2])
    assert float(quoted[1]) == round(step, decimals), (preset, step)
