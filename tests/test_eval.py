"""Evaluation metrics on hand-made numbers, the threshold rule, and the report files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from gimefive.train.evaluate import (
    Metrics,
    choose_uncertain_threshold,
    confusion_matrix,
    predict_probs,
    write_report,
)

from gimefive.checkpoint import save_weights
from gimefive.cli import main
from gimefive.labels import EMOTIONS
from gimefive.model import GiMeFive

# rows: true class, columns: predicted; disgust (row 4) has no faces at all
HAND_CM = np.array([
    [8, 1, 1, 0, 0, 0],
    [0, 4, 0, 0, 0, 0],
    [1, 0, 3, 1, 0, 0],
    [0, 0, 0, 2, 0, 2],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 1],
])


def test_metrics_on_a_hand_made_confusion_matrix():
    m = Metrics.from_confusion(HAND_CM)
    assert m.count == 25
    assert m.accuracy == pytest.approx(18 / 25)
    assert m.per_class_accuracy["happiness"] == pytest.approx(0.8)
    assert m.per_class_accuracy["sadness"] == pytest.approx(0.6)
    assert m.per_class_accuracy["disgust"] is None  # no support: left out of macro recall
    assert m.macro_recall == pytest.approx((0.8 + 1.0 + 0.6 + 0.5 + 0.5) / 5)
    assert m.support == dict(zip(EMOTIONS, [10, 4, 5, 4, 0, 2], strict=True))


def test_confusion_matrix_counts_pairs():
    labels = np.array([0, 0, 1, 5, 5, 5])
    preds = np.array([0, 1, 1, 5, 2, 5])
    cm = confusion_matrix(labels, preds)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1 and cm[5, 5] == 2 and cm[5, 2] == 1
    assert cm.sum() == 6


def test_threshold_separates_right_from_wrong():
    # confident faces are right, unsure ones wrong: the cut lands in (0.5, 0.7]
    probs = np.full((6, 6), 0.0, np.float32)
    tops = [0.9, 0.8, 0.7, 0.5, 0.4, 0.3]
    for i, t in enumerate(tops):
        probs[i] = (1 - t) / 5
        probs[i, 0] = t
    labels = np.array([0, 0, 0, 1, 1, 1])
    t = choose_uncertain_threshold(probs, labels)
    assert 0.5 < t <= 0.7


def test_report_files(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), size=12).astype(np.float32)
    labels = rng.integers(0, 6, 12)
    m = Metrics.from_confusion(confusion_matrix(labels, probs.argmax(1)))
    names = [f"f{i}.jpg" for i in range(12)]
    paths = write_report(tmp_path, m, names, labels, probs, threshold=0.3)
    with open(paths["scores"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["filename"] for r in rows] == names
    assert all(int(r["uncertain"]) == (float(max(r[e] for e in EMOTIONS)) < 0.3) for r in rows)
    assert all(int(r["prediction"]) == p for r, p in zip(rows, probs.argmax(1), strict=True))
    png = paths["confusion"].read_bytes()
    assert png.startswith(b"\x89PNG")


def test_predict_probs_batches_agree():
    torch.manual_seed(0)
    model = GiMeFive().eval()
    faces = np.random.default_rng(1).integers(0, 255, (5, 64, 64), dtype=np.uint8)
    a = predict_probs(model, faces, batch_size=2)
    b = predict_probs(model, faces, batch_size=5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-5)


def test_eval_cli_reads_paper_pth_and_reports_missing_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GIMEFIVE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    pth = tmp_path / "paper.pth"
    torch.save(GiMeFive().state_dict(), pth)
    (tmp_path / "img").mkdir()
    import cv2
    for i in range(3):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.jpg"), np.full((64, 64, 3), 60 * i, np.uint8))
    (tmp_path / "l.csv").write_text("0.jpg,0\n1.jpg,3\n2.jpg,5\n")
    args = ["eval", "--data-dir", str(tmp_path / "img"), "--csv", str(tmp_path / "l.csv"),
            "-o", str(tmp_path / "ev"), "--quiet"]
    main([*args, "--weights", str(pth)])
    out = capsys.readouterr().out
    assert "accuracy" in out and (tmp_path / "ev" / "scores.csv").is_file()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--weights", str(tmp_path / "none.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "weights file not found" in err[0]
    save_weights(tmp_path / "w.safetensors", GiMeFive(), {"uncertain_threshold": 0.99})
    main([*args, "--weights", str(tmp_path / "w.safetensors")])
    assert "uncertain (top probability < 0.99): 3 of 3" in capsys.readouterr().out
