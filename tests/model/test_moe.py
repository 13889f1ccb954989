"""The Mixture-of-Experts feed-forward: the dense limit, routing against a per-token loop, the
router losses' closed forms, capacity drops, router gradients, parameter and FLOP counts
against Mixtral and torch's counter, activation checkpointing and compilation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from lmlab.config import GATED, IGNORE, Activation, Family, ModelConfig, MoEConfig, Norm
from lmlab.model import build_model, flops_per_token, param_breakdown
from lmlab.model.layers import Block
from lmlab.model.moe import ExpertLinear, MoEFeedForward, moe_layers
from lmlab.train.compose import compose_train
from lmlab.train.parallel import layout

V, D = 97, 32

# Paths that compute the same function are compared in float64: their rounding differences are
# about eps64 (1.1e-16) x accumulation length (< 10^3) x magnitude (< 10^2), far below
# FP64_ATOL, while a wrong expert, gate or slot moves outputs by more than 1e-3.
FP64_ATOL = 1e-9


def config(activation: Activation = Activation.swiglu, bias: bool = False, **moe) -> ModelConfig:
    moe = {"num_experts": 4, "top_k": 2, **moe}
    return ModelConfig(
        d_model=D,
        n_layers=2,
        n_heads=4,
        max_seq_len=24,
        vocab_size=V,
        activation=activation,
        bias=bias,
        moe=MoEConfig(**moe),
    )


def moe_ffn(cfg: ModelConfig, seed: int = 0, std: float = 0.5) -> MoEFeedForward:
    """A MoE feed-forward in float64 with a large init, so routing has no near-ties and
    outputs are O(1), where the tolerances below mean something."""
    torch.manual_seed(seed)
    ffn = MoEFeedForward(cfg)
    for p in ffn.parameters():
        torch.nn.init.normal_(p, std=std)
    return ffn.double()


def expert_ffn(ffn: MoEFeedForward, e: int, x_D: torch.Tensor) -> torch.Tensor:
    """Expert e on one token, written out with F.linear on its slices of the stacked weights."""
    ex = ffn.experts

    def lin(layer: ExpertLinear, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, layer.weight[e], None if layer.bias is None else layer.bias[e])

    if hasattr(ex, "w_gate"):
        return lin(ex.w_out, ex.act(lin(ex.w_gate, x_D)) * lin(ex.w_in, x_D))
    return lin(ex.w_out, ex.act(lin(ex.w_in, x_D)))


def naive_moe(ffn: MoEFeedForward, x_ND: torch.Tensor) -> torch.Tensor:
    """The MoE equation, one token at a time: softmax router, top k, Mixtral's renormalised
    gates (k >= 2) or Switch's probability (k = 1), weighted sum of the chosen experts."""
    out = []
    for x_D in x_ND:
        probs_E = (ffn.router.weight @ x_D).softmax(-1)
        gates, chosen = probs_E.topk(ffn.top_k)
        if ffn.top_k > 1:
            gates = gates / gates.sum()
        out.append(
            sum(g * expert_ffn(ffn, int(e), x_D) for g, e in zip(gates, chosen, strict=True))
        )
    return torch.stack(out)


@pytest.mark.parametrize("activation", list(Activation))
def test_one_expert_top1_equals_the_dense_feed_forward(activation: Activation) -> None:
    """A dense model's FFN weights as the only expert: the same logits (the router's one
    probability is exactly 1), in float64 and, through F.grouped_mm, in float32."""
    moe_cfg = config(activation, bias=True, num_experts=1, top_k=1, aux_loss_coef=0.0)
    dense_cfg = dataclasses.replace(moe_cfg, moe=MoEConfig())
    torch.manual_seed(0)
    dense, moe = build_model(dense_cfg), build_model(moe_cfg)
    state = moe.state_dict()
    for key, value in dense.state_dict().items():
        if ".ffn." in key:
            key = key.replace(".ffn.", ".ffn.experts.")
            value = value[None]  # the stack of one expert
        state[key] = value
    moe.load_state_dict(state)
    ids = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids), dense(ids), rtol=0, atol=1e-6)  # float32
        moe.double(), dense.double()
        torch.testing.assert_close(moe(ids), dense(ids), rtol=0, atol=FP64_ATOL)


