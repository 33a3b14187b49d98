"""Source stage: demux and decode a video with PyAV on a reader thread, send BGR frames.

The reader (what yields decoded frames) and the queue policy are pluggable: a file is
read by :class:`VideoFileReader` with a *blocking* queue (lossless: when the pipeline is
slower than decoding, decoding waits); a live reader can use ``policy="drop_oldest"``
so that the newest frames go on and the dropped ones are counted.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.probe import check_frame_size
from gimefive.pipeline.stage import Stage
from gimefive.pipeline.timestamps import IncreasingPts, frame_step
from gimefive.pipeline.wire import EndOfStream, FrameMsg, Message

from gimefive.errors import GimefiveError
from gimefive.urls import redact_text, redact_url


class VideoFileReader:
    """Decoded frames of a file's first video stream, as ``(pts, bgr uint8 HxWx3)``."""

    def __init__(self, url: str, threads: int = 1) -> None:
        import av

        path = Path(url)
        if "://" not in url:
            if not path.exists():
                raise GimefiveError(f"input not found: {url}")
            if path.is_dir():
                raise GimefiveError(f"input is a directory, not a video: {url}")
            if path.stat().st_size == 0:
                raise GimefiveError(f"input is an empty file: {url}")
        try:
            self.container = av.open(url)
        except av.error.FFmpegError as exc:
            raise GimefiveError(f"cannot read {redact_url(url)} as a video ({_reason(exc)})"
                                ) from None
        if not self.container.streams.video:
            self.container.close()
            raise GimefiveError(f"{redact_url(url)}: no video stream")
        self.url = url
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = max(1, threads)
        self.time_base = self.stream.time_base or Fraction(1, 90000)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.rate = Fraction(rate) if rate else None

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

    def __iter__(self) -> Iterator[tuple[int | None, np.ndarray]]:
        import av

        try:
            for frame in self.container.decode(self.stream):
                yield frame.pts, frame.to_ndarray(format="bgr24")
        except av.error.FFmpegError as exc:
            raise GimefiveError(f"{redact_url(self.url)}: decoding failed ({_reason(exc)})"
                                ) from None

    def close(self) -> None:
        self.container.close()


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "strerror", None) or str(exc).split(":")[-1].strip()
    return redact_text(reason or type(exc).__name__)


class FrameQueue:
    """A bounded queue between the reader thread and the sender.

    ``block``: a full queue blocks the reader (files: lossless). ``drop_oldest``: a full
    queue discards its oldest frame and counts it (live: never fall behind).
    """

    _END = object()

    def __init__(self, maxsize: int, policy: str = "block") -> None:
        if policy not in ("block", "drop_oldest"):
            raise ValueError(f"queue policy must be block or drop_oldest, got {policy!r}")
        self.items: collections.deque = collections.deque()
        self.maxsize, self.policy = maxsize, policy
        self.cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, item: Any) -> bool:
        """False when the consumer has gone (the reader should stop)."""
        with self.cond:
            while self.policy == "block" and len(self.items) >= self.maxsize and not self.closed:
                self.cond.wait()
            if self.closed:
                return False
            if len(self.items) >= self.maxsize:
                self.items.popleft()
                self.dropped += 1
            self.items.append(item)
            self.cond.notify_all()
            return True

    def finish(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.items.append(error if error is not None else self._END)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self.cond:
                while not self.items:
                    self.cond.wait()
                item = self.items.popleft()
                self.cond.notify_all()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class SourceStage(Stage):
    """Reads ``job["input"]``; frames carry stream id, index, pts and time base."""

    name = "source"
    accepts = None
    queue_policy = "block"
    queue_size = 8

    def open_reader(self):
        """Override (or replace) to read something else, e.g. an RTSP camera."""
        return VideoFileReader(str(self.job["input"]), threads=self.config.decode_threads)

    def setup(self) -> None:
        if not self.job.get("input"):
            raise GimefiveError("source stage needs an input (--in VIDEO)")
        self.stream_id = str(self.job.get("stream", "0"))
        self.reader = self.open_reader()
        tb, rate = self.reader.time_base, self.reader.rate
        self.time_base = [tb.numerator, tb.denominator]
        self.rate = [rate.numerator, rate.denominator] if rate else None
        self.queue = FrameQueue(self.queue_size, self.queue_policy)
        self.thread = threading.Thread(target=self._read, name="decode", daemon=True)
        self.index = 0
        self.clock = IncreasingPts(frame_step(self.rate, self.time_base))

    def info(self) -> dict[str, Any]:
        return self.reader.info()

    def _read(self) -> None:
        try:
            for item in self.reader:
                if not self.queue.put(item):
                    return
        except BaseException as exc:  # handed to the sending thread, which raises it
            self.queue.finish(exc)
        else:
            self.queue.finish()

    def process(self, msg: tuple[int | None, np.ndarray]) -> list[Message]:
        pts, image = msg
        # a frame over the limit would cost that much in every queue down the pipeline
        check_frame_size(image.shape[1], image.shape[0], self.config.max_pixels,
                         f"frame {self.index} of the input")
        pts = self.clock(pts)  # missing, repeated or going back: after the previous one
        self.counters["pts_repaired"] = self.clock.repaired
        out = FrameMsg(stream=self.stream_id, index=self.index, pts=pts,
                       time_base=self.time_base, rate=self.rate, t_decoded=time.time(),
                       extra={"dropped": self.queue.dropped} if self.queue.dropped else {},
                       image=image)
        self.index += 1
        return [out]

    def messages(self) -> Iterator[Message]:
        self.thread.start()
        for item in self.queue:
            yield from self.process(item)
        self.counters["dropped"] = self.queue.dropped
        yield EndOfStream(stream=self.stream_id, frames=self.index)

    def close(self) -> None:
        if hasattr(self, "queue"):
            self.queue.close()
            self.thread.join(timeout=5) if self.thread.is_alive() else None
        if hasattr(self, "reader"):
            self.reader.close()
