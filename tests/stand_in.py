"""A stand-in GiMeFive for tests (and benchmarks, via ``sys.path``) without shipped weights.

Not shipped: nothing the CLI runs needs it (``gimefive bench`` makes its own random-init
weights when none are shipped).

Fresh BatchNorm layers have mean 0, variance 1, scale 1 and shift 0, which would leave
the BN-scale part of the closed-form gradient untested; this model gets seeded,
non-trivial BN statistics so every factor of the Grad-CAM formula is exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gimefive.checkpoint import save_weights
from gimefive.model import GiMeFive


def random_model(seed: int = 0) -> GiMeFive:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GiMeFive()
    with torch.no_grad():
        for i in range(1, 6):
            bn = getattr(model, f"bn{i}")
            n = bn.num_features
            bn.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
            bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
    return model.eval()


def random_weights(path: str | Path, seed: int = 0) -> Path:
    """Save :func:`random_model` with ``save_weights`` (what ``--weights`` accepts)."""
    return save_weights(path, random_model(seed), {"note": "random init, for tests"})
