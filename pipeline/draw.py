"""Drawing one frame's faces: box, stable label and confidence, six probability bars,
Grad-CAM inside the box, the five landmarks. OpenCV only, in place on a BGR image."""

from __future__ import annotations

import cv2
import numpy as np
from gimefive.pipeline.crops import crop_matrix
from gimefive.pipeline.messages import TrackedMsg

from gimefive.labels import EMOTIONS, UNCERTAIN

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
    inverse = cv2.invertAffineTransform(crop_matrix(crop, 1))
    px, py = x / w, y / h
    return (float(inverse[0, 0] * px + inverse[0, 1] * py + inverse[0, 2]),
            float(inverse[1, 0] * px + inverse[1, 1] * py + inverse[1, 2]))


def overlay_cam(image: np.ndarray, cam: np.ndarray, crop: np.ndarray, box: np.ndarray,
                opacity: float) -> None:
    """Blend the heatmap of the crop square into the image, inside ``box`` only."""
    height, width = image.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2 or cam.size == 0:
        return
    heat = cv2.resize(np.clip(cam, 0, 1).astype(np.float32), (CAM_SIZE, CAM_SIZE),
                      interpolation=cv2.INTER_CUBIC)
    colored = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    m = crop_matrix(crop, CAM_SIZE)
    m[:, 2] += m[:, :2] @ np.array([x1, y1], np.float64)  # ROI pixel -> crop pixel
    warped = cv2.warpAffine(colored, m, (x2 - x1, y2 - y1),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    roi = image[y1:y2, x1:x2]
    cv2.addWeighted(warped, opacity, roi, 1 - opacity, 0, dst=roi)


def draw_faces(image: np.ndarray, msg: TrackedMsg, draw_cam: bool = True,
               opacity: float = 0.45, bars: bool = True, landmarks: bool = True) -> np.ndarray:
    height, width = image.shape[:2]
    scale = float(np.clip(min(height, width) / 720, 0.35, 1.2))
    thick = max(1, round(2 * scale))
    for i in range(len(msg.boxes)):
        box, label = msg.boxes[i], int(msg.labels[i])
        uncertain = bool(msg.uncertain[i])
        color = UNCERTAIN_COLOR if uncertain else COLORS[label]
        if draw_cam and msg.cam is not None and opacity > 0:
            overlay_cam(image, msg.cam[i], msg.crops[i], box, opacity)
        p1 = (int(box[0]), int(box[1]))
        p2 = (int(box[2]), int(box[3]))
        cv2.rectangle(image, p1, p2, color, thick, cv2.LINE_AA)
        name = UNCERTAIN if uncertain else EMOTIONS[label]
        text = f"#{int(msg.track_ids[i])} {name} {msg.smoothed[i, label]:.0%}"
        _label(image, text, p1, color, scale)
        if landmarks and msg.landmarks68 is not None:
            for x, y in msg.landmarks68[i]:
                cv2.circle(image, (int(x), int(y)), max(1, thick - 1), LANDMARK68_COLOR, -1,
                           cv2.LINE_AA)
        if landmarks:
            for (x, y), c in zip(msg.landmarks[i], LANDMARK_COLORS, strict=True):
                cv2.circle(image, (int(x), int(y)), thick + 1, c, -1, cv2.LINE_AA)
        if bars:
            _bars(image, msg.smoothed[i], label, box, scale)
    return image


def _label(image, text, origin, color, scale) -> None:
    size = 0.5 * scale + 0.15
    (tw, th), base = cv2.getTextSize(text, FONT, size, 1)
    x, y = origin[0], max(th + base + 2, origin[1])
    cv2.rectangle(image, (x, y - th - base - 2), (x + tw + 4, y), color, -1)
    cv2.putText(image, text, (x + 2, y - base), FONT, size, (0, 0, 0), 1, cv2.LINE_AA)


def _bars(image, probs, label, box, scale) -> None:
    """Six horizontal bars (class initial + bar length = probability) beside the box."""
    height, width = image.shape[:2]
    bar_h = max(4, round(9 * scale))
    bar_w = max(20, round(70 * scale))
    size = 0.3 * scale + 0.1
    panel_w = bar_w + round(14 * scale) + 4
    x = int(box[2]) + 4 if int(box[2]) + 4 + panel_w <= width else int(box[0]) - panel_w - 4
    x = max(0, x)
    y = max(0, int(box[1]))
    for k, p in enumerate(probs):
        top = y + k * (bar_h + 2)
        if top + bar_h > height:
            break
        cv2.putText(image, EMOTIONS[k][0].upper(), (x, top + bar_h), FONT, size,
                    (255, 255, 255), 1, cv2.LINE_AA)
        left = x + round(14 * scale)
        cv2.rectangle(image, (left, top), (left + bar_w, top + bar_h), (50, 50, 50), -1)
        fill = left + round(bar_w * float(np.clip(p, 0, 1)))
        cv2.rectangle(image, (left, top), (fill, top + bar_h),
                      COLORS[k] if k == label else (200, 200, 200), -1)
