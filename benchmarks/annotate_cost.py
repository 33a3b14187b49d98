"""The annotate stage's per-frame CPU, piece by piece, and the colours of its video.

``python benchmarks/annotate_cost.py CLIP [--json LINES [--cams NPZ]] [--frames 200]
[--rounds 3]``

* ``encode``: each frame through libx264 (the file sink's settings: CRF 20, veryfast, one
  thread), three ways interleaved over ``--rounds``, medians: ``copy`` hands the BGR
  frame over copied (``from_ndarray``, the way before), ``wrap`` wrapped
  (:func:`gimefive.pipeline.encoder.video_frame`); the encoder's libswscale converts
  both to 4:2:0. ``opencv_i420`` (not used) converts with ``cv2.COLOR_BGR2YUV_I420``
  instead. Then the videos' sizes, and each decoded (FFmpeg's BT.601 limited-range
  default) against the frames given: mean absolute and mean signed difference per
  channel (B, G, R) and the 99th percentile of the absolute difference.
* ``draw`` and ``json`` (with ``--json``, the JSON lines a run wrote for this clip): the
  run's faces drawn on the clip's frames as the stage does (``draw_faces`` on a copy,
  default options), and each frame's JSON line built. The lines carry no Grad-CAM maps:
  with ``--cams`` (the ``--cam-npz`` file of the same run) each face gets its real map,
  otherwise each track a made-up 4x4 map (seeded, uniform: its peak covers more of the
  box than a real map's), renewed on the frames its line says its map was computed.
  The drawn frames are then what ``encode`` encodes (sharp coloured edges: where 4:2:0
  conversions differ most).
* ``peak`` (with ``--json``): the default Grad-CAM overlay of every face, as drawn now
  (only the part of the box a map cell above ``PEAK_FROM`` can colour) and over the whole
  box (the way before), interleaved; and the largest pixel difference between the two.
* ``live_encode``: the wrapped frames through the live outputs' encoder settings
  (keyframe every second, zero-latency tuning, CRF 20) at the file preset ``veryfast``
  and at ``ultrafast`` (the ``live_preset`` default), interleaved: CPU and bytes.

CPU time (``time.process_time``, all threads) per frame. Not a test: the numbers depend
on the machine and its load; run it on a quiet one, or compare the ways only.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from fractions import Fraction

import av
import cv2
import numpy as np
from gimefive.pipeline import draw as draw_module
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.crops import crop_geometry
from gimefive.pipeline.draw import draw_faces
from gimefive.pipeline.encoder import add_video_stream, video_frame
from gimefive.pipeline.messages import TrackedMsg
from gimefive.pipeline.sinks import LINE_ENCODER, frame_record

from gimefive.labels import EMOTIONS


def read_frames(path: str, count: int) -> list[np.ndarray]:
    with av.open(path) as container:
        return [f.to_ndarray(format="bgr24")
                for _, f in zip(range(count), container.decode(video=0), strict=False)]


def copied_frame(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(image, format="bgr24")


def opencv_i420_frame(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420),
                                      format="yuv420p")


def encode(frames: list[np.ndarray], make_frame, preset: str = "veryfast",
           live: bool = False, threads: int | None = 1) -> tuple[float, bytes]:
    """CPU ms per frame to convert and encode, and the MP4 written (``threads`` None:
    FFmpeg's choice)."""
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = add_video_stream(out, "libx264", width, height, Fraction(25),
                                  Fraction(1, 25), 20, preset, threads=threads, live=live)
        start = time.process_time()
        for i, image in enumerate(frames):
            frame = make_frame(image)
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        ms = (time.process_time() - start) / len(frames) * 1000
    return ms, buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


def colour_report(frames: list[np.ndarray], videos: dict[str, bytes]) -> dict:
    given = np.stack(frames).astype(np.int16)
    report = {}
    for name, data in videos.items():
        diff = (decode(data).astype(np.int16) - given).reshape(-1, 3)
        report[name] = {"mad_bgr": np.abs(diff).mean(0).round(3).tolist(),
                        "mean_diff_bgr": diff.mean(0).round(3).tolist(),
                        "p99_abs_bgr": np.percentile(np.abs(diff), 99, axis=0).tolist()}
    return report


def real_maps(npz_path: str | None) -> dict:
    """(track id, frame) -> the Grad-CAM map computed then, from a ``--cam-npz`` file."""
    if not npz_path:
        return {}
    with np.load(npz_path) as saved:
        return {(int(t), int(f)): cam for t, f, cam in
                zip(saved["track_id"], saved["frame"], saved["cam"], strict=True)}


def messages(lines_path: str, frames: list[np.ndarray], npz_path: str | None = None
             ) -> list[TrackedMsg]:
    """The run's faces as the annotate stage receives them."""
    config, rng, maps = AnnotateConfig(), np.random.default_rng(0), real_maps(npz_path)
    out = []
    with open(lines_path) as lines:
        for image, line in zip(frames, lines, strict=False):  # --frames of them
            rec = json.loads(line)
            faces = rec["faces"]
            boxes = np.array([f["box"] for f in faces], np.float32).reshape(-1, 4)
            marks = np.array([f["landmarks"] for f in faces], np.float32).reshape(-1, 5, 2)
            cams = []
            for f in faces:
                key = (f["track_id"], (f["cam"] or {}).get("frame"))
                cams.append(maps.setdefault(key, rng.random((4, 4)).astype(np.float32)))
            out.append(TrackedMsg(
                stream=rec["stream"], index=rec["frame"], pts=rec["frame"], time_base=[1, 25],
                rate=[25, 1], detected=rec["detected"], image=image, boxes=boxes,
                scores=np.array([f["score"] for f in faces], np.float32),
                landmarks=marks,
                track_ids=np.array([f["track_id"] for f in faces], np.int64),
                probs=np.array([f["probs"] for f in faces], np.float32).reshape(-1, 6),
                smoothed=np.array([f["smoothed"] for f in faces], np.float32).reshape(-1, 6),
                labels=np.array([EMOTIONS.index(f["label"]) for f in faces], np.int64),
                uncertain=np.array([f["uncertain"] for f in faces], bool),
                measured=np.array([f["measured"] for f in faces], bool),
                result_age=np.array([f["result_age"] for f in faces], np.int64),
                cam=np.array(cams, np.float32).reshape(-1, 4, 4),
                cam_from=np.array([(f["cam"] or {}).get("frame", -1) for f in faces], np.int64),
                crops=crop_geometry(boxes, marks, config.crop_scale, config.align,
                                    config.crop_shift_y)))
    return out


def peak_whole_box(image, cam, crop, box, style, opacity) -> None:
    """The ``peak`` overlay computed over the whole box (before ``_peak_roi``)."""
    roi = draw_module._roi(image, box)
    if roi is None or cam.size == 0:
        return
    heat = draw_module._warp_to_roi(draw_module._heat(cam), crop, roi, cv2.BORDER_CONSTANT)
    peak = draw_module.PEAK_FROM
    alpha = (opacity / (1 - peak)) * np.clip(heat - peak, 0, 1 - peak)
    x1, y1, x2, y2 = roi
    pixels = image[y1:y2, x1:x2]
    pixels[:] = cv2.blendLinear(draw_module._jet(heat), np.ascontiguousarray(pixels), alpha,
                                1 - alpha)


def peak_report(msgs: list[TrackedMsg], rounds: int) -> dict:
    """CPU ms per frame of the peak overlays, now and over the whole box, and the largest
    difference between their pixels."""
    ways = {"now": draw_module.overlay_peak, "whole_box": peak_whole_box}
    times: dict[str, list[float]] = {name: [] for name in ways}
    style = draw_module.Style.for_height(min(msgs[0].image.shape[:2]))
    opacity = AnnotateConfig().cam_opacity

    def overlays(overlay, m: TrackedMsg) -> np.ndarray:
        image = np.array(m.image)
        for cam, crop, box in zip(m.cam, m.crops, m.boxes, strict=True):
            overlay(image, cam, crop, box, style, opacity)
        return image

    for _ in range(rounds):
        for name, overlay in ways.items():
            times[name].append(per_frame_ms(lambda m, o=overlay: overlays(o, m), msgs))
    worst = max(int(np.abs(overlays(ways["now"], m).astype(np.int16)
                           - overlays(ways["whole_box"], m)).max()) for m in msgs)
    return {"peak_cpu_ms_per_frame": {k: round(float(np.median(v)), 3)
                                      for k, v in times.items()},
            "peak_max_pixel_difference": worst}


def per_frame_ms(work, items) -> float:
    start = time.process_time()
    for item in items:
        work(item)
    return (time.process_time() - start) / len(items) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip")
    parser.add_argument("--json", help="the JSON lines a run wrote for CLIP (draw, json)")
    parser.add_argument("--cams", help="the --cam-npz file of that run (real maps)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args()
    frames = read_frames(args.clip, args.frames)
    result: dict = {"frames": len(frames), "size": list(frames[0].shape[:2])}
    if args.json:
        msgs = messages(args.json, frames, args.cams)
        draw = [per_frame_ms(lambda m: draw_faces(np.array(m.image), m), msgs)
                for _ in range(args.rounds)]
        lines = [per_frame_ms(lambda m: LINE_ENCODER.encode(frame_record(m)), msgs)
                 for _ in range(args.rounds)]
        result |= {"faces_per_frame": round(sum(len(m.boxes) for m in msgs) / len(msgs), 2),
                   "draw_cpu_ms_per_frame": round(float(np.median(draw)), 2),
                   "json_cpu_ms_per_frame": round(float(np.median(lines)), 3)}
        result |= peak_report(msgs, args.rounds)
        frames = [draw_faces(np.array(m.image), m) for m in msgs]  # encode what is drawn
    ways = {"copy": copied_frame, "wrap": video_frame, "opencv_i420": opencv_i420_frame}
    times: dict[str, list[float]] = {name: [] for name in ways}
    videos: dict[str, bytes] = {}
    for _ in range(args.rounds):
        for name, make in ways.items():
            ms, videos[name] = encode(frames, make)
            times[name].append(ms)
    result |= {"encode_cpu_ms_per_frame": {k: round(float(np.median(v)), 2)
                                           for k, v in times.items()},
               "video_bytes": {k: len(v) for k, v in videos.items()},
               "colours": colour_report(frames, videos)}
    presets = {"veryfast": [], "ultrafast": []}
    live_bytes = {}
    for _ in range(args.rounds):
        for preset, spent in presets.items():
            ms, data = encode(frames, video_frame, preset, live=True)
            spent.append(ms)
            live_bytes[preset] = len(data)
    result |= {"live_encode_cpu_ms_per_frame": {k: round(float(np.median(v)), 2)
                                                for k, v in presets.items()},
               "live_video_bytes": live_bytes}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