CASES = [  # activation, top_k, bias: gated and plain experts, Switch's k=1, k up to E-1
    (Activation.swiglu, 2, False),
    (Activation.gelu, 1, True),
    (Activation.geglu, 3, True),
    (Activation.relu, 2, False),
]


@pytest.mark.parametrize(("activation", "top_k", "bias"), CASES)
def test_routed_output_equals_a_per_token_loop(
    activation: Activation, top_k: int, bias: bool
) -> None:
    """Dropless dispatch (sort, grouped matmuls, unsort) and the capacity buffers with room
    for every assignment equal the equation computed token by token."""
    cfg = config(activation, bias, top_k=top_k)
    ffn = moe_ffn(cfg)
    x_BTD = torch.randn(2, 9, D, dtype=torch.float64)
    expected = naive_moe(ffn, x_BTD.flatten(0, 1)).view_as(x_BTD)
    with torch.no_grad():
        torch.testing.assert_close(ffn.eval()(x_BTD), expected, rtol=0, atol=FP64_ATOL)
        ffn.capacity_factor = cfg.moe.num_experts / top_k  # C = N * k: nothing dropped
        torch.testing.assert_close(ffn.train()(x_BTD), expected, rtol=0, atol=FP64_ATOL)
        assert ffn.dropped == 0
        # float32 through F.grouped_mm: rounding of 6e-8 per operation, grown by dot
        # products of length <= 128 to about sqrt(128) x 6e-8 = 7e-7 of the output's scale;
        # 1e-5 of it leaves a 10x margin, and a wrong expert or gate is an O(1) change
        ffn.capacity_factor = None
        y32 = ffn.float()(x_BTD.float()).double()
        torch.testing.assert_close(y32, expected, rtol=0, atol=1e-5 * expected.abs().max())


def collapse(ffn: MoEFeedForward, logit: float) -> None:
    """Router logits (logit * mean(x), 0, ..., 0): for positive inputs every token's first
    choice is expert 0, and the other experts tie."""
    with torch.no_grad():
        ffn.router.weight.zero_()
        ffn.router.weight[0] = logit / D


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_losses_equal_their_closed_forms(top_k: int) -> None:
    """Load balancing E * sum_i f_i P_i: 1 for a uniform router (P_i = 1/E, whatever f);
    for a collapsed one with p0 = e^L / (e^L + E - 1) and the others q = 1 / (e^L + E - 1),
    E * p0 (k = 1, f = (1, 0, ...)) or E * (p0 + q) / 2 (k = 2, half the assignments to
    expert 0). z-loss: logsumexp(logits)^2, (log E)^2 for zero logits."""
    E, L = 4, 3.0
    ffn = moe_ffn(config(top_k=top_k))
    x_BTD = torch.rand(2, 8, D, dtype=torch.float64) + 0.5  # positive: mean(x) = 1
    with torch.no_grad():
        ffn.router.weight.zero_()
        ffn(x_BTD)
        assert ffn.aux_loss.item() == pytest.approx(1.0, abs=1e-12)
        assert ffn.z_loss.item() == pytest.approx(math.log(E) ** 2, abs=1e-12)
        collapse(ffn, L)
        ffn(torch.ones_like(x_BTD))
    p0, q = math.exp(L) / (math.exp(L) + E - 1), 1 / (math.exp(L) + E - 1)
    expected = E * p0 if top_k == 1 else E * (p0 + q) / 2
    assert ffn.aux_loss.item() == pytest.approx(expected, abs=1e-12)
    assert ffn.z_loss.item() == pytest.approx(math.log(math.exp(L) + E - 1) ** 2, abs=1e-12)
    assert ffn.load_E[0].item() == 1 / top_k and ffn.load_E.sum().item() == pytest.approx(1)


