"""``compile=model`` compiles a training step's forward (embeddings, blocks, head and loss) as
one graph: a graph break splits it, and on a GPU every break costs a round trip through
Python and the fusions across it. Dynamo's tracing is the same on every device, so the CPU
shows it: each family and each knob that changes the forward's code traces with
``fullgraph=True`` (which raises at a break), in fp32 and under bf16 autocast, with the
``eager`` backend (tracing only, no Inductor).

Not here: FlexAttention (``attention_kernel=flex``), which has no backward on a CPU and is
traced by the ``gpu``-marked tests, and a dropless Mixture of Experts, whose grouped matmul
runs outside the graph on a CPU by design (``lmlab.model.moe``; on CUDA in bf16 it is traced).
"""

from __future__ import annotations

import pytest
import torch

from lmlab.config import Activation, Family, ModelConfig, MoEConfig, Norm, Positional
from lmlab.model import build_classifier, build_model
from lmlab.model.loss import IGNORE

V = 97

CASES = {
    "gpt": (Family.gpt, {}),
    "gpt-llama": (
        Family.gpt,
        dict(norm=Norm.rmsnorm, activation=Activation.swiglu, positional=Positional.rope),
    ),
    "gpt-gqa-window": (Family.gpt, dict(n_kv_heads=2, attention_window=5)),
    "gpt-alibi": (Family.gpt, dict(positional=Positional.alibi)),
    "gpt-relative": (Family.gpt, dict(positional=Positional.relative)),
    "gpt-sinusoidal-dropout": (Family.gpt, dict(positional=Positional.sinusoidal, dropout=0.1)),
    "gpt-nope": (Family.gpt, dict(positional=Positional.none)),
    "gpt-moe-capacity": (Family.gpt, dict(moe=MoEConfig(num_experts=4, capacity_factor=1.25))),
    # padded: the MoE layers count real tokens only (the encoders' attention mask, the decoder's
    # positions up to its last label)
    "bert-moe-capacity": (Family.bert, dict(moe=MoEConfig(num_experts=4, capacity_factor=1.25))),
    "t5-moe-capacity": (Family.t5, dict(moe=MoEConfig(num_experts=4, capacity_factor=1.25))),
    "bert": (Family.bert, {}),
    "bert-relative": (Family.bert, dict(positional=Positional.relative)),
    "t5": (Family.t5, {}),
    "t5-rope": (Family.t5, dict(positional=Positional.rope)),
    "bert-classify": (Family.bert, dict(classes=3)),  # task=classify's model
}


def batch(family: Family, classes: int | None) -> dict[str, torch.Tensor]:
    """Two rows, padded where the family's collator pads, labels partly IGNORE (a class per
    row for a classifier)."""
    torch.manual_seed(0)
    b = {"input_ids": torch.randint(0, V, (2, 16))}
    if family != Family.gpt:
        b["attention_mask"] = torch.arange(16) < torch.tensor([16, 11])[:, None]
    if family == Family.t5:
        b["decoder_input_ids"] = torch.randint(0, V, (2, 8))
    labels = torch.randint(0, V, b.get("decoder_input_ids", b["input_ids"]).shape)
    labels[:, ::3] = IGNORE
    return b | {"labels": torch.randint(0, classes, (2, 1)) if classes else labels}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_training_forward_is_one_graph(case: str, bf16: bool) -> None:
    family, knobs = CASES[case][0], dict(CASES[case][1])
    classes = knobs.pop("classes", None)
    cfg = ModelConfig(
        family=family, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, vocab_size=V, **knobs
    )
    torch.manual_seed(0)
    # in training mode: dropout, MoE capacity
    model = build_classifier(cfg, classes) if classes else build_model(cfg)
    b = batch(family, classes)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda inputs: model(**inputs), backend="eager", fullgraph=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):  # as bf16-mixed trains
            loss = compiled(b)  # fullgraph: a graph break raises here
        loss.backward()
    finally:
        torch._dynamo.reset()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
