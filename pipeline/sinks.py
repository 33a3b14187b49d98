"""Where annotated frames go: a video file, JSON lines, per-face Grad-CAM arrays.

Each sink takes ``write(msg, image)`` once per frame, in order, and ``close()`` once;
close finalises what was written (also after an error or SIGTERM), so a stopped run
leaves a playable video and complete JSON lines up to the last frame written.
(``gimefive annotate`` points them at partial names and renames only after success.)
A live sink (RTSP push, segments) implements the same two methods.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.timestamps import IncreasingPts, frame_step
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

    def counters(self) -> dict[str, int]:
        """Running counts for the stage's counters (and so the run summary)."""
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
        self.clock = IncreasingPts()

    def info(self) -> dict[str, Any]:
        return {"codec": self.codec, "audio_copied_packets": self.audio_copied}

    def counters(self) -> dict[str, int]:
        return {"pts_repaired": self.clock.repaired} if self.clock.repaired else {}

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
        # the muxer refuses (EINVAL) timestamps that repeat or go back: repair, never drop
        self.clock = IncreasingPts(frame_step(msg.rate, msg.time_base))
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
        frame.pts = self.clock(msg.pts)
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
    """Every face's Grad-CAM map, with frame index, track id and box, in one .npz.

    In bounded memory however long the video: each row is appended to an unnamed
    temporary file beside the output, and :meth:`close` copies them, in chunks, into the
    ``.npz`` (a zip of ``.npy`` files: ``np.load`` gives ``frame`` int64 [N], ``track_id``
    int64 [N], ``box`` float32 [N,4], ``cam`` float32 [N,h,w]; [0,0,0] when no CAM).
    """

    COLUMNS = (("frame", "<i8"), ("track_id", "<i8"), ("box", "<f4"), ("cam", "<f4"))

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows = 0
        self.cam_shape: tuple[int, ...] | None = None
        try:
            self.spools = {key: tempfile.TemporaryFile(dir=self.path.parent)  # noqa: SIM115
                           for key, _ in self.COLUMNS}  # closed in close()
        except OSError as exc:
            raise GimefiveError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        k = len(msg.boxes)
        if msg.cam is None or k == 0:
            return
        cams = np.asarray(msg.cam[:k], "<f4")
        if self.cam_shape is None:
            self.cam_shape = cams.shape[1:]
        elif cams.shape[1:] != self.cam_shape:
            raise GimefiveError(f"{self.path}: Grad-CAM maps changed shape from "
                                f"{self.cam_shape} to {cams.shape[1:]} at frame {msg.index}")
        columns = {"frame": np.full(k, msg.index), "track_id": msg.track_ids[:k],
                   "box": np.reshape(msg.boxes[:k], (k, 4)), "cam": cams}
        for key, dtype in self.COLUMNS:
            self.spools[key].write(np.ascontiguousarray(columns[key], dtype).tobytes())
        self.rows += k

    def _shape(self, key: str) -> tuple[int, ...]:
        if key == "cam":
            return (self.rows, *self.cam_shape) if self.cam_shape else (0, 0, 0)
        return (self.rows, 4) if key == "box" else (self.rows,)

    def close(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
                for key, dtype in self.COLUMNS:
                    header = {"descr": dtype, "fortran_order": False, "shape": self._shape(key)}
                    with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array_header_1_0(member, header)
                        spool = self.spools[key]
                        spool.seek(0)
                        shutil.copyfileobj(spool, member, 1 << 20)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            for spool in self.spools.values():
                spool.close()
