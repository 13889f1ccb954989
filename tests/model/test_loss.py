"""``model.cross_entropy``: the chunked form (torch's ``linear_cross_entropy``) computes the
loss and the gradients of the full form (logits, then fp32 cross-entropy), for every family's
output layer, and ``auto`` takes it only where it keeps the loss's precision and is not being
compiled."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmlab.config import CrossEntropy, Family, ModelConfig
from lmlab.errors import ConfigError
from lmlab.model import build_classifier, build_model
from lmlab.model import loss as loss_module
from lmlab.model.loss import CROSS_ENTROPY, IGNORE, Chunking, resolve_chunking

pytestmark = pytest.mark.skipif(
    not loss_module.CHUNKED_AVAILABLE, reason="this torch has no linear_cross_entropy"
)

V = 512  # 16 x d_model: auto's rule (>= 8x) picks the chunked form
D = 32


def config(family: Family, kind: CrossEntropy, **kw) -> ModelConfig:
    base = dict(family=family, d_model=D, n_layers=2, n_heads=4, max_seq_len=32, vocab_size=V)
    return ModelConfig(**(base | kw), cross_entropy=kind)


def batch(family: Family, classify: bool = False) -> dict[str, torch.Tensor]:
    """Three rows with labels as the family's collator makes them, some of them IGNORE."""
    torch.manual_seed(1)
    b = {"input_ids": torch.randint(0, V, (3, 20))}
    if family != Family.gpt:
        b["attention_mask"] = torch.arange(20) < torch.tensor([20, 15, 7])[:, None]
    if family == Family.t5:
        b["decoder_input_ids"] = torch.randint(0, V, (3, 9))
    targets = b.get("decoder_input_ids", b["input_ids"])
    labels = torch.randint(0, V, targets.shape)
    labels[:, ::3] = IGNORE  # BERT's unmasked positions, T5's and GPT's padding
    b["labels"] = torch.randint(0, 3, (3, 1)) if classify else labels
    return b


def pair(
    family: Family,
    dtype: torch.dtype = torch.float32,
    classify: bool = False,
    kinds: tuple[CrossEntropy, CrossEntropy] = (CrossEntropy.full, CrossEntropy.chunked),
    **kw,
):
    """The same weights under two cross_entropy settings (full and chunked)."""
    make = (lambda c: build_classifier(c, 3)) if classify else build_model
    torch.manual_seed(0)
    first, second = (make(config(family, kind, **kw)).to(dtype) for kind in kinds)
    second.load_state_dict(first.state_dict())
    return first, second


def loss_and_grads(model: torch.nn.Module, b: dict[str, torch.Tensor]):
    model.zero_grad(set_to_none=True)
    loss = model(**b)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


CASES = [
    (Family.gpt, False),
    (Family.bert, False),
    (Family.t5, False),
    (Family.bert, True),  # the classification head: 3 labels from position 0
]


@pytest.mark.parametrize(("family", "classify"), CASES)
def test_chunked_equals_full_in_float64(family: Family, classify: bool) -> None:
    """float64: both forms sum at most V = 512 exponentials and D = 32 products per value, so
    they agree to a few hundred eps64 (2.2e-16) relative; a wrong row, label, ignored position
    or bias moves the loss or a gradient by far more than 1e-9."""
    full, chunked = pair(family, torch.float64, classify, bias=True)
    b = batch(family, classify)
    loss_f, grads_f = loss_and_grads(full, b)
    loss_c, grads_c = loss_and_grads(chunked, b)
    assert loss_c.dtype == torch.float64
    assert loss_c.item() == pytest.approx(loss_f.item(), rel=1e-9)
    assert grads_c.keys() == grads_f.keys()
    for name, g in grads_f.items():
        assert torch.allclose(grads_c[name], g, rtol=1e-9, atol=1e-12), name


def test_chunked_skips_ignored_positions() -> None:
    """Labels set to IGNORE change neither form's loss; an all-but-one-ignored batch scores
    that one position."""
    full, chunked = pair(Family.gpt, torch.float64)
    b = batch(Family.gpt)
    only = torch.full_like(b["labels"], IGNORE)
    only[0, 1] = b["labels"][0, 1]
    with torch.no_grad():
        logits = full(b["input_ids"])
        expected = torch.nn.functional.cross_entropy(logits[0, 1], b["labels"][0, 1])
        assert chunked(b["input_ids"], labels=only).item() == pytest.approx(expected.item())


