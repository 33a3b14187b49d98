"""What `gimefive annotate` writes: strictly increasing timestamps, outputs that never
overwrite without --force nor replace the input, no partial files under the final names,
and Grad-CAM arrays written in bounded memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.messages import TrackedMsg
from gimefive.pipeline.readers import Frame
from gimefive.pipeline.sinks import CamNpzSink, VideoFileSink
from gimefive.pipeline.stages.source import SourceStage
from procs import child_processes
from test_probe import write_video
from waiting import wait_until

from gimefive.cli import main

BROKEN_PTS = (0, 3, 2, 1, 2)  # in decode order, seconds


def tracked(index: int, pts: int | None, faces: int = 0, cam_side: int = 4,
            size=(48, 64)) -> TrackedMsg:
    k = faces
    return TrackedMsg(
        stream="0", index=index, pts=pts, time_base=[1, 1000], rate=[1, 1],
        image=np.full((*size, 3), 30 * index % 250, np.uint8),
        boxes=np.tile(np.array([[4, 4, 30, 30]], np.float32), (k, 1)),
        scores=np.ones(k, np.float32), landmarks=np.zeros((k, 5, 2), np.float32),
        probs=np.full((k, 6), 1 / 6, np.float32),
        cam=np.full((k, cam_side, cam_side), index, np.float32) if k else None,
        crops=np.zeros((k, 4), np.float32), track_ids=np.arange(1, k + 1),
        smoothed=np.full((k, 6), 1 / 6, np.float32), labels=np.zeros(k, np.int64),
        uncertain=np.zeros(k, bool))


def read_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def strictly_increasing(values) -> bool:
    return all(b > a for a, b in zip(values, values[1:], strict=False))


def write_broken_pts(path: Path) -> Path:
    """Five intra frames whose pts go 0, 3, 2, 1, 2 s in decode order (dts increases)."""
    with av.open(str(path), "w") as c:
        stream = c.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        packets = []
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8),
                                               format="bgr24")
            frame.pts = i
            packets += list(stream.encode(frame))
        packets += list(stream.encode())
        for i, (packet, t) in enumerate(zip(packets, BROKEN_PTS, strict=True)):
            packet.time_base = Fraction(1, 1000)
            packet.pts, packet.dts = t * 1000, i
            c.mux(packet)
    return path


# ------------------------------------------------------------------ item 8: timestamps

def test_file_sink_repairs_timestamps_that_repeat_or_go_back(tmp_path):
    """Handed such pts directly, the sink writes every frame with increasing pts."""
    sink = VideoFileSink(tmp_path / "o.mp4", codec="libx264")
    for i, t in enumerate(BROKEN_PTS):
        msg = tracked(i, t * 1000)
        sink.write(msg, np.array(msg.image))
    sink.write(tracked(5, None), np.zeros((48, 64, 3), np.uint8))  # no pts at all
    sink.close()
    pts = read_pts(tmp_path / "o.mp4")
    assert len(pts) == 6 and strictly_increasing(pts), pts
    assert sink.counters() == {"pts_repaired": 4}


def test_source_fills_missing_pts_without_colliding(tmp_path):
    """Frames without pts get one after the previous frame's, not one from their index."""
    stage = SourceStage(AnnotateConfig(), input=str(write_video(tmp_path / "v.mp4")))
    stage.setup()
    try:
        out = [stage.process(Frame(i, pts, np.zeros((4, 4, 3), np.uint8)))[0]
               for i, pts in enumerate((0, 5 * 512, None, 512, None))]
    finally:
        stage.close()
    pts = [m.pts for m in out]
    assert strictly_increasing(pts) and pts[:2] == [0, 2560], pts
    assert stage.counters["pts_repaired"] == 3


@pytest.mark.slow
def test_annotate_writes_increasing_pts_for_a_broken_input(tmp_path, weights):
    """The crafted input through the whole pipeline: every frame kept, increasing pts in
    the video and the JSON lines, repairs counted in the summary."""
    clip = write_broken_pts(tmp_path / "broken.mkv")
    assert read_pts(clip) == [0, 3000, 2000, 1000, 2000]
    out, jsonl, summary = tmp_path / "o.mp4", tmp_path / "f.jsonl", tmp_path / "s.json"
    main_ok(["annotate", str(clip), "-o", str(out), "--json", str(jsonl), "--summary",
             str(summary), "--weights", str(weights), "--backend", "torch", "-q"])
    pts = read_pts(out)
    assert len(pts) == 5 and strictly_increasing(pts), pts
    times = [json.loads(line)["pts"] for line in jsonl.read_text().splitlines()]
    assert len(times) == 5 and strictly_increasing(times), times
    stages = json.loads(summary.read_text())["stages"]
    assert stages["source"]["counters"]["pts_repaired"] == 3


