"""What a training step must not do on a GPU, made visible on any device: reading a tensor's
value on the host (``HOST_READS``, Tensor methods) and running an aten op that waits for the
device on CUDA (``SyncingOps``). Each waits for all queued GPU work; on a CPU nothing waits,
so only counting them shows them. ``tests/train/test_gpu.py`` checks the same on a GPU with
``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Tensor methods that copy a value to the host.
HOST_READS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")

# aten ops that wait for the device on CUDA, whichever Python or C++ code calls them: a read
# of a value (``_local_scalar_dense``, under ``item`` and ``bool`` but also under C++ code that
# reads one), and ops whose output size depends on the values (``nonzero``, ``unique``, boolean
# indexing, ``repeat_interleave`` without ``output_size``, ``bincount``): each reads a count
# back before it can allocate its output.
SYNCING_OPS = {
    "_local_scalar_dense", "nonzero", "nonzero_numpy", "argwhere", "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
    "bincount", "histc", "equal", "is_nonzero",
}  # fmt: skip
BOOL_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl_"}


def syncs_on_cuda(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> bool:
    """Whether this call of ``func`` would wait for a CUDA device."""
    name = func._overloadpacket.__name__
    if name in SYNCING_OPS:
        return True
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None
    if name in BOOL_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    return False


class SyncingOps(TorchDispatchMode):
    """While entered, calls ``count("aten.<op>")`` for every op that ``syncs_on_cuda``."""

    def __init__(self, count: Callable[[str], object]) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if syncs_on_cuda(func, args, kwargs):
            self.count(f"aten.{func._overloadpacket.__name__}")
        return func(*args, **kwargs)