def test_capacity_drops_overflow_which_passes_through_the_residual() -> None:
    """8 tokens all routed to expert 0 of 2 with capacity factor 1: C = ceil(8 / 2) = 4, so
    tokens 4-7 are dropped: their feed-forward output is exactly 0 and the pre-norm block's
    residual carries them through unchanged; evaluation stays dropless."""
    cfg = dataclasses.replace(
        config(num_experts=2, top_k=1, capacity_factor=1.0), norm=Norm.rmsnorm
    )
    block = Block(cfg, 0).double()
    for p in block.ffn.parameters():
        torch.nn.init.normal_(p, std=0.5)
    collapse(block.ffn, 3.0)
    x_BTD = torch.rand(1, 8, D, dtype=torch.float64) + 0.5  # RMS-normed stays positive
    with torch.no_grad():
        routed = block.ffn_res(x_BTD, block.ffn.eval()) - x_BTD  # dropless
        assert block.ffn.dropped == 0 and (routed[0, 4:].abs() > 0).all()
        out = block.ffn_res(x_BTD, block.ffn.train())
    assert torch.equal(out[0, 4:], x_BTD[0, 4:])
    torch.testing.assert_close(out[0, :4] - x_BTD[0, :4], routed[0, :4], rtol=0, atol=FP64_ATOL)
    assert block.ffn.dropped.item() == 0.5 and block.ffn.load_E.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("top_k", [1, 2])
