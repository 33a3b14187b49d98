"""The live readers without a server: drop-oldest queue, backoff, giving up, stopping, files
played as cameras (each behind the source stage's FrameFeed, as the stage runs them)."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest
from gimefive.pipeline.live_source import LiveOptions, LiveSourceError, RtspReader
from gimefive.pipeline.readers import open_reader
from gimefive.pipeline.stages.source import FrameFeed, FrameQueue
from rtsp_server import free_port

from gimefive.errors import GimefiveError


def write_clip(path, frames=10, fps=25, size=(32, 24)):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        for i in range(frames):
            image = np.full((size[1], size[0], 3), i * 10 % 255, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return path


def test_drop_oldest_queue_keeps_newest_and_counts():
    q = FrameQueue(3, "drop_oldest")
    for i in range(10):
        q.put(i)
    assert q.dropped == 7 and len(q) == 3
    assert [q.get(0), q.get(0), q.get(0)] == [7, 8, 9]
    assert q.get(timeout=0.01) is None


def test_backoff_doubles_and_is_capped():
    o = LiveOptions(backoff_initial_s=0.25, backoff_max_s=2.0)
    waits = [o.backoff(a) for a in range(1, 8)]
    for got, base in zip(waits, [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0], strict=True):
        assert base * 0.9 <= got <= base * 1.1


@pytest.mark.parametrize("bad", [dict(transport="http"), dict(stall_timeout_s=0),
                                 dict(max_reconnects=-2), dict(queue_size=0)])
def test_options_reject_bad_values(bad):
    with pytest.raises(GimefiveError):
        LiveOptions(**bad)


def test_gives_up_after_max_reconnects():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # connection refused every time
    reader = RtspReader(url, "cam", LiveOptions(max_reconnects=2, backoff_initial_s=0.01,
                                                backoff_max_s=0.02))
    with pytest.raises(LiveSourceError) as error:
        list(reader)
    assert str(error.value) == "camera cam gave up after 2 reconnect attempt(s): " \
                               "Connection refused"  # one line, no URL
    assert len(reader.counters.outages) == 1 and reader.counters.outages[0].attempts == 3


def test_stop_interrupts_backoff_promptly():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    source = FrameFeed(RtspReader(url, "cam", LiveOptions(backoff_initial_s=30,
                                                          backoff_max_s=30))).start()
    assert source.get(timeout=0.3) is None  # first attempt refused, now in a 30 s backoff
    start = time.monotonic()
    source.stop()
    assert time.monotonic() - start < 2 and not source.thread.is_alive()
    assert source.stats()["outages"][0]["reason"].startswith("cannot connect")


def test_looping_file_is_paced_and_numbered_continuously(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=10, fps=25)
    source = FrameFeed(open_reader(str(clip), "loop", "file",
                                   LiveOptions(queue_size=50))).start()
    start = time.monotonic()
    frames = []
    while len(frames) < 25:
        frame = source.get(timeout=2)
        assert frame is not None
        frames.append(frame)
    elapsed = time.monotonic() - start
    source.stop()
    assert [f.index for f in frames] == list(range(25))  # across two loop restarts
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:], strict=False))
    assert elapsed > 0.6  # 25 frames at 25 fps, paced (not decoded as fast as possible)
    assert source.stats()["reconnects"] == 0  # a loop restart is not an outage


def test_slow_consumer_gets_newest_frames_and_drops_are_counted(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=50, fps=50)
    source = FrameFeed(open_reader(str(clip), "loop", "file",
                                   LiveOptions(queue_size=2, loop_files=False)))
    source.start()
    got = []
    done = threading.Event()

    def consume():
        for frame in source:
            got.append(frame.index)
            done.wait(0.1)  # a consumer 5x slower than the source
    worker = threading.Thread(target=consume)
    worker.start()
    worker.join(20)
    stats = source.stats()
    assert stats["decoded"] == 50
    assert stats["dropped"] > 20 and stats["delivered"] == len(got)
    assert stats["delivered"] + stats["dropped"] == stats["decoded"]
    assert got == sorted(got) and got[-1] == 49  # the newest frame always gets through
