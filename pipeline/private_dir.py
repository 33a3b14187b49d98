"""Who owns a private run folder, and removing the folders of runs that died.

A run killed by SIGKILL cannot remove its private 0700 folder of ``ipc://`` sockets and
stage logs. So each folder holds an ``owner.pid`` file (the run's pid and, on Linux, the
process start time, so a reused pid is not mistaken for the owner), and the next run
removes every folder of its kind whose owner is gone. Only folders that are ours by name
pattern (``PREFIX`` + mkdtemp's 8 characters), by owner (this uid), by mode (0700) and by
owner file are touched; anything else is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

OWNER_FILE = "owner.pid"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is absent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def mark_owner(directory: Path) -> None:
    """Record this process as the owner of ``directory``."""
    pid = os.getpid()
    (directory / OWNER_FILE).write_text(f"{pid} {_start_time(pid)}\n")


def owner_alive(directory: Path) -> bool:
    """False only when the owner file names a process that is certainly gone."""
    try:
        fields = (directory / OWNER_FILE).read_text().split()
        pid, started = int(fields[0]), fields[1] if len(fields) > 1 else ""
    except (OSError, ValueError, IndexError):
        return True  # no or unreadable owner file: not provably stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's: compare start times below
    now = _start_time(pid)
    return not (started and now and now != started)  # a reused pid is not the owner


def _ours(path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and stat.S_IMODE(st.st_mode) == 0o700)


def remove_stale(prefix: str, parent: str | Path | None = None) -> list[Path]:
    """Remove the ``prefix*`` folders in ``parent`` (the temporary folder) left by dead
    runs; returns what was removed."""
    parent = Path(parent or tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + r"[A-Za-z0-9_]{8}")
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return removed
    for path in candidates:
        if _ours(path) and (path / OWNER_FILE).is_file() and not owner_alive(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
