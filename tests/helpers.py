"""Small builders shared by the method tests."""
from __future__ import annotations

import torch


def random_batches(n: int, size: int = 16, res: int = 32, seed: int = 0, classes: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` seeded batches of Gaussian images and uniform labels (CPU)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, res, res, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]
