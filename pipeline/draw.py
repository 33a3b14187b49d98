"""Drawing one frame's faces: box, stable label and confidence, six probability bars,
Grad-CAM, the five landmarks. OpenCV only, in place on a BGR image.

Sizes follow the frame (:class:`Style`): text, lines and bars read as well at 360p as at
4K, and a small face gets its label and bars outside its box. Grad-CAM is drawn by one
of :data:`OVERLAYS` (``--overlay``); the default, ``peak``, colours only where the map
is high, so the expression the label describes stays visible (the old ``full`` jet map
over the whole box hid it). ``blur_faces`` pixelates every face before anything is
drawn (:func:`pixelate_faces`), so no overlay drawn after it can show the face.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from gimefive.pipeline.crops import crop_matrix
from gimefive.pipeline.messages import TrackedMsg

from gimefive.labels import EMOTIONS

#: BGR colour per class, and for uncertain faces
COLORS = [(0, 215, 255), (255, 191, 0), (160, 80, 40), (40, 40, 230), (60, 160, 60),
          (200, 60, 200)]
UNCERTAIN_COLOR = (170, 170, 170)
LANDMARK_COLORS = [(0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0)]
LANDMARK68_COLOR = (255, 255, 255)  # the 68 points: small white dots under the 5
CAM_SIZE = 48  # the 4x4 / 8x8 map is smoothed to this many pixels before warping
FONT = cv2.FONT_HERSHEY_SIMPLEX


def cam_to_frame(cam: np.ndarray, crop: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """Frame coordinates of the point (x, y) given in CAM cells (0..w, 0..h)."""
    h, w = cam.shape
    (a, b, c), (d, e, f) = cv2.invertAffineTransform(crop_matrix(crop, 1)).tolist()
    px, py = x / w, y / h
    return float(a * px + b * py + c), float(d * px + e * py + f)


@dataclass(frozen=True)
class Style:
    """Text, line and bar sizes for one frame, from its shorter side (the height of a
    landscape frame): text about 1.8 % of it, never under :data:`MIN_FONT` (10 px)."""

    font: float  # Hershey font scale
    weight: int  # text stroke, px
    line: int  # box outline, contours, landmark dots, px
    cap: int  # height of a capital letter, px
    text_h: int  # one line of text with its descent, px
    row_h: int  # one probability bar's row at least, px

    @classmethod
    @functools.cache
    def for_height(cls, height: int) -> Style:
        font = max(MIN_FONT, height / FONT_PER_PX)
        weight = max(1, round(font * 2))
        (_, cap), base = cv2.getTextSize("Hg", FONT, font, weight)
        return cls(font, weight, max(1, round(height / 400)), cap, cap + base,
                   cap + base + 2)


#: font scale = frame's shorter side / this (1080p: 0.9), and at least MIN_FONT
FONT_PER_PX = 1200
MIN_FONT = 0.45
#: the bars' class names: three letters tell all six apart (initials repeat: s, s)
SHORT_NAMES = tuple(name[:3] for name in EMOTIONS)
#: ``peak``: colour starts where the map reaches this (maps are min-max scaled to 0..1)
PEAK_FROM = 0.5
#: ``contour``: (map level, BGR colour) of each outline
CONTOUR_LEVELS = ((0.5, (0, 220, 255)), (0.8, (0, 0, 255)))
#: blur_faces: the pixelated square extends the box by this fraction on each side (hair
#: line, ears, chin), and is this many blocks across
HIDE_MARGIN = 0.15
HIDE_BLOCKS = 6
#: smoothed Grad-CAM maps kept by content (48x48 float32, 9 kB each)
HEAT_CACHE = 256


def _roi(image: np.ndarray, box: np.ndarray) -> tuple[int, int, int, int] | None:
    """``box`` clipped to the image as integer (x1, y1, x2, y2); None if under 2 px."""
    height, width = image.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    return None if x2 - x1 < 2 or y2 - y1 < 2 else (x1, y1, x2, y2)


def _heat(cam: np.ndarray, side: int = CAM_SIZE) -> np.ndarray:
    """The map smoothed to ``side`` x ``side``, float 0..1 (read-only: it may be shared).

    A track's map is drawn on every frame until its next Grad-CAM (in the reference
    scene four faces in five show a carried map), so the :data:`CAM_SIZE` one is kept
    by content; other sides (``thumb``, which follows the face's size) are not.
    """
    if side != CAM_SIZE:
        return _smooth(cam, side)
    cam = np.ascontiguousarray(cam)
    return _smoothed(cam.tobytes(), cam.dtype.str, cam.shape)


def _smooth(cam: np.ndarray, side: int) -> np.ndarray:
    heat = cv2.resize(np.clip(cam, 0, 1).astype(np.float32), (side, side),
                      interpolation=cv2.INTER_CUBIC)
    heat = np.clip(heat, 0, 1)
    heat.flags.writeable = False
    return heat


@functools.lru_cache(maxsize=HEAT_CACHE)
def _smoothed(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return _smooth(np.frombuffer(raw, dtype).reshape(shape), CAM_SIZE)


def _warp_to_roi(src: np.ndarray, crop: np.ndarray, roi: tuple[int, int, int, int],
                 border: int) -> np.ndarray:
    """A crop-square image (``src``, any side) laid onto the frame region ``roi``."""
    x1, y1, x2, y2 = roi
    m = crop_matrix(crop, src.shape[0])
    m[:, 2] += m[:, :2] @ np.array([x1, y1], np.float64)  # ROI pixel -> crop pixel
    return cv2.warpAffine(src, m, (x2 - x1, y2 - y1),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)


@functools.cache
def _jet_table() -> np.ndarray:
    """OpenCV's JET colours of the 256 grey levels, ``[256,1,3]`` BGR (a user colour map
    for ``cv2.applyColorMap``). Built once: with ``COLORMAP_JET`` OpenCV rebuilds its
    table on every call, about 0.4 ms per face, a third of the drawing time of a frame
    with five faces; a NumPy lookup of this table still took as long."""
    levels = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET).reshape(256, 1, 3)


def _jet(heat: np.ndarray) -> np.ndarray:
    """``heat`` (0..1) as JET colours, exactly as ``cv2.applyColorMap`` gives them."""
    return cv2.applyColorMap((heat * 255).astype(np.uint8), _jet_table())


def overlay_full(image: np.ndarray, cam: np.ndarray, crop: np.ndarray, box: np.ndarray,
                 style: Style, opacity: float) -> None:
    """The old rendering: the jet map blended over the whole box (hides the face)."""
    roi = _roi(image, box)
    if roi is None or cam.size == 0:
        return
    warped = _warp_to_roi(_jet(_heat(cam)), crop, roi, cv2.BORDER_REPLICATE)
    x1, y1, x2, y2 = roi
    pixels = image[y1:y2, x1:x2]
    cv2.addWeighted(warped, opacity, pixels, 1 - opacity, 0, dst=pixels)


def _peak_roi(smooth: np.ndarray, crop: np.ndarray, roi: tuple[int, int, int, int]
              ) -> tuple[int, int, int, int] | None:
    """The part of ``roi`` that a map cell above :data:`PEAK_FROM` can colour (None:
    none). Bilinear warping gives a frame pixel a value above it only if its point in the
    map lies within one cell of such a cell, so the pixels outside stay as they were; the
    peak is usually a third of the box or less, and the rest cost as much to leave
    untouched as to colour (benchmarks/annotate_cost.py)."""
    rows, cols = np.nonzero(smooth > PEAK_FROM)
    if not len(rows):
        return None
    corners = np.array([[cols.min() - 1, rows.min() - 1], [cols.max() + 1, rows.min() - 1],
                        [cols.min() - 1, rows.max() + 1], [cols.max() + 1, rows.max() + 1]],
                       np.float64)
    back = cv2.invertAffineTransform(crop_matrix(crop, smooth.shape[0]))
    points = corners @ back[:, :2].T + back[:, 2]
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    x1, y1 = max(roi[0], int(np.floor(left)) - 1), max(roi[1], int(np.floor(top)) - 1)
    x2, y2 = min(roi[2], int(np.ceil(right)) + 2), min(roi[3], int(np.ceil(bottom)) + 2)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def overlay_peak(image: np.ndarray, cam: np.ndarray, crop: np.ndarray, box: np.ndarray,
                 style: Style, opacity: float) -> None:
    """Colour only where the map is above :data:`PEAK_FROM`, its opacity rising with the
    map to ``opacity`` at the maximum: the rest of the face is untouched (and not
    computed: :func:`_peak_roi`)."""
    roi = _roi(image, box)
    if roi is None or cam.size == 0:
        return
    smooth = _heat(cam)
    roi = _peak_roi(smooth, crop, roi)
    if roi is None:
        return
    heat = _warp_to_roi(smooth, crop, roi, cv2.BORDER_CONSTANT)  # outside the crop: 0
    alpha = (opacity / (1 - PEAK_FROM)) * np.clip(heat - PEAK_FROM, 0, 1 - PEAK_FROM)
    x1, y1, x2, y2 = roi
    pixels = image[y1:y2, x1:x2]
    pixels[:] = cv2.blendLinear(_jet(heat), np.ascontiguousarray(pixels), alpha, 1 - alpha)


def overlay_contour(image: np.ndarray, cam: np.ndarray, crop: np.ndarray, box: np.ndarray,
                    style: Style, opacity: float) -> None:
    """Outlines where the map passes each of :data:`CONTOUR_LEVELS`; no fill."""
    roi = _roi(image, box)
    if roi is None or cam.size == 0:
        return
    heat = _warp_to_roi(_heat(cam), crop, roi, cv2.BORDER_CONSTANT)
    for level, color in CONTOUR_LEVELS:
        mask = (heat >= level).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, color, style.line, cv2.LINE_AA,
                         offset=roi[:2])


def overlay_thumb(image: np.ndarray, cam: np.ndarray, crop: np.ndarray, box: np.ndarray,
                  style: Style, opacity: float) -> None:
    """A small square under the box: the face as the classifier saw it (upright), the
    map over it. The face in the box is untouched. Drawn from the frame as it is (with
    ``blur_faces``: already pixelated)."""
    if cam.size == 0:
        return
    height, width = image.shape[:2]
    side = int(np.clip((box[3] - box[1]) * 0.6, 3 * style.text_h, 8 * style.text_h))
    side = min(side, height, width)
    face = cv2.warpAffine(image, crop_matrix(crop, side), (side, side),
                          flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    thumb = cv2.addWeighted(_jet(_heat(cam, side)), 0.5, face, 0.5, 0)
    gap = style.line + 2
    x = int(np.clip(box[0], 0, width - side))
    y = int(box[3]) + gap if int(box[3]) + gap + side <= height else int(box[1]) - gap - side
    y = int(np.clip(y, 0, height - side))
    image[y:y + side, x:x + side] = thumb
    cv2.rectangle(image, (x, y), (x + side - 1, y + side - 1), (255, 255, 255), 1)


#: Grad-CAM renderings by name (``--overlay``; pipeline.config.OVERLAY_CHOICES)
OVERLAYS: dict[str, Callable[..., None]] = {
    "peak": overlay_peak, "contour": overlay_contour, "thumb": overlay_thumb,
    "full": overlay_full}
DEFAULT_OVERLAY = "peak"


def overlay_cam(image: np.ndarray, cam: np.ndarray, crop: np.ndarray, box: np.ndarray,
                opacity: float, overlay: str = DEFAULT_OVERLAY) -> None:
    """Draw one face's map with the ``overlay`` rendering."""
    OVERLAYS[overlay](image, cam, crop, box, Style.for_height(min(image.shape[:2])), opacity)