def test_a_factor_past_experts_over_k_keeps_every_token_in_n_slots(top_k: int) -> None:
    """No expert gets more than the N tokens (a token's k choices are k different experts),
    so C stops at N: a factor of E / k drops nothing and a larger one computes the same in
    the same N-row buffers. C grew with the factor: at 100, 50 to 100 times the rows a
    dropless step computes, all of them empty (minutes and gigabytes at gpt_tiny's batch)."""
    E, N = 4, 12
    ffn = moe_ffn(config(num_experts=E, top_k=top_k, capacity_factor=E / top_k))
    x_BTD = torch.randn(2, N // 2, D, dtype=torch.float64)
    with torch.no_grad():
        dropless = ffn.eval()(x_BTD)
        rows = []
        ffn.experts.register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
        for factor in (E / top_k, 100.0):
            ffn.capacity_factor = factor
            torch.testing.assert_close(ffn.train()(x_BTD), dropless, rtol=0, atol=FP64_ATOL)
            assert ffn.dropped.item() == 0
    assert rows == [(E, N, D)] * 2


STATS = ("aux_loss", "z_loss", "load_E", "dropped")


def right_padded(x_ND: torch.Tensor, lengths: list[int], T: int) -> tuple[torch.Tensor, ...]:
    """The tokens ``x`` as rows of ``lengths`` padded to T, as the collators pad, and the
    (B, T) mask of real tokens. The pads are vectors 3x larger than the tokens, so their
    routing is nothing like the real tokens': counting one moves every statistic."""
    real_BT = torch.arange(T) < torch.tensor(lengths)[:, None]
    x_BTD = 3 * torch.randn(len(lengths), T, x_ND.shape[-1], dtype=x_ND.dtype)
    x_BTD[real_BT] = x_ND
    return x_BTD, real_BT


def assert_same_stats(ffn: MoEFeedForward, expected: dict[str, torch.Tensor]) -> None:
    """The router losses (float64 sums in another order: FP64_ATOL) and the load and fraction
    dropped (ratios of the same whole numbers: exact)."""
    for name in ("aux_loss", "z_loss"):
        torch.testing.assert_close(getattr(ffn, name), expected[name], rtol=0, atol=FP64_ATOL)
    assert torch.equal(ffn.load_E, expected["load_E"]), (ffn.load_E, expected["load_E"])
    assert ffn.dropped.item() == expected["dropped"].item()


@pytest.mark.parametrize("capacity_factor", [None, 2.0])
@pytest.mark.parametrize("top_k", [1, 2])
def test_a_padded_batch_routes_as_its_real_tokens_alone(
    top_k: int, capacity_factor: float | None
) -> None:
    """Rows of 8, 5 and 2 tokens padded to 8 (9 pads of 24), with their mask: the router
    losses, load and fraction dropped equal those of the 15 real tokens as one unpadded row,
    and so do the real tokens' outputs (capacity 2 keeps every assignment of either batch).
    The outputs at real positions are bit for bit those computed without the mask."""
    ffn = moe_ffn(config(top_k=top_k, capacity_factor=capacity_factor))
    torch.manual_seed(1)
    x_ND = torch.randn(15, D, dtype=torch.float64)
    x_BTD, real_BT = right_padded(x_ND, [8, 5, 2], 8)
    with torch.no_grad():
        alone_ND = ffn(x_ND[None])[0]
        alone = {name: getattr(ffn, name) for name in STATS}
        unmasked_BTD = ffn(x_BTD)
        assert abs(ffn.aux_loss - alone["aux_loss"]) > 1e-3  # what the pads did
        y_BTD = ffn(x_BTD, real_BT)
    assert_same_stats(ffn, alone)
    torch.testing.assert_close(y_BTD[real_BT], alone_ND, rtol=0, atol=FP64_ATOL)
    if capacity_factor is None:  # dropless: each token's output is its own
        assert torch.equal(y_BTD[real_BT], unmasked_BTD[real_BT])


@pytest.mark.parametrize("top_k", [1, 2])
def test_padding_takes_no_capacity_slot(top_k: int) -> None:
    """Every token's first choice is expert 0 of 2, and C = 4 slots per expert for 8
    positions: row 0 holds 1 real token and 3 pads, row 1 3 real tokens and a pad. Taken in
    token order, row 0's pads filled expert 0's slots (and, for k = 2, expert 1's) and row
    1's real tokens were dropped; with the mask the 4 real tokens take the 4 slots: none is
    dropped, each gets its dropless output, and the pads are dropped (output 0)."""
    capacity_factor = 1.0 / top_k  # C = ceil(capacity_factor * 8 * k / 2) = 4
    ffn = moe_ffn(config(num_experts=2, top_k=top_k, capacity_factor=capacity_factor))
    collapse(ffn, 3.0)
    x_BTD = torch.rand(2, 4, D, dtype=torch.float64) + 0.5  # positive: expert 0 first
    real_BT = torch.tensor([[True, False, False, False], [True, True, True, False]])
    with torch.no_grad():
        dropless_BTD = ffn.eval()(x_BTD)
        y_BTD = ffn.train()(x_BTD, real_BT)
    assert ffn.dropped.item() == 0
    torch.testing.assert_close(y_BTD[real_BT], dropless_BTD[real_BT], rtol=0, atol=FP64_ATOL)
    assert torch.equal(y_BTD[~real_BT], torch.zeros_like(y_BTD[~real_BT]))
    assert ffn.load_E.tolist() == ([1.0, 0.0] if top_k == 1 else [0.5, 0.5])


@pytest.mark.parametrize("family", list(Family))
def test_each_stack_routes_its_real_tokens(family: Family) -> None:
    """What every MoE layer is handed as its real tokens, and that its statistics are those
    of these tokens alone: BERT's and T5's encoder, the attention mask (not BERT's MLM
    labels, which skip real tokens); T5's decoder, each row's positions up to its last label
    (after it, the collators' padding; before it, an ignored label is a real token whose
    keys later positions read); GPT, whose rows are packed, none."""
    model = build_model(dataclasses.replace(config(), family=family)).double().eval()
    torch.manual_seed(0)
    ids = torch.randint(0, V, (2, 10))
    attention_mask = torch.arange(10) < torch.tensor([10, 6])[:, None]
    mlm_labels = ids.masked_fill(torch.arange(10) % 3 > 0, IGNORE)
    labels = torch.randint(0, V, (2, 7))
    labels[0, 2] = labels[1, 4:] = IGNORE
    decoder_real = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    batches = {
        Family.gpt: {"input_ids": ids, "labels": ids},
        Family.bert: {"input_ids": ids, "attention_mask": attention_mask, "labels": mlm_labels},
        Family.t5: {
            "input_ids": ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": torch.randint(0, V, (2, 7)),
            "labels": labels,
        },
    }
    expected = {Family.gpt: None, Family.bert: attention_mask, Family.t5: attention_mask}
    handed = {}
    for name, ffn in moe_layers(model).items():
        ffn.register_forward_pre_hook(lambda ffn, args, name=name: handed.__setitem__(name, args))
    with torch.no_grad():
        model(**batches[family])
        for name, ffn in moe_layers(model).items():
            recorded = {stat: getattr(ffn, stat) for stat in STATS}
            x_BTD, *mask = handed[name]
            real_BT = decoder_real if name.startswith("decoder") else expected[family]
            if real_BT is None:
                assert mask in ([], [None]), name
                continue
            assert torch.equal(mask[0], real_BT), name
            ffn(x_BTD[real_BT][None])
            assert_same_stats(ffn, recorded)


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_router_receives_gradients(top_k: int) -> None:
    """Through the output (the gates) and through the load-balancing loss alone."""
    ffn = moe_ffn(config(top_k=top_k), std=0.1)
    x_BTD = torch.randn(2, 8, D, dtype=torch.float64)
    ffn(x_BTD).square().sum().backward()
    assert ffn.router.weight.grad.abs().sum() > 0
    ffn.zero_grad()
    ffn(x_BTD)
    ffn.aux_loss.backward()
    assert ffn.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ffn.experts.parameters())


