"""The annotate stage's cheaper per-frame paths give the same output as the plain ones:
the cached JET table, the scalar clamps and cached text width of the bars, the cached
smoothed Grad-CAM, the JSON record built from ``tolist()``, and the video frame that
wraps the drawn image instead of copying it. (Speed: benchmarks/annotate_cost.py; no
timing here.)"""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest
from gimefive.pipeline import draw
from gimefive.pipeline.crops import crop_matrix
from gimefive.pipeline.encoder import video_frame
from gimefive.pipeline.messages import TrackedMsg
from gimefive.pipeline.sinks import LINE_ENCODER, VideoFileSink, cam_summary, frame_record

from gimefive.labels import EMOTIONS

RNG = np.random.default_rng(7)


def random_msg(k: int = 4, size=(360, 640), with68: bool = True, cam: bool = True,
               index: int = 3) -> TrackedMsg:
    """``k`` faces anywhere (partly outside the frame too), odd probabilities included."""
    h, w = size
    x1, y1 = RNG.uniform(-60, w, k), RNG.uniform(-60, h, k)
    side = RNG.uniform(2, 300, k)
    boxes = np.stack([x1, y1, x1 + side, y1 + side * 1.2], 1).astype(np.float32)
    probs = RNG.dirichlet(np.ones(6), k).astype(np.float32)
    if k:
        probs[0, :2] = (-0.2, 1.3)  # outside 0..1: the bars clamp
    marks = (boxes[:, None, :2] + RNG.random((k, 5, 2)) * side[:, None, None])
    marks68 = (boxes[:, None, :2] + RNG.random((k, 68, 2)) * side[:, None, None])
    return TrackedMsg(
        stream="s", index=index, pts=index, time_base=[1, 25],
        image=RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), boxes=boxes,
        scores=RNG.random(k).astype(np.float32), landmarks=marks.astype(np.float32),
        probs=probs, smoothed=probs[::-1].copy(),
        cam=RNG.random((k, 4, 4)).astype(np.float32) * 1.2 - 0.1 if cam else None,
        crops=np.stack([x1 + side / 2, y1 + side / 2, side * 1.3, RNG.uniform(-30, 30, k)],
                       1).astype(np.float32),
        track_ids=np.arange(1, k + 1), labels=RNG.integers(0, 6, k),
        uncertain=RNG.random(k) < 0.5, measured=RNG.random(k) < 0.5,
        result_age=RNG.integers(0, 9, k), cam_from=np.full(k, index - 1),
        landmarks68=marks68.astype(np.float32) if with68 else None)


# ------------------------------------------------------------------ drawing

def test_the_cached_jet_table_equals_opencvs_jet_map():
    heat = np.concatenate([np.linspace(0, 1, 256, dtype=np.float32),
                           RNG.random(5000).astype(np.float32)]).reshape(-1, 8)
    expected = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    assert np.array_equal(draw._jet(heat), expected)


def test_the_smoothed_map_is_cached_by_content_and_read_only():
    cam = RNG.random((4, 4)).astype(np.float32)
    first = draw._heat(cam)
    expected = np.clip(cv2.resize(cam, (draw.CAM_SIZE,) * 2, interpolation=cv2.INTER_CUBIC),
                       0, 1)
    assert np.array_equal(first, expected)
    assert draw._heat(cam.copy()) is first  # same content: the same array, not recomputed
    assert not first.flags.writeable
    other = cam.copy()
    other[0, 0] += 0.5
    assert not np.array_equal(draw._heat(other), first)
    thumb = draw._heat(cam, 30)  # other sides are not kept
    assert thumb.shape == (30, 30) and draw._heat(cam, 30) is not thumb


@pytest.mark.parametrize("value", [np.float32(-3.7), np.float32(12.25), np.float32(7.5),
                                   np.float32(1e9), 0.4, 5])
