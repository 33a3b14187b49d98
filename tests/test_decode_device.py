"""Where a file is decoded (``decode_device``): NVDEC where it works, else the CPU with one
logged reason; ``cuda`` where it cannot work is one clear error.

Only the paths without a GPU are tested here (this machine has none): NVDEC actually
decoding is measured by benchmarks/gpu_check.py on a GPU machine.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from clips import write_still_clip
from gimefive.pipeline import readers
from gimefive.pipeline.readers import cuda_decode_unavailable, open_reader
from gimefive.pipeline.summary import AnnotateResult, format_summary

from gimefive.errors import GimefiveError

NO_CUDA = cuda_decode_unavailable()


@pytest.fixture
def clip(tmp_path, astronaut_bgr):
    noisy = astronaut_bgr.copy()
    noisy[::7] = 0  # not a flat picture: decoding differences would show
    return write_still_clip(tmp_path / "clip.mp4", noisy, (96, 64), 6)


def decode_all(path, device):
    reader = open_reader(str(path), "file", decode_device=device)
    try:
        return [f.image for f in reader.read()], reader.info()["decode"]
    finally:
        reader.close()


@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA driver is present: NVDEC may run here")
def test_auto_without_cuda_falls_back_with_one_logged_reason(clip, caplog):
    with caplog.at_level(logging.WARNING, logger="gimefive.decode"):
        frames, path = decode_all(clip, "auto")
    reasons = [r.getMessage() for r in caplog.records if r.name == "gimefive.decode"]
    assert reasons == [f"decode: cpu ({NO_CUDA})"]
    assert path == f"cpu ({NO_CUDA})"
    plain, plain_path = decode_all(clip, "cpu")
    assert plain_path == "cpu"
    assert len(frames) == len(plain) == 6
    assert all(np.array_equal(a, b) for a, b in zip(frames, plain, strict=True))


@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA driver is present: NVDEC may run here")
def test_cuda_listed_but_no_device_opens_cleanly_on_the_cpu(clip, caplog, monkeypatch):
    """FFmpeg lists ``cuda`` here although there is no GPU: creating the device fails,
    and ``auto`` decodes on the CPU, saying so."""
    monkeypatch.setattr(readers, "cuda_decode_unavailable", lambda: None)
    with caplog.at_level(logging.WARNING, logger="gimefive.decode"):
        frames, path = decode_all(clip, "auto")
    reasons = [r.getMessage() for r in caplog.records if r.name == "gimefive.decode"]
    assert len(reasons) == 1 and reasons[0].startswith("decode: cpu (cannot open the CUDA "
                                                       "device: ")
    assert path.startswith("cpu (cannot open the CUDA device: ")
    plain, _ = decode_all(clip, "cpu")
    assert all(np.array_equal(a, b) for a, b in zip(frames, plain, strict=True))


@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA driver is present: NVDEC may run here")
def test_cuda_when_unavailable_is_one_clear_error(clip):
    with pytest.raises(GimefiveError) as err:
        open_reader(str(clip), "file", decode_device="cuda")
    assert str(err.value) == f"decode_device=cuda: {NO_CUDA}"


def test_cpu_logs_nothing(clip, caplog):
    with caplog.at_level(logging.WARNING, logger="gimefive.decode"):
        _, path = decode_all(clip, "cpu")
    assert path == "cpu"
    assert not [r for r in caplog.records if r.name == "gimefive.decode"]


def test_bad_decode_device_is_one_clear_error(clip):
    with pytest.raises(GimefiveError, match="decode_device: expected one of"):
        open_reader(str(clip), "file", decode_device="gpu")


def test_summary_says_which_decode_path_ran():
    result = AnnotateResult(frames=1, faces=0, wall_s=1, processing_s=1, fps=1, cores=1,
                            parallel_efficiency=1,
                            info={"source": {"decode": "cpu (no CUDA device)"}})
    assert "decode: cpu (no CUDA device)" in format_summary(result).splitlines()


def test_config_rejects_an_unknown_decode_device():
    from gimefive.pipeline.config import load_annotate_config

    assert load_annotate_config().decode_device == "auto"
    with pytest.raises(Exception, match="decode_device"):
        load_annotate_config(decode_device="gpu")


@pytest.mark.slow
@pytest.mark.skipif(NO_CUDA is None, reason="a CUDA driver is present: NVDEC may run here")
def test_annotate_with_cuda_decoding_unavailable_is_one_line(clip, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "cuda.yaml"
    config.write_text("decode_device: cuda\n")
    out = tmp_path / "out.mp4"
    run = subprocess.run([sys.executable, "-c", "from gimefive.cli import main; main()",
                          "annotate", str(clip), "-o", str(out), "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        f"gimefive: error: stage source failed: decode_device=cuda: {NO_CUDA} "
        f"(exited with status 3)"]
