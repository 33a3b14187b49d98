"""Live outputs that a crash cannot spoil: segmented fragmented MP4, and an RTSP push.

A live run has no end at which one big MP4 could be finalised, and an MP4 whose writer
dies has no index and will not play. :class:`SegmentWriter` therefore writes a series of
short, self-contained MP4 segments (``NAME_00000.mp4``, ``NAME_00001.mp4``, ...), each a
*fragmented* MP4 with a keyframe every second: a segment becomes readable fragment by
fragment while it is written, so a crash (even SIGKILL) loses at most the last fragment
of the current segment, and a clean stop (SIGINT/SIGTERM, via ``close``) finalises it.
``NAME.ffconcat`` lists the segments in order, so ``ffprobe``/``ffmpeg -f concat`` (or
PyAV) read them as one recording. Timestamps are the live timeline's (seconds since the
monitor started), rebased per segment; the first frame of every segment is a keyframe.

:class:`RtspPushSink` pushes the annotated stream to an RTSP server (ANNOUNCE/RECORD);
when the server goes away it keeps trying with capped backoff and counts the frames it
could not push, without ever blocking the pipeline.

:class:`SegmentsSink` and :class:`RtspSink` are the pipeline's sinks for these two kinds
of output: one writer per camera, each at its own name (:func:`stream_output`).
"""

from __future__ import annotations

import glob
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from gimefive.pipeline.encoder import add_video_stream, pick_codec, video_frame
from gimefive.pipeline.messages import TrackedMsg
from gimefive.pipeline.sinks import Sink
from gimefive.pipeline.timestamps import IncreasingPts

from gimefive.errors import GimefiveError
from gimefive.urls import redact_text, redact_url

SEGMENT_TIME_BASE = Fraction(1, 90000)
FRAGMENT_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


def _live_stream(container, codec: str, width: int, height: int, fps: float, crf: int,
                 preset: str, threads: int | None):
    """A live output's video stream on the live timeline's 1/90000 time base."""
    rate = Fraction(round(fps * 1000), 1000) if fps > 0 else Fraction(25)
    return add_video_stream(container, codec, width, height, rate, SEGMENT_TIME_BASE, crf,
                            preset, threads=threads, live=True)


def concat_line(name: str) -> str:
    """The ffconcat ``file`` line for ``name``: quoted, each ``'`` written as ``'\\''``
    (close the quote, an escaped quote, reopen), as FFmpeg's tokenizer reads it."""
    return "file '" + name.replace("'", "'\\''") + "'\n"


