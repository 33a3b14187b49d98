"""Check an input and an output before any stage starts.

A pipeline of processes that discovers a bad input in its third stage leaves half-written
files and a confusing error from deep inside FFmpeg. :func:`probe_input` opens the input
with PyAV, finds its video stream and decodes one frame to BGR uint8 (the same conversion
the source stage does), so every problem below becomes one :class:`GimefiveError` line:

missing file, a directory, an empty file, a file that is not a video (a text file named
``.mp4``), a truncated MP4, a file with no video stream, a codec FFmpeg cannot decode, an
RTSP host that refuses or does not answer, an RTSP path the server does not have.
:func:`check_output` does the same for output paths (folder missing, not a folder, not
writable). Odd sizes, 16x16 and 4K frames, grayscale and 10-bit input are fine: PyAV's
``reformat`` turns all of them into BGR uint8.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from gimefive.pipeline.config import MAX_PIXELS

from gimefive.errors import GimefiveError
from gimefive.urls import redact_text, redact_url

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "srt://")
#: packets read while looking for the first decodable frame before giving up
MAX_PROBE_PACKETS = 600


class ProbeError(GimefiveError):
    """An input or output that cannot be used; the message names it and why."""


@dataclass(frozen=True)
class StreamInfo:
    """What the source stage needs to know about an input's video stream."""

    url: str                 # as shown: a password in it is masked (gimefive.urls)
    live: bool
    codec: str
    width: int
    height: int
    pix_fmt: str
    fps: float | None
    time_base: Fraction | None
    frames: int | None
    duration_s: float | None
    has_audio: bool


def is_live(url: str | os.PathLike) -> bool:
    return str(url).lower().startswith(LIVE_SCHEMES)


def open_options(url: str, transport: str = "tcp", timeout_s: float = 5.0) -> dict[str, str]:
    """FFmpeg options for opening ``url``: RTSP transport and socket timeouts for live inputs."""
    if not str(url).lower().startswith(("rtsp://", "rtsps://")):
        return {}
    if transport not in ("tcp", "udp"):
        raise GimefiveError(f"RTSP transport must be 'tcp' or 'udp', got {transport!r}")
    return {"rtsp_transport": transport, "timeout": str(int(timeout_s * 1e6))}


def probe_input(url: str | os.PathLike, *, transport: str = "tcp",
                timeout_s: float = 5.0, max_pixels: int = MAX_PIXELS) -> StreamInfo:
    """Open ``url``, decode one video frame to BGR uint8 and describe the stream.

    Raises :class:`ProbeError` with one line naming the input (its password masked:
    see :mod:`gimefive.urls`) and the problem.
    """
    live = is_live(url)
    name = str(url)
    if not live:
        _check_local_file(Path(url))
    try:
        container = av.open(name, options=open_options(name, transport, timeout_s),
                            timeout=(timeout_s, timeout_s) if live else None)
    except av.error.FFmpegError as exc:
        raise ProbeError(_open_failure(redact_url(name), exc, live, timeout_s)) from None
    try:
        return _describe(container, redact_url(name), live, max_pixels)
    finally:
        container.close()


