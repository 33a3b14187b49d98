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

* ``v4l2``: a webcam (``/dev/video0``, ``v4l2:///dev/video0?size=1280x720&fps=30``) with
  the ``rtsp`` reader's reconnect rules (:class:`gimefive.pipeline.v4l2.V4l2Reader`;
  capture itself is untested: no camera on the machines it was written on).

Another input plugs in as one more subclass and one more line in :data:`READERS`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gimefive.errors import GimefiveError
from gimefive.urls import redact_text, redact_url

log = logging.getLogger("gimefive.decode")

#: codecs FFmpeg's NVDEC (``cuda`` hwaccel) decodes; anything else is decoded on the CPU
NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg1video", "mpeg2video",
                          "mpeg4", "mjpeg", "vc1"})
DECODE_DEVICES = ("auto", "cpu", "cuda")

#: kind -> "module:class", imported only when used
READERS: dict[str, str] = {
    "file": "gimefive.pipeline.readers:FileReader",
    "rtsp": "gimefive.pipeline.live_source:RtspReader",
    "loop": "gimefive.pipeline.live_source:LoopReader",
    "v4l2": "gimefive.pipeline.v4l2:V4l2Reader",
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
    utc: float | None = None  # the camera's wall-clock time (RTCP), when it sent one


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
    """``auto``: a webcam (``/dev/video*``, ``v4l2://``) is ``v4l2``, a network URL
    ``rtsp``, anything else a ``file``."""
    from gimefive.pipeline.probe import is_live  # imports av: only when a stage runs

    if kind == "auto":
        return "v4l2" if is_v4l2(url) else "rtsp" if is_live(url) else "file"
    if kind not in READERS:
        raise GimefiveError(f"unknown reader {kind!r}; expected auto or one of {list(READERS)}")
    return kind


def is_v4l2(url: str) -> bool:
    """A V4L2 camera: ``/dev/videoN`` or ``v4l2://...``."""
    url = str(url)
    return url.lower().startswith("v4l2://") or url.startswith("/dev/video")


def open_reader(url: str, kind: str = "auto", stream_id: str = "0", options: Any = None,
                threads: int = 1, stop: threading.Event | None = None,
                decode_device: str = "cpu") -> InputReader:
    """The reader of ``kind`` for ``url`` (``options``: the live readers' LiveOptions;
    ``decode_device``: where a ``file`` is decoded, see :func:`open_decoder`)."""
    kind = reader_kind(url, kind)
    module, attr = READERS[kind].split(":")
    cls = getattr(importlib.import_module(module), attr)
    extra = {"decode_device": decode_device} if kind == "file" else {}
    return cls(url, stream_id, options, threads, stop, **extra)


class BgrConverter:
    """Decoded frames as BGR uint8 arrays: pixel for pixel ``frame.to_ndarray(format="bgr24")``,
    at about half its CPU.

    ``to_ndarray(format=...)`` gives every frame a new swscale context (set up, then freed
    with the frame) that starts a slice thread per core; one context kept for the reader,
    with ``threads`` fixed (the decoder's), converted the reference clip's 640x360 yuv420p
    frames in ~0.25 ms of CPU instead of ~0.5 ms (~0.3 ms of wall time instead of ~1 ms).
    swscale sets itself up again when a frame's size or pixel format changes (a camera
    reconnected at another resolution); any format FFmpeg converts works, as before.
    """

    def __init__(self, threads: int = 1) -> None:
        from av.video.reformatter import VideoReformatter

        self.reformatter = VideoReformatter()
        self.threads = max(1, threads)

    def __call__(self, frame: Any) -> np.ndarray:
        return self.reformatter.reformat(frame, format="bgr24", threads=self.threads
                                         ).to_ndarray()


class FileReader(InputReader):
    """A video file's first video stream, decoded as fast as it is taken, lossless."""

    def __init__(self, url: str, stream_id: str = "0", options: Any = None, threads: int = 1,
                 stop: threading.Event | None = None, decode_device: str = "cpu") -> None:
        super().__init__(url, stream_id, options, threads, stop)
        check_local_input(url)
        self.decode_device = decode_device
        self.container, self.decode_path = open_decoder(url, decode_device)
        self._setup_stream()
        self.decoded = 0

    def _setup_stream(self) -> None:
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = max(1, self.threads)
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
                "has_audio": bool(self.container.streams.audio), "decode": self.decode_path}

    def read(self) -> Iterator[Frame]:
        import time

        import av

        to_bgr = BgrConverter(self.threads)
        try:
            for frame in self._frames():
                if self.stop.is_set():
                    return
                yield Frame(self.decoded, frame.pts, to_bgr(frame), time.time())
                self.decoded += 1
        except av.error.FFmpegError as exc:
            raise GimefiveError(f"{redact_url(self.url)}: decoding failed ({reason(exc)})"
                                ) from None

    def _frames(self) -> Iterator[Any]:
        """Decoded frames; NVDEC failing on the first frame (``auto``) restarts on the CPU,
        with the reason logged, instead of failing the run."""
        import av

        frames = self.container.decode(self.stream)
        if not self.decode_path.startswith("cuda"):
            yield from frames
            return
        try:
            first = next(frames, None)
        except av.error.FFmpegError as exc:
            why = f"NVDEC could not decode the first frame: {reason(exc)}"
            if self.decode_device == "cuda":
                raise GimefiveError(f"decode_device=cuda: {why}") from None
            self.container.close()
            self.container, self.decode_path = _open_cpu(self.url, why)
            self._setup_stream()
            yield from self.container.decode(self.stream)
            return
        if first is not None:
            yield first
            yield from frames

    def stats(self) -> dict[str, Any]:
        return {"decoded": self.decoded}

    def close(self) -> None:
        self.container.close()


