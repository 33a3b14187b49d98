"""Strictly increasing video timestamps from ones that repeat, go back or are missing.

Muxers refuse (EINVAL) or players mishandle a video stream whose timestamps do not
increase, and real inputs have them: edited or concatenated files, broken cameras, frames
without a pts. Every writer of frames (the file sink, the live segment writer and RTSP
push) and the source stage pass their timestamps through :class:`IncreasingPts`, which
moves a bad one just after the previous one and counts the repair; no frame is dropped.
"""

from __future__ import annotations

from fractions import Fraction


class IncreasingPts:
    """``clock(pts)`` returns ``pts`` when it is after the last one returned, else the last
    one plus ``step`` (also for ``None``; the first frame without pts gets 0).
    ``repaired`` counts the timestamps that were changed."""

    def __init__(self, step: int = 1) -> None:
        self.step = max(1, int(step))
        self.last: int | None = None
        self.repaired = 0

    def __call__(self, pts: int | None) -> int:
        if pts is None or (self.last is not None and pts <= self.last):
            pts = 0 if self.last is None else self.last + self.step
            self.repaired += 1
        self.last = int(pts)
        return self.last


def frame_step(rate: list | tuple | None, time_base: list | tuple) -> int:
    """One frame's duration in ``time_base`` units (at least 1; 1 when the rate is unknown)."""
    if not rate or not rate[0] or not time_base[0]:
        return 1
    return max(1, round(1 / (Fraction(*rate) * Fraction(*time_base))))