def _check_local_file(path: Path) -> None:
    if not path.exists():
        raise ProbeError(f"input not found: {path}")
    if path.is_dir():
        raise ProbeError(f"input is a directory, not a video file: {path}")
    if not path.is_file():
        raise ProbeError(f"input is not a regular file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ProbeError(f"input is empty (0 bytes): {path}")
    if not os.access(path, os.R_OK):
        raise ProbeError(f"input is not readable (permission denied): {path}")
    problem = _iso_bmff_problem(path, size)
    if problem:
        raise ProbeError(f"truncated or incomplete MP4/MOV ({problem}): {path}")


def _iso_bmff_problem(path: Path, size: int) -> str | None:
    """For MP4/MOV files, walk the top-level boxes: a box running past the end of the file,
    or no ``moov`` index, means the recording was cut short. ``None`` for other formats."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[4:8] != b"ftyp":
            return None
        offset, boxes = 0, []
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            if box_size == 1 and len(header) == 16:
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                return f"box {kind.decode('latin-1')!r} at byte {offset} has size {box_size}"
            if offset + box_size > size:
                return (f"box {kind.decode('latin-1')!r} needs {offset + box_size} bytes, "
                        f"the file has {size}")
            boxes.append(kind)
            offset += box_size
    if b"moov" not in boxes:
        return "no 'moov' index; the recording was probably interrupted"
    return None


def _open_failure(name: str, exc: av.error.FFmpegError, live: bool, timeout_s: float) -> str:
    reason = redact_text(getattr(exc, "strerror", None) or str(exc))
    if live:
        if isinstance(exc, av.error.HTTPNotFoundError):
            return f"the RTSP server has no stream at this path (404 Not Found): {name}"
        if isinstance(exc, av.error.HTTPUnauthorizedError):
            return f"the RTSP server refused the credentials (401 Unauthorized): {name}"
        if isinstance(exc, av.error.ConnectionRefusedError):
            return f"cannot connect to the RTSP server (connection refused): {name}"
        if exc.errno in (errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH) or \
                isinstance(exc, (av.error.ExitError, av.error.InvalidDataError)):
            return f"no answer from the stream within {timeout_s:g} s ({reason}): {name}"
        return f"cannot open the stream ({reason}): {name}"
    if isinstance(exc, av.error.InvalidDataError):
        return f"not a video file FFmpeg can read ({reason}): {name}"
    return f"cannot open input ({reason}): {name}"


def _describe(container: av.container.InputContainer, name: str, live: bool,
              max_pixels: int = MAX_PIXELS) -> StreamInfo:
    videos = container.streams.video
    if not videos:
        found = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                          for s in container.streams) or "none"
        raise ProbeError(f"no video stream in the input (streams found: {found}): {name}")
    stream = videos[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.name:
        raise ProbeError(f"unsupported video codec (FFmpeg has no decoder for video "
                         f"stream #{stream.index}): {name}")
    if not live or (ctx.width and ctx.height):  # a camera may tell its size only by a frame
        check_frame_size(ctx.width, ctx.height, max_pixels, name)  # before decoding one
    frame = _first_frame(container, stream, name)
    check_frame_size(frame.width, frame.height, max_pixels, name)
    try:
        bgr = frame.to_ndarray(format="bgr24")
    except (av.error.FFmpegError, ValueError) as exc:
        raise ProbeError(f"cannot convert {ctx.name} {frame.format.name} frames to BGR "
                         f"({exc}): {name}") from None
    rate = stream.average_rate or stream.guessed_rate
    duration = (float(stream.duration * stream.time_base)
                if stream.duration and stream.time_base else None)
    return StreamInfo(
        url=name, live=live, codec=ctx.name, width=bgr.shape[1], height=bgr.shape[0],
        pix_fmt=frame.format.name, fps=float(rate) if rate else None,
        time_base=stream.time_base, frames=stream.frames or None, duration_s=duration,
        has_audio=bool(container.streams.audio))


def check_frame_size(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuse an empty frame size, or frames over ``max_pixels``: each queued copy of a
    16K x 16K frame is 800 MB. The source stage checks every frame with it too."""
    if width <= 0 or height <= 0:
        raise ProbeError(f"the video stream has an empty frame size ({width}x{height}): "
                         f"{name}")
    if width * height > max_pixels:
        raise ProbeError(f"frames of {width}x{height} ({width * height / 1e6:.1f} Mpx) exceed "
                         f"max_pixels {max_pixels} (raise it in the config to accept them): "
                         f"{name}")


def _first_frame(container, stream, name: str) -> av.VideoFrame:
    try:
        for count, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return frame
            if count >= MAX_PROBE_PACKETS:
                break
    except av.error.FFmpegError as exc:
        reason = redact_text(getattr(exc, "strerror", None) or str(exc))
        raise ProbeError(f"cannot decode the video stream ({stream.codec_context.name}: "
                         f"{reason}): {name}") from None
    raise ProbeError(f"the video stream has no decodable frame "
                     f"({stream.codec_context.name}): {name}")


def check_output(target: str | os.PathLike, what: str = "output") -> str:
    """Fail early, with one line, if ``target`` cannot be written.

    Live URLs (``rtsp://...``) are returned unchanged; they are checked when the encoder
    connects. For files the parent folder must exist, be a folder and accept a new file
    (tested by creating one, so it is right for root and for read-only file systems too).
    """
    name = str(target)
    if is_live(name):
        return name
    path = Path(name)
    if path.is_dir():
        raise ProbeError(f"{what} is a directory, expected a file path: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise ProbeError(f"{what} folder does not exist: {parent}")
    if not parent.is_dir():
        raise ProbeError(f"{what} folder is not a directory: {parent}")
    check_writable_dir(parent, what)
    return name


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: by identity (device and inode) when both exist,
    which sees through hard links and symbolic links; else by resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def check_writable_dir(folder: str | os.PathLike, what: str = "output") -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ProbeError(f"{what} folder does not exist: {folder}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gimefive-write-test-"):
            pass
    except OSError as exc:
        raise ProbeError(f"{what} folder is not writable ({exc.strerror}): {folder}") from None
    return folder
