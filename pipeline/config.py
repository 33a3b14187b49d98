"""The pipeline's typed configuration: every setting of ``annotate``/``monitor``'s stages.

Each field is a :func:`~gimefive.config.setting`: its help, range and choices live here
once; ``configs/annotate.yaml`` is generated from it and the CLI flags are derived from it.
How many streams a run has and how deep a hop's queue is are facts of the run, not
settings: the job passes them to each stage (see ``StageRunner``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gimefive.backends.base import BACKEND_MODULES
from gimefive.config import check_settings, load_config, setting, shipped_config

DEFAULT_CONFIG = shipped_config("annotate.yaml")
#: default largest frame (width x height) a run accepts: 8K UHD, 7680 x 4320 = 33.2 Mpx.
#: One BGR frame of this size is 99.5 MB; ZMQ_MAXMSGSIZE (transport.py) is sized from
#: the ceiling above it, messages.MAX_PIXELS.
MAX_PIXELS = 7680 * 4320
POSITIVE = {"min": 1}
#: the Grad-CAM renderings of pipeline/draw.py (its OVERLAYS; named here so that loading
#: a config does not import OpenCV)
OVERLAY_CHOICES = ("peak", "contour", "thumb", "full")
#: libx264's speed presets, fastest first (the mpeg4 fallback has none and ignores them)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow", "placebo")


@dataclass
class AnnotateConfig:
    """Everything the stages need besides the input and output paths."""

    # input
    max_pixels: int = setting(MAX_PIXELS, help="Largest frame accepted, width x height "
                              "(default 8K, 7680x4320); larger inputs are refused: every "
                              "queued copy of a frame costs memory.", **POSITIVE)
    # classifier
    backend: str = setting("auto", help="Classifier engine: auto (the fastest available), "
                           f"{', '.join(BACKEND_MODULES)} or another registered one.")
    weights: str | None = setting(None, path=True, help="GiMeFive weights (.safetensors or "
                                  "the paper's .pth); not given (null): the shipped ones.")
    cam: bool = setting(True, help="Compute Grad-CAM maps; off (--no-cam): probabilities "
                   "only, faster.")
    classify_every: int = setting(5, help="Classify each face track at least every N "
                                  "frames (and when it is new, moved or contested); the "
                                  "frames between show its last result. 1: every face on "
                                  "every frame.", **POSITIVE)
    classify_move: float = setting(0.3, min=0, help="Classify a track again once its box "
                                   "moved or resized by this share of its side.")
    classify_look: float = setting(0.8, min=0, max=1, help="Classify a track again once its "
                                   "face looks different: the correlation of an 8x8 grey "
                                   "thumbnail with the one at its last classification is "
                                   "below this (another expression, someone else in the same "
                                   "place); 0: off.")
    classify_margin: float = setting(0.15, min=0, max=1, help="A track is contested (classified "
                                     "twice as often) while its two best classes are closer "
                                     "than this, or its best is below the uncertain threshold.")
    cam_every: int = setting(1, help="Grad-CAM at most every N frames per track, on frames "
                             "where the face is classified; the overlay shows the track's "
                             "last map in between.", **POSITIVE)
    cam_layer: str = setting("conv5", choices=("conv5", "conv4"),
                             help="Grad-CAM layer: conv5 (4x4, the paper's) or conv4 (8x8).")
    classify_max_batch: int = setting(32, help="Faces per engine call.", **POSITIVE)
    classify_max_wait_ms: float = setting(20.0, min=0, help="How long a face may wait for a "
                                          "fuller batch, ms.")
    classify_workers: int = setting(2, help="Engine calls in parallel threads, one core each: "
                                    "classify uses a core that waits otherwise.", **POSITIVE)
    classify_replicas: int = setting(0, min=0, max=64, help="Classify processes for one stream, "
                                     "each measuring its share of the face tracks (a track "
                                     "always on the same one); 0: from the cores (one per 4, "
                                     "at most 8; 1 on a GPU).")
    align: str = setting("eyes", choices=("eyes", "landmarks", "none"),
                         help="Crop framing: eyes, the box squared and turned so the eyes are "
                              "level; landmarks, a fit of the training crops' 5-point "
                              "template; none, the plain box.")
    crop_scale: float = setting(1.0, min=0.5, min_open=True, help="Square crop side / the "
                                "detected box's longer side.")
    crop_shift_y: float = setting(0.0, min=-0.5, max=0.5, help="Crop centre moved down by "
                                  "this fraction of its side.")
    uncertain_threshold: float | None = setting(
        None, min=0, max=1, help="A face is uncertain below this top probability; null: the "
        "weights' metadata (else gimefive.labels.UNCERTAIN_THRESHOLD).")
    # detector
    detect_max_side: int = setting(640, min=32, flag="--detect-size",
                                   help="Long side frames are shrunk to for detection; "
                                        "larger finds smaller faces, slower.")
    detect_upscale: bool = setting(False, help="Also enlarge smaller frames to the detect "
                                   "size: finds faces under about 30 px (wide shots), at "
                                   "several times the detector's cost.")
    detect_upscale_every: int = setting(3, help="With detect_upscale: the enlarged pass on "
                                        "every Nth detected frame only; the others are "
                                        "detected at the frame's own size (about a quarter "
                                        "of the cost), and faces the enlarged pass found "
                                        "that they miss are carried, moved at their speed.",
                                        **POSITIVE)
    detect_score: float = setting(0.6, min=0, max=1, help="Detector confidence a face needs.")
    detect_nms: float = setting(0.4, min=0, max=1, help="Overlap (IoU) above which the "
                                "weaker of two detections is dropped.")
    detect_every: int = setting(1, help="Detect faces on every Nth frame, track them in "
                                "between.", **POSITIVE)
    detect_batch: int = setting(4, help="Frames per detector call.", **POSITIVE)
    detect_max_wait_ms: float = setting(20.0, min=0, help="How long a frame may wait for a "
                                        "fuller detector batch, ms.")
    detect_replicas: int = setting(0, min=0, max=64, help="Detect processes for one stream, frames "
                                   "shared out in turn and put back in order after them; 0: "
                                   "from the cores (one per 4, at most 8; 1 on a GPU, with "
                                   "detect_every above 1, or with detect_upscale and "
                                   "detect_upscale_every above 1).")
    min_face: float = setting(8.0, min=0, help="Smaller boxes (px, full frame) are ignored.")
    # tracker
    track_iou: float = setting(0.3, min=0, max=1, help="Overlap (IoU) that continues a track.")
    track_max_age: int = setting(15, min=0, help="Frames a track survives without a match.")
    relink_s: float = setting(2.0, min=0, help="Seconds a lost track waits for its face: a "
                              "face back within this time, near where it was or where it "
                              "was heading, of similar size and colours, keeps its id; 0: "
                              "off (IoU only).")
    smoothing: str = setting("ema", choices=("ema", "window"),
                             help="How a track's probabilities are smoothed over frames.")
    smoothing_alpha: float = setting(0.35, min=0, max=1, min_open=True,
                                     help="EMA weight of the newest frame.")
    smoothing_window: int = setting(8, help="Frames averaged by window smoothing.", **POSITIVE)
    label_hysteresis: float = setting(0.1, min=0, max=1, help="A new label must lead the "
                                      "shown one by this much.")
    # drawing
    draw_cam: bool = setting(True, help="Draw the Grad-CAM overlay inside each box.")
    overlay: str = setting("peak", choices=OVERLAY_CHOICES,
                           help="How Grad-CAM is drawn: peak, colour only where the map is "
                                "high (the face stays visible); contour, outlines of the "
                                "top regions; thumb, a small map beside the box; full, the "
                                "colour map over the whole box (hides the face).")
    cam_opacity: float = setting(0.45, min=0, max=1, help="Opacity of the Grad-CAM colour "
                                 "(peak: at the map's maximum; full: everywhere).")
    blur_faces: bool = setting(False, help="Pixelate every detected face in the output video "
                               "(also under its overlay); the JSON is unchanged except a "
                               "blur_faces field. Faces the detector missed stay visible.")
    draw_bars: bool = setting(True, help="Draw each face's probability bars.")
    draw_landmarks: bool = setting(True, help="Draw the detector's 5 landmarks.")
    landmarks68: bool = setting(False, help="Also draw and write dlib's 68 landmarks (extra: "
                                "gimefive[landmarks68]).")
    # encoding
    codec: str = setting("libx264", help="Video encoder; falls back to mpeg4 when absent.")
    crf: int = setting(20, min=0, max=51, help="Encoder quality (lower: better, larger).")
    preset: str = setting("veryfast", choices=X264_PRESETS,
                          help="Encoder speed preset of video files.")
    live_preset: str = setting("ultrafast", choices=X264_PRESETS,
                               help="Encoder speed preset of live outputs "
                               "(segments, RTSP push): a camera cannot wait, and veryfast "
                               "took twice the CPU a frame (docs/performance.md), nearly a "
                               "third of a 3-camera run's budget; the video is larger.")
    encoder_threads: int = setting(1, help="Encoder threads, per video output (files, "
                                   "segments, RTSP push). One: the other stages keep the "
                                   "cores; FFmpeg's own choice (sliced threads) took a fifth "
                                   "more CPU a live frame (docs/performance.md).", **POSITIVE)
    audio: bool = setting(True, help="Copy the input's audio to the output.")
    # process layout
    decode_threads: int = setting(1, help="Decoder threads.", **POSITIVE)
    decode_device: str = setting("auto", choices=("auto", "cpu", "cuda"),
                                 help="Where a file is decoded: cuda (NVDEC, or an error "
                                 "saying why not), cpu, or auto (NVDEC where it works, "
                                 "else the CPU with the reason logged and in the summary).")
    device: str = setting("auto", choices=("auto", "cpu", "cuda"),
                          help="Where faces are detected and cropped: cuda (RetinaFace in "
                          "torch, fp16, and the crops on the GPU; an error without CUDA), "
                          "cpu (onnxruntime and OpenCV, faster on a CPU), or auto (cuda "
                          "when torch sees a GPU, else cpu). The classifier's device is "
                          "its backend's.")
    shared_frames: bool = setting(True, help="On one host, frames cross the stages in "
                                  "shared memory (a private folder on /dev/shm): written "
                                  "once, not copied at every hop (about 0.8 ms of CPU a hop "
                                  "for a 640x360 frame). Off, or without /dev/shm: inside "
                                  "the messages.")
    detect_threads: int = setting(1, help="Detector threads.", **POSITIVE)
    classify_threads: int = setting(1, help="Threads per classifier engine call.", **POSITIVE)

    def __post_init__(self) -> None:
        check_settings(self)


def load_annotate_config(path: str | Path | None = None, **overrides) -> AnnotateConfig:
    """Defaults, then ``configs/annotate.yaml`` (or ``path``), then non-None overrides."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return load_config(AnnotateConfig, path, **overrides)
