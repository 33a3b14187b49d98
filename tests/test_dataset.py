"""The one dataset locator: ``$GIMEFIVE_DATA`` first, a clear error when nothing is found."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from gimefive.pipeline.bench.scenes import default_faces, load_dataset_faces

from gimefive import dataset
from gimefive.errors import DataError


def fake_dataset(root):
    """A tiny fer-gimefive layout: two test faces, labels 3 and 5."""
    (root / "splits").mkdir(parents=True)
    (root / "test").mkdir()
    for name, value in (("a.png", 40), ("b.png", 200)):
        cv2.imwrite(str(root / "test" / name), np.full((64, 64, 3), value, np.uint8))
    rows = "a.png,3\nb.png,5\n"
    for rel in ("test_labels.csv", "train_labels.csv", "splits/rafdb_test.csv"):
        (root / rel).write_text(rows)
    return root


def test_the_environment_variable_wins_and_every_user_sees_it(tmp_path, monkeypatch):
    root = fake_dataset(tmp_path / "fer")
    monkeypatch.setenv(dataset.DATA_ENV, str(root))
    assert dataset.find_dataset() == root
    faces, source = default_faces(2)  # the bench's scenes use it too
    assert source == "rafdb_test" and sorted(label for _, label in faces) == [3, 5]
    from gimefive.export.faces import verification_faces

    assert verification_faces(2).source == "rafdb_test.csv (2)"


def test_no_dataset_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(dataset.DATA_ENV, str(tmp_path / "nothing"))
    monkeypatch.setattr(dataset, "CHECKOUT_DATA", tmp_path / "nothing either")
    assert dataset.find_dataset() is None
    with pytest.raises(DataError, match="INT8 calibration needs the FER dataset.*GIMEFIVE_DATA"):
        from gimefive.export.faces import calibration_faces

        calibration_faces(4)
    with pytest.raises(DataError, match="rafdb_test split needs the FER dataset"):
        load_dataset_faces(1)


def test_a_bad_label_row_names_file_and_row(tmp_path, monkeypatch):
    root = fake_dataset(tmp_path / "fer")
    (root / "splits" / "rafdb_test.csv").write_text("a.png,3\nb.png,happy\n")
    with pytest.raises(DataError, match=r"rafdb_test.csv row 2 \(b.png\)"):
        load_dataset_faces(1, root=root)
    shutil.rmtree(root / "splits")
    monkeypatch.setenv(dataset.DATA_ENV, str(root))
    assert dataset.find_dataset() != root  # not a dataset without its splits
