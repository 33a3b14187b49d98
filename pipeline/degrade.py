"""A live run degrades before it drops (issue 13).

A camera cannot wait: when the pipeline falls behind, its source drops the oldest frames.
Before that happens, the source raises the work intervals a step at a time: first
Grad-CAM (the dearest per face), then classification, then detection; and lowers them
again, a step at a time, once it has kept up for a while. The source stamps the current
step on each frame (``extra["degrade"]``), so every stage applies the same step to the
same frame, and the status shows it. Files never degrade: they are lossless and
deterministic (the same input and settings give the same JSON).

"Behind" is the source's own view: its frame queue full (the next frame would drop
the oldest) or a frame dropped since the last look. A step up waits
:data:`RAISE_EVERY_S` after the last change, :data:`DROPPING_RAISE_EVERY_S` while frames
are being dropped. "Kept up": the queue empty for :data:`CALM_S` seconds, twice that
after a step down that had to be taken back (up to :data:`MAX_CALM_S`), halved again
after one that held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: per step, the multipliers of (detect_every, classify_every, cam_every)
LADDER: tuple[tuple[int, int, int], ...] = (
    (1, 1, 1), (1, 1, 2), (1, 2, 2), (1, 2, 4), (2, 2, 4), (2, 4, 8), (3, 4, 8), (4, 8, 8),
    (6, 8, 16), (8, 8, 16), (8, 16, 32), (12, 16, 32), (16, 16, 32))
#: the frame field that carries the step
KEY = "degrade"
#: at most one step up per this many seconds (a step needs time to show its effect)
RAISE_EVERY_S = 1.0
#: ... but this often while frames are being dropped: a camera that loses frames cannot
#: wait a second a step (3 reference streams on 2 cores climbed from step 0 for 14 s,
#: dropping all along, then kept up from step 9 on with an empty queue)
DROPPING_RAISE_EVERY_S = 0.25
#: a step down after the queue stayed empty this long
CALM_S = 10.0
#: ... at most this long: a step down that had to be taken back within the calm time
#: (the run was at its limit) doubles the calm the next one waits for; one that held for
#: the calm time halves it again. At its limit a run otherwise tried a lower step every
#: 10 s and dropped frames each time until it was back up (3 reference streams: 2.5-3%
#: dropped)
MAX_CALM_S = 80.0


def step_of(extra: dict[str, Any]) -> int:
    """The step a frame carries (0 where none, or where the value is not a valid step:
    a hostile or garbled message degrades nothing)."""
    value = extra.get(KEY, 0)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LADDER):
        return value
    return 0


def multipliers(extra: dict[str, Any]) -> tuple[int, int, int]:
    """(detect, classify, cam) interval multipliers for a frame's ``extra``."""
    return LADDER[step_of(extra)]


def intervals(config, step: int) -> dict[str, int]:
    """The intervals in force at ``step`` (for the status)."""
    d, c, m = LADDER[step]
    return {"detect_every": config.detect_every * d, "classify_every": config.classify_every * c,
            "cam_every": config.cam_every * m}


@dataclass
class Degrader:
    """The step of one live source, from its queue depth and drop count."""

    raise_every_s: float = RAISE_EVERY_S
    dropping_raise_every_s: float = DROPPING_RAISE_EVERY_S
    calm_s: float = CALM_S
    clock: Callable[[], float] = time.monotonic
    step: int = 0
    raises: int = 0  # steps up so far (the status shows how often it had to)

    def __post_init__(self) -> None:
        self.last_change = -float("inf")
        self.calm_since: float | None = None
        self.last_dropped = 0
        self.calm_needed = self.calm_s  # what the next step down waits for
        self.lowered_at: float | None = None  # the last step down, until it held a calm

    def update(self, depth: int, capacity: int, dropped: int) -> int:
        """Take a look at the queue (``dropped``: the total so far); the step to use."""
        now = self.clock()
        if self.lowered_at is not None and now - self.lowered_at >= self.calm_needed:
            self.calm_needed = max(self.calm_s, self.calm_needed / 2)  # the step down held
            self.lowered_at = None
        dropping = dropped > self.last_dropped
        behind = depth >= capacity or dropping
        self.last_dropped = dropped
        if behind:
            self.calm_since = None
            wait = self.dropping_raise_every_s if dropping else self.raise_every_s
            if self.step < len(LADDER) - 1 and now - self.last_change >= wait:
                self.step, self.last_change = self.step + 1, now
                self.raises += 1
                if self.lowered_at is not None:  # a step down taken back within the calm
                    self.calm_needed = min(2 * self.calm_needed, MAX_CALM_S)
                self.lowered_at = None
        elif depth == 0:
            if self.calm_since is None:
                self.calm_since = now
            elif self.step > 0 and now - self.calm_since >= self.calm_needed:
                self.step, self.last_change, self.calm_since = self.step - 1, now, now
                self.lowered_at = now
        else:
            self.calm_since = None
        return self.step
