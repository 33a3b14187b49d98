"""`gimefive monitor` when a camera is given up (``--max-reconnects N``), end to end.

A real RTSP server (tests/rtsp_server.py) feeds the whole monitor (every stage a process,
random-init weights); the server is then stopped for good. The camera must say once that
it gave up, show ``ended`` in the status JSON and, when it was the last camera, end the
run non-zero with one line, within a bounded time. While the camera is still trying, the
status records must keep moving (fps 0, the outage growing), not repeat the last counts.
With a second camera (a looping file) the run goes on after the first is given up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from clips import write_still_clip
from waiting import wait_until

pytestmark = pytest.mark.slow
GAVE_UP = "camera door gave up after"


class MonitorRun:
    """A ``gimefive monitor`` subprocess with its stderr collected line by line."""

    def __init__(self, tmp_path: Path, weights_path: Path, *args: str) -> None:
        self.jsonl = tmp_path / "faces.jsonl"
        self.status_path = tmp_path / "faces.status.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gimefive.cli import main; main()", "monitor", *args,
             "--json", str(self.jsonl), "--weights", str(weights_path), "--backend", "torch",
             "--no-cam", "--status-every", "1", "--stall-timeout", "2",
             "--log-dir", str(tmp_path / "logs")], stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr),
                                       daemon=True)
        self.reader.start()

    def records(self, stream: str) -> int:
        if not self.jsonl.exists():
            return 0
        return sum(1 for line in self.jsonl.read_text().splitlines()
                   if line.endswith("}") and json.loads(line)["stream"] == stream)

    def status(self) -> list[dict]:
        if not self.status_path.exists():
            return []
        return [json.loads(line) for line in self.status_path.read_text().splitlines()
                if line.endswith("}")]

    def wait_for(self, condition, seconds: float, what: str):
        """``condition``'s value once truthy; fails with the stderr's tail if the run ends
        first or ``seconds`` pass."""
        return wait_until(condition, seconds, what, 0.3,
                          alive=lambda: self.proc.poll() is None, context=self.tail)

    def tail(self) -> str:
        return "".join(self.stderr[-25:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.reader.join(5)


@pytest.fixture()
def door_server(small_camera):
    return small_camera  # the camera is named door on the command line


def test_last_camera_given_up_ends_the_run(tmp_path, weights, door_server):
    run = MonitorRun(tmp_path, weights, "-s", f"door={door_server.url}",
                     "--max-reconnects", "6")
    try:
        run.wait_for(lambda: run.records("door") >= 5, 240, "5 door records")
        door_server.stop()                     # the camera is gone for good
        try:
            rc = run.proc.wait(60)             # 6 backoffs (~5 s) + the ordered stop
        except subprocess.TimeoutExpired:
            rc = None
    finally:
        run.stop()
    assert rc is not None, f"the monitor did not end after the camera was gone\n{run.tail()}"
    assert rc != 0, run.tail()
    lines = [line.rstrip("\n") for line in run.stderr]
    gave_up = [line for line in lines[:-1] if GAVE_UP in line]
    assert len(gave_up) == 1, run.tail()  # said once, when it happened ...
    assert gave_up[0].endswith("gimefive.monitor: camera door gave up after 6 reconnect "
                               "attempt(s): Connection refused")
    # ... and the run's own last line says why it ended
    assert lines[-1] == "gimefive: error: no camera left: camera door gave up after 6 " \
                        "reconnect attempt(s): Connection refused"
    assert "Traceback" not in "".join(lines)
    status = run.status()
    assert status[-1]["kind"] == "final" and status[-1]["streams"]["door"]["ended"] is True
    # during the outage the records kept moving: fps 0 and the outage growing
    down = [r["streams"]["door"] for r in status if r["kind"] == "status"
            and r["streams"]["door"]["outage_s"] is not None
            and not r["streams"]["door"]["ended"]]
    assert len(down) >= 2, [r["streams"]["door"] for r in status]
    assert all(s["fps_in"] == 0 for s in down[1:]), down
    assert down[-1]["outage_s"] > down[0]["outage_s"], down
    # frames in flight at the outage's start may still be written, then nothing: no
    # latency shown for an interval without a written frame (not the last one repeated)
    assert down[-1]["fps_out"] == 0, down
    assert all(s["latency_s"] is None for s in down if s["fps_out"] == 0), down
    # the frames written just before the outage are counted during it, not only at the end
    assert down[-1]["written"] == status[-1]["streams"]["door"]["written"], down
    assert down[-1]["in_flight"] == 0, down


def test_one_camera_given_up_the_other_goes_on(tmp_path, weights, door_server,
                                              astronaut_bgr):
    clip = tmp_path / "hall.mp4"  # the second camera: a file played at real time, looping
    write_still_clip(clip, astronaut_bgr, (128, 128), 10)
    run = MonitorRun(tmp_path, weights, "-s", f"door={door_server.url}", "-s", f"hall={clip}",
                     "--max-reconnects", "1")
    try:
        run.wait_for(lambda: run.records("door") >= 5 and run.records("hall") >= 5, 240,
                     "5 records of each camera")
        door_server.stop()
        run.wait_for(lambda: any(GAVE_UP in line for line in run.stderr), 60,
                     "the give-up line")

        def ended_seen() -> bool:
            return any(r["streams"]["door"]["ended"] for r in run.status())

        run.wait_for(ended_seen, 30, "door ended in the status")
        hall_then = run.records("hall")
        run.wait_for(lambda: run.records("hall") >= hall_then + 10, 60,
                     "10 more hall records")
        assert run.proc.poll() is None, run.tail()  # one camera left: the run goes on
        assert any("door [ENDED]" in line for line in run.stderr), run.tail()
    finally:
        rc = run.stop()
    assert rc == 0, run.tail()  # stopped by Ctrl-C: a normal end
    gave_up = [line for line in run.stderr if GAVE_UP in line]
    assert len(gave_up) == 1, run.tail()
    assert gave_up[0].rstrip().endswith("camera door gave up after 1 reconnect attempt(s): "
                                        "Connection refused")
    final = run.status()[-1]
    assert final["kind"] == "final"
    assert final["streams"]["door"]["ended"] is True
    assert final["streams"]["hall"]["ended"] is False