def pixelate_faces(image: np.ndarray, boxes: np.ndarray, margin: float = HIDE_MARGIN,
                   blocks: int = HIDE_BLOCKS) -> np.ndarray:
    """Replace each box (grown by ``margin`` a side) by ``blocks`` x ``blocks`` flat
    blocks, in place.

    Pixelated rather than blurred: each block is the plain mean of its pixels, so what
    is left is a fixed, small number of values per face (about 5 across the face) that
    no deconvolution brings back, whereas a Gaussian blur keeps every pixel as a known
    weighted sum of its neighbours, partly invertible, and its strength depends on the
    kernel chosen for the face size. The blocks are laid on the face's own square, not
    the frame's grid, so a moving face does not show a new sampling every frame.
    """
    height, width = image.shape[:2]
    for box in np.asarray(boxes, np.float64).reshape(-1, 4):
        if not np.isfinite(box).all():
            continue
        grow_x, grow_y = (box[2] - box[0]) * margin, (box[3] - box[1]) * margin
        roi = _roi(image, (box[0] - grow_x, box[1] - grow_y, box[2] + grow_x,
                           box[3] + grow_y))
        if roi is None:
            continue
        x1, y1, x2, y2 = roi
        cell = max(box[2] - box[0] + 2 * grow_x, box[3] - box[1] + 2 * grow_y) / blocks
        nx, ny = max(1, round((x2 - x1) / cell)), max(1, round((y2 - y1) / cell))
        pixels = image[y1:y2, x1:x2]
        small = cv2.resize(pixels, (nx, ny), interpolation=cv2.INTER_AREA)
        pixels[:] = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)
    return image


