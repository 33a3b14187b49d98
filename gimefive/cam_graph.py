"""GiMeFive with Grad-CAM built into the forward pass: ``x -> (probs, cam)``, no autograd.

Grad-CAM needs d logit_c / d A, where A is a conv layer's output (before BatchNorm, where
the paper hooks it). Everything after conv5 is BN, ReLU, 2x2 max-pool, global average
pool and a ReLU MLP (dropout is the identity in eval mode), so that gradient has a
closed form made of the MLP weights, the ReLU masks, the max-pool routing and the BN
scale. Written with ordinary tensor ops (MatMul, Mul, comparisons, Slice, Reshape,
ReduceMean, ConvTranspose) it exports to ONNX and runs in ONNX Runtime and TensorRT,
which cannot differentiate a graph at run time.

Backward, for the class c of each face:

* logits = W3 h2 + b3, h2 = relu(W2 h1 + b2), h1 = relu(W1 v + b1):
  ``dv = ((W3[c] * [z2 > 0]) @ W2 * [z1 > 0]) @ W1``
* v = mean of the pooled map P (hp x wp): ``dP = dv / (hp * wp)`` at every position.
* P = maxpool2x2(R): each window's gradient goes to its first maximal element in
  row-major order (what PyTorch's CPU kernel does; ties are measure-zero but handled).
* R = relu(B): ``dB = dR * [R > 0]`` (a window whose max is 0 passes nothing).
* B = A * gamma / sqrt(var + eps) + shift: ``dA = dB * gamma / sqrt(var + eps)``.

At conv4 the gradient continues through conv5 (a transposed convolution with conv5's
weights), the conv4 max-pool routing, ReLU mask and BN4 scale. The CAM is then
``relu(sum_k mean(dA_k) * A_k)`` scaled to 0..1 per face.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gimefive.model import GiMeFive

CAM_LAYERS = {"conv5": 5, "conv4": 4}
#: Below this range a CAM is flat and becomes all zeros instead of amplified noise.
CAM_EPS = 1e-7


def normalize_cam(cam: torch.Tensor, eps: float = CAM_EPS) -> torch.Tensor:
    """Min-max scale each map of ``[N,h,w]`` to 0..1; a flat map becomes zeros."""
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    return (cam - lo) / torch.clamp(hi - lo, min=eps)


def weighted_cam(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM from a layer's activation and d score / d activation, both [N,C,h,w]."""
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return normalize_cam(F.relu((weights * activation).sum(dim=1)))


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """d BN(a) / d a in eval mode, per channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.weight is not None else scale


def route_maxpool_grad(pre: torch.Tensor, pooled: torch.Tensor,
                       grad_pooled: torch.Tensor) -> torch.Tensor:
    """Gradient of a 2x2/stride-2 max-pool: each window's gradient to its first argmax.

    ``pre`` [N,C,2h,2w] is the pool input, ``pooled`` [N,C,h,w] its output. The four
    window positions are strided slices; a position wins if it equals the window max
    and no earlier one (row-major) did, exactly PyTorch's CPU tie rule.
    """
    taken = torch.zeros_like(pooled)
    rows = []
    for dy in (0, 1):
        row = []
        for dx in (0, 1):
            hit = (pre[:, :, dy::2, dx::2] == pooled).to(pooled.dtype) * (1 - taken)
            taken = taken + hit
            row.append(hit * grad_pooled)
        rows.append(torch.stack(row, dim=-1))  # [N,C,h,w,2(dx)]
    # [N,C,h,2(dy),w,2(dx)] -> [N,C,2h,2w]; plain Reshapes, no shape arithmetic
    return torch.stack(rows, dim=3).flatten(4).flatten(2, 3)


class GiMeFiveCam(nn.Module):
    """Wraps a GiMeFive (shared weights, eval mode) to return ``(probs, cam)``.

    ``class_input=True`` adds an int64 ``class_index [N]`` input choosing the explained
    class; otherwise each face's predicted (arg-max logit) class is explained.
    """

    def __init__(self, model: GiMeFive, cam_layer: str = "conv5", class_input: bool = False):
        super().__init__()
        if cam_layer not in CAM_LAYERS:
            raise ValueError(f"cam_layer must be one of {sorted(CAM_LAYERS)}, got {cam_layer!r}")
        self.model = model
        self.cam_layer = cam_layer
        self.class_input = class_input
        self.eval()  # the wrapper too: train()/eval() on it propagate to the model

    def features(self, x: torch.Tensor):
        """Runs the conv blocks, keeping (A, R, P) of the blocks the CAM needs."""
        first = CAM_LAYERS[self.cam_layer]
        kept = {}
        for i, (conv, bn) in enumerate(self.model.blocks(), start=1):
            a = conv(x)
            r = F.relu(bn(a))
            x = F.max_pool2d(r, 2)
            if i >= first:
                kept[i] = (a, r, x)
        return x, kept

    def forward(self, x: torch.Tensor, class_index: torch.Tensor | None = None):
        m = self.model
        pooled, kept = self.features(x)
        v = pooled.mean(dim=(2, 3))
        z1 = m.fc1(v)
        h1 = F.relu(z1)
        z2 = m.fc2(h1)
        logits = m.fc3(F.relu(z2))
        probs = torch.softmax(logits, dim=1)
        if not self.class_input or class_index is None:
            class_index = logits.argmax(dim=1)
        # d logit_c / d v through the MLP's ReLU masks.
        g = m.fc3.weight[class_index] * (z2 > 0).to(z2.dtype)
        g = (g @ m.fc2.weight) * (z1 > 0).to(z1.dtype)
        dv = g @ m.fc1.weight
        a5, r5, p5 = kept[5]
        dp = dv[:, :, None, None] / (p5.shape[2] * p5.shape[3])  # broadcast over P
        da = self._through_block(5, r5, p5, dp)
        activation = a5
        if self.cam_layer == "conv4":
            a4, r4, p4 = kept[4]
            dp4 = F.conv_transpose2d(da, m.conv5.weight, padding=1)
            da = self._through_block(4, r4, p4, dp4)
            activation = a4
        return probs, weighted_cam(activation, da)

    def _through_block(self, i: int, r, p, dp):
        """d score / d conv_i output, from d score / d the block's pooled output."""
        dr = route_maxpool_grad(r, p, dp) * (r > 0).to(r.dtype)
        return dr * bn_scale(getattr(self.model, f"bn{i}"))[None, :, None, None]
