"""Input readers: what the one source stage reads frames from, chosen by kind.

A reader implements one hook, :meth:`InputReader.read`: an iterator of decoded
:class:`Frame` objects. Its class says whether the input is *live* (a camera cannot
wait: the source stage then puts a drop-oldest queue between the reader and the
pipeline, and counts what it drops) or not (a file: a blocking, lossless queue).

Kinds (:data:`READERS`, the ``--reader`` option of ``gimefive stage source``):

* ``file``: a video file, decoded as fast as the pipeline takes it, with its own
  timestamps (:class:`FileReader`).
* ``rtsp``: a network stream (rtsp://, rtmp://, http://, srt://, udp://) with open and
  read timeouts, a stall watchdog and capped-backoff reconnects
  (:class:`gimefive.pipeline.live_source.RtspReader`).
* ``loop``: a video file played as a camera, at its frame rate, looping: the stand-in
  camera of tests and benchmarks (:class:`gimefive.pipeline.live_source.LoopReader`).

A webcam (``/dev/video0``) or another input plugs in as one more subclass and one more
line in :data:`READERS`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gimefive.errors import GimefiveError
from gimefive.urls import redact_text, redact_url

#: kind -> "module:class", imported only when used
READERS: dict[str, str] = {
    "file": "gimefive.pipeline.readers:FileReader",
    "rtsp": "gimefive.pipeline.live_source:RtspReader",
    "loop": "gimefive.pipeline.live_source:LoopReader",
}


@dataclass
class Frame:
    """One decoded frame. ``index`` counts every frame the reader decoded in this run
    (a live reader's count goes on across reconnects), ``pts`` is in the reader's
    ``time_base`` (None when the input has none)."""

    index: int
    pts: int | None
    image: np.ndarray        # BGR uint8 HxWx3
    t_decoded: float = 0.0   # time.time() at decode


class InputReader:
    """Frames of one input. Subclasses implement :meth:`read` and set ``time_base``
    (and ``rate`` once known); ``stop`` (an Event) ends a reader that would not end by
    itself. ``read`` raises :class:`GimefiveError` with one line when it cannot go on."""

    #: a live input drops its oldest frames rather than make the camera wait
    live: ClassVar[bool] = False

    def __init__(self, url: str, stream_id: str = "0", options: Any = None, threads: int = 1,
                 stop: threading.Event | None = None) -> None:
        self.url, self.stream_id, self.options = str(url), stream_id, options
        self.threads = threads
        self.stop = stop or threading.Event()
        self.time_base = Fraction(1, 90000)
        self.rate: Fraction | None = None

    def read(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        return self.read()

    def info(self) -> dict[str, Any]:
        """Facts for the supervisor's ready report."""
        return {"stream": self.stream_id, "url": redact_url(self.url)}

    def stats(self) -> dict[str, Any]:
        """Running counters (a live reader: connected, decoded, reconnects, outages)."""
        return {}

    def close(self) -> None:
        """Release what the reader holds open."""


def reader_kind(url: str, kind: str = "auto") -> str:
    """``auto``: a network URL is ``rtsp``, anything else a ``file``."""
    from gimefive.pipeline.probe import is_live  # imports av: only when a stage runs

    if kind == "auto":
        return "rtsp" if is_live(url) else "file"
    if kind not in READERS:
        raise GimefiveError(f"unknown reader {kind!r}; expected auto or one of {list(READERS)}")
    return kind


def open_reader(url: str, kind: str = "auto", stream_id: str = "0", options: Any = None,
                threads: int = 1, stop: threading.Event | None = None) -> InputReader:
    """The reader of ``kind`` for ``url`` (``options``: the live readers' LiveOptions)."""
    module, attr = READERS[reader_kind(url, kind)].split(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls(url, stream_id, options, threads, stop)


class FileReader(InputReader):
    """A video file's first video stream, decoded as fast as it is taken, lossless."""

    def __init__(self, url: str, stream_id: str = "0", options: Any = None, threads: int = 1,
                 stop: threading.Event | None = None) -> None:
        import av

        super().__init__(url, stream_id, options, threads, stop)
        check_local_input(url)
        try:
            self.container = av.open(url)
        except av.error.FFmpegError as exc:
            raise GimefiveError(f"cannot read {redact_url(url)} as a video ({reason(exc)})"
                                ) from None
        if not self.container.streams.video:
            self.container.close()
            raise GimefiveError(f"{redact_url(url)}: no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = max(1, threads)
        self.time_base = self.stream.time_base or Fraction(1, 90000)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.rate = Fraction(rate) if rate else None
        self.decoded = 0

    def info(self) -> dict[str, Any]:
        s = self.stream
        total = s.frames or 0
        if not total and s.duration and self.rate:
            total = round(float(s.duration * self.time_base * self.rate))
        elif not total and self.container.duration and self.rate:
            total = round(self.container.duration / 1_000_000 * float(self.rate))
        return {"width": s.codec_context.width, "height": s.codec_context.height,
                "frames_estimate": int(total), "codec": s.codec_context.name,
                "rate": [self.rate.numerator, self.rate.denominator] if self.rate else None,
                "has_audio": bool(self.container.streams.audio)}

    def read(self) -> Iterator[Frame]:
        import time

        import av

        try:
            for frame in self.container.decode(self.stream):
                if self.stop.is_set():
                    return
                yield Frame(self.decoded, frame.pts, frame.to_ndarray(format="bgr24"),
                            time.time())
                self.decoded += 1
        except av.error.FFmpegError as exc:
            raise GimefiveError(f"{redact_url(self.url)}: decoding failed ({reason(exc)})"
                                ) from None

    def stats(self) -> dict[str, Any]:
        return {"decoded": self.decoded}

    def close(self) -> None:
        self.container.close()


def check_local_input(url: str) -> None:
    """One line for a path that cannot be a video (FFmpeg's own message is cryptic)."""
    if "://" in url:
        return
    path = Path(url)
    if not path.exists():
        raise GimefiveError(f"input not found: {url}")
    if path.is_dir():
        raise GimefiveError(f"input is a directory, not a video: {url}")
    if path.stat().st_size == 0:
        raise GimefiveError(f"input is an empty file: {url}")


def reason(exc: BaseException) -> str:
    """An FFmpeg (or other) error's reason, without any password it quotes."""
    import av

    if isinstance(exc, av.error.FFmpegError):
        return redact_text(exc.strerror or type(exc).__name__)
    return redact_text(str(exc) or type(exc).__name__)
