"""The pipeline's typed configuration; defaults live in ``configs/annotate.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gimefive.config import load_config, shipped_config
from gimefive.errors import GimefiveError

DEFAULT_CONFIG = shipped_config("annotate.yaml")
#: default largest frame (width x height) a run accepts: 8K UHD, 7680 x 4320 = 33.2 Mpx.
#: One BGR frame of this size is 99.5 MB; wire.py sizes ZMQ_MAXMSGSIZE from it.
MAX_PIXELS = 7680 * 4320


@dataclass
class AnnotateConfig:
    """Everything the stages need besides the input and output paths."""

    # input
    max_pixels: int = MAX_PIXELS        # larger frames are refused (every queued copy costs)
    # classifier
    backend: str = "auto"
    weights: str | None = None          # None: the shipped weights
    cam: bool = True
    cam_every: int = 1                  # Grad-CAM on every Nth frame (probabilities always)
    cam_layer: str = "conv5"
    classify_max_batch: int = 32        # faces per engine call
    classify_max_wait_ms: float = 20.0  # how long a face may wait for a fuller batch
    classify_workers: int = 2           # parallel engine calls (threads, one core each)
    align: str = "eyes"                 # eyes | landmarks | none (see crops.py)
    crop_scale: float = 1.0             # square crop side / detected box's longer side
    crop_shift_y: float = 0.0           # crop centre moved down by this fraction of its side
    uncertain_threshold: float | None = None  # None: from the weights' metadata (0.4)
    # detector
    detect_max_side: int = 640
    detect_upscale: bool = False        # also enlarge smaller frames to detect_max_side
    detect_score: float = 0.6
    detect_nms: float = 0.4
    detect_every: int = 1               # run the detector on every Nth frame, track between
    detect_batch: int = 4               # frames per detector call
    detect_max_wait_ms: float = 20.0
    min_face: float = 8.0               # smaller boxes (px, full frame) are ignored
    # tracker
    track_iou: float = 0.3
    track_max_age: int = 15             # frames a track survives without a match
    smoothing: str = "ema"              # ema | window
    smoothing_alpha: float = 0.35       # EMA weight of the newest frame
    smoothing_window: int = 8
    label_hysteresis: float = 0.1       # a new label must lead the shown one by this much
    # drawing
    draw_cam: bool = True
    cam_opacity: float = 0.45
    draw_bars: bool = True
    draw_landmarks: bool = True
    landmarks68: bool = False           # dlib's 68 points too (extra: gimefive[landmarks68])
    # encoding
    codec: str = "libx264"              # falls back to mpeg4 when absent
    crf: int = 20
    preset: str = "veryfast"
    encoder_threads: int = 1
    audio: bool = True
    # process layout
    decode_threads: int = 1
    detect_threads: int = 1
    classify_threads: int = 1
    hwm: int = 4                        # messages queued per hop (per side)
    streams: int = 1                    # end-of-stream messages a stage waits for

    def __post_init__(self) -> None:
        checks = [
            (self.max_pixels >= 1, "max_pixels", ">= 1"),
            (self.cam_every >= 1, "cam_every", ">= 1"),
            (self.detect_every >= 1, "detect_every", ">= 1"),
            (self.detect_max_side >= 32, "detect_max_side", ">= 32"),
            (self.classify_max_batch >= 1, "classify_max_batch", ">= 1"),
            (self.classify_workers >= 1, "classify_workers", ">= 1"),
            (self.detect_batch >= 1, "detect_batch", ">= 1"),
            (0.0 <= self.cam_opacity <= 1.0, "cam_opacity", "in 0..1"),
            (0.0 < self.smoothing_alpha <= 1.0, "smoothing_alpha", "in (0, 1]"),
            (self.smoothing in ("ema", "window"), "smoothing", "ema or window"),
            (self.cam_layer in ("conv5", "conv4"), "cam_layer", "conv5 or conv4"),
            (self.align in ("landmarks", "eyes", "none"), "align", "landmarks, eyes or none"),
            (self.crop_scale > 0.5, "crop_scale", "> 0.5"),
            (-0.5 <= self.crop_shift_y <= 0.5, "crop_shift_y", "in [-0.5, 0.5]"),
            (self.hwm >= 1, "hwm", ">= 1"),
            (self.streams >= 0, "streams", ">= 0 (0: run until stopped)"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise GimefiveError(f"config key {key!r}: expected {expected}, "
                                    f"got {getattr(self, key)!r}")


def load_annotate_config(path: str | Path | None = None, **overrides) -> AnnotateConfig:
    """Defaults, then ``configs/annotate.yaml`` (or ``path``), then non-None overrides."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return load_config(AnnotateConfig, path, **overrides)
