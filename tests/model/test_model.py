"""Model invariants: causality, exact parameter counts, tying, RoPE, ALiBi, GQA, windows."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lmlab.config import (
    Activation,
    Family,
    ModelConfig,
    Norm,
    NormPlacement,
    Positional,
    RopeScaling,
)
from lmlab.data.collators import decoder_tokens
from lmlab.errors import ConfigError
from lmlab.model import build_model, flops_per_token, param_breakdown
from lmlab.model.context import build_context
from lmlab.model.feedforward import ACTIVATIONS
from lmlab.model.positional import (
    ROPE_SCALINGS,
    RotaryPositional,
    alibi_slopes,
    sinusoid_table,
)

V = 97

# Paths that compute the same function are compared in float64: their rounding differences are
# about eps64 (1.1e-16) x accumulation length (< 10^3) x magnitude (logits < 10^2), far below
# FP64_ATOL, while a real defect (a leaked token, a wrong cache slot) moves logits by > 1e-3.
# In float32 the same comparisons sit at the noise floor, which differs between CPU kernels.
FP64_ATOL = 1e-9


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=24, vocab_size=V)
    return ModelConfig(**{**base, **kw})


def gpt2(d: int, layers: int, heads: int) -> ModelConfig:
    return ModelConfig(
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        max_seq_len=1024,
        vocab_size=50257,
        norm_placement=NormPlacement.pre,
        norm=Norm.layernorm,
        activation=Activation.gelu,
        positional=Positional.learned,
        bias=True,
        tie_embeddings=True,
    )


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (gpt2(768, 12, 12), 124_439_808),
        (gpt2(1024, 24, 16), 354_823_168),
        (gpt2(1280, 36, 20), 774_030_080),
        (gpt2(1600, 48, 25), 1_557_611_200),
        (
            ModelConfig(
                d_model=4096,
                n_layers=32,
                n_heads=32,
                d_ff=11008,
                max_seq_len=4096,
                vocab_size=32000,
                norm=Norm.rmsnorm,
                activation=Activation.swiglu,
                positional=Positional.rope,
                bias=False,
                tie_embeddings=False,
            ),
            6_738_415_616,
        ),
    ],
    ids=["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama2-7b"],
)
def test_exact_parameter_counts_of_published_models(cfg: ModelConfig, expected: int) -> None:
    with torch.device("meta"):
        model = build_model(cfg)
    assert param_breakdown(model)["total"] == expected
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("placement", list(NormPlacement))
@pytest.mark.parametrize("positional", list(Positional))
def test_decoder_is_causal(
    positional: Positional, placement: NormPlacement, window: int | None
) -> None:
    """Changing token t leaves the logits before t unchanged, and changes them at t."""
    torch.manual_seed(0)
    model = (
        build_model(
            tiny(
                positional=positional,
                norm_placement=placement,
                attention_window=window,
                n_kv_heads=2,
            )
        )
        .eval()
        .double()
    )
    ids = torch.randint(0, V, (2, 16))
    t = 9
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 16, V)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=FP64_ATOL)
    assert not torch.allclose(a[:, t], b[:, t])


def test_sliding_window_forgets_tokens_beyond_the_window() -> None:
    """With window W and one layer, position t depends on tokens t-W+1..t only."""
    torch.manual_seed(0)
    model = build_model(tiny(n_layers=1, attention_window=4, positional=Positional.rope)).eval()
    model.double()
    ids = torch.randint(0, V, (1, 16))
    changed = ids.clone()
    changed[0, 3] = (ids[0, 3] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[0, 7:], b[0, 7:], rtol=0, atol=FP64_ATOL)  # 7 - 3 >= 4
    assert not torch.allclose(a[0, 6], b[0, 6])


def test_tied_embeddings_share_storage_and_untied_do_not() -> None:
    tied = build_model(tiny(tie_embeddings=True))
    assert tied.head.weight.data_ptr() == tied.embed.weight.data_ptr()
    untied = build_model(tiny(tie_embeddings=False))
    assert untied.head.weight.data_ptr() != untied.embed.weight.data_ptr()
    n = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert n == V * 32


@pytest.mark.parametrize("family", list(Family))
@pytest.mark.parametrize("tied", [True, False])
def test_embed_scale_multiplies_the_entering_embeddings_by_sqrt_d_model(
    family: Family, tied: bool
) -> None:
    """Vaswani et al. 2017, 3.4 (``+experiment=vaswani2017``): the token embeddings times
    sqrt(d_model) where they enter, in every family and both of T5's stacks, and nowhere else:
    a tied head uses the weights unscaled. The model equals the unscaled one with the scale
    put on its embedding's output (the same multiplication, so bit for bit), and its weights
    and checkpoint keys are the unscaled one's."""
    torch.manual_seed(0)
    plain = build_model(tiny(family=family, tie_embeddings=tied)).double()
    torch.manual_seed(0)
    scaled = build_model(tiny(family=family, tie_embeddings=tied, embed_scale=True)).double()
    weights, scaled_weights = plain.state_dict(), scaled.state_dict()
    assert weights.keys() == scaled_weights.keys()
    assert all(torch.equal(weights[k], scaled_weights[k]) for k in weights)
    ids = torch.randint(5, V, (2, 12))
    inputs = {"input_ids": ids}
    if family == Family.t5:
        inputs["decoder_input_ids"] = ids[:, :7]
    unscaled = plain(**inputs)
    plain.embed.register_forward_hook(lambda module, args, out: out * math.sqrt(32))
    assert torch.equal(scaled(**inputs), plain(**inputs))
    assert not torch.allclose(scaled(**inputs), unscaled)


