"""One annotate stage for files and cameras: its sinks come from a factory keyed by the
output's kind, and every video sink encodes with the same encoder rule."""

from __future__ import annotations

import dataclasses
import json

import av
import pytest
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.segments import RtspSink, SegmentsSink, SegmentWriter
from gimefive.pipeline.sinks import (
    SINKS,
    CamNpzSink,
    JsonLinesSink,
    VideoFileSink,
    open_sinks,
    sink_specs,
)
from gimefive.pipeline.stages.annotate import AnnotateStage
from test_outputs import tracked


@pytest.mark.parametrize("job,kinds", [
    ({"output": "a.mp4", "json": "a.jsonl", "cam_npz": "a.npz"}, ["mp4", "jsonl", "cam_npz"]),
    ({"output": "cam.mp4", "json": "f.jsonl", "live": True}, ["segments", "jsonl"]),
    ({"output": "rtsp://h:8554/out", "live": True}, ["rtsp"]),
    ({"output": "rtsp://h:8554/out"}, ["rtsp"]),      # `gimefive stage annotate` can push
    ({"json": "f.jsonl"}, ["jsonl"]),
])
def test_the_output_picks_the_sink(job, kinds):
    specs = sink_specs(job, AnnotateConfig())
    assert [s.kind for s in specs] == kinds
    assert all(s.kind in SINKS for s in specs)
    json_spec = [s for s in specs if s.kind == "jsonl"]
    assert all(s.options["append"] == bool(job.get("live")) for s in json_spec)


def test_sinks_are_built_from_their_specs(tmp_path):
    job = {"output": str(tmp_path / "cam.mp4"), "json": str(tmp_path / "f.jsonl"),
           "live": True, "streams": ["a", "b"], "segment_s": 2.5, "keep_bytes": 10}
    video, lines = open_sinks(sink_specs(job, AnnotateConfig()))
    assert isinstance(video, SegmentsSink) and isinstance(lines, JsonLinesSink)
    assert video.options["segment_s"] == 2.5 and video.options["keep_bytes"] == 10
    lines.close()
    file_job = {"output": str(tmp_path / "o.mp4"), "cam_npz": str(tmp_path / "c.npz")}
    video, cams = open_sinks(sink_specs(file_job, AnnotateConfig()))
    assert isinstance(video, VideoFileSink) and isinstance(cams, CamNpzSink)
    cams.close()
    push, = open_sinks(sink_specs({"output": "rtsp://u:pw@127.0.0.1:1/x"}, AnnotateConfig()))
    assert isinstance(push, RtspSink)


def test_live_outputs_encode_with_the_live_preset_and_files_with_the_file_preset(tmp_path):
    """A camera cannot wait: segments and RTSP push use ``live_preset``; a file, which
    can take its time, ``preset``."""
    config = AnnotateConfig(preset="slow", live_preset="superfast")
    jobs = {"segments": {"output": "cam.mp4", "live": True},
            "rtsp": {"output": "rtsp://h:8554/out", "live": True},
            "mp4": {"output": "a.mp4"}}
    presets = {kind: sink_specs(job, config)[0].options["preset"] for kind, job in jobs.items()}
    assert presets == {"segments": "superfast", "rtsp": "superfast", "mp4": "slow"}
    writer = SegmentWriter(tmp_path / "s.mp4", preset=presets["segments"])
    writer.write(tracked(0, 0).image.copy(), 0.0)
    writer.close()
    with av.open(str(next(tmp_path.glob("s_*.mp4")))) as container:
        assert len(list(container.decode(video=0))) == 1