def open_decoder(url: str, device: str = "cpu") -> tuple[Any, str]:
    """The opened container and the decode path that will run, in words for the summary
    (``cuda (h264)``, ``cpu (no CUDA driver ...)``).

    ``cpu`` decodes on the CPU; ``cuda`` uses NVDEC (PyAV's ``cuda`` hwaccel, frames
    copied back to host memory) or fails with one line saying why; ``auto`` uses NVDEC
    where it works and otherwise the CPU, logging the one reason (never silently).
    Checked without a GPU only: the fallbacks and errors are tested (tests/test_decode_device.py);
    NVDEC actually decoding has not run yet (docs/performance.md).
    """
    if device not in DECODE_DEVICES:
        raise GimefiveError(f"decode_device: expected one of {DECODE_DEVICES}, got {device!r}")
    if device == "cpu":
        return _open_cpu(url, None)
    why = cuda_decode_unavailable()
    if why is None:
        container, why = _open_cuda(url)
        if container is not None:
            return container, f"cuda ({container.streams.video[0].codec_context.name})"
    if device == "cuda":
        raise GimefiveError(f"decode_device=cuda: {why}")
    return _open_cpu(url, why)


def cuda_decode_unavailable() -> str | None:
    """Why NVDEC cannot be used on this machine, or None when it may be (a cheap check:
    the FFmpeg build and the NVIDIA driver library; opening the device is the real test)."""
    import ctypes

    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        return "this FFmpeg build has no cuda hwaccel"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA device: NVIDIA driver library libcuda.so.1 not found"
    return None


def _open_cuda(url: str) -> tuple[Any, str | None]:
    """``(container, None)`` decoding with NVDEC, or ``(None, why)``."""
    import av
    from av.codec.hwaccel import HWAccel

    try:
        container = av.open(url, hwaccel=HWAccel("cuda", allow_software_fallback=False))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return None, f"cannot open the CUDA device: {reason(exc)}"
    if not container.streams.video:
        container.close()
        raise GimefiveError(f"{redact_url(url)}: no video stream")
    codec = container.streams.video[0].codec_context.name
    if codec not in NVDEC_CODECS:
        container.close()
        return None, f"NVDEC does not decode {codec}"
    return container, None


def _open_cpu(url: str, why: str | None) -> tuple[Any, str]:
    """The container decoding on the CPU; ``why`` (the reason NVDEC is not used) is logged
    once and kept for the summary."""
    import av

    try:
        container = av.open(url)
    except av.error.FFmpegError as exc:
        raise GimefiveError(f"cannot read {redact_url(url)} as a video ({reason(exc)})"
                            ) from None
    if not container.streams.video:
        container.close()
        raise GimefiveError(f"{redact_url(url)}: no video stream")
    if why:
        log.warning("decode: cpu (%s)", why)
    return container, f"cpu ({why})" if why else "cpu"


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