def test_mixtral_8x7b_parameter_counts_equal_transformers() -> None:
    """model=gpt_8x7b +experiment=mixtral is MixtralForCausalLM(MixtralConfig()), both on the
    meta device: total parameters, and active ones (the 6 of 8 experts a token skips)."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.MixtralConfig()
    cfg = compose_train(["model=gpt_8x7b", "+experiment=mixtral", "model.vocab_size=32000"])
    ours = OmegaConf.to_object(cfg.model)
    assert (ours.d_model, ours.n_layers, ours.n_heads, ours.kv_heads, ours.ffn_dim) == (
        hf_cfg.hidden_size,
        hf_cfg.num_hidden_layers,
        hf_cfg.num_attention_heads,
        hf_cfg.num_key_value_heads,
        hf_cfg.intermediate_size,
    )
    assert (ours.moe.num_experts, ours.moe.top_k, ours.tie_embeddings) == (
        hf_cfg.num_local_experts,
        hf_cfg.num_experts_per_tok,
        hf_cfg.tie_word_embeddings,
    )
    with torch.device("meta"):
        hf_total = sum(p.numel() for p in transformers.MixtralForCausalLM(hf_cfg).parameters())
        counts = param_breakdown(build_model(ours))
    skipped = hf_cfg.num_local_experts - hf_cfg.num_experts_per_tok
    per_expert = 3 * hf_cfg.hidden_size * hf_cfg.intermediate_size
    assert counts["total"] == hf_total == 46_702_792_704
    assert counts["active"] == hf_total - hf_cfg.num_hidden_layers * skipped * per_expert
    assert counts["active"] == 12_879_925_248


@pytest.mark.parametrize("every_n_layers", [1, 2])
def test_flops_per_token_counts_the_active_experts(every_n_layers: int) -> None:
    """Equal to what torch's FlopCounterMode counts for a forward + backward (float64, where
    each expert is one counted matmul): the router and k of E experts per token."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = config(Activation.swiglu, top_k=2, every_n_layers=every_n_layers)
    model = build_model(cfg).double()
    assert len(moe_layers(model)) == (2 if every_n_layers == 1 else 1)
    ids = torch.randint(0, V, (2, 24))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids).sum().backward()
    counted = counter.get_total_flops() / ids.numel()
    assert flops_per_token(model, 24) == pytest.approx(counted, rel=1e-12)
    dense = build_model(dataclasses.replace(cfg, moe=MoEConfig()))
    n_moe = len(moe_layers(model))
    ffn_weights = 3 * D * cfg.ffn_dim
    expected = flops_per_token(dense, 24) + 6 * n_moe * (ffn_weights + D * 4)  # 2nd expert, router
    assert flops_per_token(model, 24) == expected


