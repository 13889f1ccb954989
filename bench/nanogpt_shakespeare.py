"""nanoGPT's documented CPU run of Tiny Shakespeare, as its ``train.py`` does it, for the
``shakespeare`` benchmark case to race lmlab against on the same machine.

The settings are nanoGPT's README "I only have a macbook" command on
``config/train_shakespeare_char.py``: ``--device=cpu --compile=False --eval_iters=20
--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``, so: eval_interval 250 (at iter 0 too),
both splits estimated from 20 random batches each time, a checkpoint whenever the validation
estimate improves, lr 1e-3 with 100 warmup iterations and cosine to 1e-4, AdamW (0.9, 0.99) with
weight decay 0.1 on every tensor of 2 or more dimensions, clipping at 1.0, batches of 12 random
64-character crops drawn with replacement, bias off, exact GELU, weight tying, GPT-2's init with
the residual projections scaled. The data is its ``prepare.py``: the characters of the text as
the vocabulary, the first 90% to train and the last 10% to validate.

What is timed is the run as nanoGPT's user sees it: ``python train.py ...`` from start to the
last iteration. After that (not timed) the script scores the whole validation split in
non-overlapping 65-character rows, lmlab's measure, so that the two are compared alike. Prints
one JSON line: ``loop_at`` and ``done_at`` (``time.time()`` when the training loop began and
ended), the last validation estimate, the whole-split loss and the iterations run.

    python bench/nanogpt_shakespeare.py [--seed 1337] [--max-iters 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TEXT = Path(__file__).resolve().parents[1] / "src/lmlab/data/corpora/tinyshakespeare.txt"
N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, GRAD_CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0
EVAL_INTERVAL, EVAL_ITERS, LOG_INTERVAL = 250, 20, 1


class CausalSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(N_EMBD, dim=2)
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(N_EMBD, bias=False), nn.LayerNorm(N_EMBD, bias=False)
        self.attn, self.mlp = CausalSelfAttention(), MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
        self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def lr_at(it: int, max_iters: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > max_iters:
        return MIN_LR
    ratio = (it - WARMUP) / (max_iters - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (temporary)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="nanogpt-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    text = TEXT.read_text()  # prepare.py
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    splits = {"train": ids[:n], "val": ids[n:]}

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = splits[split]
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i : i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + BLOCK].astype(np.int64)) for i in ix]
        )
        return x, y

    model = GPT(len(chars))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS)  # fused only on CUDA

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out_losses = {}
        for split in ("train", "val"):
            losses = torch.zeros(EVAL_ITERS)
            for k in range(EVAL_ITERS):
                losses[k] = model(*get_batch(split)).item()
            out_losses[split] = losses.mean().item()
        model.train()
        return out_losses

    best_val, last_val, it = 1e9, None, 0
    loop_at = time.time()  # start-up (imports, data, model) ends here
    x, y = get_batch("train")
    while True:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, args.max_iters)
        if it % EVAL_INTERVAL == 0:
            losses = estimate_loss()
            last_val = losses["val"]
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if losses["val"] < best_val:
                best_val = losses["val"]
                if it > 0:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    torch.save(state | {"iter_num": it, "best_val_loss": best_val}, out / "ckpt.pt")
        loss = model(x, y)
        x, y = get_batch("train")  # nanoGPT fetches the next batch here, after the forward
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % LOG_INTERVAL == 0:
            loss.item()  # nanoGPT prints the loss here
        it += 1
        if it > args.max_iters:
            break
    done_at = time.time()

    # not timed: the whole validation split in non-overlapping rows of 65 (lmlab's measure)
    val = torch.from_numpy(splits["val"].astype(np.int64))
    rows = val[: len(val) // (BLOCK + 1) * (BLOCK + 1)].view(-1, BLOCK + 1)
    model.eval()
    with torch.no_grad():
        total = sum(
            model(r[:, :-1].contiguous(), r[:, 1:].contiguous()).item() * r.shape[0]
            for r in rows.split(256)
        )
    print(
        json.dumps(
            {
                "loop_at": loop_at,
                "done_at": done_at,
                "val_loss_estimate": last_val,
                "val_loss_whole_split": total / rows.shape[0],
                "iters": it,
                "threads": torch.get_num_threads(),
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