def test_rope_scores_depend_only_on_relative_offset() -> None:
    rope = RotaryPositional(tiny(positional=Positional.rope, max_seq_len=64))
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        rq, rk = rope.rotation(torch.tensor([m]), torch.tensor([n]))(q, k)
        return (rq * rk).sum()

    torch.testing.assert_close(score(3, 1), score(40, 38))
    torch.testing.assert_close(score(10, 10), score(0, 0))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_alibi_slopes_follow_the_paper() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s6 = alibi_slopes(6)  # 4 from the power of two, then every other one of 8
    torch.testing.assert_close(s6, torch.cat((alibi_slopes(4), alibi_slopes(8)[0::2][:2])))


def test_alibi_slopes_equal_blooms_for_every_head_count() -> None:
    """BLOOM's ``build_alibi_tensor`` (position 1's bias is the slope), head counts that are no
    power of two too; it computes some slopes with an fp32 power: a few roundings apart."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for heads in range(1, 40):
        bloom = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]
        torch.testing.assert_close(alibi_slopes(heads), bloom, rtol=1e-6, atol=0)


def test_sinusoid_table_matches_the_formula() -> None:
    table = sinusoid_table(10, 8)
    p, i = 7, 2
    assert math.isclose(table[p, 2 * i], math.sin(p / 10000 ** (2 * i / 8)), abs_tol=1e-6)
    assert math.isclose(table[p, 2 * i + 1], math.cos(p / 10000 ** (2 * i / 8)), abs_tol=1e-6)


def test_attention_mask_merges_causality_window_and_bias() -> None:
    model = build_model(tiny(positional=Positional.alibi))
    pos = torch.arange(6)
    ctx = build_context(model.positional, pos, pos, causal=True, window=3)
    allowed = ctx.mask[0, 0] > float("-inf")
    expected = torch.tensor([[0 <= i - j < 3 for j in range(6)] for i in range(6)])
    assert torch.equal(allowed, expected)
    plain = build_context(build_model(tiny()).positional, pos, pos, causal=True)
    assert plain.mask is None and plain.is_causal  # lets SDPA use its flash kernel


def test_gqa_equals_attention_with_repeated_kv_heads() -> None:
    """GQA with n_kv_heads=2 equals MHA whose k/v projections repeat each kv head."""
    torch.manual_seed(0)
    gqa = build_model(tiny(n_kv_heads=2)).eval().double()
    mha = build_model(tiny()).eval().double()
    state = gqa.state_dict()
    for i in range(2):
        w = state[f"blocks.{i}.attn.wkv.weight"].view(2, 2, 8, 32)  # (k|v, kv_head, hd, D)
        state[f"blocks.{i}.attn.wkv.weight"] = w.repeat_interleave(2, dim=1).reshape(-1, 32)
        b = state[f"blocks.{i}.attn.wkv.bias"].view(2, 2, 8)
        state[f"blocks.{i}.attn.wkv.bias"] = b.repeat_interleave(2, dim=1).reshape(-1)
    mha.load_state_dict(state)
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), rtol=0, atol=FP64_ATOL)
    assert sum(p.numel() for p in gqa.parameters()) < sum(p.numel() for p in mha.parameters())


class MatrixProducts(TorchDispatchMode):
    """Counts the matrix products (``mm``, ``addmm``, ``bmm``) run while entered."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func._overloadpacket.__name__ in ("mm", "addmm", "bmm")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("bias", [False, True])
