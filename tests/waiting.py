"""The one way tests wait for something another thread or process makes true.

A fixed sleep is either too short on a loaded machine (a flaky test) or too long on an
idle one (a slow suite); :func:`wait_until` polls a condition instead, up to a generous
limit, and when it fails it says what it waited for and what it saw last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str,
               interval_s: float = 0.05, *, until: Callable[[T], object] = bool,
               alive: Callable[[], bool] | None = None,
               context: Callable[[], object] | None = None) -> T:
    """Call ``condition`` every ``interval_s`` until its value passes ``until`` (by default:
    is truthy); return that value.

    Fails the test (AssertionError) naming ``what`` and the last value seen once
    ``timeout_s`` has passed, or as soon as ``alive()`` is false: the process that was to
    make the condition true has ended, so waiting longer cannot help. ``until`` lets the
    condition return what it observed (a count, the processes still running), so that a
    failure shows it. ``context()``, when given, is added to the failure (for example the
    tail of that process's stderr).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if until(value):
            return value
        if alive is not None and not alive():
            value = condition()  # what it did just before it ended still counts
            if until(value):
                return value
            reason = "it ended first"
            break
        if time.monotonic() >= deadline:
            reason = f"timed out after {timeout_s:g} s"
            break
        time.sleep(interval_s)
    message = f"waiting for {what}: {reason}; last value {value!r}"
    if context is not None:
        message += f"\n{context()}"
    raise AssertionError(message)
