"""Face crops and preprocessing as tensor operations: frame(s) on a device to the network's
normalised ``[N,3,64,64]`` input, without a round trip through OpenCV.

It reproduces the OpenCV path, :func:`gimefive.pipeline.crops.cut_faces` followed by
:func:`gimefive.preprocess.preprocess_faces`, step for step, so a model sees the same
pixels whichever path prepared them:

1. the frame to gray (ITU-R 601 luma; done first: luma is linear, so sampling one channel
   instead of three gives the same values up to OpenCV's uint8 rounding);
2. per face, the same affine map as :func:`~gimefive.pipeline.crops.crop_matrix` onto an
   ``out_side`` square (``out_side`` as ``cut_faces`` picks it), bilinear, border
   replicated (``grid_sample``, ``padding_mode="border"``). Every face is sampled on a
   fixed 128x128 grid (:data:`~gimefive.pipeline.crops.MAX_CROP_SIDE`); a face whose
   ``out_side`` is smaller only uses the top-left ``out_side`` square of it;
3. that square resized to 64x64 the way :func:`~gimefive.preprocess.to_gray64` does
   (area weights when shrinking, bilinear with the half-pixel convention when enlarging),
   written as one ``[64, 128]`` weight matrix per face and per axis, so the whole batch is
   two batched matrix products of fixed shape (no per-size groups);
4. the ImageNet normalisation of :func:`~gimefive.preprocess.normalize_gray`.

It differs from OpenCV only by rounding: OpenCV rounds to uint8 after the warp, the gray
conversion and the resize, and its bilinear weights are fixed point; this path stays in
float32 (``tests/test_torch_crops.py`` states the difference measured).
Built and tested on CPU tensors; the same code runs on a CUDA tensor (not yet measured
on a GPU, see docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from gimefive.pipeline.crops import MAX_CROP_SIDE, crop_matrix, crop_side_px

from gimefive.preprocess import GRAY_OFFSET, GRAY_SCALE, INPUT_SIZE

#: BGR -> luma weights, ITU-R 601 (what cv2.COLOR_BGR2GRAY uses)
LUMA_BGR = (0.114, 0.587, 0.299)
GRID = MAX_CROP_SIDE


def gray_frame(frame: torch.Tensor) -> torch.Tensor:
    """A uint8 ``[H,W,3]`` BGR frame to float32 gray ``[1,1,H,W]`` (0..255)."""
    if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be a uint8 [H,W,3] BGR tensor, got {frame.dtype} "
                         f"{tuple(frame.shape)}")
    w = torch.tensor(LUMA_BGR, dtype=torch.float32, device=frame.device)
    return (frame.to(torch.float32) @ w)[None, None]


def grid_theta(matrices: np.ndarray, width: int, height: int) -> np.ndarray:
    """``affine_grid`` thetas ``[N,2,3]`` for OpenCV crop matrices (frame px -> crop px).

    ``warpAffine`` samples crop pixel ``(j, i)`` at ``inv(M) @ (j, i, 1)`` in frame pixels,
    pixel centres at integers. With ``align_corners=False`` a normalised coordinate ``u``
    is pixel ``((u + 1) * size - 1) / 2``; theta = norm_frame . inv(M) . pixel_grid, where
    the grid is :data:`GRID` px wide whatever the face's ``out_side``.
    """
    n = len(matrices)
    m = np.zeros((n, 3, 3))
    m[:, :2] = matrices
    m[:, 2, 2] = 1.0
    inv = np.linalg.inv(m)
    # normalised grid coordinate -> crop pixel
    to_px = np.array([[GRID / 2, 0, (GRID - 1) / 2], [0, GRID / 2, (GRID - 1) / 2], [0, 0, 1]])
    # frame pixel -> normalised frame coordinate
    to_norm = np.array([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1],
                        [0, 0, 1]])
    return (to_norm @ inv @ to_px)[:, :2].astype(np.float32)


def resize_weights(side: int, size: int = INPUT_SIZE) -> np.ndarray:
    """``[size, GRID]`` weights resizing ``side`` px (the first ``side`` of :data:`GRID`)
    to ``size`` px as ``to_gray64`` does: identity, area (shrink) or bilinear (enlarge)."""
    w = np.zeros((size, GRID))
    if side == size:
        w[:, :size] = np.eye(size)
    elif side > size:  # cv2.INTER_AREA: each output pixel averages its footprint
        scale = side / size
        for o in range(size):
            lo, hi = o * scale, (o + 1) * scale
            for s in range(int(math.floor(lo)), min(side, int(math.ceil(hi)))):
                w[o, s] = (min(hi, s + 1) - max(lo, s)) / scale
    else:  # cv2.INTER_LINEAR: half-pixel centres, edges clamped
        scale = side / size
        for o in range(size):
            x = (o + 0.5) * scale - 0.5
            x0 = int(math.floor(x))
            f = x - x0
            if x0 < 0:
                x0, f = 0, 0.0
            if x0 >= side - 1:
                x0, f = side - 1, 0.0
            w[o, x0] += 1 - f
            if f:
                w[o, x0 + 1] += f
    return w


_RESIZE_CACHE: dict[int, np.ndarray] = {}


def _resize_stack(sides: Sequence[int]) -> np.ndarray:
    for s in set(sides) - set(_RESIZE_CACHE):
        _RESIZE_CACHE[s] = resize_weights(s)
    return np.stack([_RESIZE_CACHE[s] for s in sides]).astype(np.float32)


def crop_faces_torch(frame: torch.Tensor, matrices: np.ndarray,
                     out_sides: Sequence[int]) -> torch.Tensor:
    """One frame's faces as the normalised ``[N,3,64,64]`` float32 batch, on the frame's
    device. ``matrices`` ``[N,2,3]``: :func:`crop_matrix` of each face for its ``out_side``."""
    device = frame.device
    n = len(out_sides)
    if n == 0:
        return torch.zeros((0, 3, INPUT_SIZE, INPUT_SIZE), device=device)
    gray = gray_frame(frame)
    theta = torch.from_numpy(grid_theta(np.asarray(matrices), frame.shape[1],
                                        frame.shape[0])).to(device)
    grid = F.affine_grid(theta, [n, 1, GRID, GRID], align_corners=False)
    warped = F.grid_sample(gray.expand(n, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="border", align_corners=False)[:, 0]
    r = torch.from_numpy(_resize_stack(out_sides)).to(device)
    small = r @ warped @ r.transpose(1, 2)  # [N,64,64]
    scale = torch.from_numpy(GRAY_SCALE).to(device)
    offset = torch.from_numpy(GRAY_OFFSET).to(device)
    return small[:, None] * scale + offset


def preprocess_crops_torch(frames: Sequence[torch.Tensor],
                           crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Several frames' faces in one batch: ``crops[k]`` (``crop_geometry`` rows) of
    ``frames[k]``, in order, as the normalised ``[N,3,64,64]`` input. Frames may be on any
    device (all on the same one)."""
    if len(frames) != len(crops):
        raise ValueError(f"{len(frames)} frames but {len(crops)} crop lists")
    parts = []
    for frame, rows in zip(frames, crops, strict=True):
        sides = [crop_side_px(float(c[2])) for c in rows]
        mats = np.array([crop_matrix(c, s) for c, s in zip(rows, sides, strict=True)]
                        ).reshape(-1, 2, 3)
        parts.append(crop_faces_torch(frame, mats, sides))
    if not parts:
        return torch.zeros((0, 3, INPUT_SIZE, INPUT_SIZE))
    return torch.cat(parts)
