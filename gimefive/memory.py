"""Resident memory of a process, the one reader for stage reports, status files and benches.

In the core package (not under ``pipeline``) because the paper baseline, which runs in its
own venv with only ``gimefive`` on its path, reports its peak the same way.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A ``kB`` line of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in MB; None where the
    process is gone or the system has no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    """Another process's resident memory now, MB to one decimal (None when gone)."""
    value = status_mb("VmRSS", pid)
    return None if value is None else round(value, 1)


def peak_rss_mb() -> float:
    """This process's own peak resident memory.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` keeps the parent's peak across fork and exec
    on Linux, so every stage (and the bench's baseline) would report its parent's;
    ``VmHWM`` belongs to the process's current address space alone.
    """
    value = status_mb("VmHWM")
    if value is not None:
        return value
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def cpu_seconds(pid: int) -> float | None:
    """Another process's CPU time so far (user + system), seconds; None when gone.

    Read from ``/proc/PID/stat`` (fields 14 and 15, in clock ticks): the monitor's
    metrics report it per stage without asking the stage.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def process_age_s() -> float | None:
    """Seconds since this process started (its exec, not the interpreter's first line),
    to the kernel's clock tick (10 ms); None where the system has no /proc.

    ``/proc/self/stat`` field 22 (start time) counts on the boot clock, which
    ``CLOCK_BOOTTIME`` reads (``/proc/uptime`` may be a container's own), so a stage can
    say how long it took from spawn to ready by itself.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return age if age >= 0 else None
