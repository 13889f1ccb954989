"""``make bench-gpu``: the races, the families, FSDP and the Mixture of Experts
(``bench/gpu_cases.py``) and the operations timed alone (``bench/gpu_ops.py``), in the order
they run (not in the default set: they need a GPU, or ``--quick``), and what their numbers
mean."""

from __future__ import annotations

from bench.cases.common import Case
from bench.gpu_cases import GPT2_SHAPES, STEPS, WARMUP, cuda_graphs_case, family_case, versus_plain
from bench.gpu_ops import attention_case, cross_entropy_case, generate_case

# In the order they run: the cheap cases first, then the races against the plain loop (the
# issue's targets; at GPT-2 small also lmlab with CUDA graphs), attention's kernels, the other
# families, FSDP and the Mixture of Experts.
# A device call has a time limit: the cases it leaves out are named and can run in another.
GPU_CASES = {
    "gpu_cross_entropy": cross_entropy_case,
    "gpu_generate": generate_case,
    "gpu_gpt_small": versus_plain("gpt_small"),
    "gpu_gpt_small_graphs": cuda_graphs_case,
    "gpu_attention": attention_case,
    "gpu_gpt_medium": versus_plain("gpt_medium", lmlab_first=True),
    "gpu_bert_base": family_case("bert_base", [], 32, 512, "bert_base", against_gpt=True),
    "gpu_t5_small": family_case("t5_small", [], 32, 512, "t5_small", against_gpt=True),
    "gpu_gpt_medium_llama": family_case(
        "gpt_medium", ["+experiment=llama", "model.vocab_size=50304"], 12, 1024, "gpt_medium llama"
    ),
    "gpu_fsdp": family_case(
        "gpt_small", [*GPT2_SHAPES, "trainer=fsdp", "trainer.devices=1"], 12, 1024, "gpt_small fsdp"
    ),
    "gpu_moe": family_case(
        "gpt_medium",
        ["+experiment=mixtral", "model.vocab_size=50304"],
        12,
        1024,
        "gpt_medium mixtral 8 experts top-2",
    ),
}

CASES = {name: Case(fn, "gpu", default=False) for name, fn in GPU_CASES.items()}

# What each group's numbers mean, above its table in BENCHMARKS.md.
INTROS = {
    "gpu": (
        "`make bench-gpu` (`python bench/run.py --only gpu`) on one GPU. lmlab runs "
        "`trainer=gpu compile=model` (bf16-mixed, the loss in the compiled graph, fused AdamW) "
        "on the embedded corpus with `logger=none`, no validation and no sample; tokens/s over "
        f"steps {WARMUP} to {STEPS - 1} (the mean start-to-start time of the "
        f"{STEPS - 1 - WARMUP} steps between them), clipping the gradients at "
        "`trainer.gradient_clip_val` (1.0) as every lmlab run does. The plain loop "
        f"(`bench/nanogpt_loop.py`, the mean of {STEPS} steps after {WARMUP} warm-up steps) is "
        "written like nanoGPT's `bench.py`: its own GPT-2, whole-model `torch.compile`, fused "
        "AdamW, bf16 autocast, random tokens and no clipping, the baseline #17 set; the two "
        "alternate run by run, gpt_small's first pair starting with the plain loop and "
        "gpt_medium's with lmlab. 'plain loop, lmlab's model' is that loop once around lmlab's "
        "own model (its loss from `labels`): near the plain loop's figure, a gap is lmlab's "
        "training loop; near lmlab's, its model's graph. "
        "MFU = tokens/s x `flops_per_token` / the dense bf16 peak "
        "(`lmlab.train.hardware.gpu_peak_flops`). The attention rows time attention alone at "
        "GPT-2 small's shape (forward and backward, bf16, compiled): SDPA with lmlab's dense "
        "mask against FlexAttention (`model.attention_kernel=sdpa|flex`), per scheme that needs "
        "a mask or a bias, with plain causal SDPA as the bound. `--profile DIR` writes a "
        "torch.profiler table of each case's first run there, and 'GPU busy' is that run's "
        "kernel time per step (the profiled steps) over its step time (the timed ones). "
        "'syncs per quiet step': the synchronising CUDA calls of each lmlab run's steps that "
        "log nothing, 5 steps after the timed ones under "
        '`torch.cuda.set_sync_debug_mode("warn")` (`bench.profiling.SyncAudit`), the '
        "sites in the note; a GPU waits idle for the host after each. 'plain syncs per step': "
        "the same audit of the plain loop's steps, the control. `--budget` reports the "
        "cases it left out as not run."
    ),
}