class SegmentWriter:
    """BGR frames with timestamps in seconds -> ``NAME_#####.mp4`` fragmented segments.

    ``base`` is ``DIR/NAME.mp4`` (the suffix picks the container; .mp4 or .mov). Segment
    numbers continue after the highest existing ``NAME_#####`` file, so a restarted
    writer never overwrites what an earlier run (or a crashed process) wrote.
    """

    def __init__(self, base: str | Path, segment_s: float = 10.0, fps: float = 25.0,
                 codec: str = "libx264", crf: int = 23, preset: str = "veryfast",
                 keep_age_s: float = 0.0, keep_bytes: int = 0, threads: int | None = 1
                 ) -> None:
        base = Path(base)
        if base.suffix.lower() not in (".mp4", ".mov", ".m4v"):
            raise GimefiveError(f"segment output must end in .mp4 or .mov, got {base.name}")
        if any(c in base.name for c in "\r\n"):  # one ffconcat line per segment
            raise GimefiveError(f"segment output name must not contain a line break: "
                                f"{base.name!r}")
        if segment_s <= 0:
            raise GimefiveError(f"segment length must be > 0 s, got {segment_s}")
        self.base, self.segment_s, self.fps = base, segment_s, fps
        self.keep_age_s, self.keep_bytes = keep_age_s, keep_bytes  # 0: keep everything
        self.codec, self.crf, self.preset = pick_codec(codec), crf, preset
        self.threads = threads  # None: FFmpeg's choice (x264: 1.5 threads a core)
        self.playlist = base.with_suffix(".ffconcat")
        self.container = self.stream = None
        self.number = self._next_number()
        self.segment_start: float | None = None
        self.clock = IncreasingPts()
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.segments: list[Path] = []

    def _existing(self) -> list[tuple[int, Path]]:
        """This base's ``NAME_#####`` segments on disk (any run's), oldest first."""
        pattern = re.compile(re.escape(self.base.stem) + r"_(\d{5,})" + re.escape(self.base.suffix)
                             + "$")
        candidates = self.base.parent.glob(f"{glob.escape(self.base.stem)}_*")
        found = [(int(m.group(1)), p) for p in candidates if (m := pattern.match(p.name))]
        return sorted(found)

    def _next_number(self) -> int:
        existing = self._existing()
        return existing[-1][0] + 1 if existing else 0

    def segment_path(self, number: int) -> Path:
        return self.base.with_name(f"{self.base.stem}_{number:05d}{self.base.suffix}")

    def _start_segment(self, image: np.ndarray, t: float) -> None:
        path = self.segment_path(self.number)
        height, width = image.shape[:2]
        try:
            self.container = av.open(str(path), "w",
                                     options={"movflags": FRAGMENT_FLAGS, "flush_packets": "1"})
        except (av.error.FFmpegError, OSError) as exc:
            raise GimefiveError(f"cannot write segment {path}: {exc}") from None
        self.stream = _live_stream(self.container, self.codec, width, height, self.fps,
                                   self.crf, self.preset, self.threads)
        self.size = (width, height)
        self.segment_start, self.clock = t, IncreasingPts()  # each segment starts at 0
        self.segments.append(path)
        self._list(path)

    def _list(self, path: Path) -> None:
        """Append ``path`` to the playlist, created with its header on first use."""
        try:
            if not self.playlist.exists():
                self.playlist.write_text("ffconcat version 1.0\n")
            with self.playlist.open("a") as f:
                f.write(concat_line(path.name))
        except OSError as exc:  # e.g. disk full: the cause stays in __context__
            raise GimefiveError(f"cannot write {self.playlist}: {exc.strerror or exc}") \
                from None

    def write(self, image: np.ndarray, t: float) -> None:
        """Append one frame shown at ``t`` seconds on the live timeline."""
        new_size = (image.shape[1], image.shape[0]) != self.size
        if self.container is not None and (new_size or t - self.segment_start >= self.segment_s):
            self._finish_segment()
        if self.container is None:
            self._start_segment(image, t)
        pts = self.clock(round((t - self.segment_start) / SEGMENT_TIME_BASE))
        frame = video_frame(image)
        frame.pts, frame.time_base = pts, SEGMENT_TIME_BASE
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def _finish_segment(self) -> None:
        container, self.container = self.container, None
        try:
            container.mux(self.stream.encode(None))
        finally:
            container.close()
            self.number += 1
        if self.keep_age_s > 0 or self.keep_bytes > 0:
            self._prune()

    def _prune(self) -> None:
        """Retention: delete the oldest finished segments older than ``keep_age_s`` or
        beyond ``keep_bytes`` in total (the newest finished one always stays), then drop
        them from the playlist. Runs between segments, so none is being written."""
        finished = []
        for _, path in self._existing():
            try:
                st = path.stat()
            except OSError:
                continue
            finished.append((path, st.st_size, st.st_mtime))
        total, now, doomed = sum(size for _, size, _ in finished), time.time(), []
        for path, size, mtime in finished[:-1]:
            too_old = self.keep_age_s > 0 and now - mtime > self.keep_age_s
            too_big = self.keep_bytes > 0 and total > self.keep_bytes
            if not (too_old or too_big):
                break
            doomed.append(path)
            total -= size
        if doomed:
            self._unlist(doomed)
            for path in doomed:
                path.unlink(missing_ok=True)
            self.segments = [p for p in self.segments if p not in doomed]

    def _unlist(self, paths: list[Path]) -> None:
        """Rewrite the playlist without ``paths`` (temporary file + rename: a reader or a
        crash never sees half a list)."""
        if not self.playlist.exists():
            return
        gone = {concat_line(p.name) for p in paths}
        kept = [ln for ln in self.playlist.read_text().splitlines(keepends=True)
                if ln not in gone]
        tmp = self.playlist.with_name(self.playlist.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.playlist)

    def stats(self) -> dict[str, Any]:
        return {"segments": len(self.segments), "frames": self.frames}

    def close(self) -> None:
        """Finalise the current segment (safe to call twice)."""
        if self.container is not None:
            self._finish_segment()


