"""Shared fixtures. Tests that need the real dataset skip, with the reason, where it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from procs import descendants

from gimefive.dataset import WHERE, find_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fer_data() -> Path:
    """The FER dataset, found as the package finds it; tests that need it skip without."""
    root = find_dataset()
    if root is None:
        pytest.skip(f"real dataset not found ({WHERE})")
    return root


# ----------------------------------------------------------------------------- tiers
# Two tiers: `python -m pytest -q -m "not integration"` is the fast one; CI runs both.
# `integration` = starts processes or servers, or reads the dataset. A test gets it from
# its module's `pytestmark` or its own mark, and automatically here when it is `slow`
# (end to end) or uses one of these fixtures, directly or through another fixture: the
# dataset, and the RTSP test servers of the files that start them. A new test that uses
# them lands in the right tier without anyone remembering; one that starts a process
# some other way is marked by hand.
INTEGRATION_FIXTURES = frozenset({"fer_data", "server", "rtsp_server", "door_server",
                                  "small_camera",
                                  "camera"})


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """A real 512x512 photo with exactly one face (scikit-image ships it offline)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """Random-init GiMeFive weights (seed 0): for runs that check the plumbing, not the
    accuracy. A test module may override it (e.g. with its own uncertain threshold)."""
    import torch

    from gimefive.checkpoint import save_weights
    from gimefive.model import GiMeFive

    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp("w") / "random.safetensors", GiMeFive().eval())


@pytest.fixture()
def small_camera():
    """A real RTSP camera (GStreamer test server, 160x120 at 10 fps, path ``/cam``) on a
    free loopback port; the test is skipped, with the reason, where it cannot run."""
    from rtsp_server import RtspServer, skip_without_server

    skip_without_server()
    server = RtspServer(path="cam", width=160, height=120, fps=10).start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- hygiene
# A test that leaves a stage, server or encoder process running slows down or hangs every
# test after it (2 cores). After each test, any descendant process started during it and
# still alive is killed and named in a warning, so the culprit shows up in the summary
# instead of a CI timeout. Processes of module- and session-scoped fixtures (set up before
# this function-scoped fixture) are left alone.
# Also spared: the RTSP test servers, which module-scoped fixtures may start lazily inside
# a test (request.getfixturevalue) and which their fixtures always stop.
_KEEP = ("resource_tracker", "forkserver", "rtsp_server.py", "rtsp-server-perl")


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    import os
    import signal
    import warnings

    if not Path("/proc/self/stat").exists():
        yield
        return
    before = set(descendants(os.getpid()))
    yield
    leftovers = [(pid, " ".join(argv)) for pid, argv in descendants(os.getpid()).items()
                 if pid not in before and not any(k in " ".join(argv) for k in _KEEP)]
    for pid, _ in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if leftovers:
        warnings.warn(f"test left {len(leftovers)} process(es) running, killed: "
                      + "; ".join(f"{pid} {cmd[:120]}" for pid, cmd in leftovers), stacklevel=1)
