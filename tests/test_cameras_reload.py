"""``gimefive monitor --cameras FILE`` changed while running, end to end.

The whole monitor runs (every stage a process, random-init weights) on looping file
cameras. The file first lists a and b; it is then rewritten to b and c (and SIGHUP is
sent too). c's records must appear, a's stop with its segment list finalised (PyAV reads
every segment), and b go on throughout. A bad edit afterwards keeps the cameras.
"""

from __future__ import annotations

import signal

import av
import pytest
from clips import write_still_clip
from test_monitor_give_up import MonitorRun

pytestmark = pytest.mark.slow


def cameras_yaml(path, clips: dict[str, str]) -> None:
    path.write_text("".join(f"- id: {sid}\n  url: {url}\n  max_reconnects: 3\n"
                            for sid, url in clips.items()))


def frames_in(playlist) -> int:
    with av.open(str(playlist), format="concat", options={"safe": "0"}) as container:
        return sum(1 for _ in container.decode(video=0))


def test_camera_added_and_removed_while_running(tmp_path, weights, astronaut_bgr, capsys):
    clips = {}
    for sid in "abc":
        clips[sid] = str(write_still_clip(tmp_path / f"{sid}.mp4", astronaut_bgr,
                                          (128, 128), 10))
    cameras = tmp_path / "cameras.yaml"
    cameras_yaml(cameras, {"a": clips["a"], "b": clips["b"]})
    (tmp_path / "out").mkdir()
    run = MonitorRun(tmp_path, weights, "--cameras", str(cameras),
                     "-o", str(tmp_path / "out" / "cams.mp4"), "--segment", "2")
    try:
        run.wait_for(lambda: run.records("a") >= 10 and run.records("b") >= 10, 240,
                     "10 records of a and b")
        before = {sid: run.records(sid) for sid in "abc"}
        cameras_yaml(cameras, {"b": clips["b"], "c": clips["c"]})
        run.proc.send_signal(signal.SIGHUP)  # the edit alone would do; both are fine
        run.wait_for(lambda: run.records("c") >= 10, 120, "10 records of c")
        a_stopped = run.records("a")
        b_then = run.records("b")
        run.wait_for(lambda: run.records("b") >= b_then + 10 and run.records("c") >= 20, 120,
                     "b going on, c too")
        assert run.records("a") == a_stopped  # a's records stopped
        playlist = tmp_path / "out" / "cams-a.ffconcat"
        a_frames = frames_in(playlist)  # finalised: every listed segment decodes
        assert a_frames >= 10
        # a bad edit: one line, the cameras stay
        cameras.write_text("- {id: b, url: x.mp4, colour: red}\n")
        run.wait_for(lambda: any("keeping the current 2 camera(s)" in line
                                 for line in run.stderr), 30, "the bad-file line")
        b_then, c_then = run.records("b"), run.records("c")
        run.wait_for(lambda: run.records("b") >= b_then + 5 and run.records("c") >= c_then + 5,
                     60, "b and c still going")
        after = {sid: run.records(sid) for sid in "abc"}
    finally:
        rc = run.stop()
    assert rc == 0, run.tail()
    assert "Traceback" not in "".join(run.stderr), run.tail()
    bad = [line for line in run.stderr if "keeping the current" in line]
    assert len(bad) == 1 and "camera 'b': unknown key(s) ['colour']" in bad[0], bad
    assert frames_in(tmp_path / "out" / "cams-b.ffconcat") >= after["b"] - 30
    assert frames_in(tmp_path / "out" / "cams-c.ffconcat") >= 10
    with capsys.disabled():
        print(f"\nrecords per camera before the change {before}, at the end {after}; "
              f"a's list: {a_frames} frames")
