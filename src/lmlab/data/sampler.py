"""A sampler whose position is one integer: exact resume and DDP sharding without state."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int | tuple[int, int]]):
    """Global sample g (0, 1, 2, ...) is row ``perm_e[g % n]`` of the epoch-e permutation,
    e = g // n, seeded by (seed, e). Rank r of w takes g = r, r + w, ...; ``start`` skips the
    first ``start`` global samples, so a resumed run sees exactly the batches it would have.
    ``numbered``: yields (row, g), for a collator that seeds a row's draws by g."""

    def __init__(
        self,
        n_rows: int,
        num_samples: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        numbered: bool = False,
    ) -> None:
        self.n_rows, self.num_samples, self.seed = n_rows, num_samples, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self.numbered = numbered

    def _perm(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(self.n_rows, generator=gen)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        epoch, perm = -1, None
        for g in range(self.start + self.rank, self.num_samples, self.world_size):
            if g // self.n_rows != epoch:
                epoch = g // self.n_rows
                perm = self._perm(epoch)
            row = int(perm[g % self.n_rows])
            yield (row, g) if self.numbered else row

    def __len__(self) -> int:
        """The whole run's length, not what remains after ``start``: Lightning restores its
        batch counter on resume and ends the epoch when that counter reaches ``len``."""
        return len(range(self.rank, self.num_samples, self.world_size))
