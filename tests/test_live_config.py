"""Monitor configuration without running anything: sources, config files, naming, status."""

from __future__ import annotations

import pytest
from gimefive.pipeline.live_monitor import (
    MonitorConfig,
    format_status,
    load_monitor_config,
    parse_sources,
)
from gimefive.pipeline.segments import stream_output

from gimefive.errors import GimefiveError


def test_sources_get_ids_or_keep_given_ones():
    assert parse_sources(["rtsp://a/x", "door=rtsp://b/y", "clip.mp4"]) == {
        "cam0": "rtsp://a/x", "door": "rtsp://b/y", "cam2": "clip.mp4"}
    # an "=" inside the URL's query is not an id
    assert parse_sources(["rtsp://h/p?user=x"]) == {"cam0": "rtsp://h/p?user=x"}


@pytest.mark.parametrize("specs,message", [
    ([], "no source"), (["a=rtsp://x", "a=rtsp://y"], "given twice"),
    (["bad id!=rtsp://x"], "use 1 to 64 letters, digits")])
def test_bad_sources(specs, message):
    with pytest.raises(GimefiveError, match=message):
        parse_sources(specs)


def test_config_file_lists_cameras_and_flags_override(tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text("sources: [door=rtsp://127.0.0.1:8554/door, rtsp://127.0.0.1:8554/hall]\n"
                    "stall_timeout_s: 3\nstatus_every_s: 30\n")
    cfg = load_monitor_config(path, status_every_s=5)
    assert cfg.sources == ["door=rtsp://127.0.0.1:8554/door", "rtsp://127.0.0.1:8554/hall"]
    assert cfg.stall_timeout_s == 3.0 and cfg.status_every_s == 5.0
    options = cfg.live_options()
    assert options["max_reconnects"] == -1 and options["transport"] == "tcp"  # -1: never


def test_shipped_defaults_load():
    cfg = load_monitor_config()
    assert cfg == MonitorConfig()  # configs/monitor.yaml says what the dataclass says


@pytest.mark.parametrize("bad", [dict(transport="http"), dict(max_reconnects=-2),
                                 dict(status_every_s=0), dict(segment_s=0)])
def test_bad_monitor_config(bad):
    with pytest.raises(GimefiveError, match="monitor config"):
        MonitorConfig(**bad)


def test_unknown_config_key_is_named(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("stall_timout_s: 3\n")
    with pytest.raises(GimefiveError, match="unknown key.*stall_timout_s"):
        load_monitor_config(path)


def test_per_camera_outputs():
    assert stream_output("out/cam.mp4", "door", single=True) == "out/cam.mp4"
    assert stream_output("out/cam.mp4", "door", single=False) == "out/cam-door.mp4"
    assert stream_output("rtsp://h:1/live/", "door", single=False) == "rtsp://h:1/live-door"


def test_status_line_names_every_figure():
    record = {"uptime_s": 61.0, "streams": {"cam0": {
        "ended": False, "connected": False, "outage_s": 4.2, "fps_in": 0.0, "fps_out": 1.5,
        "dropped": 7, "queue": 2, "in_flight": 3, "reconnects": 1}},
        "stages": {"detect": {"restarts": 1, "rss_mb": 150.0}}}
    assert format_status(record) == (
        "[monitor 61s] cam0 [DOWN 4s] in 0.0 out 1.5 fps, dropped 7, queue 2, in flight 3, "
        "reconnects 1 | restarts {'detect': 1}")