def main_ok(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), exc


# --------------------------------------------------------------------- item 9: outputs

def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("option,what", [("-o", "output"), ("--json", "JSON lines output"),
                                         ("--cam-npz", "CAM output"), ("--summary", "summary")])
def test_an_existing_output_is_refused_without_force(option, what, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4")
    existing = tmp_path / f"existing{'.mp4' if option == '-o' else '.dat'}"
    existing.write_bytes(b"keep me")
    args = ["annotate", str(video), option, str(existing)]
    if option not in ("-o", "--json"):
        args += ["--json", str(tmp_path / "new.jsonl")]
    code, lines = run_cli(args, capsys)
    assert code != 0
    assert lines == [f"gimefive: error: {what} {existing} already exists (give --force to "
                     f"overwrite it)"]
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.mp4", existing.name])


def test_outputs_that_are_the_input_or_each_other_are_refused(tmp_path, capsys):
    """By file identity: a hard link to the input is the input, even with --force."""
    video = write_video(tmp_path / "in.mp4")
    before = video.read_bytes()
    link = tmp_path / "link.jsonl"
    os.link(video, link)
    code, lines = run_cli(["annotate", str(video), "--json", str(link), "--force"], capsys)
    assert code != 0
    assert lines == [f"gimefive: error: JSON lines output {link} is the input file"]
    assert video.read_bytes() == before
    out = tmp_path / "o.mp4"
    code, lines = run_cli(["annotate", str(video), "-o", str(out), "--json",
                           str(tmp_path / "." / "o.mp4")], capsys)
    assert code != 0
    assert lines == [f"gimefive: error: JSON lines output {tmp_path / '.' / 'o.mp4'} is the "
                     f"same file as the output"]
    assert not out.exists()


def gimefive(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from gimefive.cli import main; main()",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_failed_run_keeps_the_earlier_outputs_and_leaves_no_partial_file(tmp_path, weights):
    """--force, then a stage is killed once the annotate stage has opened its outputs: the
    earlier files are still there unchanged, and no partial file is left anywhere."""
    video = write_video(tmp_path / "in.mp4", width=160, height=120, frames=300)
    folder = tmp_path / "out"
    folder.mkdir()
    old = {name: f"earlier {name}\n".encode() for name in ("o.mp4", "f.jsonl", "c.npz")}
    for name, data in old.items():
        (folder / name).write_bytes(data)
    proc = gimefive("annotate", str(video), "-o", str(folder / "o.mp4"), "--json",
                    str(folder / "f.jsonl"), "--cam-npz", str(folder / "c.npz"), "--weights",
                    str(weights), "--backend", "torch", "--force", "-q")
    try:
        def outputs_opened() -> bool:  # by the annotate stage: a new name or new bytes
            return set(os.listdir(folder)) != set(old) or any(
                (folder / n).read_bytes() != d for n, d in old.items())

        wait_until(outputs_opened, 90, "the annotate stage to open its outputs")
        victim = next((p for p, argv in child_processes(proc.pid).items()
                       if "stage_main detect" in " ".join(argv)), None)
        assert victim is not None, "the detect stage is not running"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == old


# ------------------------------------------------------------ item 10b: streaming CAMs

def test_cam_npz_is_written_in_bounded_memory_and_reads_back(tmp_path):
    """3000 faces' 32x32 maps (12 MB of float32): the sink never holds them all, and
    np.load gives the same layout as before (frame, track_id, box, cam)."""
    sink = CamNpzSink(tmp_path / "c.npz")
    tracemalloc.start()
    try:
        for i in range(1000):
            sink.write(tracked(i, i, faces=3, cam_side=32), None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sink.close()
    assert peak < 3_000_000, peak
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["box", "cam", "frame", "track_id"]
        assert z["cam"].shape == (3000, 32, 32) and z["cam"].dtype == np.float32
        assert z["frame"].tolist() == [i for i in range(1000) for _ in range(3)]
        assert z["track_id"].tolist() == [1, 2, 3] * 1000
        assert z["box"].shape == (3000, 4) and z["box"].dtype == np.float32
        assert z["frame"].dtype == z["track_id"].dtype == np.int64
        np.testing.assert_array_equal(z["cam"][::3, 0, 0], np.arange(1000, dtype=np.float32))


def test_cam_npz_without_any_cam_has_the_empty_layout(tmp_path):
    sink = CamNpzSink(tmp_path / "c.npz")
    sink.write(tracked(0, 0), None)
    sink.close()
    with np.load(tmp_path / "c.npz") as z:
        assert z["cam"].shape == (0, 0, 0) and z["frame"].shape == (0,)
        assert z["box"].shape == (0, 4)
    assert os.listdir(tmp_path) == ["c.npz"]