@pytest.mark.parametrize("family", [Family.bert, Family.t5])
def test_every_family_takes_experts_on_the_blocks_every_n_layers_picks(family: Family) -> None:
    """Blocks 0, 2, ... of each stack (T5: encoder and decoder) are MoE, the others dense."""
    cfg = dataclasses.replace(config(every_n_layers=2), family=family, n_layers=3)
    model = build_model(cfg)
    expected = {Family.bert: ["blocks.0", "blocks.2"], Family.t5: ["encoder.0", "encoder.2"]}
    expected[Family.t5] += ["decoder.0", "decoder.2"]
    assert list(moe_layers(model)) == expected[family]
    ids = torch.randint(0, V, (2, 12))
    inputs = {"input_ids": ids} | ({"decoder_input_ids": ids[:, :5]} if family == "t5" else {})
    model(**inputs).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_activation_checkpointing_keeps_gradients_with_router_losses() -> None:
    """Recomputed blocks give the same gradients, the router losses' included."""
    cfg = config(capacity_factor=1.5)
    torch.manual_seed(0)
    plain, checkpointed = build_model(cfg), build_model(cfg)
    checkpointed.load_state_dict(plain.state_dict())
    layout(checkpointed, activation_checkpointing=True)
    assert list(moe_layers(checkpointed)) == list(moe_layers(plain)) == ["blocks.0", "blocks.1"]
    ids = torch.randint(0, V, (2, 16))
    for model in (plain, checkpointed):
        layers = moe_layers(model).values()
        loss = model(ids).pow(2).mean()
        (loss + sum(m.aux_loss + m.z_loss for m in layers)).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointed_compiled_moe_blocks_compile_around_their_eager_dispatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compile=blocks with activation checkpointing: dynamo runs a checkpointed region that
    graph-breaks wholly eagerly, and the dropless MoE's grouped matmul runs eagerly in fp32 on
    a CPU, so the wrapped MoE blocks compiled no graph at all. Compiled inside the wrapper,
    each block compiles around the break, and the gradients are eager's (the same ops: the
    float32 rounding of a few hundred terms, far inside 1e-5)."""
    from torch._dynamo.testing import CompileCounter

    compiles = CompileCounter()  # counts the graphs dynamo compiles, runs them as traced
    compile_module = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda m: compile_module(m, backend=compiles))
    torch.manual_seed(0)
    plain, compiled = build_model(config()), build_model(config())
    compiled.load_state_dict(plain.state_dict())
    layout(compiled, activation_checkpointing=True, compile=True)
    ids = torch.randint(0, V, (2, 16))
    torch._dynamo.reset()
    try:
        for model in (plain, compiled):
            layers = moe_layers(model).values()
            loss = model(ids).pow(2).mean()
            (loss + sum(m.aux_loss + m.z_loss for m in layers)).backward()
    finally:
        torch._dynamo.reset()
    assert compiles.op_count > 0 and compiles.frame_count >= 2  # graphs around the breaks
    for (name, p), q in zip(plain.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_compiled_blocks_do_not_recompile_when_routing_changes() -> None:
    """compile=blocks: the group sizes change every step, the graph does not (the dropless
    grouped matmul runs outside it in float32 on a CPU). Without that, the sizes became
    graph constants and this model recompiled on its second step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = build_model(dataclasses.replace(config(), n_layers=1))
    model.blocks[0].compile(backend="eager")  # dynamo alone decides about recompiles
    graphs = []
    for seed in range(3):
        ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(seed))
        model(ids).sum().backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1:] == graphs[:1] * 2, graphs


def test_expert_registry_matches_the_activations() -> None:
    from lmlab.model.moe import EXPERTS

    assert set(EXPERTS) == set(Activation)
    gated = {a for a in Activation if hasattr(EXPERTS[a](config(a)), "w_gate")}
    assert gated == GATED


def test_fine_grained_experts_are_d_ff_over_granularity_wide() -> None:
    """``model.moe.granularity=G``: each expert's hidden width is the dense ``d_ff`` / G, so
    a MoE block is the one of ``d_ff`` / G at granularity 1 (its weights load there as they
    are, and compute the same); the dense blocks beside MoE ones keep ``d_ff``."""
    fine = dataclasses.replace(config(granularity=2, every_n_layers=2), d_ff=96)
    narrow = dataclasses.replace(config(every_n_layers=2), d_ff=48)
    assert fine.expert_dim == narrow.expert_dim == 48
    torch.manual_seed(0)
    models = [build_model(cfg).eval() for cfg in (fine, narrow)]
    moe, dense = models[0].blocks[0].ffn, models[0].blocks[1].ffn
    assert tuple(moe.experts.w_gate.weight.shape) == (4, 48, D)
    assert tuple(dense.w_gate.weight.shape) == (96, D)  # a dense block: the whole d_ff
    models[1].blocks[0].ffn.load_state_dict(moe.state_dict())  # strict: the same shapes
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), models[1].blocks[0].ffn(x), rtol=0, atol=0)
