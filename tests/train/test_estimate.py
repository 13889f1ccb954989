"""Planning: every preset on the meta device, exact counts, plan.json, measured vs estimated."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict
from rich.console import Console

import lmlab.train.estimate as estimate_mod
import lmlab.train.plan as plan_mod
from lmlab.config import CONF_DIR, PRETRAINING, Family, ModelConfig, TaskSpec
from lmlab.files import PLAN, write_json
from lmlab.model import build_model, param_breakdown, recompute_flops_per_token
from lmlab.model.layers import Block
from lmlab.train import hardware
from lmlab.train.budget import BudgetConfig, BudgetKind, resolve_budget
from lmlab.train.compose import compose_train
from lmlab.train.estimate import (
    ASSUMED_MFU,
    SAMPLE_INPUTS,
    choose_method,
    format_duration,
    plan_from_cfg,
    plan_run,
)
from lmlab.train.plan import meta_model
from lmlab.train.plan_table import plan_table

PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
LLAMA_7B = 6_738_415_616
CPU = torch.device("cpu")
EXPERIMENTS = {"gpt_1b": "llama", "gpt_3b": "llama", "gpt_7b": "llama", "gpt_8x7b": "mixtral"}


@functools.cache
def composed_model(preset: str, experiment: str | None) -> ModelConfig:
    """The preset's model as ``lmlab train`` composes it, composed once per module: gpt_7b
    with Llama's settings is planned in five tests (a composition is pure, and each test gets
    its own copy through ``model_cfg``)."""
    overrides = [f"model={preset}"] + ([f"+experiment={experiment}"] if experiment else [])
    return OmegaConf.to_object(compose_train(overrides).model)


def model_cfg(preset: str, experiment: str | None = None, vocab: int = 4096) -> ModelConfig:
    return dataclasses.replace(copy.deepcopy(composed_model(preset, experiment)), vocab_size=vocab)


def plan(cfg: ModelConfig, budget: BudgetConfig | None = None, **kw: object) -> dict:
    args = dict(seq_len=cfg.max_seq_len, micro_batch=8, tokens_per_step=8 * cfg.max_seq_len)
    args.update({"device": CPU, **kw})
    return plan_run(
        cfg,
        budget_cfg=budget or BudgetConfig(kind=BudgetKind.chinchilla),
        max_steps=10,
        precision="32-true",
        cache_dir="unused",
        **args,
    )


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """Timed steps on one thread: cheap on a shared machine, and no OpenMP oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """Every model the plan and the estimate build; a fixed CPU peak (1e11 FLOP/s, no
    measuring)."""
    built: list[torch.nn.Module] = []
    build_task_model = plan_mod.build_task_model

    def recording_build(cfg: ModelConfig, task: TaskSpec = PRETRAINING) -> torch.nn.Module:
        built.append(build_task_model(cfg, task))
        return built[-1]

    monkeypatch.setattr(plan_mod, "build_task_model", recording_build)
    monkeypatch.setattr(estimate_mod, "build_model", recording_build)
    monkeypatch.setattr(estimate_mod, "peak_flops", lambda device, precision, cache_dir: 1e11)
    # and where timed steps beat it, the measuring again that raises it (``raised_peak``)
    monkeypatch.setattr(hardware, "peak_flops", lambda device, precision, cache_dir, s: 1e11)
    return built


@pytest.fixture
def fake_measure(monkeypatch: pytest.MonkeyPatch) -> list[ModelConfig]:
    """Replace the timed steps by a fixed 1000 tokens/s; record what would have been timed."""
    measured: list[ModelConfig] = []

    def fake(cfg: ModelConfig, *args: object) -> tuple[float, list[float]]:
        measured.append(cfg)
        return 1000.0, [0.1, 0.1, 0.1]

    monkeypatch.setattr(estimate_mod, "measure_tokens_per_second", fake)
    return measured


def is_meta(model: torch.nn.Module) -> bool:
    return all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_plans_on_the_meta_device(
    preset: str, builds: list, fake_measure: list
) -> None:
    """Every model plan.py builds has meta parameters only (a real gpt_7b would need 27 GB;
    the process's peak memory is checked in a fresh process below)."""
    experiment = EXPERIMENTS.get(preset)
    cfg = model_cfg(preset, experiment, vocab=32000 if experiment else 4096)
    p = plan(cfg, micro_batch=1, tokens_per_step=cfg.max_seq_len)
    assert builds and all(is_meta(m) for m in builds)
    assert p["params"] == p["param_breakdown"]["total"] > p["non_embedding_params"] > 0
    assert p["steps"] * p["tokens_per_step"] == p["tokens"] and p["wall_seconds"] > 0
    # the documented threshold: one step at 1e11 FLOP/s x 40% under 5 s is measured
    step_seconds = p["flops_per_token"] * cfg.max_seq_len / (1e11 * ASSUMED_MFU)
    assert (p["throughput"]["method"] == "measured") == (step_seconds < 5.0)
    assert len(fake_measure) == (p["throughput"]["method"] == "measured")


