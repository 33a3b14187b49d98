"""V4L2 webcams (``/dev/video0``, ``v4l2:///dev/video0?size=1280x720&fps=30``).

:class:`V4l2Reader` is an :class:`~gimefive.pipeline.live_source.RtspReader` whose
connection is FFmpeg's ``v4l2`` input device instead of a network stream, so a webcam
gets the same rules as a camera on the network: a stall watchdog, and capped-backoff
reconnects when it is unplugged and plugged back (the counters and outages are the same).
Query options: ``size=WxH`` (``video_size``), ``fps=N`` (``framerate``) and
``format=NAME`` (``input_format``, e.g. ``mjpeg``).

**Untested here:** no camera exists on the machines this was written on; URL parsing and
the error lines (missing device, not a device, bad query) are tested
(tests/test_camera_sources.py), capture and replugging are not.
"""

from __future__ import annotations

import errno
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import av
from gimefive.pipeline.live_source import LiveOptions, LiveSourceError, RtspReader
from gimefive.pipeline.readers import reason

from gimefive.errors import GimefiveError

#: query key -> FFmpeg v4l2 option
V4L2_OPTIONS = {"size": "video_size", "fps": "framerate", "format": "input_format"}


def parse_v4l2(url: str) -> tuple[str, dict[str, str]]:
    """``v4l2:///dev/video0?size=1280x720&fps=30`` (or ``/dev/video0``) -> the device
    and FFmpeg's options; a bad query is one line naming it."""
    url = str(url)
    if not url.lower().startswith("v4l2://"):
        return url, {}
    parts = urlsplit(url)
    device = (parts.netloc + parts.path) if parts.netloc else parts.path
    if not device.startswith("/"):
        raise GimefiveError(f"{url}: expected v4l2:///dev/videoN")
    options = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in V4L2_OPTIONS:
            raise GimefiveError(f"{url}: unknown option {key!r} (expected "
                                f"{', '.join(V4L2_OPTIONS)})")
        options[V4L2_OPTIONS[key]] = _check_value(url, key, value)
    return device, options


def _check_value(url: str, key: str, value: str) -> str:
    if key == "size":
        w, sep, h = value.partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise GimefiveError(f"{url}: size expected WIDTHxHEIGHT (e.g. 1280x720), "
                                f"got {value!r}")
    elif key == "fps":
        try:
            ok = float(value) > 0
        except ValueError:
            ok = False
        if not ok:
            raise GimefiveError(f"{url}: fps expected a number > 0, got {value!r}")
    elif not value.isidentifier():
        raise GimefiveError(f"{url}: format expected a pixel format name, got {value!r}")
    return value


def check_device(device: str) -> None:
    """One line for a device that is missing or is not a camera."""
    try:
        mode = Path(device).stat().st_mode
    except FileNotFoundError:
        raise GimefiveError(f"no such camera device {device}") from None
    except OSError as exc:
        raise GimefiveError(f"cannot use camera device {device} ({exc.strerror})") from None
    if not stat.S_ISCHR(mode):
        raise GimefiveError(f"{device} is not a camera device (not a character device)")


def open_error(device: str, exc: BaseException) -> str:
    """The one line for a camera device FFmpeg could not open."""
    code = getattr(exc, "errno", None)
    if code == errno.EBUSY:
        return f"camera device {device} is busy (Device or resource busy)"
    if code == errno.ENOENT:
        return f"no such camera device {device}"
    return f"cannot open camera device {device} ({reason(exc)})"


def probe_v4l2(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Check a webcam before a run starts: the URL, the device, and that FFmpeg can open
    it (then closed at once, for the stage to open); one line when it cannot."""
    device, options = parse_v4l2(url)
    check_device(device)
    try:
        container = av.open(device, format="v4l2", options=dict(options),
                            timeout=(timeout_s, timeout_s))
    except (av.error.FFmpegError, OSError) as exc:
        raise GimefiveError(open_error(device, exc)) from None
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        return {"url": url, "codec": ctx.name, "size": [ctx.width, ctx.height],
                "fps": float(rate) if rate else None}
    finally:
        container.close()


class V4l2Reader(RtspReader):
    """A V4L2 webcam, with :class:`RtspReader`'s watchdog and reconnect rules.

    A device missing when the run starts is one line at once; one busy (held by another
    program) at the first connection too; after frames came, a lost device (unplugged)
    is an outage, retried until it is back or the reconnect budget is spent.
    """

    def __init__(self, url: str, stream_id: str = "0", options: LiveOptions | None = None,
                 threads: int = 1, stop: threading.Event | None = None) -> None:
        super().__init__(url, stream_id, options, threads, stop)
        self.device, self.av_options = parse_v4l2(url)
        check_device(self.device)
        self._ever_connected = False

    def _open(self) -> Any:
        o = self.options
        try:
            container = av.open(self.device, format="v4l2", options=dict(self.av_options),
                                timeout=(o.open_timeout_s, max(0.25, o.stall_timeout_s / 2)))
        except (av.error.FFmpegError, OSError) as exc:
            if not self._ever_connected:  # never worked: say why once, do not retry
                raise LiveSourceError(open_error(self.device, exc)) from None
            raise
        self._ever_connected = True
        return container

    def info(self) -> dict[str, Any]:
        return {"stream": self.stream_id, "url": self.url, "device": self.device}