def test_self_attention_projects_queries_keys_and_values_in_one_product(bias: bool) -> None:
    """Self-attention runs one product for its queries, keys and values (``wq`` and ``wkv``
    side by side) and one for its output: two forward, four backward (each product's input
    and weight gradients), where two projections run three and six; a GPU launches each.
    Cross-attention reads its keys and values from the encoder's output: three and six.
    Without gradients (validation, decoding) self-attention runs its two projections, which
    read the weights once where the side-by-side copy would read and write them again. The
    result is the two projections' within fp32 rounding (the backward sums one product over
    q, k and v where two products summed two parts)."""
    torch.manual_seed(0)
    attn = build_model(tiny(family=Family.t5, bias=bias)).decoder[0]
    x = torch.randn(2, 6, 32, requires_grad=True)
    pos, positional = torch.arange(6), build_model(tiny()).positional  # learned: no bias
    for layer, memory, products in ((attn.attn, None, (2, 4)), (attn.cross, x * 2, (3, 6))):
        ctx = build_context(positional, pos, pos, causal=memory is None)
        with MatrixProducts() as forward:
            y = layer(x, ctx, memory=memory)
        with MatrixProducts() as backward:
            y.square().sum().backward()
        assert (forward.count, backward.count) == products
    with torch.no_grad(), MatrixProducts() as inference:  # no copy of the weights to read
        attn.attn(x, build_context(positional, pos, pos, causal=True))
    assert inference.count == 3
    wq, wkv = attn.attn.wq, attn.attn.wkv
    q, kv = F.linear(x, wq.weight, wq.bias), F.linear(x, wkv.weight, wkv.bias)
    q_fused, kv_fused = attn.attn.project(x, None)
    # one dot product of 32 fp32 terms per element, in the same order: a few ulps at most
    torch.testing.assert_close(q_fused, q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kv_fused, kv, rtol=1e-6, atol=1e-6)


def test_residual_projections_get_scaled_init() -> None:
    torch.manual_seed(0)
    model = build_model(tiny(d_model=256, n_layers=8, n_heads=4))
    assert abs(model.blocks[0].attn.wq.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].attn.wo.weight.std().item() - 0.02 / 4) < 0.0005
    assert abs(model.blocks[0].ffn.w_out.weight.std().item() - 0.02 / 4) < 0.0005


