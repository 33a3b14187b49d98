"""Where annotated frames go: the sink base class, the registry by kind, the file sinks.

Each sink takes ``write(msg, image)`` once per frame, in order, and ``close()`` once;
close finalises what was written (also after an error or SIGTERM), so a stopped run
leaves a playable video and complete JSON lines up to the last frame written.
(``gimefive annotate`` points them at partial names and renames only after success.)

:func:`sink_specs` picks each output's kind from the job (see :data:`SINKS`): a video
file is one MP4 for a file job and fragmented-MP4 segments for a live one, an
``rtsp://`` output is pushed, JSON lines are truncated or (live) appended.
:func:`open_sinks` builds them. The live kinds are in :mod:`gimefive.pipeline.segments`.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.encoder import add_video_stream, pick_codec, video_frame
from gimefive.pipeline.messages import TrackedMsg
from gimefive.pipeline.timestamps import IncreasingPts, frame_step
from gimefive.pipeline.wallclock import utc_fields

from gimefive.errors import GimefiveError
from gimefive.labels import EMOTIONS

#: output kind -> "module:class" of its sink (imported only when used)
SINKS: dict[str, str] = {
    "mp4": "gimefive.pipeline.sinks:VideoFileSink",          # one MP4 file (file jobs)
    "segments": "gimefive.pipeline.segments:SegmentsSink",   # live: fMP4 segments + ffconcat
    "rtsp": "gimefive.pipeline.segments:RtspSink",           # rtsp:// push
    "jsonl": "gimefive.pipeline.sinks:JsonLinesSink",        # JSON lines, truncate or append
    "cam_npz": "gimefive.pipeline.sinks:CamNpzSink",         # Grad-CAM arrays
    "events": "gimefive.pipeline.events:EventsSink",         # per-track events: file, MQTT
}


class Sink:
    """One output of the annotate stage. The one hook is :meth:`write`; a new kind of
    output is a subclass and a line in :data:`SINKS` (and in :func:`sink_specs`)."""

    #: whether :meth:`write` needs the drawn frame (else image is None)
    needs_image = False

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finalise the output."""

    def end_stream(self, stream: str) -> None:
        """Stream ``stream`` ended while the others go on (a camera removed or given up):
        finalise what is its own (a per-camera output); a shared output goes on."""

    def info(self) -> dict[str, Any]:
        return {}

    def counters(self) -> dict[str, int]:
        """Running counts for the stage's counters (and so the run summary)."""
        return {}


@dataclass(frozen=True)
class SinkSpec:
    """One output of a job: its kind (a key of :data:`SINKS`), where, and the keyword
    arguments of that sink's constructor."""

    kind: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> Sink:
        module, attr = SINKS[self.kind].split(":")
        return getattr(importlib.import_module(module), attr)(self.target, **self.options)


def sink_specs(job: dict[str, Any], config) -> list[SinkSpec]:
    """The sinks a job's outputs need (job keys as :class:`AnnotateStage` documents)."""
    live, specs = bool(job.get("live")), []
    video = str(job.get("output") or "")
    streams = list(job.get("streams") or [])
    if video.lower().startswith("rtsp://"):
        specs.append(SinkSpec("rtsp", video, {
            "streams": streams, "codec": config.codec, "preset": config.live_preset,
            "threads": config.encoder_threads,
            "transport": job.get("push_transport") or "udp"}))
    elif video and live:
        specs.append(SinkSpec("segments", video, {
            "streams": streams, "codec": config.codec, "crf": config.crf,
            "preset": config.live_preset, "threads": config.encoder_threads,
            "segment_s": float(job.get("segment_s") or 10.0),
            "keep_age_s": float(job.get("keep_age_s") or 0),
            "keep_bytes": int(job.get("keep_bytes") or 0)}))
    elif video:
        specs.append(SinkSpec("mp4", video, {
            "codec": config.codec, "crf": config.crf, "preset": config.preset,
            "threads": config.encoder_threads,
            "audio_from": job.get("audio_from") if config.audio else None}))
    if job.get("json"):
        specs.append(SinkSpec("jsonl", str(job["json"]), {
            "append": live, "blur_faces": config.blur_faces}))
    if job.get("cam_npz"):
        specs.append(SinkSpec("cam_npz", str(job["cam_npz"])))
    if job.get("events") or job.get("mqtt"):
        specs.append(SinkSpec("events", str(job.get("events") or ""),
                              {"mqtt": job.get("mqtt")}))
    return specs


