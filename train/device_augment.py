"""Batched augmentation on the training device (the GPU path).

A DataLoader that warps faces one at a time with OpenCV cannot feed a GPU that trains
tens of thousands of 64x64 faces a second. Here the whole uint8 split lives on the
device and each batch is flipped and warped by one ``grid_sample`` call, with the
ranges of :class:`~gimefive.train.data.Augment` (shift in pixels, rotation in degrees,
scale as a fraction), then normalised exactly like :func:`gimefive.preprocess.normalize_gray`.

Random draws come from a ``torch.Generator`` seeded per (seed, epoch), so a run is
repeatable; a run resumed in the middle of an epoch draws fresh augmentations for the
rest of that epoch (the faces and their order are still the same).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from gimefive.train.data import Augment

from gimefive.preprocess import GRAY_OFFSET, GRAY_SCALE


def _uniform(n: int, limit: float, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2.0 - 1.0) * limit


def affine_thetas(n: int, size: int, augment: Augment, generator: torch.Generator,
                  device: torch.device | str) -> torch.Tensor:
    """[n, 2, 3] sampling matrices for ``F.affine_grid`` (normalised coordinates).

    Each maps an output pixel to where it samples the input: a rotation by up to
    ``max_rotate`` degrees, a zoom by up to ``max_scale``, a shift by up to ``max_shift``
    pixels and, with probability 1/2, a horizontal mirror.
    """
    angle = _uniform(n, math.radians(augment.max_rotate), generator, device)
    scale = 1.0 + _uniform(n, augment.max_scale, generator, device)
    shift = _uniform(2 * n, augment.max_shift * 2.0 / size, generator, device).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if augment.flip:
        mirror = torch.rand(n, generator=generator, device=device) < 0.5
        theta[:, :, 0] = torch.where(mirror[:, None], -theta[:, :, 0], theta[:, :, 0])
    return theta


@functools.cache
def _gray_affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a fresh host-to-GPU copy every batch would stall the step
    return (torch.from_numpy(GRAY_SCALE).to(device), torch.from_numpy(GRAY_OFFSET).to(device))


def normalize_gray_tensor(gray: torch.Tensor) -> torch.Tensor:
    """Float gray [N,1,H,W] in 0..255 to the network input [N,3,H,W] (ImageNet mean/std)."""
    scale, offset = _gray_affine(gray.device)
    return gray * scale + offset


def augment_batch(gray: torch.Tensor, augment: Augment | None,
                  generator: torch.Generator | None) -> torch.Tensor:
    """uint8 faces [N,H,W] on any device to augmented, normalised float32 [N,3,H,W]."""
    if gray.dtype != torch.uint8 or gray.dim() != 3:
        raise ValueError(f"expected uint8 [N,H,W] faces, got {gray.dtype} {tuple(gray.shape)}")
    x = gray.float().unsqueeze(1)
    if augment is not None and augment.active:
        n, _, h, w = x.shape
        theta = affine_thetas(n, w, augment, generator, gray.device)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
    return normalize_gray_tensor(x)
