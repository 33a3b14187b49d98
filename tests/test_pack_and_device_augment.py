"""Packing a split for another machine, and the batched on-device augmentation path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gimefive.train.data import Augment, load_split
from gimefive.train.device_augment import augment_batch
from gimefive.train.loop import Trainer
from gimefive.train.pack import pack, unpack
from test_train import make_dataset, run_cli, tiny_config

from gimefive.errors import DataError
from gimefive.preprocess import normalize_gray


def test_pack_roundtrip_keeps_faces_and_csv(tmp_path, capsys):
    images, csv_path = make_dataset(tmp_path, per_class=50)  # 300 faces: two mosaics
    summary = pack(images, csv_path, tmp_path / "train.pack", quality=95)
    assert summary["faces"] == 300 and summary["mosaics"] == 2
    out_csv = unpack(tmp_path / "train.pack", tmp_path / "unpacked")
    assert out_csv.read_bytes() == csv_path.read_bytes()  # same CSV hash in checkpoints
    original = load_split(images, csv_path, cache_dir=None)
    restored = load_split(tmp_path / "unpacked", out_csv, cache_dir=None, strict=True)
    assert restored.filenames == original.filenames
    np.testing.assert_array_equal(restored.labels, original.labels)
    error = np.abs(restored.images.astype(int) - original.images).mean()
    assert error == pytest.approx(summary["mean_abs_error"], abs=1e-6) and error < 2.0

    capsys.readouterr()
    code, out, err = run_cli(capsys, "unpack-data", str(tmp_path / "nope.npz"), "-o",
                             str(tmp_path / "x"))
    assert code == 2 and err.strip() == f"gimefive: error: pack not found: {tmp_path / 'nope.npz'}"


def test_pack_refuses_missing_images(tmp_path):
    images, csv_path = make_dataset(tmp_path)
    (images / "img_0_0.jpg").unlink()
    with pytest.raises(DataError, match="img_0_0.jpg"):
        pack(images, csv_path, tmp_path / "p")


def test_device_augment_without_jitter_equals_cpu_normalisation():
    gray = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    out = augment_batch(torch.from_numpy(gray), None, None)
    np.testing.assert_allclose(out.numpy(), normalize_gray(gray), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.zeros(2, 64, 64), None, None)


def test_device_augment_flip_mirrors_and_jitter_is_seeded():
    gray = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (64, 64, 64),
                                                                dtype=np.uint8))
    flip_only = Augment(flip=True)
    out = augment_batch(gray, flip_only, torch.Generator().manual_seed(0))
    plain = augment_batch(gray, None, None)
    mirrored = torch.tensor([torch.allclose(o, p.flip(-1), atol=1e-4)
                             for o, p in zip(out, plain, strict=True)])
    unchanged = torch.tensor([torch.allclose(o, p, atol=1e-4)
                              for o, p in zip(out, plain, strict=True)])
    assert bool((mirrored | unchanged).all()) and 10 < int(mirrored.sum()) < 54

    jitter = Augment(flip=True, max_shift=3, max_rotate=10, max_scale=0.1)
    a = augment_batch(gray, jitter, torch.Generator().manual_seed(5))
    b = augment_batch(gray, jitter, torch.Generator().manual_seed(5))
    c = augment_batch(gray, jitter, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (64, 3, 64, 64) and float((a - plain).abs().mean()) > 0.05


def test_trainer_with_device_augmentation_trains_and_resumes(tmp_path):
    images, csv_path = make_dataset(tmp_path)
    cfg = tiny_config(epochs=2, augment_on="device", lr=0.01)
    trainer = Trainer(cfg, images, csv_path, tmp_path / "run", progress=False)
    assert trainer.augment_on == "device"
    result = trainer.run(stop_after=1)
    resumed = Trainer(cfg, images, csv_path, tmp_path / "run", progress=False).run(resume=True)
    assert result.epochs_run == 1 and [r["epoch"] for r in resumed.history] == [1, 2]
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(np.isfinite(r["train_loss"]) and r["images_per_second"] > 0 for r in history)
    assert (tmp_path / "run" / "best.safetensors").is_file()