def test_fp32_auto_takes_chunked_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32, the CPU default: auto takes the chunked form for a vocabulary 16x the width, and
    its loss and gradients equal the full form's within fp32 rounding (a loss of about
    ln 512 = 6.2 from sums of 512 terms: relative differences of order 1e-6)."""
    calls = spy_chunked(monkeypatch)
    full, auto = pair(Family.gpt, kinds=(CrossEntropy.full, CrossEntropy.auto))
    b = batch(Family.gpt)
    loss_f, grads_f = loss_and_grads(full, b)
    assert calls == []
    loss_a, grads_a = loss_and_grads(auto, b)
    assert len(calls) == 1 and loss_a.dtype == torch.float32
    assert loss_a.item() == pytest.approx(loss_f.item(), rel=1e-5)
    for name, g in grads_f.items():
        assert torch.allclose(grads_a[name], g, rtol=1e-4, atol=1e-7), name


def spy_chunked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.dtype, torch.dtype]]:
    """(input dtype, weight dtype) of every call of the chunked form."""
    calls: list[tuple[torch.dtype, torch.dtype]] = []
    original = loss_module.F.linear_cross_entropy

    def spy(x, w, *args, **kwargs):
        calls.append((x.dtype, w.dtype))
        return original(x, w, *args, **kwargs)

    monkeypatch.setattr(loss_module.F, "linear_cross_entropy", spy)
    return calls


def test_autocast_auto_keeps_full_and_chunked_runs_in_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under bf16 autocast the op would return a bf16-rounded loss, so auto keeps the full
    form; chunked runs the op on bf16 inputs, as autocast's own linear would. Both then use
    bf16 logits' rounding (2^-9 relative, twice) on a loss near 6.2, so they agree within
    1% of it."""
    calls = spy_chunked(monkeypatch)
    auto, chunked = pair(Family.gpt, kinds=(CrossEntropy.auto, CrossEntropy.chunked))
    b = batch(Family.gpt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_auto = auto(**b)
        assert calls == [] and loss_auto.dtype == torch.float32
        loss_chunked = chunked(**b)
    assert calls == [(torch.bfloat16, torch.bfloat16)]
    assert loss_chunked.float().item() == pytest.approx(loss_auto.item(), rel=1e-2)
    loss_chunked.backward()
    assert chunked.head.weight.grad.dtype == torch.float32  # into the fp32 parameter


def test_compiled_traces_the_full_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.compile (compile=model) the full form is traced, so Inductor fuses the
    loss into the graph; the chunked op would break it."""
    calls = spy_chunked(monkeypatch)
    torch._dynamo.reset()
    model = build_model(config(Family.gpt, CrossEntropy.chunked))
    b = batch(Family.gpt)
    compiled = torch.compile(lambda batch: model(**batch), backend="eager", fullgraph=True)
    compiled(b).backward()
    assert calls == []
    torch._dynamo.reset()


def test_auto_rule_and_registry() -> None:
    """One resolver per value, and auto's rule: 8x the input width or more (a vocabulary
    head), never a narrow output (Tiny Shakespeare's 171 characters at d 128, a classifier)."""
    assert set(CROSS_ENTROPY) == set(CrossEntropy)
    cfg = config(Family.gpt, CrossEntropy.auto)
    assert resolve_chunking(cfg, 4096, 128) == Chunking.fp32
    assert resolve_chunking(cfg, 1023, 128) == Chunking.never
    assert resolve_chunking(cfg, 171, 128) == Chunking.never
    assert build_classifier(config(Family.bert, CrossEntropy.auto), 3).head.loss_chunking == (
        Chunking.never
    )
    full = dataclasses.replace(cfg, cross_entropy=CrossEntropy.full)
    chunked = dataclasses.replace(cfg, cross_entropy=CrossEntropy.chunked)
    assert resolve_chunking(full, 10**6, 8) == Chunking.never
    assert resolve_chunking(chunked, 3, 8) == Chunking.always


def test_chunked_refused_without_the_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older torch: chunked is refused naming the field and what to use; auto is full."""
    monkeypatch.setattr(loss_module, "CHUNKED_AVAILABLE", False)
    with pytest.raises(ConfigError, match=r"model.cross_entropy=chunked needs .* use auto"):
        build_model(config(Family.gpt, CrossEntropy.chunked))
    assert build_model(config(Family.gpt, CrossEntropy.auto)).loss_chunking == Chunking.never


def test_chunked_step_reads_nothing_from_the_device(host_reads: list[str]) -> None:
    """The chunked form's forward and backward make no host read (no .item(), no sync)."""
    model = build_model(config(Family.gpt, CrossEntropy.chunked))
    b = batch(Family.gpt)
    host_reads.clear()
    model(**b).backward()
    assert host_reads == []