def test_clamp_truncates_like_np_clip(value):
    for low, high in ((0, 10), (1.5 * 11, 4 * 11), (17, 1.25 * 17), (0.0, 1.0)):
        assert int(draw._clamp(value, low, high)) == int(np.clip(value, low, high))
    assert np.isnan(draw._clamp(float("nan"), 0.0, 1.0))


def reference_bars(image, probs, label, box, style) -> None:
    """draw._bars before this change: np.clip per number, text widths measured per face."""
    height, width = image.shape[:2]
    pad = max(2, style.weight)
    row = int(np.clip((box[3] - box[1]) / 6, style.row_h, 1.25 * style.row_h))
    name_w = max(cv2.getTextSize(n, draw.FONT, style.font, style.weight)[0][0]
                 for n in draw.SHORT_NAMES)
    bar_w = int(np.clip((box[2] - box[0]) * 0.4, 1.5 * name_w, 4 * name_w))
    panel_w, panel_h = name_w + bar_w + 3 * pad, 6 * row + pad
    gap = style.line + 2
    x = int(box[2]) + gap if int(box[2]) + gap + panel_w <= width else int(box[0]) - gap - panel_w
    x = int(np.clip(x, 0, max(0, width - panel_w)))
    y = int(np.clip(box[1], 0, max(0, height - panel_h)))
    panel = image[y:y + panel_h, x:x + panel_w]
    panel[:] = panel // 3
    for k, p in enumerate(probs):
        top = y + pad + k * row
        cv2.putText(image, draw.SHORT_NAMES[k], (x + pad, top + (row + style.cap) // 2),
                    draw.FONT, style.font, (255, 255, 255), style.weight, cv2.LINE_AA)
        left, bar_h = x + 2 * pad + name_w, max(2, row - pad)
        fill = left + round(bar_w * float(np.clip(p, 0, 1)))
        cv2.rectangle(image, (left, top), (left + bar_w, top + bar_h - 1), (80, 80, 80), -1)
        cv2.rectangle(image, (left, top), (fill, top + bar_h - 1),
                      draw.COLORS[k] if k == label else (210, 210, 210), -1)


@pytest.mark.parametrize("size", [(360, 640), (1080, 1920), (97, 131)])
def test_bars_draw_the_same_pixels_as_the_reference(size):
    msg = random_msg(6, size)
    style = draw.Style.for_height(min(size))
    for i in range(6):
        expected, got = np.array(msg.image), np.array(msg.image)
        reference_bars(expected, msg.smoothed[i], int(msg.labels[i]), msg.boxes[i], style)
        draw._bars(got, msg.smoothed[i], int(msg.labels[i]), msg.boxes[i], style)
        assert np.array_equal(got, expected), i


@pytest.mark.parametrize("overlay", sorted(draw.OVERLAYS))
def test_jet_overlays_match_opencvs_jet(overlay, monkeypatch):
    """Every overlay drawn with the cached table equals the one drawn with OpenCV's own
    COLORMAP_JET call (the code before the table)."""
    msg = random_msg(5)
    got = draw.draw_faces(np.array(msg.image), msg, overlay=overlay)
    monkeypatch.setattr(draw, "_jet", lambda heat: cv2.applyColorMap(
        (heat * 255).astype(np.uint8), cv2.COLORMAP_JET))
    assert np.array_equal(got, draw.draw_faces(np.array(msg.image), msg, overlay=overlay))


def reference_peak(image, cam, crop, box, style, opacity) -> None:
    """overlay_peak before it kept to the peak's part of the box (:func:`draw._peak_roi`)."""
    roi = draw._roi(image, box)
    if roi is None or cam.size == 0:
        return
    heat = draw._warp_to_roi(draw._heat(cam), crop, roi, cv2.BORDER_CONSTANT)
    alpha = (opacity / (1 - draw.PEAK_FROM)) * np.clip(heat - draw.PEAK_FROM, 0,
                                                        1 - draw.PEAK_FROM)
    x1, y1, x2, y2 = roi
    pixels = image[y1:y2, x1:x2]
    pixels[:] = cv2.blendLinear(draw._jet(heat), np.ascontiguousarray(pixels), alpha,
                                1 - alpha)


def test_the_peak_overlay_colours_the_pixels_the_whole_box_version_did():
    """Only the peak's part of the box is computed; every pixel outside it stays as it
    was. A warp into a smaller region may round a map value the other way, and so pick
    the neighbouring JET colour (up to 4 levels a channel), blended at most at 0.45: a
    pixel may differ by 2 levels (16 pixels of 2e9 in 3000 random faces differed, by 1),
    never more, which a pixel left out of the region would."""
    style, changed, differ, total = draw.Style.for_height(360), 0, 0, 0
    for trial in range(300):
        image = RNG.integers(0, 256, (360, 640, 3), dtype=np.uint8)
        side, (cx, cy) = RNG.uniform(6, 220), RNG.uniform((-20, -20), (660, 380))
        crop = np.array([cx, cy, side, RNG.uniform(-40, 40) if trial % 2 else 0], np.float32)
        box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2],
                       np.float32) + RNG.uniform(-5, 5, 4).astype(np.float32)
        cam = RNG.random((4, 4) if trial % 3 else (8, 8)).astype(np.float32)
        cam = ((cam - cam.min()) / (cam.max() - cam.min())) ** (4 if trial % 5 == 0 else 1)
        got, expected = image.copy(), image.copy()
        draw.overlay_peak(got, cam, crop, box, style, 0.45)
        reference_peak(expected, cam, crop, box, style, 0.45)
        diff = np.abs(got.astype(np.int16) - expected)
        assert diff.max() <= 2, trial
        differ, total = differ + int(np.count_nonzero(diff)), total + diff.size
        changed += int(np.count_nonzero(expected != image))
    assert changed > 100_000 and differ <= total * 1e-6  # it did colour, and alike


