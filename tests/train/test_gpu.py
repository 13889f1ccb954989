"""The GPU paths (#17), marked ``gpu``: skipped where CUDA is not available (CI, CPUs), run by
``make test-gpu`` on a GPU. Each one checks on CUDA what a CPU test checks as far as a CPU can:
no synchronisation in a quiet step (``torch.cuda.set_sync_debug_mode``), ``cuda_graphs=true``,
bf16 steps and the kernel they run, ``compile=model`` (with FlexAttention inside the graph),
FSDP on one GPU, cached generation in bf16, and FlexAttention's gradients against SDPA's."""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from torch._dynamo.utils import counters

from finished import finished_fsdp_run
from lmlab.config import AttentionKernel, Family, ModelConfig, Positional
from lmlab.model import build_model
from lmlab.model.loss import CHUNKED_AVAILABLE
from lmlab.train.compose import compose_train
from lmlab.train.run import train
from lmlab.train.task import LMTask

pytestmark = pytest.mark.gpu

GPU = ["+debug=smoke", "trainer=gpu", "logger=csv"]  # bf16-mixed on one GPU
MASKED = ["model.positional=alibi", "model.attention_window=64"]  # a bias and a window


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    """Each test compiles from scratch: LMTask.objective compiled again for another model in
    this process would count as a recompile (and dynamo's limit on them would make later tests
    run eagerly without saying so)."""
    torch._dynamo.reset()


def losses(out: Path) -> list[float]:
    rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("train/loss")
    return [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]


# The CUDA graph and quiet-step checks first (tests run in file order): a device call's time
# limit cut the quiet steps in the first H200 run; the graphs are the newest path.


def graphs_against_compile(tmp_path: Path, cache_dir: Path, family: list[str]) -> None:
    """``cuda_graphs=true`` against ``compile=model`` alone for the model ``family`` picks: in
    fp32 with TF32 off the 6 losses agree (the bound of the compile test below), Inductor
    skipped no graph (it counts each reason it runs one without CUDA graphs), and graphs were
    recorded."""
    from torch._inductor.cudagraph_trees import get_manager

    found = {}
    for graphs in ("false", "true"):
        counters.clear()
        out = tmp_path / graphs
        overrides = [
            *GPU,
            *family,
            "trainer.precision=32-true",
            "matmul_precision=highest",
            "trainer.max_steps=6",
            "trainer.limit_val_batches=0",
            "callbacks.sample=null",
            "compile=model",
            f"cuda_graphs={graphs}",
        ]
        train(compose_train(overrides, out, cache_dir))
        found[graphs] = losses(out)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    manager = get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert manager is not None and any(manager.roots.values())
    assert len(found["true"]) == 6
    assert found["true"] == pytest.approx(found["false"], rel=1e-4)


def test_cuda_graphs_train_as_the_compiled_step_does(tmp_path: Path, cache_dir: Path) -> None:
    """``cuda_graphs=true`` replays the compiled step's own kernels (GPT; BERT and T5 below,
    after the other training runs)."""
    graphs_against_compile(tmp_path, cache_dir, [])


