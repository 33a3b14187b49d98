"""``gimefive monitor --cameras FILE``: parsing and checking the file, and what an edit
changes (added / removed / changed cameras); the live sink finalising a removed camera's
segments. Fast: no process is started (the end-to-end run is tests/test_cameras_reload.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import av
import numpy as np
import pytest
from gimefive.pipeline.cameras_file import (
    Camera,
    CameraReloader,
    diff_cameras,
    load_cameras,
)
from gimefive.pipeline.segments import SegmentsSink

from gimefive.errors import GimefiveError


def write(tmp_path, text: str):
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def test_cameras_with_their_own_settings(tmp_path):
    path = write(tmp_path, "- id: door\n  url: rtsp://10.0.0.5/live\n  max_reconnects: 20\n"
                           "  transport: udp\n- {id: hall, url: hall.mp4}\n")
    cameras = load_cameras(path)
    assert list(cameras) == ["door", "hall"]
    assert cameras["door"].url == "rtsp://10.0.0.5/live"
    assert cameras["door"].live_options() == {"max_reconnects": 20, "transport": "udp"}
    assert cameras["hall"].live_options() == {}
    # the same cameras under a "cameras:" key
    assert load_cameras(write(tmp_path, "cameras:\n  - {id: a, url: a.mp4}\n")) == \
        {"a": Camera("a", "a.mp4")}


@pytest.mark.parametrize("text, message", [
    ("- {id: door, url: rtsp://x/1, colour: red}",
     "camera 'door': unknown key(s) ['colour']; expected id, url and some of"),
    ("- {id: door, url: rtsp://x/1, max_reconnects: -5}",
     "camera 'door': camera option 'max_reconnects': expected >= -1, got -5"),
    ("- {id: door, url: rtsp://x/1, transport: http}",
     "camera 'door': camera option 'transport': expected one of tcp, udp, got 'http'"),
    ("- {id: door, url: rtsp://x/1, stall_timeout_s: soon}",
     "camera 'door': config key 'stall_timeout_s': expected float, got 'soon'"),
    ("- {id: door}", "camera 'door': key 'url' is required (a string)"),
    ("- {url: rtsp://x/1}", "camera '#1': key 'id' is required (a string)"),
    ("- {id: 'bad id/..', url: rtsp://x/1}",
     "camera #1: id 'bad id/..': use 1 to 64 letters, digits, - and _"),
    ("- {id: a, url: a.mp4}\n- {id: a, url: b.mp4}", "camera 'a': id given twice"),
    ("- just-a-string", "camera #1: expected a mapping with id and url"),
    ("[]", "no camera listed"),
    ("door: rtsp://x/1", "expected a list of cameras"),
    ("- {id: [", "not valid YAML"),
])
def test_bad_file_is_one_line_naming_camera_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(GimefiveError) as err:
        load_cameras(path)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"cameras file {path}: ")
    assert message in line, line


def test_missing_file(tmp_path):
    with pytest.raises(GimefiveError, match=r"cameras file .*nope.yaml: cannot read it"):
        load_cameras(tmp_path / "nope.yaml")


def test_diff_added_removed_changed():
    old = {"a": Camera("a", "a.mp4"), "b": Camera("b", "b.mp4"),
           "d": Camera("d", "d.mp4", (("max_reconnects", 3),))}
    new = {"b": Camera("b", "b.mp4"), "c": Camera("c", "c.mp4"),
           "d": Camera("d", "d.mp4", (("max_reconnects", 4),))}
    assert diff_cameras(old, new) == (["c"], ["a"], ["d"])
    assert diff_cameras(old, old) == ([], [], [])
    moved = {**old, "a": Camera("a", "elsewhere.mp4")}  # a new URL: remove + add
    assert diff_cameras(old, moved) == ([], [], ["a"])


class FakeMonitor:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_camera(self, sid, url, options):
        self.calls.append(("add", sid, url, options))

    def remove_camera(self, sid):
        self.calls.append(("remove", sid))


def test_reloader_applies_edits_and_keeps_cameras_on_a_bad_file(tmp_path, caplog):
    path = write(tmp_path, "- {id: a, url: a.mp4}\n- {id: b, url: b.mp4}\n")
    monitor = FakeMonitor()
    reloader = CameraReloader(monitor, path, load_cameras(path))
    try:
        reloader.poll()
        assert monitor.calls == []  # unchanged file: nothing to do
        write(tmp_path, "- {id: b, url: b.mp4}\n- {id: c, url: c.mp4, max_reconnects: 2}\n"
                        "# longer: a new size\n")
        reloader.poll()
        assert monitor.calls == [("remove", "a"), ("add", "c", "c.mp4", {"max_reconnects": 2})]
        assert list(reloader.cameras) == ["b", "c"]
        monitor.calls.clear()
        write(tmp_path, "- {id: b, url: b.mp4, colour: red}\n")
        reloader.poll()
        assert monitor.calls == []  # a bad edit keeps the current cameras ...
        assert list(reloader.cameras) == ["b", "c"]
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "unknown key(s) ['colour']" in errors[0]  # ... one line
        assert errors[0].endswith("keeping the current 2 camera(s)")
        reloader.hup = True  # SIGHUP: the file is read again even if unchanged
        write(tmp_path, "- {id: b, url: other.mp4}\n- {id: c, url: c.mp4, max_reconnects: 2}\n")
        reloader.poll()
        assert monitor.calls == [("remove", "b"), ("add", "b", "other.mp4", {})]
    finally:
        reloader.close()


def test_sink_finalises_a_removed_cameras_segments(tmp_path):
    """A stream's end-of-stream closes that camera's segment and list; others go on."""
    sink = SegmentsSink(str(tmp_path / "cams.mp4"), streams=["a", "b"], segment_s=10.0)
    image = np.zeros((64, 64, 3), np.uint8)
    for i in range(10):
        for stream in ("a", "b"):
            sink.write(SimpleNamespace(stream=stream, rate=(10, 1), pts_seconds=i / 10), image)
    sink.end_stream("a")
    assert list(sink.outputs) == ["b"]
    with av.open(str(tmp_path / "cams-a.ffconcat"), format="concat",
                 options={"safe": "0"}) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
    sink.write(SimpleNamespace(stream="c", rate=(10, 1), pts_seconds=0.0), image)
    assert sink.outputs["c"].base.name == "cams-c.mp4"  # a camera added later: its own name
    sink.close()
