"""The baseline of ``make bench-gpu``: a plain PyTorch loop written the way nanoGPT's
``bench.py`` is. Its own GPT-2 (pre-LN, GELU, learned positions, a head tied to the token
embedding, attention as one ``scaled_dot_product_attention(is_causal=True)`` call, no biases),
the loss inside one whole-model ``torch.compile`` graph, fused AdamW, bf16 autocast, random
tokens, and nothing else: no data loader, no logging, no callbacks.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.profiling import AUDIT_STEPS, PROFILE_STEPS, profiled, recorded_syncs, save_audit


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, d: int, vocab: int, block_size: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block_size, d)
        self.h = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for p in self.parameters():
            torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class _LabelsCall(nn.Module):
    """A model taking ``(input_ids, labels=)`` called as ``NanoGPT`` is: ``(idx, targets)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model(idx, labels=targets)


def tokens_per_second(
    n_layer: int,
    n_head: int,
    d: int,
    vocab: int,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    device: torch.device,
    compile: bool = True,
    profile: Path | None = None,
    profile_steps: int = PROFILE_STEPS,
    model: nn.Module | None = None,
    audit: Path | None = None,
) -> float:
    """Tokens/s over ``steps`` timed steps after ``warmup`` (synchronised before and after).
    ``profile``: then a torch.profiler table of ``profile_steps`` more steps, to that file.
    ``model``: this loop around another GPT that takes ``(input_ids, labels=)`` and returns
    its loss (lmlab's, built for the same shapes): which part of a gap between lmlab and this
    loop is the model's graph, and which the training loop around it. ``audit``: then
    ``AUDIT_STEPS`` steps under ``recorded_syncs``, saved there (``save_audit``) as lmlab's
    are: the control for lmlab's count (what torch itself synchronises)."""
    torch.manual_seed(1337)
    model = NanoGPT(n_layer, n_head, d, vocab, seq) if model is None else _LabelsCall(model)
    model = model.to(device)
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)  # CPU too
    torch._dynamo.reset()  # a fresh compile, not a recompile of the previous run's model
    step_fn = torch.compile(model) if compile else model
    x = torch.randint(vocab, (batch, seq), device=device)
    y = torch.randint(vocab, (batch, seq), device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            loss = step_fn(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    if profile is not None:
        with profiled(profile, profile_steps):
            for _ in range(profile_steps):
                step()
    if audit is not None:
        audited = []
        with recorded_syncs() as sites:
            for i in range(AUDIT_STEPS):
                step()
                audited.append({"step": i, "logging": False, "sites": sites[:]})
                sites.clear()
        save_audit(audit, audited)
    return steps * batch * seq / seconds