def draw_faces(image: np.ndarray, msg: TrackedMsg, draw_cam: bool = True,
               opacity: float = 0.45, bars: bool = True, landmarks: bool = True,
               overlay: str = DEFAULT_OVERLAY, blur_faces: bool = False) -> np.ndarray:
    """Draw every face of ``msg`` on ``image`` (in place; returned).

    Two passes: first what lies on the faces (pixelation, Grad-CAM, box, landmarks),
    then every label and bar panel, so that no face's drawing covers another's text.
    ``blur_faces``: pixelate the faces first; the 68 landmarks (the face's outline) are
    then not drawn.
    """
    style = Style.for_height(min(image.shape[:2]))
    if blur_faces:
        pixelate_faces(image, msg.boxes)
    for i in range(len(msg.boxes)):
        box = msg.boxes[i]
        if draw_cam and msg.cam is not None and opacity > 0:
            OVERLAYS[overlay](image, msg.cam[i], msg.crops[i], box, style, opacity)
        cv2.rectangle(image, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])),
                      _color(msg, i), style.line, cv2.LINE_AA)
        if landmarks:
            _landmarks(image, msg, i, style, with68=not blur_faces)
    for i in range(len(msg.boxes)):
        label = int(msg.labels[i])
        mark = "?" if msg.uncertain[i] else ""  # uncertain: the class it leans to, grey
        text = f"#{int(msg.track_ids[i])} {EMOTIONS[label]}{mark} {msg.smoothed[i, label]:.0%}"
        _label(image, text, msg.boxes[i], _color(msg, i), style)
        if bars:
            _bars(image, msg.smoothed[i], label, msg.boxes[i], style)
    return image


