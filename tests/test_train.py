"""Training data, loop and CLI on a tiny synthetic dataset written to tmp (fast, no real data)."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
from gimefive.train.data import (
    Augment,
    FaceDataset,
    collate_faces,
    load_split,
    stratified_split,
)
from gimefive.train.loop import (
    EpochSampler,
    Trainer,
    TrainingInterrupted,
    load_train_config,
    lr_factor,
)

from gimefive.checkpoint import read_metadata
from gimefive.cli import main
from gimefive.dataset import read_labels_csv
from gimefive.errors import DataError, GimefiveError
from gimefive.labels import EMOTIONS
from gimefive.preprocess import preprocess_faces


def make_dataset(root, per_class: int = 3, size: int = 40):
    """Colour images of different sizes, one brightness pattern per class; returns dir, csv."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for label in range(len(EMOTIONS)):
        for k in range(per_class):
            img = rng.integers(0, 60, (size, size + k, 3), dtype=np.uint8)
            img[: size // 2, :, label % 3] += np.uint8(40 * (label + 1))
            name = f"img_{label}_{k}.jpg"
            cv2.imwrite(str(images / name), img)
            rows.append(f"{name},{label}")
    csv_path = root / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return images, csv_path


def tiny_config(**overrides):
    base = dict(epochs=1, batch_size=4, val_fraction=0.34, early_stopping_patience=0,
                seed=3, flip=True, max_shift=2.0, max_rotate=5.0, cache_dir="",
                eval_batch_size=8, precision="fp32", threads=2)
    return load_train_config(None, **{**base, **overrides})


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Exit status (0 on a normal return), stdout and stderr of ``gimefive ARGS``."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- data


def test_split_matches_preprocess(tmp_path):
    images, csv_path = make_dataset(tmp_path)
    split = load_split(images, csv_path, cache_dir=None)
    assert split.images.shape == (18, 64, 64) and split.images.dtype == np.uint8
    first = cv2.imread(str(images / split.filenames[0]))
    x, _ = collate_faces([(split.images[0], 0)])
    np.testing.assert_allclose(x.numpy(), preprocess_faces(first), atol=1e-6)


def test_decodes_by_content_not_extension(tmp_path):
    png = np.full((30, 30, 3), 200, np.uint8)
    ok, buf = cv2.imencode(".png", png)
    (tmp_path / "face.jpg").write_bytes(buf.tobytes())
    (tmp_path / "labels.csv").write_text("face.jpg,2\n")
    split = load_split(tmp_path, tmp_path / "labels.csv", cache_dir=None)
    assert ok and len(split) == 1 and split.images[0].mean() == pytest.approx(200, abs=1)


def test_cache_is_reused_and_keyed_by_csv(tmp_path):
    images, csv_path = make_dataset(tmp_path)
    first = load_split(images, csv_path, cache_dir=tmp_path / "cache")
    (images / first.filenames[0]).unlink()  # would be skipped if decoded again
    again = load_split(images, csv_path, cache_dir=tmp_path / "cache")
    assert again.skipped == [] and np.array_equal(again.images, first.images)
    csv_path.write_text(csv_path.read_text() + "\n")  # new content -> new cache key
    fresh = load_split(images, csv_path, cache_dir=tmp_path / "cache")
    assert fresh.skipped == [first.filenames[0]]


def test_missing_and_corrupt_images_skipped_or_strict(tmp_path):
    images, csv_path = make_dataset(tmp_path)
    (images / "img_0_0.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with open(csv_path, "a") as f:
        f.write("gone.jpg,1\n")
    split = load_split(images, csv_path, cache_dir=None)
    assert sorted(split.skipped) == ["gone.jpg", "img_0_0.jpg"] and len(split) == 17
    with pytest.raises(DataError, match="img_0_0.jpg"):
        load_split(images, csv_path, cache_dir=None, strict=True)


@pytest.mark.parametrize("row, message", [
    ("a.jpg,9", "row 2 \\(a.jpg\\): label 9 is outside 0..5"),
    ("a.jpg,x", "row 2 \\(a.jpg\\): label 'x' is not an integer"),
    ("nolabel", "row 2: expected 'filename,label'"),
])
def test_bad_csv_rows_name_file_and_row(tmp_path, row, message):
    path = tmp_path / "l.csv"
    path.write_text(f"ok.jpg,1\n{row}\n")
    with pytest.raises(DataError, match=message):
        read_labels_csv(path)


def test_stratified_split_keeps_every_class():
    labels = np.repeat(np.arange(6), [50, 20, 10, 10, 4, 6])
    train_idx, val_idx = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(train_idx) + len(val_idx) == len(labels)
    assert np.bincount(labels[val_idx], minlength=6).tolist() == [10, 4, 2, 2, 1, 1]


def test_augmentation_is_seeded_and_changes_pixels(tmp_path):
    images, csv_path = make_dataset(tmp_path)
    split = load_split(images, csv_path, cache_dir=None)
    a = FaceDataset(split, Augment(True, 3.0, 10.0, 0.05), seed=1)
    b = FaceDataset(split, Augment(True, 3.0, 10.0, 0.05), seed=1)
    same = [np.array_equal(a[i][0], b[i][0]) for i in range(len(split))]
    changed = [not np.array_equal(a[i][0], split.images[i]) for i in range(len(split))]
    a.set_epoch(1)
    other_epoch = [not np.array_equal(a[i][0], b[i][0]) for i in range(len(split))]
    assert all(same) and all(changed) and any(other_epoch)


def test_epoch_sampler_streams_passes_and_resumes():
    chunks = [list(EpochSampler(10, 0, e, 0, 4)) for e in range(5)]
    flat = sum(chunks, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert list(EpochSampler(10, 0, 1, 2, 4)) == chunks[1][2:]


def test_onecycle_schedule_shape():
    cfg = tiny_config(schedule="onecycle", warmup_epochs=1.0, epochs=4)
    f = [lr_factor(cfg, s, 40, 10) for s in range(41)]
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(1.0)
    assert f[40] == pytest.approx(0.0) and bool(np.all(np.diff(f[10:]) <= 1e-12))


# ----------------------------------------------------------------------------- loop


def test_train_resume_equals_uninterrupted_and_eval(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GIMEFIVE_CACHE", str(tmp_path / "cache"))
    images, csv_path = make_dataset(tmp_path)
    cfg = tiny_config(epochs=2, schedule="onecycle", warmup_epochs=0.5, lr=0.01)
    straight = Trainer(cfg, images, csv_path, tmp_path / "a", progress=False).run()
    interrupted = Trainer(cfg, images, csv_path, tmp_path / "b", progress=False)
    interrupted._stop_signal = "SIGINT"  # as if Ctrl-C arrived during the first step
    with pytest.raises(TrainingInterrupted, match="resume"):
        interrupted.run()
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step_in_epoch"] == 1
    Trainer(cfg, images, csv_path, tmp_path / "b", progress=False).run(resume=True, stop_after=1)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())[0]["epoch"] == 1
    resumed = Trainer(cfg, images, csv_path, tmp_path / "b", progress=False).run(resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    sa = torch.load(tmp_path / "a" / "state.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert straight.history[-1]["train_loss"] == pytest.approx(resumed.history[-1]["train_loss"])

    meta = read_metadata(tmp_path / "b" / "best.safetensors")
    assert meta["classes"] == list(EMOTIONS) and meta["recipe"]["epochs"] == 2
    assert len(meta["data"]["train_csv_sha256"]) == 64 and 0 < meta["uncertain_threshold"] < 1
    for name in ("config.yaml", "metrics.csv", "metrics.json", "state.pt"):
        assert (tmp_path / "b" / name).is_file()

    code, out, err = run_cli(capsys, "eval", "--weights", str(tmp_path / "b" / "best.safetensors"),
                             "--data-dir", str(images), "--csv", str(csv_path),
                             "-o", str(tmp_path / "ev"), "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["count"] == 18 and sum(map(sum, report["confusion"])) == 18
    rows = (tmp_path / "ev" / "scores.csv").read_text().splitlines()
    assert rows[0].split(",") == ["filename", "label", "prediction", *EMOTIONS, "uncertain"]
    assert len(rows) == 19 and (tmp_path / "ev" / "confusion.png").stat().st_size > 1000


def test_refuses_to_overwrite_a_run(tmp_path):
    images, csv_path = make_dataset(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.safetensors").write_bytes(b"keep me")
    with pytest.raises(GimefiveError, match="already holds a training run"):
        Trainer(tiny_config(), images, csv_path, tmp_path / "run", progress=False).run()
    assert (tmp_path / "run" / "best.safetensors").read_bytes() == b"keep me"


def test_bad_config_value_is_one_line(tmp_path):
    with pytest.raises(GimefiveError, match="schedule"):
        tiny_config(schedule="linear")


# ----------------------------------------------------------------------------- CLI


@pytest.fixture()
def bad_data(tmp_path):
    images, csv_path = make_dataset(tmp_path, per_class=2)
    return tmp_path, images, csv_path


def _train_args(images, csv_path, out):
    return ["train", "--data-dir", str(images), "--train-csv", str(csv_path), "--out", str(out),
            "--quiet", "--strict"]


@pytest.mark.parametrize("case, expected", [
    ("missing image", "missing or unreadable image: .*gone.jpg"),
    ("corrupt jpeg", "missing or unreadable image: .*img_1_0.jpg"),
    ("label 9", "row 13 \\(x.jpg\\): label 9 is outside 0..5"),
    ("missing csv", "labels CSV not found: .*nope.csv"),
    ("missing folder", "image folder not found: .*nowhere"),
])
def test_bad_data_gives_one_line(bad_data, capsys, monkeypatch, case, expected):
    tmp_path, images, csv_path = bad_data
    monkeypatch.setenv("GIMEFIVE_CACHE", str(tmp_path / "cache"))
    if case == "missing image":
        csv_path.write_text(csv_path.read_text() + "gone.jpg,1\n")
    elif case == "corrupt jpeg":
        (images / "img_1_0.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF garbage")
    elif case == "label 9":
        csv_path.write_text(csv_path.read_text() + "x.jpg,9\n")
    elif case == "missing csv":
        csv_path = tmp_path / "nope.csv"
    else:
        images = tmp_path / "nowhere"
    code, out, err = run_cli(capsys, *_train_args(images, csv_path, tmp_path / "run"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("gimefive: error: ")
    assert re.search(expected, lines[0]), lines[0]


def test_missing_image_without_strict_is_counted(bad_data, capsys, monkeypatch):
    tmp_path, images, csv_path = bad_data
    monkeypatch.setenv("GIMEFIVE_CACHE", str(tmp_path / "cache"))
    csv_path.write_text(csv_path.read_text() + "gone.jpg,1\n")
    args = [a for a in _train_args(images, csv_path, tmp_path / "run") if a != "--strict"]
    code, out, err = run_cli(capsys, *args, "--epochs", "1", "--batch-size", "4",
                             "--precision", "fp32")
    assert code == 0, err
    assert "skipped 1 missing or unreadable image(s), e.g." in err and "gone.jpg" in err


def test_bad_flag_is_bad_parameter(bad_data, capsys):
    tmp_path, images, csv_path = bad_data
    code, out, err = run_cli(capsys, *_train_args(images, csv_path, tmp_path / "r"),
                             "--epochs", "0")
    assert code == 2 and "--epochs" in err and "must be >= 1, got 0" in err
