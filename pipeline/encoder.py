"""The one place every video sink chooses its encoder and opens its video stream.

The MP4 file, the live segments and the RTSP push all encode BGR frames the same way:
libx264 when this FFmpeg build has it (else the mpeg4 fallback), 4:2:0 pixels unless
libx264 has to encode an odd frame size (4:2:0 needs even sides; mpeg4 pads). Live
outputs also want a keyframe every second (each one starts a readable fragment) and no
look-ahead latency. :func:`video_frame` hands a BGR image to the encoder.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from gimefive.errors import GimefiveError

FALLBACK_CODEC = "mpeg4"


def pick_codec(preferred: str = "libx264") -> str:
    """``preferred`` when this FFmpeg build can encode it, else the mpeg4 fallback."""
    import av

    for name in (preferred, FALLBACK_CODEC):
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):  # unknown encoder
            continue
    raise GimefiveError(f"neither {preferred} nor {FALLBACK_CODEC} can be encoded by this "
                        f"FFmpeg build")


def add_video_stream(container, codec: str, width: int, height: int, rate: Fraction | None,
                     time_base: Fraction, crf: int, preset: str, threads: int | None = None,
                     live: bool = False):
    """Add a video stream for ``width`` x ``height`` BGR frames to ``container``.

    ``codec`` comes from :func:`pick_codec`; ``threads`` None leaves FFmpeg's choice.
    ``live``: a keyframe every second, x264's zero-latency tuning, and a lower bit rate
    for the fallback encoder.
    """
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    even = width % 2 == 0 and height % 2 == 0
    stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    if threads is not None:
        stream.codec_context.thread_count = max(1, threads)
    options = {"crf": str(crf), "preset": preset}
    if live:
        gop = max(1, round(float(rate or 25)))  # a keyframe (and so a fragment) every second
        stream.codec_context.gop_size = gop
        options |= {"keyint": str(gop), "min-keyint": "1", "scenecut": "0",
                    "tune": "zerolatency"}
    if codec == "libx264":
        stream.options = options
    else:
        stream.bit_rate = max(1_000_000, width * height * 4) if live \
            else max(2_000_000, width * height * 8)
    return stream


def video_frame(image: np.ndarray):
    """The BGR ``image`` as an ``av.VideoFrame`` to encode (no timestamp yet).

    The frame wraps the array (PyAV's ``from_numpy_buffer``, which keeps it alive)
    where ``from_ndarray`` copied it twice, 0.2 to 1 ms a 640x360 frame; the encoder's
    libswscale then converts it as before, so the video is the same, byte for byte.
    The caller must not change ``image`` afterwards (each frame here is a new drawing).

    Not OpenCV's conversion to 4:2:0 in place of libswscale's: ``COLOR_BGR2YUV_I420``
    takes each 2x2 block's chroma from one pixel, and the aliased chroma of the drawn
    text made the reference scene's video 17 % larger; with block means (several more
    OpenCV calls) it cost as much as libswscale (benchmarks/annotate_cost.py).
    """
    import av

    return av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(image), format="bgr24")
