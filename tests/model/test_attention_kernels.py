"""``model.attention_kernel``: FlexAttention computes what SDPA's dense mask does, for every
family, positional scheme, window and padding.

FlexAttention has no backward pass on CPU, so these compare forward passes (its unfused
reference implementation); the gradients and the fused CUDA kernel are compared by the
``gpu``-marked tests in ``tests/test_gpu.py``."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmlab.config import AttentionKernel, Family, ModelConfig, Positional
from lmlab.errors import ConfigError
from lmlab.infer.probe import record_attention
from lmlab.model import build_model
from lmlab.model.context import (
    FLEX_ON,
    AttnContext,
    FlexContext,
    block_mask_of,
    build_context,
    shared_block_mask,
)

V = 61
# float64 throughout: both kernels sum at most 24 products of O(1) values per score and per
# output, so their rounding differences are a few eps64 (1.1e-16) x 24, far below 1e-9,
# while one masked or unmasked key, or a bias on the wrong head, moves outputs by > 1e-3.
FP64_ATOL = 1e-9


@pytest.fixture(autouse=True)
def quiet_reference() -> None:
    """flex_attention warns that, outside torch.compile, it runs its unfused reference."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without")
        yield


def pair(family: Family, **kw) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights under attention_kernel=sdpa and =flex, in float64."""
    base = dict(family=family, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    cfg = dict(base, vocab_size=V, **kw)
    torch.manual_seed(0)
    sdpa = build_model(ModelConfig(**cfg, attention_kernel=AttentionKernel.sdpa)).double()
    flex = build_model(ModelConfig(**cfg, attention_kernel=AttentionKernel.flex)).double()
    flex.load_state_dict(sdpa.state_dict())
    return sdpa.eval(), flex.eval()


def inputs(family: Family) -> dict[str, torch.Tensor]:
    """Three rows; for BERT and T5 two of them padded, as their collators pad."""
    torch.manual_seed(1)
    batch = {"input_ids": torch.randint(0, V, (3, 20))}
    if family != Family.gpt:
        lengths = torch.tensor([20, 15, 7])
        batch["attention_mask"] = torch.arange(20) < lengths[:, None]
    if family == Family.t5:
        batch["decoder_input_ids"] = torch.randint(0, V, (3, 9))
    return batch


def flex_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    attend = FlexContext.attend

    def counted(self, *args, **kwargs):
        calls.append(1)
        return attend(self, *args, **kwargs)

    monkeypatch.setattr(FlexContext, "attend", counted)
    return calls


CASES = [
    (family, positional, window)
    for family in Family
    for positional in Positional
    for window in (None, 5)
    if family == Family.gpt or positional != Positional.none
]


@pytest.mark.parametrize(("family", "positional", "window"), CASES)
def test_flex_attention_equals_sdpa(
    monkeypatch: pytest.MonkeyPatch, family: Family, positional: Positional, window: int | None
) -> None:
    sdpa, flex = pair(family, positional=positional, attention_window=window)
    batch = inputs(family)
    calls = flex_calls(monkeypatch)
    with torch.no_grad():
        expected = sdpa(**batch)
        assert not calls
        got = flex(**batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=FP64_ATOL)
    # a GPT with neither bias nor window keeps SDPA's causal flash path: no mask is needed
    needs_mask = positional in (Positional.alibi, Positional.relative) or window is not None
    assert bool(calls) == (family != Family.gpt or needs_mask)


def test_every_kernel_has_a_device_rule() -> None:
    assert set(FLEX_ON) == set(AttentionKernel)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not FLEX_ON[AttentionKernel.auto](cpu) and FLEX_ON[AttentionKernel.auto](cuda)
    assert not FLEX_ON[AttentionKernel.sdpa](cuda) and FLEX_ON[AttentionKernel.flex](cpu)


def test_auto_takes_sdpa_on_cpu_and_with_attention_dropout() -> None:
    auto = AttentionKernel.auto
    cfg = ModelConfig(vocab_size=V, positional=Positional.alibi, attention_kernel=auto)
    model = build_model(cfg)
    pos = torch.arange(8)
    ctx = build_context(model.positional, pos, pos, causal=True, kernel=model.kernel)
    assert type(ctx) is AttnContext and ctx.mask is not None  # auto, on a CPU
    assert ModelConfig(attention_kernel=auto, dropout=0.1).masked_attention == AttentionKernel.sdpa
    assert ModelConfig(attention_kernel=auto).masked_attention == auto
    assert ModelConfig().masked_attention == AttentionKernel.sdpa  # until measured on a GPU
    with pytest.raises(ConfigError, match=r"attention_kernel=flex.*dropout=0.1"):
        ModelConfig(attention_kernel=AttentionKernel.flex, dropout=0.1)


def test_flex_context_has_sdpas_mask_as_its_dense_form() -> None:
    model = build_model(ModelConfig(vocab_size=V, positional=Positional.relative))
    pos, padding = torch.arange(6), torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]).bool()
    kw = dict(causal=False, window=3, key_padding_mask=padding)
    flex = build_context(model.positional, pos, pos, kernel=AttentionKernel.flex, **kw)
    dense = build_context(model.positional, pos, pos, kernel=AttentionKernel.sdpa, **kw)
    assert isinstance(flex, FlexContext) and flex.mask is None
    torch.testing.assert_close(flex.dense().mask, dense.mask, rtol=0, atol=0)
    assert dense.mask.shape == (2, 4, 6, 6)  # (B, H, T, S): padding per row, bias per head


def test_attention_maps_of_a_flex_model_are_sdpas() -> None:
    """The probe's explicit weights come from the dense form of a FlexAttention context."""
    sdpa, flex = pair(Family.gpt, positional=Positional.alibi, attention_window=4)
    ids = inputs(Family.gpt)["input_ids"]
    maps = []
    for model in (sdpa, flex):
        with torch.no_grad(), record_attention(model) as layers:
            model(ids)
        maps.append({name: layer.weights for name, layer in layers.items()})
    assert maps[0].keys() == maps[1].keys() and len(maps[0]) == 2
    for name, weights in maps[0].items():
        torch.testing.assert_close(maps[1][name], weights, rtol=0, atol=FP64_ATOL)