def test_t5_init_gives_each_weight_mesh_tensorflows_std() -> None:
    """model.init=t5: linear layers N(0, 1/fan_in) (the query too: lmlab scales the scores by
    1/sqrt(d_head) where T5 folds it into the query's init), the shared embedding and T5's head
    tied to it N(0, 1), the relative bias N(0, 1/d_model), biases zero. Each sample std is
    within 6 of its standard errors, std * (2n)^-1/2 for n draws."""
    torch.manual_seed(0)
    cfg = tiny(family=Family.t5, init="t5", d_model=64, d_ff=256, positional=Positional.relative)
    model = build_model(cfg)
    expected = {id(model.embed.weight): 1.0}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in expected:
            expected[id(module.weight)] = module.in_features**-0.5
            assert module.bias is None or not module.bias.any()
        elif isinstance(module, torch.nn.Embedding) and module is not model.embed:
            expected[id(module.weight)] = cfg.d_model**-0.5  # the relative bias tables
    assert model.head.weight is model.embed.weight
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(".bias"):  # norms 1, biases 0 (above)
            continue
        std, n = expected[id(p)], p.numel()  # every other weight has its expected std
        assert abs(p.std().item() - std) < 6 * std / (2 * n) ** 0.5, name
    # GPT's tied head does not rescale: its embedding is the head's N(0, 1/d_model)
    gpt = build_model(tiny(init="t5", d_model=64))
    std, n = 64**-0.5, gpt.embed.weight.numel()
    assert gpt.head.weight is gpt.embed.weight
    assert abs(gpt.embed.weight.std().item() - std) < 6 * std / (2 * n) ** 0.5


@pytest.mark.parametrize("family", [Family.gpt, Family.bert])
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("scale", [False, True])
def test_t5_init_gives_learned_positions_the_scale_of_the_tokens(
    family: Family, tie: bool, scale: bool
) -> None:
    """A learned position table under model.init=t5 (T5 has none) is added to the token
    embedding's output and takes its scale: a tied GPT or BERT embedding's N(0, 1/d_model),
    an untied one's N(0, 1), times sqrt(d_model) with embed_scale. Beside a tied embedding it
    was N(0, 1), sqrt(d_model) = 8 times the tokens at init. Each sample std within 6 of its
    standard errors, std * (2n)^-1/2 for n draws (n = 4,096: 11% of the std, against 8x)."""
    torch.manual_seed(0)
    cfg = tiny(
        family=family,
        init="t5",
        d_model=64,
        max_seq_len=64,
        positional=Positional.learned,
        tie_embeddings=tie,
        embed_scale=scale,
    )
    model = build_model(cfg)
    weight = model.embed.weight
    tokens = (64**-0.5 if tie else 1.0) * (8.0 if scale else 1.0)  # the embedding's output
    assert (
        abs(weight.std().item() * (8.0 if scale else 1.0) - tokens)
        < 6 * tokens / (2 * weight.numel()) ** 0.5
    )
    table = model.positional.table.weight
    assert abs(table.std().item() - tokens) < 6 * tokens / (2 * table.numel()) ** 0.5


@pytest.mark.parametrize("activation", list(Activation))
def test_tiny_model_overfits_one_batch(activation: Activation) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(activation=activation))
    ids = torch.randint(0, V, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1, f"{activation.value}: loss {loss.item():.3f} after 150 steps"


def counted_training_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward + backward as torch's FlopCounterMode counts them, with attention
    on SDPA's math path (plain matmuls, so its score FLOPs are counted too)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs).float().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("family", "knobs"),
    [
        (Family.gpt, {}),
        (Family.gpt, {"activation": Activation.swiglu, "n_kv_heads": 2, "tie_embeddings": False}),
        (Family.bert, {}),
        (Family.t5, {"n_decoder_layers": 3}),
        (Family.t5, {"d_head": 24}),  # n_heads x d_head != d_model, as in T5 v1.1 small
    ],
)
def test_flops_per_token_equals_counted_matmul_flops(family: Family, knobs: dict) -> None:
    """MFU, the dry-run plan and BENCHMARKS.md rest on ``flops_per_token``: it must equal what
    torch counts for a forward + backward. T5 with the span-corruption decoder length counts
    the decoder on its own (shorter) tokens; without it, it is an upper bound."""
    T = 24
    model = build_model(tiny(family=family, bias=False, **knobs))
    ids = torch.randint(5, V, (2, T))
    inputs = {"input_ids": ids}
    S = decoder_tokens(family, T)
    if family == Family.t5:
        assert S is not None and S < T // 2
        inputs["decoder_input_ids"] = ids[:, :S]
    counted = counted_training_flops(model, inputs) / ids.numel()
    assert flops_per_token(model, T, S) == pytest.approx(counted, rel=1e-12)
    if family == Family.t5:  # the decoder counted on every encoder token: an upper bound
        assert flops_per_token(model, T, decoder_len=T) > 1.5 * counted
        with pytest.raises(ValueError, match="decoder_len"):
            flops_per_token(model, T)