PEAK_GROWTH = """
import dataclasses, resource, sys
from omegaconf import OmegaConf
import lmlab.train.estimate as estimate
from lmlab.config import BudgetConfig, BudgetKind
from lmlab.train.compose import compose_train
from lmlab.train.estimate import plan_run
import torch

estimate.peak_flops = lambda device, precision, cache_dir: 1e11  # no measuring
cfg = OmegaConf.to_object(compose_train(["model=gpt_8x7b", "+experiment=mixtral"]).model)
cfg = dataclasses.replace(cfg, vocab_size=32000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
plan_run(cfg, budget_cfg=BudgetConfig(kind=BudgetKind.chinchilla), max_steps=10,
         precision="32-true", cache_dir="unused", seq_len=cfg.max_seq_len, micro_batch=1,
         tokens_per_step=cfg.max_seq_len, device=torch.device("cpu"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.slow
def test_planning_the_largest_preset_does_not_grow_a_fresh_process() -> None:
    """Mixtral 8x7B (47B parameters, 188 GB in fp32) planned in a process whose peak so far is
    its imports: the peak grows by far less than one layer's weights. In a test worker that
    already peaked higher the growth would read 0 whatever the plan did."""
    child = subprocess.run(
        [sys.executable, "-c", PEAK_GROWTH], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr[-2000:]
    grown_kib = int(child.stdout.split()[-1])
    assert grown_kib < 2**18  # < 256 MiB (one expert's three matrices alone are 672 MiB)


def test_sample_inputs_cover_every_family() -> None:
    assert set(SAMPLE_INPUTS) == set(Family)


@pytest.mark.parametrize("family", list(Family))
def test_small_step_is_measured_on_the_real_model(family: Family, builds: list) -> None:
    cfg = model_cfg(f"{family.value}_tiny", vocab=128)
    cfg = dataclasses.replace(cfg, d_model=32, n_layers=1, n_heads=2, max_seq_len=64)
    p = plan(cfg, BudgetConfig(), micro_batch=2, tokens_per_step=128)
    speed = p["throughput"]
    assert speed["method"] == "measured" and len(speed["step_seconds"]) == 3
    assert [is_meta(m) for m in builds] == [True, False]  # the count, then the timed model
    assert p["tokens_per_second"] > 0 and p["wall_seconds"] == pytest.approx(
        p["tokens"] / p["tokens_per_second"]
    )


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_timed_steps_recompute_checkpointed_blocks(
    checkpointing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpointed model is timed as the run trains it: each block's forward runs again in
    the backward pass, the extra compute the wall time must include (it timed the
    uncheckpointed model)."""
    from lmlab.model.layers import Block

    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=16, vocab_size=64)
    cfg = dataclasses.replace(cfg, activation_checkpointing=checkpointing)
    calls: list[int] = []
    forward = Block.forward

    def counted(self: Block, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Block, "forward", counted)
    estimate_mod.measure_tokens_per_second(cfg, 2, 16, CPU, "32-true")
    steps = estimate_mod.WARMUP_STEPS + estimate_mod.TIMED_STEPS
    assert len(calls) == steps * cfg.n_layers * (2 if checkpointing else 1)


@pytest.mark.parametrize("remeasured", [10.0, 2000.0])  # x FLOPs per token, per second
def test_timed_steps_faster_than_the_cpu_peak_raise_it(
    remeasured: float, builds: list, fake_measure: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached CPU peak measured while other work ran is below what the timed steps achieve
    (a dry run of gpt_tiny printed an MFU of 276%): the model's largest linear layers are
    measured again, as a run's start does, and the peak is at least the achieved rate."""
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=16, vocab_size=64)
    fpt = plan(cfg, micro_batch=2)["flops_per_token"]
    # a peak at which the step would take 1 / 0.4 s: timed, at 1000 tokens/s (fake_measure)
    monkeypatch.setattr(estimate_mod, "peak_flops", lambda *a: 2 * 16 * fpt)
    shapes: list = []
    monkeypatch.setattr(
        hardware, "peak_flops", lambda d, p, c, s: shapes.append(list(s)) or remeasured * fpt
    )
    p = plan(cfg, micro_batch=2)
    assert p["throughput"]["method"] == "measured" and p["tokens_per_second"] == 1000.0
    # the micro-batch's 32 rows through the two largest layers, the feed-forward's
    assert [set(s) for s in shapes] == [{(32, 32, 128), (32, 128, 32)}]
    assert p["throughput"]["peak_flops"] == pytest.approx(max(remeasured, 1000.0) * fpt)
    assert p["throughput"]["mfu"] == pytest.approx(1000.0 / max(remeasured, 1000.0))


