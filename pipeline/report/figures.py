"""The report's pictures: the timeline of every track, time per class, one timeline lane
per track, and each track's face and Grad-CAM thumbnails.

Colours are the overlay's (``draw.COLORS``), so a class looks the same in the video and
in the report. Uncertain stretches keep their class's colour, faded and hatched grey, so
"unsure, leaning to anger" reads differently from "anger".
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from gimefive.pipeline.draw import COLORS, UNCERTAIN_COLOR

from gimefive.labels import EMOTIONS, NUM_CLASSES

from .data import Summary, Track

#: tracks drawn in timeline.png and classes.png (the longest ones; the CSV has them all)
MAX_PLOTTED_TRACKS = 150
LANE_SIZE = (480, 18)  # one track's lane in the HTML page, px
THUMB = 96  # thumbnail side, px


def rgb(k: int) -> tuple[float, float, float]:
    """Matplotlib colour of class ``k`` (the overlay's BGR colour)."""
    b, g, r = COLORS[k]
    return r / 255, g / 255, b / 255


UNCERTAIN_RGB = tuple(c / 255 for c in UNCERTAIN_COLOR[::-1])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plotted_tracks(summary: Summary) -> list[Track]:
    """The tracks the figures show: all, or the :data:`MAX_PLOTTED_TRACKS` longest."""
    tracks = summary.ordered_tracks()
    if len(tracks) <= MAX_PLOTTED_TRACKS:
        return tracks
    keep = {id(t) for t in sorted(tracks, key=lambda t: -t.frames)[:MAX_PLOTTED_TRACKS]}
    return [t for t in tracks if id(t) in keep]


def time_unit(summary: Summary) -> str:
    return "s" if all(c.first_t is not None for c in summary.streams.values()) else "frame"


def _legend_handles():
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=rgb(k), label=EMOTIONS[k]) for k in range(NUM_CLASSES)]
    handles.append(Patch(facecolor=(0.85, 0.85, 0.85), edgecolor=UNCERTAIN_RGB, hatch="///",
                         label="uncertain (hatched)"))
    return handles


def save_timeline(summary: Summary, path: Path) -> None:
    """One lane per track, coloured by label over time; uncertain stretches hatched."""
    plt = _pyplot()
    tracks = plotted_tracks(summary)
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.32 * len(tracks)))
    for row, track in enumerate(tracks):
        for seg in track.segments:
            ax.broken_barh([(seg.start, seg.end - seg.start)], (row - 0.4, 0.8),
                           facecolors=[rgb(seg.label) + ((0.35,) if seg.uncertain else (1,))],
                           edgecolor=UNCERTAIN_RGB if seg.uncertain else "none",
                           hatch="///" if seg.uncertain else None, linewidth=0)
    ax.set_yticks(range(len(tracks)), [f"#{t.track_id}" if len(summary.streams) == 1
                                       else f"{t.stream}/#{t.track_id}" for t in tracks])
    ax.set_ylim(len(tracks) - 0.5, -0.5)
    ax.set_xlabel(f"time ({time_unit(summary)})")
    ax.set_ylabel("track")
    shown = "" if len(tracks) == len(summary.tracks) else \
        f" (the {len(tracks)} longest of {len(summary.tracks)} tracks)"
    ax.set_title(f"Emotion over time per track{shown}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=_legend_handles(), loc="upper left", bbox_to_anchor=(1.01, 1),
              fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_classes(summary: Summary, path: Path) -> None:
    """Time per class overall (bars), and each track's shares (stacked bars)."""
    plt = _pyplot()
    tracks = plotted_tracks(summary)
    unit = time_unit(summary)
    overall = np.zeros(NUM_CLASSES)
    for t in summary.tracks.values():
        step = summary.frame_s(t.stream) if unit == "s" else 1.0
        overall += np.asarray(t.class_frames, float) * (step or 0.0)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 3.2 + 0.3 * len(tracks)),
        gridspec_kw={"height_ratios": [3, max(3, 0.3 * len(tracks))]})
    top.bar(EMOTIONS, overall, color=[rgb(k) for k in range(NUM_CLASSES)])
    top.set_ylabel(f"face-{'seconds' if unit == 's' else 'frames'}")
    top.set_title("Time per class, all tracks")
    left = np.zeros(len(tracks))
    shares = np.array([t.shares() for t in tracks]).reshape(len(tracks), NUM_CLASSES)
    for k in range(NUM_CLASSES):
        bottom.barh(range(len(tracks)), shares[:, k], left=left, color=rgb(k),
                    label=EMOTIONS[k])
        left += shares[:, k]
    bottom.set_yticks(range(len(tracks)), [f"#{t.track_id}" for t in tracks])
    bottom.set_ylim(len(tracks) - 0.5, -0.5)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("share of the track's time")
    bottom.set_title("Per track")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lane_image(track: Track, t0: float, t1: float, size: tuple[int, int] = LANE_SIZE
               ) -> np.ndarray:
    """A track's timeline lane (BGR) on the run's time axis ``t0..t1``: class colours,
    uncertain stretches striped grey, light grey where the track is absent."""
    width, height = size
    lane = np.full((height, width, 3), 238, np.uint8)
    scale = width / max(t1 - t0, 1e-9)
    stripes = ((np.arange(width)[None, :] + np.arange(height)[:, None]) // 3) % 2 == 0
    for seg in track.segments:
        a = int(np.clip((seg.start - t0) * scale, 0, width - 1))
        b = int(np.clip(np.ceil((seg.end - t0) * scale), a + 1, width))
        lane[:, a:b] = COLORS[seg.label]
        if seg.uncertain:
            lane[:, a:b][stripes[:, a:b]] = UNCERTAIN_COLOR
    return lane


def face_thumbnail(frame: np.ndarray, box: list[float], side: int = THUMB) -> np.ndarray:
    """The face's box with a margin of a quarter of its size, as a ``side`` square."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = box
    margin = 0.25 * max(x2 - x1, y2 - y1)
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 2 + margin
    a, b = int(max(0, cx - half)), int(min(width, cx + half))
    c, d = int(max(0, cy - half)), int(min(height, cy + half))
    if b - a < 2 or d - c < 2:
        return np.full((side, side, 3), 200, np.uint8)
    return cv2.resize(frame[c:d, a:b], (side, side), interpolation=cv2.INTER_AREA)


def cam_thumbnail(cam: np.ndarray, face_crop: np.ndarray | None, side: int = THUMB
                  ) -> np.ndarray:
    """The Grad-CAM map (crop coordinates) as a heatmap, blended over the model's input
    crop when given (else the map alone: no face pixels)."""
    heat = cv2.resize(np.clip(cam, 0, 1).astype(np.float32), (side, side),
                      interpolation=cv2.INTER_CUBIC)
    colored = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    if face_crop is None:
        return colored
    face = cv2.resize(face_crop, (side, side), interpolation=cv2.INTER_AREA)
    alpha = (0.6 * np.clip(heat, 0, 1))[..., None]  # heat where the map is high
    return (face * (1 - alpha) + colored * alpha).astype(np.uint8)


def png_bytes(image_bgr: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image_bgr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()
