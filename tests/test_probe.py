"""Bad inputs give one clear line before any stage starts; awkward but valid inputs pass.

Every case is generated in tmp with PyAV (small and fast); the RTSP cases use the real
loopback server from tests/rtsp_server.py and skip, with the reason, where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from gimefive.pipeline.probe import ProbeError, check_output, probe_input
from rtsp_server import RtspServer, free_port, skip_without_server

from gimefive.errors import GimefiveError


def write_video(path: Path, width: int = 64, height: int = 48, frames: int = 8,
                codec: str = "libx264", pix_fmt: str = "yuv420p", gray: bool = False,
                options: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for _ in range(frames):
            if gray:
                frame = av.VideoFrame.from_ndarray(
                    rng.integers(0, 255, (height, width), np.uint8), format="gray")
            else:
                frame = av.VideoFrame.from_ndarray(
                    rng.integers(0, 255, (height, width, 3), np.uint8), format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------------ bad inputs
def test_missing_file(tmp_path):
    with pytest.raises(ProbeError) as err:
        probe_input(tmp_path / "nope.mp4")
    assert one_line(err.value) == f"input not found: {tmp_path / 'nope.mp4'}"


def test_directory(tmp_path):
    with pytest.raises(ProbeError) as err:
        probe_input(tmp_path)
    assert one_line(err.value) == f"input is a directory, not a video file: {tmp_path}"


def test_zero_length(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ProbeError, match=r"^input is empty \(0 bytes\)"):
        probe_input(tmp_path / "empty.mp4")


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    with pytest.raises(ProbeError, match=r"^not a video file FFmpeg can read \(Invalid data"):
        probe_input(tmp_path / "notes.mp4")


@pytest.mark.parametrize("faststart", [False, True], ids=["moov-at-end", "faststart"])
def test_truncated_mp4(tmp_path, faststart):
    full = write_video(tmp_path / "full.mp4", frames=30,
                       options={"movflags": "faststart"} if faststart else None)
    data = full.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProbeError) as err:
        probe_input(tmp_path / "cut.mp4")
    assert one_line(err.value).startswith("truncated or incomplete MP4/MOV (box 'mdat' needs")


def test_interrupted_recording_without_index(tmp_path):
    data = write_video(tmp_path / "full.mp4").read_bytes()
    # keep ftyp + mdat, drop the moov index that a killed recorder never wrote
    moov = data.index(b"moov") - 4
    (tmp_path / "nomoov.mp4").write_bytes(data[:moov])
    with pytest.raises(ProbeError, match="no 'moov' index"):
        probe_input(tmp_path / "nomoov.mp4")


def test_no_video_stream(tmp_path):
    path = write_audio_only(tmp_path / "speech.mp4")
    with pytest.raises(ProbeError) as err:
        probe_input(path)
    assert one_line(err.value) == \
        f"no video stream in the input (streams found: audio aac): {path}"


def test_unsupported_codec(tmp_path):
    # a valid Matroska file whose codec id FFmpeg does not know (same length, so the
    # EBML sizes stay right): the demuxer opens it, no decoder exists
    data = write_video(tmp_path / "v.mkv").read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    (tmp_path / "odd_codec.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_GIMEFIVE/XYZW"))
    with pytest.raises(ProbeError, match=r"^unsupported video codec"):
        probe_input(tmp_path / "odd_codec.mkv")


def test_rtsp_unreachable_host():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens there
    with pytest.raises(ProbeError) as err:
        probe_input(url, timeout_s=2)
    assert one_line(err.value) == \
        f"cannot connect to the RTSP server (connection refused): {url}"


@pytest.fixture(scope="module")
def rtsp_server():
    skip_without_server()
    with RtspServer(path="cam", width=160, height=120) as server:
        yield server


def test_rtsp_wrong_path(rtsp_server):
    url = rtsp_server.url.replace("/cam", "/no-such-camera")
    with pytest.raises(ProbeError) as err:
        probe_input(url, timeout_s=3)
    assert one_line(err.value) == \
        f"the RTSP server has no stream at this path (404 Not Found): {url}"


def test_rtsp_good_stream(rtsp_server):
    info = probe_input(rtsp_server.url, timeout_s=5)
    assert info.live and info.codec == "h264" and (info.width, info.height) == (160, 120)


def test_rtsp_silent_server_times_out(rtsp_server):
    rtsp_server.pause()
    try:
        with pytest.raises(ProbeError, match=r"^no answer from the stream within 1\.5 s"):
            probe_input(rtsp_server.url, timeout_s=1.5)
    finally:
        rtsp_server.resume()


def test_bad_transport_option():
    with pytest.raises(GimefiveError, match="transport must be 'tcp' or 'udp'"):
        probe_input("rtsp://127.0.0.1:1/x", transport="http")


# ------------------------------------------------------------------------ outputs
def test_output_folder_missing(tmp_path):
    with pytest.raises(ProbeError) as err:
        check_output(tmp_path / "no" / "out.mp4")
    assert one_line(err.value) == f"output folder does not exist: {tmp_path / 'no'}"


def test_output_folder_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ProbeError, match="output folder is not a directory"):
        check_output(tmp_path / "f" / "out.mp4")


def test_output_is_a_directory(tmp_path):
    with pytest.raises(ProbeError, match="output is a directory, expected a file path"):
        check_output(tmp_path)


def test_output_folder_not_writable(tmp_path):
    if os.geteuid() == 0:
        target = Path("/sys/out.mp4")  # read-only for root too
        if not Path("/sys").is_dir():
            pytest.skip("running as root and /sys is absent: no unwritable folder to test")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out.mp4"
    with pytest.raises(ProbeError, match=r"^output folder is not writable \("):
        check_output(target)


def test_output_ok(tmp_path):
    assert check_output(tmp_path / "out.mp4") == str(tmp_path / "out.mp4")
    assert check_output("rtsp://127.0.0.1:8554/out") == "rtsp://127.0.0.1:8554/out"
    assert list(tmp_path.iterdir()) == []  # the write test leaves nothing behind


# ------------------------------------------------------------------------ inputs that must work
@pytest.mark.parametrize("name,kwargs,expect_fmt", [
    ("tiny", dict(width=16, height=16), "yuv420p"),
    ("uhd", dict(width=3840, height=2160, frames=2), "yuv420p"),
    ("odd", dict(width=33, height=17, pix_fmt="yuv444p"), "yuv444p"),
    ("gray", dict(width=40, height=30, codec="ffv1", pix_fmt="gray", gray=True), "gray"),
    ("tenbit", dict(width=32, height=24, pix_fmt="yuv420p10le"), "yuv420p10le"),
])
def test_awkward_inputs_decode_to_bgr(tmp_path, name, kwargs, expect_fmt):
    suffix = ".mkv" if kwargs.get("codec") == "ffv1" else ".mp4"
    path = write_video(tmp_path / f"{name}{suffix}", **kwargs)
    info = probe_input(path)
    assert (info.width, info.height) == (kwargs["width"], kwargs["height"])
    assert info.pix_fmt == expect_fmt and not info.live and info.fps == 25.0
    with av.open(str(path)) as c:
        bgr = next(c.decode(video=0)).to_ndarray(format="bgr24")
    assert bgr.dtype == np.uint8 and bgr.shape == (kwargs["height"], kwargs["width"], 3)