class RtspPushSink:
    """Pushes BGR frames to ``rtsp://HOST:PORT/PATH`` on an RTSP server that accepts
    publishers. Never blocks the pipeline for long: if the server is gone the frame is
    counted in ``dropped`` and a reconnect is tried after a capped backoff."""

    def __init__(self, url: str, fps: float = 25.0, transport: str = "udp",
                 codec: str = "libx264", preset: str = "ultrafast", crf: int = 28,
                 backoff_max_s: float = 5.0, threads: int | None = 1) -> None:
        if not url.lower().startswith("rtsp://"):
            raise GimefiveError(f"RTSP output must be rtsp://HOST:PORT/PATH, got "
                                f"{redact_url(url)}")
        self.url, self.fps, self.transport = url, fps, transport
        self.codec, self.preset, self.crf = pick_codec(codec), preset, crf
        self.threads = threads
        self.backoff_max_s = backoff_max_s
        self.container = self.stream = None
        self.t0: float | None = None
        self.last_pts = -1
        self.clock = IncreasingPts()
        self.pushed = self.dropped = self.connects = self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""

    def _connect(self, image: np.ndarray) -> bool:
        now = time.monotonic()
        if now < self.retry_at:
            return False
        try:
            self.container = av.open(self.url, "w", format="rtsp",
                                     options={"rtsp_transport": self.transport},
                                     timeout=(5.0, 5.0))
            height, width = image.shape[:2]
            self.stream = _live_stream(self.container, self.codec, width, height, self.fps,
                                       self.crf, self.preset, self.threads)
            self.t0, self.last_pts, self.clock = None, -1, IncreasingPts()
            return True
        except (av.error.FFmpegError, OSError) as exc:
            self._disconnect(exc)
            return False

    def _disconnect(self, exc: BaseException) -> None:
        self.last_error = redact_text(getattr(exc, "strerror", None) or str(exc))
        if self.container is not None:
            try:
                self.container.close()
            except (av.error.FFmpegError, OSError):
                pass
        self.container = self.stream = None
        self.failures += 1
        self.retry_at = time.monotonic() + min(self.backoff_max_s, 0.25 * 2 ** self.failures)

    def write(self, image: np.ndarray, t: float) -> None:
        if self.container is None and not self._connect(image):
            self.dropped += 1
            return
        if self.t0 is None:
            self.t0 = t
        pts = self.clock(round((t - self.t0) / SEGMENT_TIME_BASE))
        frame = video_frame(image)
        frame.pts, frame.time_base = pts, SEGMENT_TIME_BASE
        try:
            self.container.mux(self.stream.encode(frame))
            if self.last_pts < 0:  # the server took the header and the first frame
                self.connects += 1
                self.failures = 0
            self.last_pts = pts
            self.pushed += 1
        except (av.error.FFmpegError, OSError) as exc:
            self._disconnect(exc)
            self.dropped += 1

    def stats(self) -> dict[str, Any]:
        return {"url": redact_url(self.url), "pushed": self.pushed, "dropped": self.dropped,
                "connects": self.connects, "connected": self.container is not None,
                "last_error": self.last_error}

    def close(self) -> None:
        if self.container is None:
            return
        try:
            self.container.mux(self.stream.encode(None))
        except (av.error.FFmpegError, OSError):
            pass
        finally:
            try:
                self.container.close()
            except (av.error.FFmpegError, OSError):
                pass
            self.container = None


def stream_output(base: str, stream: str, single: bool) -> str:
    """Where one camera's video goes: ``base`` itself with one camera, else per stream
    (``DIR/NAME-STREAM.mp4`` or ``rtsp://.../PATH-STREAM``)."""
    if single:
        return base
    if base.lower().startswith("rtsp://"):
        return f"{base.rstrip('/')}-{stream}"
    path = Path(base)
    return str(path.with_name(f"{path.stem}-{stream}{path.suffix}"))


class PerStreamSink(Sink):
    """One ``writer`` per camera (``streams``: the run's stream ids), opened on that
    camera's first frame; the other options go to the writer."""

    needs_image = True
    writer: type  # SegmentWriter or RtspPushSink: ``writer(target, fps=..., **options)``

    def __init__(self, base: str, streams: list[str], **options: Any) -> None:
        self.base, self.streams, self.options = base, streams, options
        self.outputs: dict[str, Any] = {}

    def _output(self, msg: TrackedMsg):
        out = self.outputs.get(msg.stream)
        if out is None:
            # a stream that joined later (cameras file) never takes the single name
            single = not self.streams or self.streams == [msg.stream]
            target = stream_output(self.base, msg.stream, single)
            fps = msg.rate[0] / msg.rate[1] if msg.rate else 25.0
            out = self.outputs[msg.stream] = self.writer(target, fps=fps, **self.options)
        return out

    def write(self, msg: TrackedMsg, image: np.ndarray | None) -> None:
        t = msg.pts_seconds if msg.pts_seconds is not None else time.monotonic()
        self._output(msg).write(image, t)

    def info(self) -> dict[str, Any]:
        return {"video": {s: out.stats() for s, out in self.outputs.items()}}

    def end_stream(self, stream: str) -> None:
        """That camera's writer closes its last segment and list; a frame that comes
        later for it opens a new writer, numbering on."""
        out = self.outputs.pop(stream, None)
        if out is not None:
            out.close()

    def close(self) -> None:
        errors = []
        for out in self.outputs.values():
            try:
                out.close()
            except Exception as exc:  # close every camera's output, then report
                errors.append(str(exc))
        if errors:
            raise GimefiveError("; ".join(errors))


class SegmentsSink(PerStreamSink):
    """Live ``-o FILE.mp4``: fragmented-MP4 segments and their ffconcat list per camera."""

    writer = SegmentWriter


class RtspSink(PerStreamSink):
    """``-o rtsp://...``: each camera pushed to its own path (stats with no password)."""

    writer = RtspPushSink
