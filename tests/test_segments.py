"""Segmented live output: rollover, a crash loses at most one fragment, SIGTERM finalises,
numbering continues after a restart; the RTSP push output against a real relay server."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import av
import numpy as np
import pytest
from gimefive.pipeline.segments import RtspPushSink, SegmentWriter
from rtsp_server import RelayServer

from gimefive.errors import GimefiveError


def count_frames(path) -> int:
    """Frames PyAV can decode from ``path`` (a segment or an .ffconcat list)."""
    options = {"safe": "0"} if str(path).endswith(".ffconcat") else {}
    fmt = "concat" if options else None
    with av.open(str(path), format=fmt, options=options) as c:
        return sum(1 for _ in c.decode(video=0))


def ffprobe_frames(path) -> int | None:
    if shutil.which("ffprobe") is None:
        return None
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def frame(i: int, size=(64, 48)) -> np.ndarray:
    return np.full((size[1], size[0], 3), i * 7 % 255, np.uint8)


@pytest.mark.integration
def test_segments_roll_over_and_concat_reads_all(tmp_path):
    writer = SegmentWriter(tmp_path / "cam.mp4", segment_s=1.0, fps=25)
    for i in range(60):
        writer.write(frame(i), 50.0 + i / 25)  # live timeline need not start at 0
    writer.close()
    names = [p.name for p in writer.segments]
    assert names == ["cam_00000.mp4", "cam_00001.mp4", "cam_00002.mp4"]
    assert [count_frames(p) for p in writer.segments] == [25, 25, 10]
    assert count_frames(tmp_path / "cam.ffconcat") == 60
    if (n := ffprobe_frames(writer.segments[0])) is not None:
        assert n == 25


def test_restart_continues_numbering_and_playlist(tmp_path):
    for run in range(2):
        writer = SegmentWriter(tmp_path / "cam.mp4", segment_s=10.0)
        for i in range(5):
            writer.write(frame(i), run * 100 + i / 25)
        writer.close()
    assert sorted(p.name for p in tmp_path.glob("cam_*.mp4")) == \
        ["cam_00000.mp4", "cam_00001.mp4"]
    assert count_frames(tmp_path / "cam.ffconcat") == 10


def test_odd_size_and_size_change_start_new_segment(tmp_path):
    writer = SegmentWriter(tmp_path / "odd.mp4", segment_s=10.0)
    for i in range(3):
        writer.write(frame(i, (33, 17)), i / 25)
    for i in range(3, 6):
        writer.write(frame(i, (64, 48)), i / 25)
    writer.close()
    assert len(writer.segments) == 2
    with av.open(str(writer.segments[0])) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (33, 17)
    assert [count_frames(p) for p in writer.segments] == [3, 3]


def test_bad_segment_options(tmp_path):
    with pytest.raises(GimefiveError, match="must end in .mp4 or .mov"):
        SegmentWriter(tmp_path / "x.avi")
    with pytest.raises(GimefiveError, match="segment length must be > 0"):
        SegmentWriter(tmp_path / "x.mp4", segment_s=0)


WRITER_SCRIPT = textwrap.dedent("""
    import signal, sys
    import numpy as np
    from gimefive.pipeline.segments import SegmentWriter

    def stop(signum, frame):
        raise SystemExit(0)

    # explicit, as the monitor does: a process started in the background inherits
    # SIGINT ignored, and then Ctrl-C would never reach it
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    writer = SegmentWriter(sys.argv[1], segment_s=2.0, fps=25)
    i = 0
    try:
        while True:
            writer.write(np.full((48, 64, 3), i % 255, np.uint8), i / 25)
            i += 1
            print(i, flush=True)
    finally:
        writer.close()
