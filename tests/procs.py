"""Child processes of a pid, read from /proc (Linux): for tests that find or reap stages."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper (one re-parented to init counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False  # ended
    return state != "Z"


def child_processes(parent: int) -> dict[int, list[str]]:
    """Live (non-zombie) direct children of ``parent``: pid -> argv."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue  # the process ended while we looked
        if int(ppid) == parent and state != "Z":
            found[int(entry.name)] = [a for a in argv if a]
    return found


def descendants(root: int) -> dict[int, list[str]]:
    """Children, grandchildren, ... of ``root``: pid -> argv."""
    found: dict[int, list[str]] = {}
    stack = [root]
    while stack:
        children = child_processes(stack.pop())
        found.update(children)
        stack.extend(children)
    return found
