"""Turn a finished training run into the shipped default weights.

    python -m gimefive.train.ship --run runs/shipped [--data ../shared/data/fer-gimefive]

Steps: round the run's best weights to fp16 (about 21 MB; ``load_model`` reads them
back as fp32); choose ``uncertain_threshold`` on the run's own validation carve-out
(rebuilt from its config and seed) with the fp16-rounded model; evaluate that exact
model on the test splits, writing each split's metrics.json, confusion.png and
scores.csv; write ``gimefive/weights/gimefive.safetensors`` with all of it in the
metadata. Test files are only ever evaluated here, after training has finished.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from gimefive.train.data import load_split, stratified_split
from gimefive.train.evaluate import (
    choose_uncertain_threshold,
    compute_metrics,
    format_metrics,
    predict_probs,
    write_report,
)
from gimefive.train.loop import BEST_FILE, CONFIG_FILE, TrainConfig

from gimefive.checkpoint import DEFAULT_WEIGHTS, load_model, read_metadata, save_weights
from gimefive.config import load_config
from gimefive.dataset import SPLITS, require_dataset
from gimefive.digest import file_sha256
from gimefive.errors import GimefiveError

AGG = "aggregate_test"
#: name -> (CSV, image folder), relative to the dataset root; the aggregate holds both
TEST_SPLITS = {"rafdb_test": SPLITS["rafdb_test"], "fer2013_test": SPLITS["fer2013_test"],
               AGG: SPLITS["test"]}


def fp16_round_trip(model: torch.nn.Module) -> torch.nn.Module:
    """The model exactly as the fp16 file will load (rounded to fp16, back to fp32)."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model


def ship(run_dir: Path, data_root: Path, out: Path, eval_dir: Path, train_csv: Path) -> dict:
    best = run_dir / BEST_FILE
    if not best.is_file():
        raise GimefiveError(f"no best weights in {run_dir} (expected {best})")
    meta = read_metadata(best)
    config = load_config(TrainConfig, run_dir / CONFIG_FILE)
    if file_sha256(train_csv) != meta["data"]["train_csv_sha256"]:
        raise GimefiveError(f"{train_csv} is not the CSV this run was trained on")
    model = fp16_round_trip(load_model(best)[0])

    full = load_split(data_root / "train", train_csv, cache_dir=config.cache_dir or None)
    _, val_idx = stratified_split(full.labels, config.val_fraction, config.seed)
    val = full.subset(val_idx)
    val_probs = predict_probs(model, val.images, progress=True)
    threshold = choose_uncertain_threshold(val_probs, val.labels)
    val_metrics = compute_metrics(val.labels, val_probs)
    val_uncertain = int(np.sum(val_probs.max(axis=1) < threshold))
    print(f"validation ({len(val)} faces): {val_metrics.accuracy * 100:.2f}%; "
          f"uncertain_threshold {threshold:.2f} marks {val_uncertain} faces "
          f"({val_uncertain / len(val) * 100:.1f}%) uncertain", flush=True)

    tests = {}
    known: dict[str, np.ndarray] = {}  # file -> probs; the aggregate holds both benchmarks
    for name, (csv_rel, folder) in sorted(TEST_SPLITS.items(), key=lambda kv: kv[0] != AGG):
        started = time.monotonic()
        split = load_split(data_root / folder, data_root / csv_rel)
        if all(f in known for f in split.filenames):
            probs = np.stack([known[f] for f in split.filenames])
        else:
            probs = predict_probs(model, split.images, progress=True)
            known.update(zip(split.filenames, probs, strict=True))
        m = compute_metrics(split.labels, probs)
        write_report(eval_dir / name, m, split.filenames, split.labels, probs, threshold,
                     {"weights": str(out), "csv": csv_rel, "csv_sha256": split.csv_sha256,
                      "seconds": round(time.monotonic() - started, 1)},
                     title=f"{name}: {m.accuracy * 100:.2f}%")
        tests[name] = {"csv": csv_rel, "csv_sha256": split.csv_sha256,
                       "accuracy": m.accuracy, "macro_recall": m.macro_recall,
                       "per_class_accuracy": m.per_class_accuracy,
                       "uncertain": int(np.sum(probs.max(axis=1) < threshold)),
                       "count": m.count}
        print(f"{name}: {format_metrics(m)}", flush=True)

    shipped_meta = {**meta, "uncertain_threshold": threshold,
                    "threshold_rule": "top probability below which validation predictions "
                                      "are more often wrong than right (train.evaluate)",
                    "validation": {"faces": len(val), "accuracy": val_metrics.accuracy,
                                   "macro_recall": val_metrics.macro_recall,
                                   "uncertain": val_uncertain},
                    "test": tests, "source_run": str(run_dir), "dtype": "float16"}
    save_weights(out, model, shipped_meta, dtype=torch.float16)
    (eval_dir / "summary.json").write_text(json.dumps(shipped_meta, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {eval_dir}/summary.json")
    return shipped_meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument("--data", type=Path, default=None,
                        help="fer-gimefive dataset root [default: $GIMEFIVE_DATA, else "
                             "../shared/data/fer-gimefive]")
    parser.add_argument("--train-csv", type=Path, default=None,
                        help="the run's training CSV [default: DATA/train_labels.csv]")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--eval-dir", type=Path, default=Path("runs/shipped_eval"))
    args = parser.parse_args()
    try:
        data = args.data or require_dataset("shipping a run")
        ship(args.run, data, args.out, args.eval_dir, args.train_csv or data / "train_labels.csv")
    except GimefiveError as exc:
        raise SystemExit(f"gimefive: error: {exc}") from None


if __name__ == "__main__":
    main()
