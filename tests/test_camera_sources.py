"""Issue 17 items 4-6: wall-clock time on live records, V4L2 webcams, credentials from
the environment.

No camera exists on these machines: the V4L2 tests cover URL parsing and the error
paths (missing device, bad query), never capture itself. The slow tests run the whole
monitor against the GStreamer RTSP test server (tests/rtsp_server.py).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest
from gimefive.pipeline.readers import open_reader, reader_kind
from gimefive.pipeline.v4l2 import parse_v4l2
from gimefive.pipeline.wallclock import utc_iso
from rtsp_server import RtspServer, skip_without_server
from test_secrets import Run, assert_nothing_leaks, run_cli, wait_for_lines

from gimefive.errors import GimefiveError
from gimefive.urls import check_env, expand_env

ENV_SECRET = "S3cretEnv"


# ------------------------------------------------------------------ credentials (6)
def test_expand_env_replaces_braced_variables(monkeypatch):
    monkeypatch.setenv("CAM_USER", "admin")
    monkeypatch.setenv("CAM_PASS", "p@ss:wd")
    url = "rtsp://${CAM_USER}:${CAM_PASS}@10.0.0.5/live"
    assert expand_env(url) == "rtsp://admin:p@ss:wd@10.0.0.5/live"
    assert expand_env("rtsp://host/$notbraced") == "rtsp://host/$notbraced"
    assert expand_env("/videos/a.mp4") == "/videos/a.mp4"


def test_unset_variable_is_one_line_naming_it(monkeypatch):
    monkeypatch.delenv("CAM_NOPE", raising=False)
    with pytest.raises(GimefiveError) as info:
        expand_env("rtsp://u:${CAM_NOPE}@host/x")
    assert str(info.value) == ("environment variable CAM_NOPE is not set "
                               "(used in source rtsp://u:***@host/x)")
    with pytest.raises(GimefiveError, match="CAM_NOPE is not set"):
        check_env("rtsp://u:${CAM_NOPE}@host/x")


def test_monitor_unset_variable_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("CAM_NOPE", raising=False)
    code, err = run_cli(capsys, "monitor", "rtsp://u:${CAM_NOPE}@127.0.0.1:9/x",
                        "--json", tmp_path / "f.jsonl")
    assert code != 0
    assert err == ("gimefive: error: environment variable CAM_NOPE is not set "
                   "(used in source rtsp://u:***@127.0.0.1:9/x)\n")


# ------------------------------------------------------------------------ webcams (5)
@pytest.mark.parametrize("url, device, options", [
    ("/dev/video0", "/dev/video0", {}),
    ("v4l2:///dev/video0", "/dev/video0", {}),
    ("v4l2:///dev/video2?size=1280x720&fps=30", "/dev/video2",
     {"video_size": "1280x720", "framerate": "30"}),
    ("v4l2:///dev/video0?fps=29.97&format=mjpeg", "/dev/video0",
     {"framerate": "29.97", "input_format": "mjpeg"}),
])
def test_parse_v4l2(url, device, options):
    assert parse_v4l2(url) == (device, options)
    assert reader_kind(url) == "v4l2"


@pytest.mark.parametrize("url, line", [
    ("v4l2:///dev/video0?size=abc", "v4l2:///dev/video0?size=abc: size expected WIDTHxHEIGHT "
                                    "(e.g. 1280x720), got 'abc'"),
    ("v4l2:///dev/video0?fps=0", "v4l2:///dev/video0?fps=0: fps expected a number > 0, got '0'"),
    ("v4l2:///dev/video0?zoom=2", "v4l2:///dev/video0?zoom=2: unknown option 'zoom' "
                                  "(expected size, fps, format)"),
    ("v4l2://", "v4l2://: expected v4l2:///dev/videoN"),
])
def test_bad_v4l2_url_is_one_line(url, line):
    with pytest.raises(GimefiveError) as info:
        parse_v4l2(url)
    assert str(info.value) == line


def test_missing_camera_device_is_one_line(capsys, tmp_path):
    with pytest.raises(GimefiveError, match=r"^no such camera device /dev/video97$"):
        open_reader("/dev/video97")
    code, err = run_cli(capsys, "monitor", "/dev/video97", "--json", tmp_path / "f.jsonl")
    assert code != 0
    assert err == "gimefive: error: no such camera device /dev/video97\n"


def test_not_a_camera_device_is_one_line(tmp_path):
    fake = tmp_path / "video0"
    fake.write_text("x")
    with pytest.raises(GimefiveError, match="is not a camera device"):
        open_reader(f"v4l2://{fake}")


# ------------------------------------------------------------------ wall clock (4)
def test_utc_iso():
    assert utc_iso(0.123) == "1970-01-01T00:00:00.123Z"


def _utc(record: dict) -> float:
    return datetime.strptime(record["utc"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC).timestamp()


@pytest.mark.slow
def test_monitor_env_credentials_and_utc(tmp_path, weights, monkeypatch):
    """The password comes from the environment (``${CAM_PASS}`` in the config file) and
    appears nowhere; every JSON record has UTC time within seconds of now."""
    skip_without_server()
    run_dir, inputs = tmp_path / "run", tmp_path / "input"
    run_dir.mkdir()
    inputs.mkdir()
    monkeypatch.setenv("CAM_PASS", ENV_SECRET)
    with RtspServer(path="cam", width=160, height=120, fps=10) as server:
        config = inputs / "monitor.yaml"
        url = server.url.replace("rtsp://", "rtsp://user:${CAM_PASS}@", 1)
        config.write_text(json.dumps({"sources": [url]}))
        run = Run(["monitor", "--config", str(config), "--json", str(run_dir / "cam.jsonl"),
                   "--log-dir", str(run_dir / "logs"), "--weights", str(weights),
                   "--backend", "torch", "--no-cam", "--status-every", "1",
                   "--status-json", str(run_dir / "status.jsonl")])
        try:
            deadline = time.monotonic() + 240
            run.watch_stages({"source", "detect", "classify", "track", "annotate"}, deadline)
            wait_for_lines(run_dir / "cam.jsonl", 80, run, deadline)
        finally:
            rc = run.stop()
    assert rc == 0, run.text[-2000:]
    records = [json.loads(line) for line in (run_dir / "cam.jsonl").read_text().splitlines()]
    now = time.time()
    assert all(abs(now - _utc(r)) < 120 for r in records)
    sources = {r["utc_source"] for r in records}
    assert sources <= {"rtcp", "arrival"} and sources, sources
    print(f"\n{len(records)} records, utc_source: "
          f"{ {s: sum(r['utc_source'] == s for r in records) for s in sources} }")
    import test_secrets
    old, test_secrets.SECRET = test_secrets.SECRET, ENV_SECRET
    try:
        assert_nothing_leaks("monitor env", run, run_dir, {})
    finally:
        test_secrets.SECRET = old
    assert os.environ["CAM_PASS"] == ENV_SECRET


def test_source_stage_expands_env_where_it_opens(monkeypatch):
    """The stage, not the parent, expands ``${VAR}``: its reader opens the real URL,
    while what it reports keeps the password masked."""
    from gimefive.pipeline.config import AnnotateConfig
    from gimefive.pipeline.stages.source import SourceStage

    monkeypatch.setenv("CAM_PASS", ENV_SECRET)
    stage = SourceStage(AnnotateConfig(), input="rtsp://u:${CAM_PASS}@127.0.0.1:9/x",
                        reader="rtsp", stream="c")
    stage.setup()
    assert stage.reader.url == f"rtsp://u:{ENV_SECRET}@127.0.0.1:9/x"
    assert ENV_SECRET not in json.dumps(stage.info()) + json.dumps(stage.reader.stats())


def test_live_frames_carry_utc_files_none():
    """A live frame's record gets UTC (the camera's, else arrival); a file's none."""
    import numpy as np
    from gimefive.pipeline.readers import Frame
    from gimefive.pipeline.stages.source import live_utc
    from gimefive.pipeline.wallclock import utc_fields

    image = np.zeros((2, 2, 3), np.uint8)
    assert live_utc(Frame(0, 0, image, 100.0)) == {"utc": 100.0, "utc_source": "arrival"}
    assert live_utc(Frame(0, 0, image, 100.0, 90.5)) == {"utc": 90.5, "utc_source": "rtcp"}
    assert utc_fields({"utc": 90.5, "utc_source": "rtcp"}) == {
        "utc": "1970-01-01T00:01:30.500Z", "utc_source": "rtcp"}
    assert utc_fields({}) == {}


def test_device_that_cannot_capture_is_one_line(capsys, tmp_path):
    """/dev/null is a character device but no camera: FFmpeg's v4l2 open fails, and both
    the reader (first connection) and the monitor (before any stage) say so in one line."""
    from gimefive.pipeline.live_source import LiveSourceError

    line = "cannot open camera device /dev/null (Inappropriate ioctl for device)"
    with pytest.raises(LiveSourceError) as info:
        next(open_reader("v4l2:///dev/null?size=640x480").read())
    assert str(info.value) == line
    code, err = run_cli(capsys, "monitor", "v4l2:///dev/null", "--json", tmp_path / "f.jsonl")
    assert (code, err) == (2, f"gimefive: error: {line}\n")


def test_busy_device_line():
    import errno

    from gimefive.pipeline.v4l2 import open_error

    busy = OSError(errno.EBUSY, "Device or resource busy")
    assert open_error("/dev/video0", busy) == (
        "camera device /dev/video0 is busy (Device or resource busy)")
