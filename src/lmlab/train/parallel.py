"""How a model is laid out for training: activation checkpointing, compilation and FSDP2
sharding, applied per transformer block in torchtitan's order (checkpoint, then compile, then
shard), so each lever composes with the others and with DDP.

- Activation checkpointing wraps each block in ``checkpoint_wrapper`` (non-reentrant
  ``torch.utils.checkpoint``): the block's activations are recomputed in the backward pass.
  The wrapper's state-dict hooks drop its ``_checkpoint_wrapped_module.`` prefix, so
  checkpoint keys stay the model's own.
- Compilation (``compile=``): ``blocks`` is ``nn.Module.compile`` on each block, in place (no
  ``_orig_mod.`` in keys); the graphs are reused across layers and FSDP's per-block hooks stay
  outside them (torchtitan's choice). ``model`` compiles the whole training loss instead:
  embeddings, blocks, head and cross-entropy as one graph (nanoGPT's choice), so Inductor
  fuses the loss into the head and never writes fp32 logits of the whole batch. It compiles a
  function of the module (``LMTask``), not the module, so keys stay clean there too.
- FSDP2 (``fully_shard``) makes one unit per block and one for the root (embeddings, final
  norm, head): each rank holds 1/world of every parameter, gathers a block's weights just
  before it runs and frees them after. In bf16 the policy keeps fp32 master weights, runs the
  blocks in bf16 and reduces gradients in fp32 (torchtitan's default).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from lmlab.model.layers import Block
from lmlab.model.moe import MoEFeedForward

BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


def block_slots(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, block) of every transformer block (encoder and decoder),
    wrapped or not, in module order."""
    for parent in list(model.modules()):
        if hasattr(parent, "_checkpoint_wrapped_module"):
            continue  # a wrapper's own child is the block it wraps, already yielded
        for name, child in list(parent.named_children()):
            inner = getattr(child, "_checkpoint_wrapped_module", child)
            if isinstance(inner, Block):
                yield parent, name, child


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    for parent, name, block in block_slots(model):
        if not hasattr(block, "_checkpoint_wrapped_module"):
            wrapped = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            parent.register_module(name, wrapped)


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` each block in place (checkpoint keys stay clean): with activation
    checkpointing, the wrapper and the block in it as one region, as torchtitan does, except
    for a Mixture-of-Experts block, whose block is compiled inside the wrapper. Its dispatch
    may run eagerly (``lmlab.model.moe``: a graph break), and dynamo runs a checkpointed region
    that breaks wholly eagerly: a 2-layer MoE GPT in fp32 compiled no graph at all."""
    for _, _, block in block_slots(model):
        inner = getattr(block, "_checkpoint_wrapped_module", None)
        moe = inner is not None and any(isinstance(m, MoEFeedForward) for m in inner.modules())
        (inner if moe else block).compile()


def mixed_precision_policy(precision: str):  # -> MixedPrecisionPolicy
    """bf16 parameters and activations with fp32 gradient reduction for a bf16 run; full fp32
    otherwise."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if str(precision) in BF16_PRECISIONS:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(model: nn.Module, mesh, precision: str) -> None:
    """FSDP2 over ``mesh``: one unit per block, then the root. The last block is not resharded
    after its forward: the backward needs it first (torchtitan's rule)."""
    from torch.distributed.fsdp import fully_shard

    policy = mixed_precision_policy(precision)
    slots = list(block_slots(model))
    for i, (_, _, block) in enumerate(slots):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(slots) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def layout(
    model: nn.Module,
    activation_checkpointing: bool = False,
    compile: bool = False,
    mesh=None,
    precision: str = "32-true",
) -> None:
    """Apply the levers in torchtitan's order: checkpoint, compile, shard (``mesh`` given)."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    if mesh is not None:
        apply_fsdp(model, mesh, precision)