def _color(msg: TrackedMsg, i: int) -> tuple[int, int, int]:
    return UNCERTAIN_COLOR if bool(msg.uncertain[i]) else COLORS[int(msg.labels[i])]


def _landmarks(image, msg, i, style, with68: bool) -> None:
    if with68 and msg.landmarks68 is not None:
        for x, y in msg.landmarks68[i].tolist():
            cv2.circle(image, (int(x), int(y)), style.line, LANDMARK68_COLOR, -1, cv2.LINE_AA)
    for (x, y), c in zip(msg.landmarks[i].tolist(), LANDMARK_COLORS, strict=True):
        cv2.circle(image, (int(x), int(y)), style.line + 1, c, -1, cv2.LINE_AA)


def _label(image, text, box, color, style) -> None:
    """The label on a filled band just above the box (below it at the frame's top)."""
    height, width = image.shape[:2]
    pad = max(2, style.weight)
    (tw, cap), base = cv2.getTextSize(text, FONT, style.font, style.weight)
    band_w, band_h = tw + 2 * pad, cap + base + 2 * pad
    x = int(_clamp(box[0], 0, max(0, width - band_w)))
    y = int(box[1]) - style.line - band_h
    if y < 0:
        y = min(int(box[3]) + style.line, height - band_h)
    y = max(0, y)
    cv2.rectangle(image, (x, y), (x + band_w, y + band_h), color, -1)
    cv2.putText(image, text, (x + pad, y + pad + cap), FONT, style.font, (0, 0, 0),
                style.weight, cv2.LINE_AA)


def _bars(image, probs, label, box, style) -> None:
    """Six bars (three-letter class name, bar length = probability) on a dark panel
    beside the box: right of it, or left where the frame ends. Rows follow the face's
    height between 1 and 1.25 text lines, bars 40 % of its width, never under a readable
    size nor so large that the panel covers the next face."""
    height, width = image.shape[:2]
    pad = max(2, style.weight)
    row = int(_clamp((box[3] - box[1]) / 6, style.row_h, 1.25 * style.row_h))
    name_w = _name_width(style)
    bar_w = int(_clamp((box[2] - box[0]) * 0.4, 1.5 * name_w, 4 * name_w))
    panel_w, panel_h = name_w + bar_w + 3 * pad, 6 * row + pad
    gap = style.line + 2
    x = int(box[2]) + gap if int(box[2]) + gap + panel_w <= width else int(box[0]) - gap - panel_w
    x = int(_clamp(x, 0, max(0, width - panel_w)))
    y = int(_clamp(box[1], 0, max(0, height - panel_h)))
    panel = image[y:y + panel_h, x:x + panel_w]
    panel[:] = panel // 3  # darkened, so the text reads on any background
    for k, p in enumerate(probs.tolist()):
        top = y + pad + k * row
        cv2.putText(image, SHORT_NAMES[k], (x + pad, top + (row + style.cap) // 2), FONT,
                    style.font, (255, 255, 255), style.weight, cv2.LINE_AA)
        left, bar_h = x + 2 * pad + name_w, max(2, row - pad)
        fill = left + round(bar_w * _clamp(p, 0.0, 1.0))
        cv2.rectangle(image, (left, top), (left + bar_w, top + bar_h - 1), (80, 80, 80), -1)
        cv2.rectangle(image, (left, top), (fill, top + bar_h - 1),
                      COLORS[k] if k == label else (210, 210, 210), -1)


@functools.cache
def _name_width(style: Style) -> int:
    """The widest of :data:`SHORT_NAMES` in ``style``, px (the same for every face)."""
    return max(cv2.getTextSize(n, FONT, style.font, style.weight)[0][0] for n in SHORT_NAMES)


def _clamp(value, low, high):
    """``value`` limited to ``low``..``high`` (``low <= high``): ``np.clip`` of one number
    costs 10 us, 70 calls a frame. Bounds here are small integers or quarter steps, exact
    in float32, so the result equals np.clip's after ``int()``; NaN stays NaN."""
    return min(max(value, low), high)