# ------------------------------------------------------------------ JSON lines

def reference_record(msg: TrackedMsg) -> dict:
    """frame_record before this change: float()/int()/bool() and round() per element."""
    faces = []
    for i in range(len(msg.boxes)):
        label = int(msg.labels[i])
        faces.append({
            "track_id": int(msg.track_ids[i]),
            "box": [round(float(v), 1) for v in msg.boxes[i]],
            "score": round(float(msg.scores[i]), 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in msg.landmarks[i]],
            "probs": [round(float(p), 4) for p in msg.probs[i]],
            "smoothed": [round(float(p), 4) for p in msg.smoothed[i]],
            "label": EMOTIONS[label], "label_index": label,
            "confidence": round(float(msg.smoothed[i, label]), 4),
            "uncertain": bool(msg.uncertain[i]),
            "measured": bool(msg.measured[i]), "result_age": int(msg.result_age[i]),
            "cam": reference_cam(msg, i),
        })
        if msg.landmarks68 is not None:
            faces[-1]["landmarks68"] = [[round(float(x), 1), round(float(y), 1)]
                                        for x, y in msg.landmarks68[i]]
    pts = msg.pts_seconds
    return {"stream": msg.stream, "frame": msg.index,
            "pts": None if pts is None else round(pts, 6), "detected": msg.detected,
            "faces": faces}


