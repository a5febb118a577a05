"""The 2:4 pattern the engine's sparse kernels take, and the check that a weight follows it (the
masks themselves are made by the pruning package)."""
from __future__ import annotations

import torch

GROUP = 4  # 2:4 = at least 2 zeros in every 4 consecutive weights along the input dimension


def two_four_violations(weight: torch.Tensor) -> int:
    """Groups of 4 consecutive weights along the input dimension with fewer than 2 zeros."""
    groups = weight.detach().reshape(weight.shape[0], -1, GROUP)
    return int(((groups == 0).sum(dim=-1) < 2).sum())