def open_sinks(specs: list[SinkSpec]) -> list[Sink]:
    """Open every sink (a video sink opens its file on the first frame)."""
    return [spec.open() for spec in specs]


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
        self.stream = add_video_stream(
            self.container, self.codec, width, height,
            Fraction(*msg.rate) if msg.rate else None, Fraction(*msg.time_base),
            self.crf, self.preset, threads=self.threads)
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
        if self.container is None:
            self._open(msg)
        frame = video_frame(image)
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
    r, c = divmod(int(np.argmax(cam)), cam.shape[1])  # np.unravel_index for 2-D
    x, y = cam_to_frame(cam, msg.crops[i], c + 0.5, r + 0.5)
    return {"layer": msg.cam_layer, "peak": [round(x, 1), round(y, 1)],
            "mean": round(float(cam.mean()), 4), "shape": list(cam.shape),
            "frame": int(msg.cam_from[i])}


def frame_record(msg: TrackedMsg) -> dict[str, Any]:
    """The JSON-lines record of one frame.

    Arrays become Python numbers once per frame (``tolist``: the same values as
    ``float()``/``int()`` of each element, a tenth of the cost), then are rounded one by
    one with ``round``; NumPy's own rounding of float32 can differ in the last digit.
    """
    boxes, scores, marks = msg.boxes.tolist(), msg.scores.tolist(), msg.landmarks.tolist()
    probs, smoothed, labels = msg.probs.tolist(), msg.smoothed.tolist(), msg.labels.tolist()
    marks68 = None if msg.landmarks68 is None else msg.landmarks68.tolist()
    faces = []
    for i, (tid, uncertain, measured, age) in enumerate(zip(
            msg.track_ids.tolist(), msg.uncertain.tolist(), msg.measured.tolist(),
            msg.result_age.tolist(), strict=True)):
        label = labels[i]
        faces.append({
            "track_id": tid, "box": _rounded(boxes[i], 1), "score": round(scores[i], 4),
            "landmarks": [_rounded(point, 1) for point in marks[i]],
            "probs": _rounded(probs[i], 4), "smoothed": _rounded(smoothed[i], 4),
            "label": EMOTIONS[label], "label_index": label,
            "confidence": round(smoothed[i][label], 4),
            "uncertain": uncertain, "measured": measured, "result_age": age,
            "cam": cam_summary(msg, i),
        })
        if marks68 is not None:
            faces[-1]["landmarks68"] = [_rounded(point, 1) for point in marks68[i]]
    pts = msg.pts_seconds
    return {"stream": msg.stream, "frame": msg.index,
            "pts": None if pts is None else round(pts, 6), "detected": msg.detected,
            "faces": faces}


def _rounded(values: list[float], digits: int) -> list[float]:
    return [round(v, digits) for v in values]


#: ``json.dumps(record, separators=(",", ":"))`` made once, not per line (records are
#: fresh trees of dicts and lists, so the check for cycles is left out)
LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


class JsonLinesSink(Sink):
    """One JSON object per frame; flushed per line so an interrupted run keeps its lines.

    ``append``: continue the file (a live run, whose restarted stage must not lose what
    was written). A frame from a live source also carries the camera's counters
    (``live``: decoded, dropped, reconnects, ...) at the time it was sent.
    ``blur_faces``: the run hid the faces in its video; each line then says so
    (``"blur_faces": true``), so that a report made from these lines hides them too.
    """

    def __init__(self, path: str | Path, append: bool = False, blur_faces: bool = False
                 ) -> None:
        self.path = Path(path)
        self.blur_faces = blur_faces
        try:  # closed in close()
            self.file = open(self.path, "a" if append else "w", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise GimefiveError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        record = frame_record(msg)
        if "live" in msg.extra:
            record["live"] = msg.extra["live"]
        record |= utc_fields(msg.extra)  # a live frame's UTC time and where it came from
        if self.blur_faces:
            record["blur_faces"] = True
        self.file.write(LINE_ENCODER.encode(record) + "\n")

    def close(self) -> None:
        self.file.close()


class CamNpzSink(Sink):
    """Every Grad-CAM map computed, with frame index, track id and box, in one .npz
    (a map carried to later frames of its track is written once, on the frame it is from).

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
        fresh = np.flatnonzero(msg.cam_from == msg.index) if msg.cam is not None else ()
        k = len(fresh)
        if k == 0:  # no map computed on this frame (the others are carried, written once)
            return
        cams = np.asarray(msg.cam[fresh], "<f4")
        if self.cam_shape is None:
            self.cam_shape = cams.shape[1:]
        elif cams.shape[1:] != self.cam_shape:
            raise GimefiveError(f"{self.path}: Grad-CAM maps changed shape from "
                                f"{self.cam_shape} to {cams.shape[1:]} at frame {msg.index}")
        columns = {"frame": np.full(k, msg.index), "track_id": msg.track_ids[fresh],
                   "box": np.reshape(msg.boxes[fresh], (k, 4)), "cam": cams}
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