class SyncDebug(L.Callback):
    """``torch.cuda.set_sync_debug_mode("error")`` from the start of each ``quiet`` step to
    the start of the next step: any synchronisation in between raises."""

    def __init__(self, quiet: list[int]) -> None:
        self.quiet, self.checked = quiet, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        quiet = trainer.global_step in self.quiet
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")
        if quiet:
            self.checked.append(trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    ("knobs", "compile"),
    [
        pytest.param([], "false", id="flash-eager"),
        pytest.param([], "model", id="flash-model"),
        pytest.param([*MASKED, "model.attention_kernel=auto"], "model", id="flex-model"),
        pytest.param(["model=bert_tiny"], "model", id="bert-model"),
        pytest.param(["model=t5_tiny"], "model", id="t5-model"),
        pytest.param(
            ["model.cross_entropy=chunked"],
            "model",
            id="chunked-loss-model",
            marks=pytest.mark.skipif(
                not CHUNKED_AVAILABLE, reason=f"torch {torch.__version__}: no chunked form"
            ),
        ),
    ],
)
def test_a_quiet_step_never_synchronises(
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    compile: str,
    knobs: list[str],
) -> None:
    """With plain causal attention (flash) in eager mode and compiled, with FlexAttention,
    whose block mask every forward builds anew, with the chunked cross-entropy (torch 2.13
    and later), and BERT and T5 (their masks, T5's relative bias), each compiled as the
    benchmark runs them (``compile=model``): the first H200 run found BERT's and T5's GPU
    idle for 40% of a step."""
    cfg = compose_train(
        [
            *GPU,
            *knobs,
            "trainer.max_steps=12",
            "trainer.log_every_n_steps=5",
            "trainer.val_check_interval=100",
            "checkpoint.every_n_steps=100",
            "callbacks.sample=null",
            f"compile={compile}",
        ],
        tmp_path,
        cache_dir,
    )
    # neither the first two (allocation, compilation) nor a logging step nor the last
    quiet = [s for s in range(2, 11) if (s + 1) % 5]
    sync_debug = SyncDebug(quiet)
    monkeypatch.setattr(LMTask, "configure_callbacks", lambda self: [sync_debug])
    try:
        train(cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sync_debug.checked == quiet
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"


def test_a_bf16_step_trains_and_reports_a_fused_attention_kernel(
    tmp_path: Path, cache_dir: Path
) -> None:
    train(compose_train([*GPU, "trainer.max_steps=8"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["precision"] == "bf16-mixed"
    assert all(torch.isfinite(torch.tensor(losses(tmp_path))))
    # GPT's plain causal attention in bf16: flash or cuDNN, never the math fallback
    kernels = results["sdpa_kernels"]
    assert kernels and not any("math" in k for k in kernels), kernels
    assert 0 < results["mfu"] < 1


@pytest.mark.parametrize(
    "knobs",
    [[], MASKED],
    ids=["flash", "flex"],
)
@torch._dynamo.config.patch(error_on_recompile=True)
def test_compile_model_trains_the_eager_loss_on_cuda(
    tmp_path: Path, cache_dir: Path, knobs: list[str]
) -> None:
    """fp32 with TF32 off, so every mode rounds alike: a mean over 1,024 tokens of a
    log-softmax, fused in another order, is about 1e-6 relative apart, and three AdamW steps
    keep it below 1e-4. With ALiBi and a window, ``auto`` runs FlexAttention (compiled on its
    own in eager mode, inside the graph with compile=model) and ``sdpa`` the dense mask: the
    same losses within the same bound, and no step recompiles."""
    found = {}
    counters.clear()
    runs = [("false", "sdpa"), ("false", "auto"), ("model", "auto")]
    for mode, kernel in runs:
        out = tmp_path / f"{mode}-{kernel}"
        overrides = [
            *GPU,
            *knobs,
            "trainer.precision=32-true",
            "matmul_precision=highest",
            "trainer.max_steps=3",
            "trainer.limit_val_batches=0",
            "callbacks.sample=null",
            f"model.attention_kernel={kernel}",
            f"compile={mode}",
        ]
        train(compose_train(overrides, out, cache_dir))
        results = json.loads((out / "results.json").read_text())
        found[mode, kernel] = (losses(out), results["sdpa_kernels"])
    eager = found["false", "sdpa"][0]
    assert len(eager) == 3 and counters["stats"]["unique_graphs"] >= 1
    for run in runs[1:]:
        assert found[run][0] == pytest.approx(eager, rel=1e-4), run
        assert (found[run][1] == ["flex_attention"]) == bool(knobs), found[run]
    assert "flex_attention" not in found["false", "sdpa"][1]


def test_fsdp_on_one_gpu_samples_and_keeps_its_final_checkpoint(
    tmp_path: Path, start_train: Callable[..., subprocess.Popen]
) -> None:
    """FSDP2 with its bf16 policy, compiled blocks, the end-of-run sample and the sharded final
    checkpoint, on one GPU (``tests/train/test_hot_path.py`` runs two CPU ranks)."""
    proc = start_train(
        "+debug=smoke",
        "logger=csv",
        "trainer=fsdp",
        "trainer.devices=1",
        "compile=blocks",
        "callbacks.sample.max_new_tokens=8",
        f"hydra.run.dir={tmp_path}",
    )
    _, output = finished_fsdp_run(proc, tmp_path)
    assert "recompile_limit" not in output  # the sample decodes without recompiling


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(["model=bert_tiny"], id="bert"),  # its MLM head over every position
        pytest.param(["model=t5_tiny"], id="t5"),  # two stacks, T5's relative bias as a mask
    ],
)
def test_cuda_graphs_replay_bert_and_t5_as_compiled(
    tmp_path: Path, cache_dir: Path, family: list[str]
) -> None:
    """As GPT's above, for the families the first H200 run found idlest (BERT's GPU idle 41%
    of a step, T5's 54%): the last of the training runs, so a device call's time limit cuts
    these before the checks that came first."""
    graphs_against_compile(tmp_path, cache_dir, family)


@pytest.mark.parametrize("positional", [Positional.rope, Positional.alibi])
def test_cached_generation_in_bf16_follows_the_full_forward(positional: Positional) -> None:
    """bf16 weights and KV cache. The cached and the full forward round at different points
    (bf16 keeps 8 significant bits, 2^-9 relative per rounding, a few dozen roundings through
    two blocks): their logits agree within 5% of the largest one, while a wrong cache slot or
    position moves them by the logits' own size."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, max_seq_len=64, vocab_size=97, positional=positional)
    model = build_model(cfg).cuda().to(torch.bfloat16).eval()
    ids = torch.randint(0, 97, (2, 40), device="cuda")
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        steps = [model(ids[:, :16], cache=cache)]
        steps += [model(ids[:, t : t + 1], cache=cache) for t in range(16, 40)]
    assert cache.k.dtype == torch.bfloat16
    assert relative_error(torch.cat(steps, dim=1), full) < 0.05


FLEX_CASES = [  # heads of 32 (d_model 128), and of 64 (256): GPT-2's, where Hopper takes
    # lmlab's SMALL_TILES (torch 2.11's own tiles for it did not compile on the H200)
    (Family.gpt, Positional.alibi, None, 128),
    (Family.gpt, Positional.alibi, None, 256),
    (Family.gpt, Positional.relative, 48, 128),
    (Family.gpt, Positional.rope, 48, 128),
    (Family.bert, Positional.learned, None, 128),  # padding only
    (Family.t5, Positional.relative, None, 128),
]


@pytest.mark.parametrize(("family", "positional", "window", "d_model"), FLEX_CASES)
def test_flex_attention_forward_and_gradients_equal_sdpa_on_cuda(
    family: Family, positional: Positional, window: int | None, d_model: int
) -> None:
    """The fused FlexAttention kernel (compiled, as ``attention_kernel=auto`` runs it on CUDA)
    against SDPA's dense mask, in bf16 autocast: outputs and every gradient, T5's relative
    bias table's included, within 3% of the largest value. bf16 keeps 8 significant bits and
    the kernels round the probabilities and sums at different points; a masked key let
    through, or a bias on the wrong head, is off by the values' own size."""
    base = dict(family=family, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)
    base["d_model"] = d_model
    cfg = dict(base, vocab_size=97, positional=positional, attention_window=window)
    torch.manual_seed(0)
    models = {}
    for kernel in (AttentionKernel.sdpa, AttentionKernel.flex):
        models[kernel] = build_model(ModelConfig(**cfg, attention_kernel=kernel)).cuda()
    models[AttentionKernel.flex].load_state_dict(models[AttentionKernel.sdpa].state_dict())
    batch = {"input_ids": torch.randint(0, 97, (4, 200), device="cuda")}
    if family != Family.gpt:
        lengths = torch.tensor([200, 170, 90, 33], device="cuda")
        batch["attention_mask"] = torch.arange(200, device="cuda") < lengths[:, None]
    if family == Family.t5:
        batch["decoder_input_ids"] = torch.randint(0, 97, (4, 60), device="cuda")
    outputs, grads = {}, {}
    for kernel, model in models.items():
        with warnings.catch_warnings(), torch.autocast("cuda", dtype=torch.bfloat16):
            # flex_attention's unfused fallback warns: fail instead
            warnings.filterwarnings("error", message=".*flex_attention called without")
            logits = model(**batch)
        logits.float().square().mean().backward()
        outputs[kernel] = logits
        grads[kernel] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert relative_error(outputs[AttentionKernel.flex], outputs[AttentionKernel.sdpa]) < 0.03
    assert grads[AttentionKernel.flex].keys() == grads[AttentionKernel.sdpa].keys()
    for name, grad in grads[AttentionKernel.sdpa].items():
        assert relative_error(grads[AttentionKernel.flex][name], grad) < 0.03, name


def test_chunked_cross_entropy_follows_the_full_one_in_bf16() -> None:
    """``model.cross_entropy=chunked`` on CUDA under bf16 autocast (the op in bf16, fp32
    accumulation) against the full form (bf16 logits, fp32 cross-entropy): both round the
    logits to bf16 (2^-9 relative), so the loss agrees within 1% and every gradient within a
    few percent of its largest entry."""
    from lmlab.config import CrossEntropy
    from lmlab.model.loss import CHUNKED_AVAILABLE

    if not CHUNKED_AVAILABLE:
        pytest.skip(f"torch {torch.__version__} has no linear_cross_entropy")
    base = dict(d_model=128, n_layers=2, n_heads=4, max_seq_len=128, vocab_size=8192)
    torch.manual_seed(0)
    full = build_model(ModelConfig(**base, cross_entropy=CrossEntropy.full)).cuda()
    chunked = build_model(ModelConfig(**base, cross_entropy=CrossEntropy.chunked)).cuda()
    chunked.load_state_dict(full.state_dict())
    ids = torch.randint(0, 8192, (8, 128), device="cuda")
    labels = torch.randint(0, 8192, (8, 128), device="cuda")
    grads = []
    for model in (full, chunked):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=labels)
        loss.backward()
        grads.append((loss.float().item(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_f, grads_f), (loss_c, grads_c) = grads
    assert loss_c == pytest.approx(loss_f, rel=1e-2)
    for name, g in grads_f.items():
        assert relative_error(grads_c[name], g) < 5e-2, name