def test_gelu_exact_is_the_erf_form_and_gelu_the_tanh_approximation() -> None:
    """Hugging Face's BERT uses x * Phi(x) (``hidden_act="gelu"``), GPT-2 the tanh form; the two
    differ by up to ~5e-4, far above float64 rounding (~1e-16 at these magnitudes)."""
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    erf_form = 0.5 * x * (1 + torch.erf(x / 2**0.5))
    tanh_form = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    assert torch.allclose(ACTIVATIONS[Activation.gelu_exact]()(x), erf_form, rtol=0, atol=1e-14)
    assert torch.allclose(ACTIVATIONS[Activation.gelu]()(x), tanh_form, rtol=0, atol=1e-14)
    assert (erf_form - tanh_form).abs().max() > 1e-4


def test_head_dimension_may_differ_from_d_model_over_heads() -> None:
    """``d_head``: 6 heads of 16 in a 64-wide model (T5 v1.1 small's 6 x 64 in 512, scaled)."""
    cfg = tiny(d_model=64, n_heads=6, d_head=16, n_kv_heads=2, positional=Positional.rope)
    model = build_model(cfg)
    attn = model.blocks[0].attn
    assert attn.wq.weight.shape == (96, 64) and attn.wkv.weight.shape == (64, 64)
    assert attn.wo.weight.shape == (64, 96)
    assert model(torch.randint(0, V, (2, 9))).shape == (2, 9, V)
    with pytest.raises(ConfigError, match="model.d_head=0"):
        tiny(d_head=0)


def test_rope_scalings_stretch_the_low_frequencies_only_as_llama3_says() -> None:
    """Head dim 8, theta 5e5: wavelengths 6, 167, 4443 and 118e3 positions. Llama 3.1's
    scaling with L = 512 (L/4 = 128, L/1 = 512) keeps the first, divides the last two by the
    factor and puts the second between; linear divides all of them."""
    assert set(ROPE_SCALINGS) == set(RopeScaling)
    cfg = tiny(positional=Positional.rope, rope_theta=5e5, rope_original_max_seq_len=512)
    inv_freq = 5e5 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    assert torch.equal(ROPE_SCALINGS[RopeScaling.none](inv_freq, cfg), inv_freq)
    torch.testing.assert_close(ROPE_SCALINGS[RopeScaling.linear](inv_freq, cfg), inv_freq / 8)
    scaled = ROPE_SCALINGS[RopeScaling.llama3](inv_freq, cfg)
    assert scaled[0] == inv_freq[0] and torch.equal(scaled[2:], inv_freq[2:] / 8)
    assert inv_freq[1] / 8 < scaled[1] < inv_freq[1]
    model = build_model(dataclasses.replace(cfg, rope_scaling=RopeScaling.llama3))
    angles = torch.atan2(model.positional.sin[1, :4], model.positional.cos[1, :4]).double()
    torch.testing.assert_close(angles, scaled, rtol=1e-6, atol=1e-7)  # the fp32 tables


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"positional": Positional.alibi}, "model.rope_scaling=llama3 scales RoPE: it needs"),
        ({"rope_factor": 0.0}, "model.rope_factor=0.0: allowed 1 or more, finite"),
        ({"rope_factor": 0.5}, "model.rope_factor=0.5: allowed 1 or more, finite"),
        ({"rope_low_freq_factor": 4.0}, "needs 0 < model.rope_low_freq_factor < model.rope_high"),
        ({"rope_original_max_seq_len": 0}, "model.rope_original_max_seq_len=0 must be >= 1"),
    ],
)
def test_rope_scaling_values_are_checked(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(**{"positional": Positional.rope, "rope_scaling": RopeScaling.llama3, **knobs})
