"""Shipping a run: fp16 weights that load as fp32, threshold and test numbers in metadata."""

from __future__ import annotations

import json
import shutil

import torch
from gimefive.train.loop import Trainer
from gimefive.train.ship import TEST_SPLITS, ship
from test_train import make_dataset, tiny_config

from gimefive.checkpoint import load_model, read_metadata


def test_ship_writes_fp16_weights_with_metadata(tmp_path):
    root = tmp_path / "data"
    images, csv_path = make_dataset(tmp_path / "src")
    (root / "splits").mkdir(parents=True)
    shutil.copytree(images, root / "train")
    shutil.copytree(images, root / "test")  # stands in for test images in this toy layout
    for csv_rel in ("train_labels.csv", *(c for c, _ in TEST_SPLITS.values())):
        shutil.copy(csv_path, root / csv_rel)
    cfg = tiny_config(cache_dir=str(tmp_path / "cache"))
    Trainer(cfg, root / "train", root / "train_labels.csv", tmp_path / "run",
            progress=False).run()
    out = tmp_path / "gimefive.safetensors"
    ship(tmp_path / "run", root, out, tmp_path / "eval", root / "train_labels.csv")

    meta = read_metadata(out)
    assert meta["dtype"] == "float16" and set(meta["test"]) == set(TEST_SPLITS)
    assert 0 < meta["uncertain_threshold"] < 1 and meta["validation"]["faces"] == 6
    assert all(0 <= t["accuracy"] <= 1 and t["count"] == 18 for t in meta["test"].values())
    model, _ = load_model(out)
    assert next(model.parameters()).dtype == torch.float32
    full = load_model(tmp_path / "run" / "best.safetensors")[0].state_dict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, full[k].half().float()), k
    for name in TEST_SPLITS:
        report = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert report["uncertain_threshold"] == meta["uncertain_threshold"]