""")


def run_writer_until(tmp_path, frames: int, sig: signal.Signals) -> int:
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "live.mp4")],
                            stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a writer that ignores the signal fails,
    watchdog.start()                            # it does not hang the suite
    try:
        written = 0
        for line in proc.stdout:
            written = int(line)
            if written >= frames:
                proc.send_signal(sig)
                break
        rest = proc.stdout.read().split()
        proc.wait(30)
    finally:
        watchdog.cancel()
    return int(rest[-1]) if rest else written


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finalises_everything_written(tmp_path, sig):
    written = run_writer_until(tmp_path, 110, sig)
    segments = sorted(tmp_path.glob("live_*.mp4"))
    assert len(segments) == 3
    assert sum(count_frames(p) for p in segments) == written
    assert count_frames(tmp_path / "live.ffconcat") == written


@pytest.mark.integration
def test_sigkill_loses_at_most_one_fragment(tmp_path):
    written = run_writer_until(tmp_path, 110, signal.SIGKILL)
    segments = sorted(tmp_path.glob("live_*.mp4"))
    counts = [count_frames(p) for p in segments]
    assert counts[:2] == [50, 50]               # finished segments are intact
    assert written - 25 <= sum(counts) <= written  # the open one keeps all but <= 1 s
    if (n := ffprobe_frames(segments[-1])) is not None:
        assert n == counts[-1]


@pytest.mark.integration
def test_rtsp_push_reaches_a_real_server():
    reason = RelayServer.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with RelayServer() as relay:
        sink = RtspPushSink(relay.publish_url, fps=25, transport="udp")
        stop = threading.Event()

        def push():
            start, i = time.monotonic(), 0
            while not stop.is_set():
                sink.write(np.random.default_rng(i).integers(0, 255, (96, 128, 3), np.uint8),
                           i / 25)
                i += 1
                stop.wait(max(0.0, start + i / 25 - time.monotonic()))

        pusher = threading.Thread(target=push)
        pusher.start()
        try:
            stop.wait(1.5)
            with av.open(relay.read_url, options={"rtsp_transport": "udp"},
                         timeout=(10, 5)) as c:
                got = []
                for f in c.decode(video=0):
                    got.append((f.width, f.height))
                    if len(got) == 10:
                        break
        finally:
            stop.set()
            pusher.join(10)
            sink.close()
    assert got == [(128, 96)] * 10
    stats = sink.stats()
    assert stats["connects"] == 1 and stats["pushed"] > 30 and stats["dropped"] == 0


def test_rtsp_push_without_server_counts_drops_and_never_blocks():
    from rtsp_server import free_port

    sink = RtspPushSink(f"rtsp://127.0.0.1:{free_port()}/out", transport="tcp")
    start = time.monotonic()
    for i in range(50):
        sink.write(frame(i), i / 25)
    sink.close()
    assert time.monotonic() - start < 5
    stats = sink.stats()
    assert stats["pushed"] == 0 and stats["dropped"] == 50 and stats["connects"] == 0


@pytest.mark.integration
def test_ffconcat_escapes_a_quote_in_the_name(tmp_path):
    """ffconcat quoting: a ``'`` in a segment's name is written as ``'\\''``, so the list
    still names the real files (and nothing else)."""
    writer = SegmentWriter(tmp_path / "it's.mp4", segment_s=1.0, fps=25)
    for i in range(40):
        writer.write(frame(i), i / 25)
    writer.close()
    assert len(writer.segments) == 2
    lines = (tmp_path / "it's.ffconcat").read_text().splitlines()
    assert lines[1:] == ["file 'it'\\''s_00000.mp4'", "file 'it'\\''s_00001.mp4'"]
    assert count_frames(tmp_path / "it's.ffconcat") == 40
    if (n := ffprobe_frames_concat(tmp_path / "it's.ffconcat")) is not None:
        assert n == 40


def ffprobe_frames_concat(path) -> int | None:
    if shutil.which("ffprobe") is None:
        return None
    out = subprocess.run(["ffprobe", "-v", "error", "-f", "concat", "-safe", "0",
                          "-count_frames", "-select_streams", "v", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_segment_name_with_a_line_break_is_refused(tmp_path):
    with pytest.raises(GimefiveError, match="line break"):
        SegmentWriter(tmp_path / "a\nfile 'x.mp4")


def listed(playlist) -> list[str]:
    return [ln for ln in playlist.read_text().splitlines() if ln.startswith("file ")]


def test_retention_by_size_deletes_oldest_and_rewrites_the_list(tmp_path):
    writer = SegmentWriter(tmp_path / "cam.mp4", segment_s=1.0, fps=25, keep_bytes=1)
    for i in range(25 * 4):
        writer.write(frame(i), i / 25)
    writer.close()
    # a 1-byte budget keeps only the newest finished segment, never the one being written
    assert sorted(p.name for p in tmp_path.glob("cam_*.mp4")) == ["cam_00003.mp4"]
    assert listed(tmp_path / "cam.ffconcat") == ["file 'cam_00003.mp4'"]
    assert count_frames(tmp_path / "cam.ffconcat") == 25


def test_retention_by_age_keeps_recent_segments(tmp_path):
    import os

    old = SegmentWriter(tmp_path / "cam.mp4", segment_s=10.0)  # an earlier run's segment
    for i in range(5):
        old.write(frame(i), i / 25)
    old.close()
    day_ago = time.time() - 86400
    os.utime(old.segments[0], (day_ago, day_ago))
    writer = SegmentWriter(tmp_path / "cam.mp4", segment_s=1.0, fps=25, keep_age_s=3600)
    for i in range(50):
        writer.write(frame(i), 100 + i / 25)
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("cam_*.mp4")) == \
        ["cam_00001.mp4", "cam_00002.mp4"]
    assert listed(tmp_path / "cam.ffconcat") == ["file 'cam_00001.mp4'",
                                                 "file 'cam_00002.mp4'"]
    assert count_frames(tmp_path / "cam.ffconcat") == 50
