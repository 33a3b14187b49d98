"""`gimefive monitor` end to end against a real RTSP server, and its bad-input lines.

The live test publishes skimage's astronaut (a real face) as an endless 10 fps RTSP
stream and, as a second camera, a looping file; runs the whole staged pipeline on both
(random-init weights saved to tmp), stops the server for a few seconds, starts it again,
kills the detect stage with SIGKILL, and checks: the monitor reconnects within 5 s of
the stream's return while the other camera keeps going, a crashed stage is restarted,
JSON frame numbers continue, each camera's segments hold exactly the frames the JSON
lists, and decoded = sent + dropped + queued, sent = written + lost (they add up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import av
import cv2
import numpy as np
import pytest
from clips import write_still_clip
from procs import child_processes
from rtsp_server import RtspServer, free_port, skip_without_server
from waiting import wait_until

from gimefive.cli import main


def run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["monitor", *map(str, args)])
    return exit_info.value.code, capsys.readouterr().err


def test_unreachable_camera_is_one_line(capsys, tmp_path):
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    code, err = run_cli(capsys, url, "--json", tmp_path / "f.jsonl")
    assert code != 0
    assert err == f"gimefive: error: cannot connect to the RTSP server (connection refused): " \
                  f"{url}\n"
    assert not (tmp_path / "f.jsonl").exists()  # nothing started, nothing written


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text"])
def test_bad_file_sources_are_one_line(capsys, tmp_path, case):
    path = tmp_path / "in.mp4"
    expected = {"missing": f"input not found: {path}",
                "directory": f"input is a directory, not a video file: {path}",
                "empty": f"input is empty (0 bytes): {path}",
                "text": "not a video file FFmpeg can read (Invalid data found when "
                        f"processing input): {path}"}[case]
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("hello\n")
    code, err = run_cli(capsys, path, "--json", tmp_path / "f.jsonl")
    assert code != 0 and err == f"gimefive: error: {expected}\n"


def test_output_folder_missing_is_one_line(capsys, tmp_path):
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = 32, 32
        out.mux(stream.encode(av.VideoFrame.from_ndarray(
            __import__("numpy").zeros((32, 32, 3), "uint8"), format="bgr24")))
        out.mux(stream.encode())
    code, err = run_cli(capsys, clip, "-o", tmp_path / "nope" / "out.mp4")
    assert code != 0
    assert err == f"gimefive: error: output folder does not exist: {tmp_path / 'nope'}\n"


def test_nothing_to_write_is_a_usage_error(capsys):
    code, err = run_cli(capsys, "rtsp://127.0.0.1:1/cam")
    assert code == 2 and "give -o FILE.mp4|rtsp://... and/or --json FILE" in err


# ------------------------------------------------------------------------- live, end to end
def stage_pids(parent: int) -> dict[str, int]:
    """Stage processes started by ``parent`` (matched by parent pid, never by name alone)."""
    return {args[3]: pid for pid, args in child_processes(parent).items()
            if len(args) >= 4 and args[2].startswith("gimefive.pipeline.")}


@pytest.mark.slow
def test_monitor_survives_outage_and_stage_crash(tmp_path, weights, astronaut_bgr):
    skip_without_server()
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), astronaut_bgr)
    out, jsonl, logs = tmp_path / "cam.mp4", tmp_path / "cam.jsonl", tmp_path / "logs"
    clip = tmp_path / "clip.mp4"  # a second camera: a file played at real time, looping
    write_still_clip(clip, astronaut_bgr, (256, 256), 20)
    server = RtspServer(path="cam", image=str(image), width=320, height=320, fps=10).start()
    monitor = subprocess.Popen(
        [sys.executable, "-c", "from gimefive.cli import main; main()", "monitor", server.url,
         "--source", f"clip={clip}",
         "-o", str(out), "--json", str(jsonl), "--weights", str(weights), "--backend",
         "torch", "--stall-timeout", "2", "--status-every", "1", "--segment", "4",
         "--log-dir", str(logs)], stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(monitor.stderr), daemon=True)
    reader.start()
    waiter = threading.Event()

    def written(stream: str | None = None) -> int:
        """JSON records so far, of one camera or of all (the file grows while we read)."""
        if not jsonl.exists():
            return 0
        lines = jsonl.read_text().splitlines()
        return sum(1 for line in lines if line.endswith("}") and (
            stream is None or json.loads(line)["stream"] == stream))

    try:
        deadline = time.monotonic() + 240  # generous: CI machines may be loaded
        tail = lambda: "".join(stderr[-20:])  # noqa: E731
        wait_until(lambda: written() >= 20, deadline - time.monotonic(), "20 JSON records",
                   0.5, alive=lambda: monitor.poll() is None, context=tail)
        server.stop()                        # outage 1: the server goes away for 3 s
        waiter.wait(3.0)
        server.start()
        back = time.time()
        # wait for cam0 itself: the looping clip keeps the file growing all along, so
        # counting every record would move on before cam0 is back (this test's earlier
        # flakiness on idle machines)
        before = written("cam0")
        wait_until(lambda: written("cam0") > before + 10, deadline - time.monotonic(),
                   "cam0 back after the outage", 0.5, context=tail)
        pids = stage_pids(monitor.pid)
        os.kill(pids["detect"], signal.SIGKILL)  # a crashed stage
        before = written("cam0")
        wait_until(lambda: written("cam0") > before + 20, deadline - time.monotonic(),
                   "cam0 going on after detect was killed", 0.5, context=tail)
    finally:
        monitor.send_signal(signal.SIGINT)   # Ctrl-C finalises what is written
        rc = monitor.wait(60)
        server.stop()
        reader.join(5)
    assert rc == 0, "".join(stderr[-20:])

    all_records = [json.loads(line) for line in jsonl.open()]
    records = [r for r in all_records if r["stream"] == "cam0"]
    indices = [r["frame"] for r in records]
    assert indices == sorted(set(indices))   # numbering continues across the outage
    assert sum(len(r["faces"]) for r in all_records) >= len(all_records) * 0.9  # astronauts
    clip_records = [r for r in all_records if r["stream"] == "clip"]
    assert len(clip_records) > 50  # the other camera kept going through cam0's outage

    status = [json.loads(line) for line in (tmp_path / "cam.status.jsonl").open()]
    final = status[-1]
    assert final["kind"] == "final"
    outage = final["outages"][0]
    reconnect_s = outage["started"] + outage["duration_s"] - back
    print(f"monitor: first frame {reconnect_s:.2f} s after the server came back")
    assert reconnect_s < 5.0
    assert final["stages"]["detect"]["restarts"] == 1
    stream = final["streams"]["cam0"]
    assert stream["written"] == len(records) and stream["reconnects"] == 1
    assert final["streams"]["clip"]["reconnects"] == 0
    # they add up: every decoded frame was sent, dropped, or still queued at the stop
    assert stream["decoded"] == stream["sent"] + stream["dropped"] + stream["queue"]
    assert stream["sent"] == stream["written"] + stream["lost_in_pipeline"]

    for sid, rows in (("cam0", records), ("clip", clip_records)):  # one video per camera
        playlist = tmp_path / f"cam-{sid}.ffconcat"
        assert len(playlist.read_text().splitlines()) >= 3  # header + at least 2 segments
        with av.open(str(playlist), format="concat", options={"safe": "0"}) as c:
            assert sum(1 for _ in c.decode(video=0)) == len(rows)
    text = "".join(stderr)
    assert "stream cam0: back after" in text and "restarting it in 0.5 s (1 of 5" in text


@pytest.mark.slow
def test_monitor_pushes_annotated_stream_to_rtsp(tmp_path, weights, astronaut_bgr):
    """`--out rtsp://...`: the annotated stream is published to a real RTSP relay
    (rtsp-server-perl) and can be read back from it."""
    from rtsp_server import RelayServer

    reason = RelayServer.unavailable_reason()
    if reason:
        pytest.skip(reason)
    clip = tmp_path / "clip.mp4"
    write_still_clip(clip, astronaut_bgr, (192, 192), 10)
    with RelayServer(path="annotated") as relay:
        monitor = subprocess.Popen(
            [sys.executable, "-c", "from gimefive.cli import main; main()", "monitor",
             str(clip), "-o", relay.publish_url, "--json", str(tmp_path / "f.jsonl"),
             "--weights", str(weights), "--backend", "torch", "-q"],
            stderr=subprocess.PIPE, text=True)
        got = []

        def read_back() -> list:
            try:
                with av.open(relay.read_url, options={"rtsp_transport": "udp"},
                             timeout=(5, 5)) as c:
                    for frame in c.decode(video=0):
                        got.append(frame.to_ndarray(format="bgr24"))
                        if len(got) == 5:
                            break
            except av.error.FFmpegError:  # not published yet: the pipeline is starting
                pass
            return got

        try:
            # a monitor that ended early is reported below, with its stderr
            wait_until(lambda: read_back() or monitor.poll() is not None, 90,
                       "frames read back from the relay", 1.0)
        finally:
            monitor.send_signal(signal.SIGINT)
            rc = monitor.wait(60)
        err = monitor.stderr.read()
    assert rc == 0, err
    assert len(got) == 5 and got[0].shape == (192, 192, 3)
    # annotated, not the raw clip: the box and bars change pixels around the face
    raw = cv2.resize(astronaut_bgr, (192, 192)).astype(int)
    assert np.abs(got[-1].astype(int) - raw).mean() > 5
