"""`gimefive explain`: scores CSV, figures, face detection, and bad inputs."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from gimefive.export.explain import square_box
from stand_in import random_weights

from gimefive.cli import main
from gimefive.labels import EMOTIONS


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("w") / "rand.safetensors", seed=11)


@pytest.fixture
def images(tmp_path, astronaut_bgr):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "astronaut.png"), astronaut_bgr)
    crop = cv2.resize(astronaut_bgr[60:200, 140:280], (64, 64), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "crop.jpg"), crop)
    # a JPEG named .png: decoded by content, not by suffix
    (folder / "misnamed.png").write_bytes(cv2.imencode(".jpg", crop)[1].tobytes())
    return folder


def run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_explain_folder_writes_csv_and_figures(images, weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GIMEFIVE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, stdout, err = run(["explain", str(images), "-o", str(out), "--weights", str(weights),
                             "--backend", "torch", "--quiet", "--activations"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["image"].split("/")[-1] for r in rows] == ["astronaut.png", "crop.jpg",
                                                         "misnamed.png"]
    by_name = {r["image"].split("/")[-1]: r for r in rows}
    astro = by_name["astronaut.png"]
    assert astro["source"] == "detected"  # RetinaFace found the one face
    x1, y1, x2, y2 = (int(astro[k]) for k in ("x1", "y1", "x2", "y2"))
    assert 120 < (x1 + x2) / 2 < 290 and 60 < (y1 + y2) / 2 < 200
    assert by_name["crop.jpg"]["source"] == "crop"
    for r in rows:
        p = np.array([float(r[e]) for e in EMOTIONS])
        assert abs(p.sum() - 1) < 1e-4
        top = EMOTIONS[int(p.argmax())]
        assert r["label"] == ("uncertain" if p.max() < 0.4 else top)
        assert r["uncertain"] == str(int(p.max() < 0.4))
    for stem in ("astronaut_face0", "crop_face0", "misnamed_face0"):
        assert (out / f"{stem}.png").stat().st_size > 5000
        assert (out / f"{stem}_activations.png").is_file()
    assert "3 face(s) from 3 image(s) (1 detected)" in stdout


def test_explain_never_detect_and_onnxruntime(images, weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GIMEFIVE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out2"
    code, _, err = run(["explain", str(images / "astronaut.png"), "-o", str(out), "--weights",
                        str(weights), "--backend", "onnxruntime", "--detect", "never"], capsys)
    assert code == 0, err
    (row,) = list(csv.DictReader((out / "scores.csv").open()))
    assert row["source"] == "crop" and (row["x2"], row["y2"]) == ("512", "512")


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing.jpg", "no such file or folder"),
    (lambda d: (d / "text.jpg").write_text("hello") and d / "text.jpg",
     "not an image OpenCV can decode"),
    (lambda d: (d / "empty.png").write_bytes(b"") or d / "empty.png",
     "not an image OpenCV can decode"),
    (lambda d: (d / "sub").mkdir() or d / "sub", "folder holds no image files"),
])
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, weights, make, message, capsys):
    bad = make(tmp_path)
    out = tmp_path / "out"
    code, _, err = run(["explain", str(bad), "-o", str(out), "--weights", str(weights)], capsys)
    assert code != 0 and message in err and str(bad.name) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_square_box_is_square_and_clipped():
    assert square_box(np.array([10, 10, 30, 50]), 1.0, 100, 100) == (0, 10, 40, 50)
    x1, y1, x2, y2 = square_box(np.array([40, 40, 60, 60]), 1.5, 100, 100)
    assert (x2 - x1, y2 - y1) == (30, 30)