def test_recorded_attention_of_padded_rows_under_a_window_is_sdpas() -> None:
    """A padded query under a window has every key masked: the recorded weights are zeros
    there, as SDPA's, not a NaN the next layer spreads to the real tokens (a QA finding)."""
    sdpa, _ = pair(Family.bert, attention_window=4)
    batch = inputs(Family.bert)
    with torch.no_grad():
        plain = sdpa(**batch)
        with record_attention(sdpa) as layers:
            recorded = sdpa(**batch)
            weights = layers["blocks.0"].weights
    assert weights[2, :, 12:].abs().max() == 0  # row 2 has 7 real tokens: 12.. see none
    real = batch["attention_mask"]
    torch.testing.assert_close(recorded[real], plain[real], rtol=0, atol=FP64_ATOL)


@pytest.mark.parametrize("positional", [Positional.alibi, Positional.relative])
def test_cached_generation_of_a_flex_model_equals_its_full_forward(
    positional: Positional,
) -> None:
    """Decoding with a KV cache runs SDPA; the full forward runs FlexAttention: each cached
    step's logits equal the full forward's at that position."""
    _, flex = pair(Family.gpt, positional=positional, attention_window=6)
    ids = inputs(Family.gpt)["input_ids"][:, :14]
    with torch.no_grad():
        full = flex(ids)
        cache = flex.new_cache(ids.shape[0])
        steps = [flex(ids[:, :8], cache=cache)]
        steps += [flex(ids[:, t : t + 1], cache=cache) for t in range(8, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=FP64_ATOL)


@pytest.mark.parametrize("padding", [False, True])
def test_building_a_flex_context_reads_nothing_on_the_host(
    monkeypatch: pytest.MonkeyPatch, host_reads: list[str], padding: bool
) -> None:
    """A forward with key padding builds its block mask every step, and one without builds
    it on the first step of each shape: on a GPU a host read there would stall a step
    (``tests/train/test_hot_path.py`` counts the same reads over whole steps; the
    synchronisations of CUDA kernels themselves are checked by ``tests/train/test_gpu.py``)."""
    model = build_model(ModelConfig(vocab_size=V, positional=Positional.relative))
    pos = torch.arange(16)
    mask = (torch.arange(16) < torch.tensor([16, 9])[:, None]) if padding else None
    shared_block_mask.cache_clear()  # built here, not found
    host_reads.clear()  # from here on
    ctx = build_context(
        model.positional,
        pos,
        pos,
        causal=not padding,
        window=6,
        key_padding_mask=mask,
        kernel=AttentionKernel.flex,
    )
    monkeypatch.undo()
    assert isinstance(ctx, FlexContext) and host_reads == []


def flex_mask(
    model: torch.nn.Module, length: int, padding: torch.Tensor | None = None, **kw
) -> FlexContext:
    pos = torch.arange(length)
    ctx = build_context(
        model.positional, pos, pos, key_padding_mask=padding, kernel=AttentionKernel.flex, **kw
    )
    assert isinstance(ctx, FlexContext)
    return ctx.block_mask


def test_a_block_mask_without_padding_is_built_once_per_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Causality and a window depend on nothing that changes between steps: every forward of
    a shape shares one block mask, equal to a freshly built one. With key padding (BERT, T5)
    each batch builds its own; so does a traced forward (torch.compile)."""
    model = build_model(ModelConfig(vocab_size=V, positional=Positional.alibi))
    shared_block_mask.cache_clear()
    first = flex_mask(model, 16, causal=True, window=6)
    assert flex_mask(model, 16, causal=True, window=6) is first
    fresh = block_mask_of(lambda b, q, k, kv: (q >= k) & ((q - k).abs() < 6), None, 16, 16, "cpu")
    torch.testing.assert_close(first.to_dense(), fresh.to_dense(), rtol=0, atol=0)
    others = [
        flex_mask(model, 16, causal=True, window=5),
        flex_mask(model, 16, causal=False, window=6),
        flex_mask(model, 12, causal=True, window=6),
    ]
    assert all(other is not first for other in others)
    assert shared_block_mask.cache_info().currsize == 4
    padding = torch.arange(16) < torch.tensor([16, 9])[:, None]
    padded = [flex_mask(model, 16, padding, causal=False, window=6) for _ in range(2)]
    assert padded[0] is not padded[1]
    torch.testing.assert_close(padded[0].to_dense(), padded[1].to_dense(), rtol=0, atol=0)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert flex_mask(model, 16, causal=True, window=6) is not first
    assert shared_block_mask.cache_info().currsize == 4


def test_an_additive_mask_takes_the_queries_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 queries with the fp32 bias build_context makes: SDPA gets the bias in bf16, as
    autocast gives it in training (CUDA's fused kernels take no other)."""
    model = build_model(ModelConfig(vocab_size=V, positional=Positional.alibi))
    pos = torch.arange(8)
    ctx = build_context(model.positional, pos, pos, causal=True)
    assert ctx.mask.dtype == torch.float32
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        seen.append(attn_mask.dtype)
        return sdpa(q, k, v, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, k, v = (torch.randn(1, 4, 8, 32, dtype=torch.bfloat16) for _ in range(3))
    assert ctx.attend(q, k, v, 0.0, False).dtype == torch.bfloat16
    assert seen == [torch.bfloat16]


def test_flex_takes_small_tiles_for_16_bit_heads_of_64_to_128_on_hopper_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On an H200 (torch 2.11) FlexAttention with ALiBi at head_dim 64 in bf16 failed to
    compile: Inductor's default tiles for Hopper needed 240 KiB of shared memory, over the
    227 KiB there. lmlab passes smaller tiles there (``SMALL_TILES``), and only there: other
    GPUs, fp32, other head sizes and fewer than 128 queries (torch's decoding kernel) keep
    torch's choice. The choice is a constant to dynamo, so the compiled model traces it
    without a graph break."""
    from types import SimpleNamespace

    from lmlab.model import context

    capability = {"now": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability["now"])

    def query(
        dtype: torch.dtype = torch.bfloat16, head_dim: int = 64, cuda: bool = True, n: int = 1024
    ):
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        return SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=(2, 4, n, head_dim), device=device)

    assert context.flex_kernel_options(query()) == context.SMALL_TILES
    assert context.flex_kernel_options(query(torch.float16, 128)) == context.SMALL_TILES
    assert context.flex_kernel_options(query(torch.float32)) is None
    assert context.flex_kernel_options(query(head_dim=32)) is None
    assert context.flex_kernel_options(query(head_dim=256)) is None  # torch's tiles are small
    # under 128 queries torch's decoding kernel sizes its own query tile: left to it
    assert context.flex_kernel_options(query(n=127)) is None
    assert context.flex_kernel_options(query(n=128)) == context.SMALL_TILES
    assert context.flex_kernel_options(query(cuda=False)) is None
    assert context.flex_kernel_options(torch.zeros(1, 1, 4, 64, dtype=torch.bfloat16)) is None
    capability["now"] = (8, 0)
    assert context.flex_kernel_options(query()) is None
    capability["now"] = (9, 0)
    # dynamo's trace decides the branch (Inductor's C++ build would add 17 s to the suite)
    traced = torch.compile(
        lambda x: x + 1 if context._hopper(0) else x - 1, backend="eager", fullgraph=True
    )
    assert traced(torch.zeros(2)).tolist() == [1.0, 1.0]


def test_flex_attention_is_given_the_kernel_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``flex_kernel_options`` chose reaches the kernel call."""
    from lmlab.model import context

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["kernel_options"])
        return args[0]

    monkeypatch.setattr(context, "flex_attention", spy)
    monkeypatch.setattr(context, "flex_kernel_options", lambda q: {"fwd_BLOCK_M": 16})
    q = torch.zeros(1, 2, 4, 8)
    FlexContext().attend(q, q, q, 0.0, False)
    assert seen == [{"fwd_BLOCK_M": 16}]
