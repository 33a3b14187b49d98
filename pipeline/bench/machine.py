"""The machine a measurement ran on, recorded once for every benchmark's report.

A number is only comparable with the CPU, core count, library versions and load it was
measured under, so every bench writes the same record (one copy of how to read it).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

#: the checkout root when run from one (for the commit in the report; from a wheel, git
#: finds no repository there and the commit is reported as None)
REPO = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the whole machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: other work competing for the CPU."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``'s first line, in ticks), None where
    there is no /proc (not Linux)."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of the CPU time between two :func:`cpu_times` that the hypervisor gave to
    other guests (steal, the 8th counter): on a shared virtual machine the same run can
    be a third slower when it is high, so a live figure is read with it."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(spent)
    return round(spent[7] / total, 4) if total > 0 else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS, library versions, commit and the load at the start."""
    import av
    import cv2
    import numpy
    import onnxruntime
    import torch
    import zmq

    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or None
    except OSError:  # no git on this machine
        commit = None
    return {"cpu": cpu_name(), "cores": usable_cores(),
            "memory_gib": round(mem_gib, 1) if mem_gib else None,
            "os": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "av": av.__version__,
            "opencv": cv2.__version__, "numpy": numpy.__version__, "pyzmq": zmq.__version__,
            "gimefive_commit": commit, "load_average_at_start": load_average()}
