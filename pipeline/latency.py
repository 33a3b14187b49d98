"""Latency percentiles in constant memory, for stages that run for days.

Keeping every latency and sorting them again for each report costs memory and CPU that
grow with the run (a million frames: 8 MB of floats and ~0.1 s per recomputation).
:class:`LatencyHistogram` counts values in fixed log-scale bins instead: adding is O(1),
a percentile is one pass over the bins, and memory is the same after a minute or a month.

Error: bins are ``GROWTH`` (2 %) wide relative to their value and a percentile is the
geometric middle of its bin, so a percentile within ``[LOW_S, HIGH_S]`` is within 1 %
of the exact (nearest-rank) one. Values outside that range (a negative latency from a
clock step, or more than an hour) land in two edge bins; the exact minimum and maximum
are kept, and a percentile never lies outside them.
"""

from __future__ import annotations

import bisect
import itertools
import math

LOW_S = 1e-5      # 10 us: the smallest latency told apart
HIGH_S = 3600.0   # an hour: the largest
GROWTH = 1.02     # each bin's upper edge is 2 % above its lower edge
#: the largest relative error of a percentile inside [LOW_S, HIGH_S]
RELATIVE_ERROR = math.sqrt(GROWTH) - 1


class LatencyHistogram:
    """Counts of latencies (seconds) in log-scale bins, plus exact count, sum, min, max."""

    def __init__(self) -> None:
        self._scale = 1 / math.log(GROWTH)
        inner = math.ceil(math.log(HIGH_S / LOW_S) * self._scale)
        self.counts = [0] * (inner + 2)  # [below LOW_S, inner bins ..., from HIGH_S up]
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, seconds: float) -> None:
        """Count one latency; O(1) (called once per frame)."""
        value = float(seconds)
        if math.isnan(value):
            return  # no place in the order: a NaN latency is not counted
        if value < LOW_S:
            index = 0
        elif value >= HIGH_S:
            index = len(self.counts) - 1
        else:
            index = 1 + min(len(self.counts) - 3, int(math.log(value / LOW_S) * self._scale))
        self.counts[index] += 1
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def _middle(self, index: int) -> float:
        if index == 0:
            return self.min
        if index == len(self.counts) - 1:
            return self.max
        return LOW_S * GROWTH ** (index - 0.5)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100, nearest rank), or None before any value."""
        return self.percentiles((q,))[q]

    def percentiles(self, qs: tuple[float, ...]) -> dict[float, float | None]:
        """Several percentiles from one pass over the bins."""
        if self.count == 0:
            return {q: None for q in qs}
        cumulative = list(itertools.accumulate(self.counts))
        out = {}
        for q in qs:
            rank = max(1, math.ceil(q / 100 * self.count))
            index = bisect.bisect_left(cumulative, rank)
            out[q] = min(self.max, max(self.min, self._middle(index)))
        return out

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None
