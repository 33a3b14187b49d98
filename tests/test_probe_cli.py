"""The bad-input table through the real CLI: `gimefive annotate` and `gimefive monitor`
print exactly one line (``gimefive: error: ...``), exit non-zero, and write nothing.

Run with ``-s`` to see the table of lines each case prints.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from rtsp_server import RtspServer, free_port, skip_without_server
from test_probe import write_audio_only, write_video

from gimefive.cli import main


@pytest.fixture(scope="module")
def server():
    skip_without_server()
    with RtspServer(path="cam", width=160, height=120) as srv:
        yield srv


def make_case(case: str, tmp: Path, server_url: str | None) -> tuple[str, list[str]]:
    """(input, extra args) for one row of the table."""
    out = ["-o", str(tmp / "out" / "annotated.mp4")]
    (tmp / "out").mkdir(exist_ok=True)
    path = tmp / "in.mp4"
    if case == "missing file":
        return str(path), out
    if case == "a directory":
        path.mkdir()
        return str(path), out
    if case == "text file named .mp4":
        path.write_text("not a video\n" * 10)
        return str(path), out
    if case == "truncated MP4":
        data = write_video(tmp / "full.mp4", frames=30).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return str(path), out
    if case == "no video stream":
        return str(write_audio_only(path)), out
    if case == "zero-length file":
        path.write_bytes(b"")
        return str(path), out
    if case == "unsupported codec":
        data = write_video(tmp / "v.mkv").read_bytes()
        (tmp / "in.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_GIMEFIVE/XYZW"))
        return str(tmp / "in.mkv"), out
    if case == "unreachable RTSP host":
        return f"rtsp://127.0.0.1:{free_port()}/cam", out
    if case == "wrong RTSP path":
        return server_url.replace("/cam", "/nope"), out
    if case == "frame larger than max_pixels":
        return str(write_video(path, width=8192, height=4320, frames=1, codec="ffv1",
                               pix_fmt="yuv420p")), out
    if case == "0x0 frame size":
        data = write_video(tmp / "v.mkv", width=16, height=16, codec="ffv1").read_bytes()
        # Matroska PixelWidth (0xB0) and PixelHeight (0xBA), one-byte values 16 -> 0
        data = data.replace(b"\xb0\x81\x10", b"\xb0\x81\x00", 1)
        (tmp / "in.mkv").write_bytes(data.replace(b"\xba\x81\x10", b"\xba\x81\x00", 1))
        return str(tmp / "in.mkv"), out
    video = str(write_video(tmp / "good.mp4"))
    if case == "output folder does not exist":
        return video, ["-o", str(tmp / "missing" / "annotated.mp4")]
    if case == "output folder not writable":
        if os.geteuid() == 0:
            return video, ["-o", "/sys/annotated.mp4"]  # read-only even for root
        locked = tmp / "locked"
        locked.mkdir(mode=0o500)
        return video, ["-o", str(locked / "annotated.mp4")]
    raise AssertionError(case)


#: what each case's line must say (the rest of the line names the input or folder)
EXPECTED = {
    "missing file": "input not found: ",
    "a directory": "input is a directory, not a video",
    "text file named .mp4": "not a video file FFmpeg can read (Invalid data found",
    "truncated MP4": "truncated or incomplete MP4/MOV (box 'mdat' needs",
    "no video stream": "no video stream in the input (streams found: audio aac)",
    "zero-length file": "input is empty (0 bytes)",
    "unsupported codec": "unsupported video codec (FFmpeg has no decoder",
    "unreachable RTSP host": "cannot connect to the RTSP server (connection refused): rtsp://",
    "wrong RTSP path": "the RTSP server has no stream at this path (404 Not Found): rtsp://",
    "output folder does not exist": "output folder does not exist: ",
    "output folder not writable": "output folder is not writable (",
    "frame larger than max_pixels": "frames of 8192x4320 (35.4 Mpx) exceed max_pixels "
                                    "33177600 (raise it in the config to accept them): ",
    "0x0 frame size": "the video stream has an empty frame size (0x0)",
}
CASES = ["missing file", "a directory", "text file named .mp4", "truncated MP4",
         "no video stream", "zero-length file", "unsupported codec", "unreachable RTSP host",
         pytest.param("wrong RTSP path", marks=pytest.mark.integration),  # a real server
         "output folder does not exist", "output folder not writable",
         "frame larger than max_pixels", "0x0 frame size"]


@pytest.mark.parametrize("command", ["annotate", "monitor"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line(case, command, tmp_path, capsys, request):
    url = request.getfixturevalue("server").url if case == "wrong RTSP path" else None
    if command == "annotate" and not _has_annotate():
        pytest.skip("gimefive annotate is not available")
    source, extra = make_case(case, tmp_path, url)
    with pytest.raises(SystemExit) as exit_info:
        main([command, source, *extra])
    err = capsys.readouterr().err
    lines = err.splitlines()
    with capsys.disabled():
        print(f"\n| {command} | {case} | `{lines[0] if lines else ''}` |", end="")
    assert exit_info.value.code != 0
    assert len(lines) == 1 and lines[0].startswith("gimefive: error: "), err
    assert EXPECTED[case] in lines[0]
    written = [p for p in (tmp_path / "out").rglob("*")] if (tmp_path / "out").exists() else []
    assert written == []  # nothing was started, nothing written


def _has_annotate() -> bool:
    import importlib.util

    return importlib.util.find_spec("gimefive.pipeline.cli") is not None


@pytest.mark.slow
@pytest.mark.parametrize("case", ["odd-10bit-444-faces", "16x16-noface"])
def test_awkward_inputs_give_valid_output(case, tmp_path, weights, astronaut_bgr):
    """Odd size + 10-bit 4:4:4 with real faces, and a 16x16 clip with none, through the
    whole `gimefive annotate` pipeline: every frame out, same size, faces where present."""
    import json

    import av
    import cv2

    if not _has_annotate():
        pytest.skip("gimefive annotate is not available")
    width, height, pix_fmt, faces = {"odd-10bit-444-faces": (321, 239, "yuv444p10le", True),
                                     "16x16-noface": (16, 16, "yuv420p", False)}[case]
    image = cv2.resize(astronaut_bgr, (width, height)) if faces else \
        np.full((height, width, 3), 90, np.uint8)
    clip = tmp_path / "in.mp4"
    with av.open(str(clip), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for _ in range(5):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        c.mux(stream.encode())
    out, jsonl = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    try:
        main(["annotate", str(clip), "-o", str(out), "--json", str(jsonl), "--weights",
              str(weights), "--backend", "torch", "-q"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (width, height)
    records = [json.loads(line) for line in jsonl.open()]
    assert len(records) == 5
    assert all(len(r["faces"]) == (1 if faces else 0) for r in records)


def test_max_pixels_comes_from_the_config(tmp_path, capsys):
    """A lower ``max_pixels`` in the YAML config refuses a 64x48 input, with one line."""
    config = tmp_path / "small.yaml"
    config.write_text("max_pixels: 3000\n")
    (tmp_path / "out").mkdir()
    video = write_video(tmp_path / "in.mp4")
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", str(video), "-o", str(tmp_path / "out" / "o.mp4"), "--config",
              str(config)])
    assert exit_info.value.code != 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"gimefive: error: frames of 64x48 (0.0 Mpx) exceed max_pixels 3000 "
                    f"(raise it in the config to accept them): {video}")
    assert list((tmp_path / "out").iterdir()) == []
