"""Where annotated frames go: a video file, JSON lines, per-face Grad-CAM arrays.

Each sink takes ``write(msg, image)`` once per frame, in order, and ``close()`` once;
close finalises what was written (also after an error or SIGTERM), so a stopped run
leaves a playable video and complete JSON lines up to the last frame written.
A live sink (RTSP push, segments) implements the same two methods.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.wire import TrackedMsg

from gimefive.errors import GimefiveError
from gimefive.labels import EMOTIONS

FALLBACK_CODEC = "mpeg4"


class Sink:
    #: whether :meth:`write` needs the drawn frame (else image is None)
    needs_image = False

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finalise the output."""

    def info(self) -> dict[str, Any]:
        return {}


def pick_codec(preferred: str) -> str:
    """``preferred`` when this FFmpeg build can encode it, else the mpeg4 fallback."""
    import av

    for name in (preferred, FALLBACK_CODEC):
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):  # unknown encoder
            continue
    raise GimefiveError(f"neither {preferred} nor {FALLBACK_CODEC} can be encoded by this "
                        f"FFmpeg build")


class VideoFileSink(Sink):
    """Encodes frames with the input's size, frame rate and timestamps; copies audio."""

    needs_image = True

    def __init__(self, path: str | Path, codec: str = "libx264", crf: int = 20,
                 preset: str = "veryfast", threads: int = 1,
                 audio_from: str | None = None) -> None:
        self.path = Path(path)
        self.codec = pick_codec(codec)
        self.crf, self.preset, self.threads = crf, preset, threads
        self.audio_from = audio_from
        self.container = self.stream = None
        self.audio_in = self.audio_packets = self.audio_out = None
        self.next_audio = None
        self.frames = 0
        self.audio_copied = 0

    def info(self) -> dict[str, Any]:
        return {"codec": self.codec, "audio_copied_packets": self.audio_copied}

    def _open(self, msg: TrackedMsg) -> None:
        import av

        height, width = msg.image.shape[:2]
        try:
            self.container = av.open(str(self.path), "w")
        except av.error.FFmpegError as exc:
            raise GimefiveError(f"cannot write {self.path}: {exc}") from None
        rate = Fraction(*msg.rate) if msg.rate else None
        stream = self.container.add_stream(self.codec, rate=rate)
        stream.width, stream.height = width, height
        even = width % 2 == 0 and height % 2 == 0
        stream.pix_fmt = "yuv420p" if even or self.codec != "libx264" else "yuv444p"
        stream.time_base = Fraction(*msg.time_base)
        stream.codec_context.time_base = Fraction(*msg.time_base)
        stream.codec_context.thread_count = max(1, self.threads)
        if self.codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": self.preset}
        else:
            stream.bit_rate = max(2_000_000, width * height * 8)
        self.stream = stream
        self._open_audio()

    def _open_audio(self) -> None:
        import av

        if not self.audio_from:
            return
        try:
            source = av.open(self.audio_from)
        except av.error.FFmpegError:
            return
        if not source.streams.audio:
            source.close()
            return
        in_audio = source.streams.audio[0]
        try:
            self.audio_out = self.container.add_stream_from_template(in_audio)
        except (av.error.FFmpegError, ValueError):  # the container cannot hold this codec
            source.close()
            return
        self.audio_in, self.audio_tb = source, in_audio.time_base
        self.audio_packets = (p for p in source.demux(in_audio) if p.dts is not None)
        self.next_audio = next(self.audio_packets, None)

    def _mux_audio_until(self, seconds: float | None) -> None:
        while self.next_audio is not None and (
                seconds is None or float(self.next_audio.pts * self.audio_tb) <= seconds):
            packet = self.next_audio
            packet.stream = self.audio_out
            self.container.mux(packet)
            self.audio_copied += 1
            self.next_audio = next(self.audio_packets, None)

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        import av

        if self.container is None:
            self._open(msg)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = msg.pts if msg.pts is not None else self.frames
        frame.time_base = self.stream.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1
        if self.next_audio is not None and msg.pts_seconds is not None:
            self._mux_audio_until(msg.pts_seconds)

    def close(self) -> None:
        if self.container is None:
            return
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self._mux_audio_until(None)
        finally:
            self.container.close()
            if self.audio_in is not None:
                self.audio_in.close()


def cam_summary(msg: TrackedMsg, i: int) -> dict[str, Any] | None:
    """Where the Grad-CAM of face ``i`` peaks (frame pixels) and how strong it is overall."""
    if msg.cam is None:
        return None
    from gimefive.pipeline.draw import cam_to_frame

    cam = msg.cam[i]
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    x, y = cam_to_frame(cam, msg.crops[i], c + 0.5, r + 0.5)
    return {"layer": msg.cam_layer, "peak": [round(x, 1), round(y, 1)],
            "mean": round(float(cam.mean()), 4), "shape": list(cam.shape)}


def frame_record(msg: TrackedMsg) -> dict[str, Any]:
    """The JSON-lines record of one frame."""
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
            "cam": cam_summary(msg, i),
        })
        if msg.landmarks68 is not None:
            faces[-1]["landmarks68"] = [[round(float(x), 1), round(float(y), 1)]
                                        for x, y in msg.landmarks68[i]]
    pts = msg.pts_seconds
    return {"stream": msg.stream, "frame": msg.index,
            "pts": None if pts is None else round(pts, 6), "detected": msg.detected,
            "faces": faces}


class JsonLinesSink(Sink):
    """One JSON object per frame; flushed per line so an interrupted run keeps its lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.file = open(self.path, "w", buffering=1)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise GimefiveError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        self.file.write(json.dumps(frame_record(msg), separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.file.close()


class CamNpzSink(Sink):
    """Every face's Grad-CAM map, with frame index, track id and box, in one .npz."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, list] = {"frame": [], "track_id": [], "box": [], "cam": []}

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        if msg.cam is None:
            return
        for i in range(len(msg.boxes)):
            self.rows["frame"].append(msg.index)
            self.rows["track_id"].append(int(msg.track_ids[i]))
            self.rows["box"].append(np.array(msg.boxes[i]))
            self.rows["cam"].append(np.array(msg.cam[i]))

    def close(self) -> None:
        arrays = {"frame": np.asarray(self.rows["frame"], np.int64),
                  "track_id": np.asarray(self.rows["track_id"], np.int64),
                  "box": np.asarray(self.rows["box"], np.float32).reshape(-1, 4)}
        cams = self.rows["cam"]
        arrays["cam"] = np.stack(cams).astype(np.float32) if cams else np.zeros((0, 0, 0),
                                                                                np.float32)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, self.path)
