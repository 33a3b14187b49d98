"""Wall-clock (UTC) time of live frames: from the camera when it says, else arrival.

An RTSP server sends RTCP sender reports that pair its RTP timestamps with its own NTP
(wall) clock. FFmpeg turns the first one into ``AVFormatContext.start_time_realtime``
(microseconds since the epoch at stream time 0), which PyAV (18.x) exposes as
``container.start_time_realtime`` (``None`` until a report came: with GStreamer's server
about 2 s after connecting). A frame's camera time is then
``start_time_realtime / 1e6 + frame.time``, ``utc_source`` ``"rtcp"``. Before that, and
for inputs without RTCP (a file played as a camera, a webcam), the time the frame was
decoded is used, ``utc_source`` ``"arrival"``. Files keep their pts and get no UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: what a live frame's UTC time came from
UTC_SOURCES = ("rtcp", "arrival")


def camera_utc(container: Any, frame: Any) -> float | None:
    """The camera's wall-clock time of ``frame`` (seconds since the epoch) from its RTCP
    sender reports, or None when the stream gave none (yet)."""
    start = getattr(container, "start_time_realtime", None)
    t = getattr(frame, "time", None)
    if not start or start <= 0 or t is None:
        return None
    return start / 1e6 + float(t)


def utc_iso(t: float) -> str:
    """``2026-12-01T13:20:00.123Z``: UTC, millisecond precision."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utc_fields(extra: dict[str, Any]) -> dict[str, Any]:
    """The ``utc``/``utc_source`` fields of a record from a frame's ``extra`` (a live
    source puts them there), or nothing (a file)."""
    t, source = extra.get("utc"), extra.get("utc_source")
    if not isinstance(t, (int, float)) or source not in UTC_SOURCES:
        return {}
    return {"utc": utc_iso(float(t)), "utc_source": source}