def reference_cam(msg: TrackedMsg, i: int) -> dict | None:
    if msg.cam is None:
        return None
    cam = msg.cam[i]
    h, w = cam.shape
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    inverse = cv2.invertAffineTransform(crop_matrix(msg.crops[i], 1))
    px, py = (c + 0.5) / w, (r + 0.5) / h
    x = float(inverse[0, 0] * px + inverse[0, 1] * py + inverse[0, 2])
    y = float(inverse[1, 0] * px + inverse[1, 1] * py + inverse[1, 2])
    return {"layer": msg.cam_layer, "peak": [round(x, 1), round(y, 1)],
            "mean": round(float(cam.mean()), 4), "shape": list(cam.shape),
            "frame": int(msg.cam_from[i])}


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e7])
@pytest.mark.parametrize("with68, cam", [(True, True), (False, True), (False, False)])
def test_json_lines_are_byte_identical_to_the_reference(scale, with68, cam):
    for _ in range(5):
        msg = random_msg(RNG.integers(0, 6), with68=with68, cam=cam)
        for name in ("boxes", "landmarks", "probs", "smoothed", "scores", "landmarks68"):
            if getattr(msg, name) is not None:
                setattr(msg, name, (getattr(msg, name) * scale).astype(np.float32))
        expected = json.dumps(reference_record(msg), separators=(",", ":"))
        assert LINE_ENCODER.encode(frame_record(msg)) == expected


def test_cam_summary_peaks_where_the_map_does():
    msg = random_msg(2)
    msg.cam[1] = 0
    msg.cam[1, 3, 1] = 1  # row 3, column 1 of the 4x4 map
    summary = cam_summary(msg, 1)
    assert summary == reference_cam(msg, 1)
    assert summary["peak"] == [round(v, 1) for v in draw.cam_to_frame(
        msg.cam[1], msg.crops[1], 1.5, 3.5)]


# ------------------------------------------------------------------ video frames

def test_the_video_frame_wraps_the_image_without_a_copy():
    image = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frame = video_frame(image)
    assert frame.format.name == "bgr24" and (frame.width, frame.height) == (64, 48)
    assert np.shares_memory(np.frombuffer(frame.planes[0], np.uint8), image)
    assert np.array_equal(frame.to_ndarray(format="bgr24"), image)
    odd = image[:47, :63]  # a view whose rows are not contiguous: copied once
    assert np.array_equal(video_frame(odd).to_ndarray(format="bgr24"), odd)


@pytest.mark.parametrize("size", [(48, 64), (49, 65)])
def test_the_encoder_gets_the_same_pixels_as_from_a_copied_frame(size):
    """libswscale converts the wrapped frame exactly as the copied one (the encoder's
    input is the same; x264 itself is not bit-reproducible run to run with one thread)."""
    image = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
    for pix_fmt in ("yuv420p", "yuv444p"):
        copied = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format=pix_fmt)
        wrapped = video_frame(image).reformat(format=pix_fmt)
        assert all(np.array_equal(a, b) for a, b in zip(pixels(wrapped), pixels(copied),
                                                         strict=True))


def pixels(frame) -> list[np.ndarray]:
    """Each plane's pixels without its row padding (``to_ndarray`` refuses odd 4:2:0)."""
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width]
            for p in frame.planes]


@pytest.mark.parametrize("size", [(180, 320), (181, 321)])  # 4:2:0; odd: libx264 4:4:4
def test_the_video_file_holds_every_frame_drawn(tmp_path, size):
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(6):  # moving gradients with two faces drawn on them
        image = np.stack([30 + xx * 120 // w + 3 * i, 40 + yy * 120 // h,
                          200 - (xx + yy) * 100 // (w + h) + i], -1).astype(np.uint8)
        msg = random_msg(2, size)
        msg.boxes[:] = [[10 + 2 * i, 10, 60 + 2 * i, 70], [w - 70, h - 80, w - 20, h - 20]]
        frames.append(draw.draw_faces(image, msg))
    sink = VideoFileSink(tmp_path / "o.mp4")
    for i, image in enumerate(frames):
        msg = random_msg(0, size, index=i)
        msg.pts = i
        sink.write(msg, image)
    sink.close()
    with av.open(str(tmp_path / "o.mp4")) as container:
        back = np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])
    assert back.shape == (len(frames), h, w, 3)
    assert np.abs(back.astype(int) - np.stack(frames)).mean() < 4
