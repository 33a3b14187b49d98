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
from gimefive.pipeline.timestamps import IncreasingPts

from gimefive.errors import GimefiveError
from gimefive.urls import redact_text, redact_url

SEGMENT_TIME_BASE = Fraction(1, 90000)
FRAGMENT_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


def encoder_name(preferred: str = "libx264") -> str:
    """``preferred`` when this FFmpeg build can encode it, else mpeg4."""
    for name in (preferred, "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):
            continue
    raise GimefiveError(f"neither {preferred} nor mpeg4 can be encoded by this FFmpeg build")


def _open_video_stream(container, codec: str, width: int, height: int, fps: float,
                       crf: int, preset: str, live: bool):
    rate = Fraction(round(fps * 1000), 1000) if fps > 0 else Fraction(25)
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    even = width % 2 == 0 and height % 2 == 0
    stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
    stream.time_base = SEGMENT_TIME_BASE
    stream.codec_context.time_base = SEGMENT_TIME_BASE
    gop = max(1, round(float(rate)))  # a keyframe (and so a fragment) every second
    stream.codec_context.gop_size = gop
    if codec == "libx264":
        opts = {"crf": str(crf), "preset": preset, "keyint": str(gop), "min-keyint": "1",
                "scenecut": "0"}
        if live:
            opts["tune"] = "zerolatency"
        stream.options = opts
    else:
        stream.bit_rate = max(1_000_000, width * height * 4)
    return stream


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
                 keep_age_s: float = 0.0, keep_bytes: int = 0) -> None:
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
        self.codec, self.crf, self.preset = encoder_name(codec), crf, preset
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
        self.stream = _open_video_stream(self.container, self.codec, width, height, self.fps,
                                         self.crf, self.preset, live=True)
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
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
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
                 backoff_max_s: float = 5.0) -> None:
        if not url.lower().startswith("rtsp://"):
            raise GimefiveError(f"RTSP output must be rtsp://HOST:PORT/PATH, got "
                                f"{redact_url(url)}")
        self.url, self.fps, self.transport = url, fps, transport
        self.codec, self.preset, self.crf = encoder_name(codec), preset, crf
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
            self.stream = _open_video_stream(self.container, self.codec, width, height,
                                             self.fps, self.crf, self.preset, live=True)
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
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
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
