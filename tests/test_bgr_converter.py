"""The readers' BGR conversion (one swscale context per reader) gives exactly the pixels of
PyAV's ``to_ndarray(format="bgr24")``, whatever the frames' size and pixel format, also
when they change from one frame to the next (a camera reconnected at another size)."""

import av
import numpy as np
import pytest
from gimefive.pipeline.readers import BgrConverter, FileReader


def frame_of(fmt: str, width: int, height: int, seed: int = 0) -> av.VideoFrame:
    """A textured frame in pixel format ``fmt`` (made from random BGR, then converted)."""
    rng = np.random.default_rng(seed)
    bgr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    bgr[: height // 2] //= 3  # some structure besides noise
    return av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format=fmt)


CASES = [("yuv420p", 64, 36), ("yuv420p", 33, 17), ("yuv444p", 40, 30), ("gray", 31, 20),
         ("yuvj422p", 48, 32), ("nv12", 64, 48), ("bgr24", 20, 10), ("rgb24", 21, 11)]


@pytest.mark.parametrize(("fmt", "width", "height"), CASES)
def test_same_pixels_as_pyav_bgr24(fmt, width, height):
    frame = frame_of(fmt, width, height)
    image = BgrConverter()(frame)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, frame.to_ndarray(format="bgr24"))


def test_one_converter_follows_size_and_format_changes():
    convert = BgrConverter(threads=2)
    for i, (fmt, width, height) in enumerate(CASES * 2):
        frame = frame_of(fmt, width, height, seed=i)
        np.testing.assert_array_equal(convert(frame), frame.to_ndarray(format="bgr24"))


def test_file_reader_frames_match_pyav_bgr24(tmp_path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 66, 34, "yuv420p"
        for i in range(6):
            for packet in stream.encode(frame_of("yuv420p", 66, 34, seed=i)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as container:
        expected = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    reader = FileReader(str(path))
    try:
        images = [frame.image for frame in reader.read()]
    finally:
        reader.close()
    assert len(images) == len(expected) == 6
    for image, want in zip(images, expected, strict=True):
        np.testing.assert_array_equal(image, want)
