"""Per-sample seeding of augmentation, so a resumed or re-sharded run draws exactly what an uninterrupted one does."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SeededSamples(Dataset):
    """Wraps a dataset so each sample's augmentation is drawn from its own seed (seed, epoch, index): the same
    image gets the same augmentation whatever the worker count, the rank that loads it, or where a resumed run
    restarts. The caller's RNG state is left untouched."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        g = torch.default_generator  # transforms v2 draw from it; torch.manual_seed would also seed (slowly) CUDA
        state = g.get_state()
        g.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        try:
            return self.dataset[index]
        finally:
            g.set_state(state)