def test_every_video_output_encodes_with_encoder_threads(tmp_path):
    """Left to FFmpeg, x264 runs 1.5 threads a core (sliced threads at zero latency) and
    took a fifth more CPU a live frame: each output, live or not, gets the setting."""
    config = AnnotateConfig(encoder_threads=2)
    jobs = {"segments": {"output": "cam.mp4", "live": True},
            "rtsp": {"output": "rtsp://h:8554/out", "live": True},
            "mp4": {"output": "a.mp4"}}
    threads = {kind: sink_specs(job, config)[0].options["threads"] for kind, job in jobs.items()}
    assert threads == {"segments": 2, "rtsp": 2, "mp4": 2}
    writer = SegmentWriter(tmp_path / "s.mp4", threads=1)
    writer.write(tracked(0, 0).image.copy(), 0.0)
    assert writer.stream.codec_context.thread_count == 1
    writer.close()


def test_an_unknown_encoder_preset_is_refused_with_the_choices():
    from gimefive.errors import GimefiveError

    for key in ("preset", "live_preset"):
        with pytest.raises(GimefiveError, match=f"'{key}': expected one of ultrafast.*"
                                                "got 'fastest'"):
            AnnotateConfig(**{key: "fastest"})


def test_json_lines_truncate_for_files_and_append_with_counters_for_cameras(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"old": 1}\n')
    live = dataclasses.replace(tracked(0, 0), extra={"live": {"dropped": 3}})
    sink = JsonLinesSink(path, append=True)
    sink.write(live, None)
    sink.close()
    records = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert records[0] == {"old": 1} and records[1]["live"] == {"dropped": 3}
    sink = JsonLinesSink(path)
    sink.write(tracked(1, 1), None)
    sink.close()
    (record,) = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert record["frame"] == 1 and "live" not in record


def test_each_camera_gets_its_own_segments(tmp_path):
    sink = SegmentsSink(str(tmp_path / "cam.mp4"), ["door", "hall"], segment_s=10.0)
    for i in range(3):
        for stream in ("door", "hall"):
            msg = dataclasses.replace(tracked(i, i), stream=stream)
            sink.write(msg, msg.image)
    sink.close()
    assert sorted(p.name for p in tmp_path.glob("*_00000.mp4")) == [
        "cam-door_00000.mp4", "cam-hall_00000.mp4"]
    assert sink.info()["video"]["door"] == {"segments": 1, "frames": 3}


def video_format(path) -> tuple[str, str]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return stream.codec_context.name, stream.codec_context.pix_fmt


def test_every_video_sink_applies_the_same_pixel_format_rule(tmp_path):
    """An odd frame size: 4:2:0 cannot hold it, so libx264 gets 4:4:4 in both sinks."""
    odd = tracked(0, 0, size=(21, 33))
    file_sink = VideoFileSink(tmp_path / "o.mp4")
    file_sink.write(odd, odd.image)
    file_sink.close()
    segments = SegmentWriter(tmp_path / "s.mp4")
    segments.write(odd.image, 0.0)
    segments.close()
    assert video_format(tmp_path / "o.mp4") == video_format(tmp_path / "s_00000.mp4")
    if file_sink.codec == "libx264":
        assert video_format(tmp_path / "o.mp4") == ("h264", "yuv444p")


def test_one_annotate_stage_for_files_and_cameras(tmp_path):
    stage = AnnotateStage(AnnotateConfig(), live=True, output=str(tmp_path / "cam.mp4"),
                          json=str(tmp_path / "f.jsonl"), streams=["door"])
    stage.setup()
    try:
        msg = dataclasses.replace(tracked(0, 0), stream="door",
                                  extra={"live": {"sent": 1}})
        stage.process(msg)
    finally:
        stage.close()
    door = stage.live_stats()["streams"]["door"]
    assert (door["written"], door["last_index"], door["source"]) == (1, 0, {"sent": 1})
    assert (tmp_path / "cam_00000.mp4").is_file() and (tmp_path / "cam.ffconcat").is_file()
    assert json.loads((tmp_path / "f.jsonl").read_text())["live"] == {"sent": 1}
    file_job = AnnotateStage(AnnotateConfig(), json=str(tmp_path / "g.jsonl"))
    assert file_job.live_stats() is None  # nothing for a monitor's status
