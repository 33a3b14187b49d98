"""The reference backend: GiMeFive in PyTorch, Grad-CAM by autograd as the paper computes it.

Activation = the conv layer's output before BatchNorm (``forward_with(keep=...)``);
channel weights = spatial mean of d logit_c / d activation for each face's predicted
class c; CAM = ReLU of the weighted channel sum, min-max scaled to 0..1 per face.

``cam_method="backward"`` gets the same map from a full ``backward()`` (every parameter
gradient filled, as pytorch-grad-cam and the paper's script do; for comparisons).
``cam_method="graph"`` uses the closed-form in-graph CAM of
:class:`gimefive.cam_graph.GiMeFiveCam` instead (one forward pass, no backward),
which is what the exported engines run; autograd stays the default because it is the
definition every other backend is checked against.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from gimefive.backends.base import Backend, register_backend
from gimefive.checkpoint import load_model
from gimefive.errors import GimefiveError

PRECISIONS = ("fp32", "bf16", "fp16")
CAM_METHODS = ("autograd", "graph", "backward")


def autograd_gradcam(model, x: torch.Tensor, layer: str = "conv5",
                     class_index: torch.Tensor | None = None):
    """``(logits, cam [N,h,w])`` with Grad-CAM of ``class_index`` (default: predicted)."""
    from gimefive.cam_graph import weighted_cam

    with torch.enable_grad():
        logits, kept = model.forward_with(x, keep=(layer,))
        activation = kept[layer]
        if class_index is None:
            class_index = logits.argmax(dim=1)
        # Faces are independent in eval mode, so one backward of the summed scores
        # gives every face its own gradient.
        score = logits.gather(1, class_index[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activation)
    return logits.detach(), weighted_cam(activation.detach().float(), grad.float())


def full_backward_gradcam(model, x: torch.Tensor, layer: str = "conv5"):
    """The same Grad-CAM, computed the way pytorch-grad-cam and the paper's script do:
    ``score.backward()`` through the whole network, filling every parameter's gradient.

    Only for comparison (benchmarks): it costs a full backward pass, where
    :func:`autograd_gradcam` asks autograd for the one gradient it needs.
    """
    from gimefive.cam_graph import weighted_cam

    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        logits, kept = model.forward_with(x, keep=(layer,))
        activation = kept[layer]
        activation.retain_grad()
        logits.gather(1, logits.argmax(dim=1)[:, None]).sum().backward()
    grad = activation.grad
    model.zero_grad(set_to_none=True)
    return logits.detach(), weighted_cam(activation.detach().float(), grad.float())


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GimefiveError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


@register_backend
class TorchBackend(Backend):
    """``precision``: fp32 (default, the reference), bf16 autocast (fast on CPUs with
    AMX) or fp16 autocast (CUDA only). ``device``: auto (CUDA when present), cpu, cuda."""

    name = "torch"

    def __init__(self, weights: str | Path | None = None, cam_layer: str = "conv5",
                 precision: str = "fp32", device: str = "auto", cam_method: str = "autograd",
                 threads: int | None = None, model=None) -> None:
        from gimefive.cam_graph import CAM_LAYERS, GiMeFiveCam

        if cam_layer not in CAM_LAYERS:
            raise GimefiveError(f"cam_layer must be one of {sorted(CAM_LAYERS)}, got {cam_layer!r}")
        if precision not in PRECISIONS:
            raise GimefiveError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if cam_method not in CAM_METHODS:
            raise GimefiveError(f"cam_method must be one of {CAM_METHODS}, got {cam_method!r}")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise GimefiveError("precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
        if threads:
            torch.set_num_threads(int(threads))
        if model is None:
            model, self.metadata = load_model(weights, device=self.device)
        else:
            self.metadata = {}
            model = model.eval().to(self.device)
        self.model = model
        self.cam_layer, self.precision, self.cam_method = cam_layer, precision, cam_method
        self.channels_last = precision != "fp32"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cam_model = GiMeFiveCam(self.model, cam_layer) if cam_method == "graph" else None

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def infer(self, batch: np.ndarray, cam: bool = True):
        x = torch.from_numpy(batch).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            if not cam:
                with torch.inference_mode():
                    logits = self.model(x)
                cams = None
            elif self.cam_method == "graph":
                with torch.inference_mode():
                    probs, cams = self.cam_model(x)
                return _numpy(probs), _numpy(cams)
            elif self.cam_method == "backward":
                logits, cams = full_backward_gradcam(self.model, x, self.cam_layer)
            else:
                logits, cams = autograd_gradcam(self.model, x, self.cam_layer)
        probs = torch.softmax(logits.float(), dim=1)
        return _numpy(probs), (_numpy(cams) if cams is not None else None)

    def close(self) -> None:
        self.model = self.cam_model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy(), dtype=np.float32)