def test_big_presets_take_the_estimate(builds: list) -> None:
    p = plan(model_cfg("gpt_7b", "llama", vocab=32000))
    assert p["throughput"]["method"] == "estimated" and all(is_meta(m) for m in builds)
    assert p["tokens_per_second"] == pytest.approx(1e11 * ASSUMED_MFU / p["flops_per_token"])
    assert p["throughput"]["mfu"] == ASSUMED_MFU


def checkpointed_step_flops(cfg: ModelConfig, checkpointing: bool) -> float:
    """FLOPs per input token of one float64 forward + backward as torch's FlopCounterMode
    counts them (SDPA's math path, so the scores count too), blocks checkpointed or not."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lmlab.train.parallel import layout

    model = build_model(cfg).double()  # float64: each MoE expert is one counted matmul
    layout(model, activation_checkpointing=checkpointing)
    ids_BT = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len))
    inputs = SAMPLE_INPUTS[cfg.family](ids_BT)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs).sum().backward()
    return counter.get_total_flops() / ids_BT.numel()


@pytest.mark.parametrize(
    ("family", "experts"), [(family, 0) for family in Family] + [(Family.gpt, 4)]
)
def test_the_recompute_is_what_checkpointing_adds_to_a_step(family: Family, experts: int) -> None:
    """``recompute_flops_per_token`` against torch's count of a checkpointed step less an
    uncheckpointed one: every block's forward once more, the output layer's not (T5's on its
    decoder tokens). Torch stops recomputing a block once its saved tensors are back, so a
    pre-norm block's last matmul, the feed-forward's output projection (2 FLOPs per weight and
    token), may not run again: the count lies between the two. Integer counts below 2**53,
    so the bounds hold up to float64 rounding."""
    from lmlab.config import MoEConfig
    from lmlab.data.collators import decoder_tokens

    cfg = ModelConfig(
        family=family, d_model=32, n_layers=2, n_heads=2, max_seq_len=24, vocab_size=64,
        bias=False, moe=MoEConfig(num_experts=experts),
    )  # fmt: skip
    added = checkpointed_step_flops(cfg, True) - checkpointed_step_flops(cfg, False)
    model = meta_model(cfg)
    S = decoder_tokens(family, 24) or 24
    last = sum(
        2 * module.ffn.w_out.weight.numel() * (S if name.startswith("decoder") else 24) / 24
        for name, module in model.named_modules()
        if isinstance(module, Block) and hasattr(module.ffn, "w_out")
    )
    recompute = recompute_flops_per_token(model, 24, decoder_tokens(family, 24))
    assert 0 < added <= recompute * (1 + 1e-12)
    assert recompute <= (added + last) * (1 + 1e-12)


def test_an_untimed_checkpointed_plan_counts_the_recompute(builds: list) -> None:
    """Not timed, a checkpointed model's tokens/s ran at the assumed 40% of the peak on the
    model's FLOPs alone, as if no block ran twice: the recompute now runs at that rate too,
    and the MFU (the model's FLOPs) is below 40% by as much."""
    cfg = model_cfg("gpt_7b", "llama", vocab=32000)
    plain = plan(cfg)
    checkpointed = plan(dataclasses.replace(cfg, activation_checkpointing=True))
    fpt, recompute = checkpointed["flops_per_token"], checkpointed["recompute_flops_per_token"]
    assert plain["recompute_flops_per_token"] == 0 and fpt == plain["flops_per_token"]
    assert checkpointed["throughput"]["method"] == "estimated"
    assert checkpointed["tokens_per_second"] == pytest.approx(
        1e11 * ASSUMED_MFU / (fpt + recompute)
    )
    mfu = ASSUMED_MFU * fpt / (fpt + recompute)
    assert checkpointed["throughput"]["mfu"] == pytest.approx(mfu)
    ratio = (fpt + recompute) / fpt
    assert checkpointed["wall_seconds"] == pytest.approx(plain["wall_seconds"] * ratio)
    assert 0 < recompute < fpt / 3  # the blocks' forward, not the output layer's
    assert f"recompute adds {recompute / fpt:.0%}" in checkpointed["throughput"]["reason"]


def test_gpt_7b_llama_has_llama2_7b_parameters(builds: list) -> None:
    p = plan(model_cfg("gpt_7b", "llama", vocab=32000))
    assert p["params"] == LLAMA_7B
    assert p["tokens"] >= 20 * LLAMA_7B and p["flops"] == 6.0 * LLAMA_7B * p["tokens"]


def test_slow_device_takes_the_estimate_even_for_a_small_model(
    builds: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(estimate_mod, "peak_flops", lambda device, precision, cache_dir: 1e3)
    p = plan(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=32, vocab_size=64))
    assert p["throughput"]["method"] == "estimated" and all(is_meta(m) for m in builds)
    assert "> 5 s" in p["throughput"]["reason"]


def test_processes_on_one_cpu_share_its_cores(
    builds: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two DDP processes on a CPU run on the same cores: one process's speed times two would
    halve the wall time it cannot halve. GPUs (one per process) do scale with the count."""
    speed = {"tokens_per_second": 1000.0, "method": "measured"}
    monkeypatch.setattr(estimate_mod, "_throughput", lambda *args: dict(speed))
    cfg = model_cfg("gpt_tiny")
    one, two = plan(cfg), plan(cfg, n_devices=2)
    assert one["tokens"] == two["tokens"] and one["wall_seconds"] == one["tokens"] / 1000.0
    assert two["wall_seconds"] == one["wall_seconds"]
    on_gpus = plan(cfg, n_devices=2, device=torch.device("cuda"))
    assert on_gpus["wall_seconds"] == one["wall_seconds"] / 2


@pytest.mark.parametrize(
    ("step_flops", "peak", "needed", "free", "method"),
    [
        (1e9, 1e11, 1, 10**9, "measured"),  # 0.025 s per step
        (1e12, 1e11, 1, 10**9, "estimated"),  # 25 s per step
        (1e9, 1e11, 10**9, 10**9, "estimated"),  # does not fit in half the memory
        (1e9, None, 1, 10**9, "measured"),  # unknown GPU, small model: measure it
        (1e9, None, 10**9, 10**9, "unavailable"),
    ],
)
def test_method_follows_the_documented_threshold(
    step_flops: float, peak: float | None, needed: int, free: int, method: str
) -> None:
    chosen, why = choose_method(step_flops, peak, needed, free)
    assert chosen == method
    # the plan's caption: why the step was timed or not, not a prediction beside the rate
    assert why.startswith("timed" if method == "measured" else "not timed"), why


def test_plan_json_and_table(builds: list, tmp_path: Path) -> None:
    p = plan(model_cfg("gpt_7b", "llama", vocab=32000))
    path = write_json(tmp_path / "run" / PLAN, p)
    assert path == tmp_path / "run" / "plan.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(p))
    console = Console(record=True, width=120)
    console.print(plan_table(p))
    text = console.export_text()
    for needle in ("6,738,415,616", "chinchilla", "FLOPs (6ND)", "estimated wall time", "40.0%"):
        assert needle in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "unknown"), (3.21, "3.2 s"), (235, "3 min 55 s"), (7500, "2 h 05 min")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


# --------------------------------------------------------------------------- composed configs


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conf/ with the budget group in train.yaml's defaults (a patched copy until it is wired)
    and sweeps/ reachable as conf/sweeps."""
    if "budget:" in (CONF_DIR / "train.yaml").read_text() and (CONF_DIR / "sweeps").exists():
        return CONF_DIR
    conf = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(CONF_DIR, conf, symlinks=False, ignore=shutil.ignore_patterns("sweeps"))
    shutil.copytree(CONF_DIR.parent / "sweeps", conf / "sweeps")
    train = (conf / "train.yaml").read_text()
    train = train.replace("  - _self_\n", "  - budget: steps\n  - _self_\n", 1)
    (conf / "train.yaml").write_text(train + "dry_run: false\n")
    return conf


def compose_in(conf: Path, overrides: list[str]) -> OmegaConf:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.cache_dir = "unused"
    return cfg


def test_plan_from_composed_config(conf_dir: Path, builds: list, fake_measure: list) -> None:
    cfg = compose_in(
        conf_dir,
        [
            "budget=tokens",
            "budget.tokens=1e6",
            "data.batch_size=2",
            "trainer.accumulate_grad_batches=2",
        ],
    )
    m, d = OmegaConf.to_object(cfg.model), OmegaConf.to_object(cfg.data)
    p = plan_from_cfg(cfg, m, d, m.max_seq_len)
    assert p["tokens_per_step"] == d.batch_size * m.max_seq_len * 2 == 1024
    assert (p["steps"], p["tokens"], p["model"]["vocab_size"]) == (977, 977 * 1024, 4096)


def test_a_gpu_run_planned_without_a_gpu_says_the_plan_is_this_cpus(
    conf_dir: Path, builds: list, fake_measure: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dry_run=true trainer=gpu`` on a machine without CUDA planned on the CPU (its memory,
    its rate: 1.7 days for gpt_small) under a caption "cpu, bf16-mixed" and no word that the
    GPU was not found; the caption (and plan.json's reason) now says so first. A CPU run's
    caption does not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for trainer, said in (("gpu", True), ("cpu", False)):
        cfg = compose_in(conf_dir, [f"trainer={trainer}", "budget=tokens", "budget.tokens=1e6"])
        m, d = OmegaConf.to_object(cfg.model), OmegaConf.to_object(cfg.data)
        p = plan_from_cfg(cfg, m, d, m.max_seq_len)
        caption = str(plan_table(p).caption)
        assert p["throughput"]["device"] == "cpu"
        assert caption.startswith("cpu, ")
        assert ("no CUDA GPU visible here for trainer.accelerator=gpu" in caption) is said


def test_isoflop_sweep_jobs_compose_and_hold_their_budget(conf_dir: Path) -> None:
    """Every size and every budget of the grid composes and validates (the jobs in the first
    row and column: the rest are their combinations). At each budget each size trains >= 40
    steps, with FLOPs within 10% of the nominal C (scaling.py's grouping tolerance); >= 3
    sizes for each of >= 2 budgets."""
    params = compose_in(conf_dir, ["+sweeps=isoflop"]).hydra.sweeper.params
    assert list(params) == ["budget.flops", "model"]
    flops_ovs, model_ovs = (
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    )
    jobs = [[flops_ovs[0], m] for m in model_ovs] + [[f, model_ovs[0]] for f in flops_ovs[1:]]
    sizes: dict[str, int] = {}
    budgets: dict[str, BudgetConfig] = {}
    for flops_ov, model_ov in jobs:
        cfg = compose_in(conf_dir, ["+sweeps=isoflop", flops_ov, model_ov])
        m, d = OmegaConf.to_object(cfg.model), OmegaConf.to_object(cfg.data)
        budgets[flops_ov] = OmegaConf.to_object(cfg.budget)
        counts = param_breakdown(meta_model(dataclasses.replace(m, vocab_size=d.vocab_size)))
        sizes[model_ov] = counts["total"]
        tokens_per_step = d.batch_size * m.max_seq_len
    assert len(budgets) >= 2 and len(sizes) >= 3
    for budget, n_params in itertools.product(budgets.values(), sizes.values()):
        b = resolve_budget(budget, n_params, tokens_per_step, max_steps=1)
        assert b.kind == BudgetKind.flops and b.steps >= 40
        assert abs(b.flops / b.nominal_flops - 1) < 0.1


@pytest.mark.parametrize("count", ["active", "total"])
def test_a_moe_budget_uses_the_parameter_count_it_names(
    count: str, builds: list, fake_measure: list
) -> None:
    """Mixtral-8x7B at 20 tokens per parameter: N is the 12.9B active parameters by default
    (the compute a token costs) or all 46.7B with budget.params=total; the plan says which."""
    cfg = model_cfg("gpt_8x7b", "mixtral", vocab=32000)
    budget = BudgetConfig(kind=BudgetKind.chinchilla, params=count)
    p = plan(cfg, budget, seq_len=4096, micro_batch=1, tokens_per_step=4096)
    assert (p["params"], p["active_params"]) == (46_702_792_704, 12_879_925_248)
    n = p["active_params" if count == "active" else "params"]
    assert (p["budget"]["params"], p["budget"]["n_params"]) == (count, n)
    assert p["budget"]["target_tokens"] == 20 * n and p["flops"] == 6 * n * p["tokens"]
    # FLOPs per token follow the active weights whatever the budget counts
    assert p["flops_per_token"] < 6.2 * p["active_params"] + 12 * 32 * 4096 * 4096
    console = Console(record=True, width=120)
    console.print(plan_table(p))
    assert f"chinchilla, N = {count} params ({n:,})" in console.export_text()
