"""Removing the private folders of runs that died: only ours, only when the owner is gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gimefive.pipeline.private_dir import OWNER_FILE, mark_owner, remove_stale


def folder(parent, name, owner: int | None, mode=0o700):
    path = parent / name
    path.mkdir(mode=mode)
    os.chmod(path, mode)
    if owner is not None:
        (path / OWNER_FILE).write_text(f"{owner}\n")
    return path


@pytest.mark.integration
def test_only_our_folders_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = int(dead.stdout)
    stale = folder(tmp_path, "gimefive-abcd_123", gone)
    alive = tmp_path / "gimefive-live0000"
    alive.mkdir(mode=0o700)
    mark_owner(alive)                                          # this process: running
    others = [folder(tmp_path, "gimefive-open0000", gone, mode=0o755),  # not private
              folder(tmp_path, "gimefive-noowner0", None),              # no owner file
              folder(tmp_path, "gimefive-monitor-abcd1234", gone),      # another kind
              folder(tmp_path, "other-abcd1234", gone)]                 # not ours by name
    assert remove_stale("gimefive-", tmp_path) == [stale]
    assert not stale.exists() and alive.is_dir() and all(p.is_dir() for p in others)
    assert remove_stale("gimefive-monitor-", tmp_path) == [others[2]]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_reused_pid_is_not_the_owner(tmp_path):
    path = folder(tmp_path, "gimefive-reused00", None)
    (path / OWNER_FILE).write_text(f"{os.getpid()} 1\n")  # our pid, another start time
    assert remove_stale("gimefive-", tmp_path) == [path]
