"""How the pipeline's crop framing (align, crop_scale, crop_shift_y) costs accuracy, measured on
faces the shipped model never trained on and that are not test faces: the RAF-DB part of
the shipped run's validation carve-out (stratified 5% of train_labels.csv, seed 0).

The faces are pasted into a moving 640x360 scene (gimefive.pipeline.bench.scenes), annotated by the
whole pipeline once per setting, and scored against ground truth. The same model on the
true boxes cut from the decoded frames is the reference (what rendering alone costs).

    python benchmarks/crop_framing.py [--data DATASET] [-o DIR]
        [--grid align|shift] [--pad 0.25]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
from gimefive.pipeline.bench.scenes import make_scene_video
from gimefive.pipeline.config import load_annotate_config
from gimefive.pipeline.run import annotate_video
from gimefive.pipeline.tracking import match_boxes
from gimefive.train.data import stratified_split

from gimefive.backends import create_backend
from gimefive.dataset import read_labels_csv, require_dataset
from gimefive.preprocess import preprocess_faces

REPO = Path(__file__).resolve().parent.parent


def validation_faces(root: Path) -> list[tuple[np.ndarray, int]]:
    rows = read_labels_csv(root / "train_labels.csv")
    _, val = stratified_split(np.array([label for _, label in rows]), 0.05, 0)
    rafdb = {name for name, _ in read_labels_csv(root / "splits" / "rafdb_train.csv")}
    return [(cv2.imread(str(root / "train" / rows[i][0])), rows[i][1])
            for i in val if rows[i][0] in rafdb]


def pipeline_accuracy(video: Path, truth: dict, work: Path, **settings) -> tuple[int, float]:
    out = work / "faces.jsonl"
    config = load_annotate_config(None, backend="auto", cam=False, **settings)
    annotate_video(video, None, json_path=out, config=config, progress=False, force=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    right = []
    for frame, record in zip(truth["frames"], records, strict=True):
        found = np.array([f["box"] for f in record["faces"]], np.float32).reshape(-1, 4)
        pairs = dict(match_boxes(np.array(frame["boxes"], np.float32), found, 0.5))
        for g, label in enumerate(frame["labels"]):
            if g in pairs:
                right.append(int(np.argmax(record["faces"][pairs[g]]["probs"])) == label)
    return len(right), float(np.mean(right))


def framing_grid(name: str) -> list[tuple[str, float, float]]:
    """``align``: each alignment mode at scales 0.95..1.05; ``shift``: eye alignment over
    centre shifts and scales (the session-2 sweep)."""
    if name == "align":
        return [(a, 0.0, s) for a in ("landmarks", "eyes", "none") for s in (0.95, 1.0, 1.05)]
    return [("eyes", sh, s) for sh in (-0.08, -0.04, 0.0, 0.04, 0.08) for s in (0.95, 1.0, 1.05)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="fer-gimefive dataset root [default: $GIMEFIVE_DATA, else "
                             "../shared/data/fer-gimefive]")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks/results/crop_framing")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--grid", choices=("align", "shift"), default="align")
    parser.add_argument("--pad", type=float, default=0.25,
                        help="blurred border around each pasted face, fraction of its size")
    args = parser.parse_args()
    faces = validation_faces(args.data or require_dataset("crop_framing"))
    result = {"faces": len(faces), "frames": args.frames, "faces_per_frame": 6, "pad": args.pad,
              "settings": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = work / "scene.mp4"
        truth = make_scene_video(video, faces, 640, 360, n_frames=args.frames, fps=25, seed=3,
                                 faces_per_frame=6, pad=args.pad)
        with av.open(str(video)) as c:
            decoded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
        exact = [(label, image[y1:y2, x1:x2])
                 for image, frame in zip(decoded, truth["frames"], strict=True)
                 for (x1, y1, x2, y2), label in zip(frame["boxes"], frame["labels"], strict=True)]
        with create_backend("auto") as backend:
            on_boxes = backend(preprocess_faces([e[1] for e in exact]), cam=False)[0].argmax(1)
            on_crops = backend(preprocess_faces([f[0] for f in faces]), cam=False)[0].argmax(1)
        result["true_boxes_accuracy"] = float(np.mean(on_boxes == [e[0] for e in exact]))
        result["crops_accuracy"] = float(np.mean(on_crops == [f[1] for f in faces]))
        # per face instance shown, as the pipeline and the true boxes are counted
        source = {f["id"]: f["source_index"] for f in truth["faces"]}
        shown = [source[i] for frame in truth["frames"] for i in frame["ids"]]
        result["crops_accuracy_per_instance"] = float(np.mean(
            on_crops[shown] == np.array([faces[k][1] for k in shown])))
        print(f"{len(faces)} faces, {len(shown)} instances; true boxes "
              f"{result['true_boxes_accuracy']:.4f}, crops {result['crops_accuracy']:.4f} "
              f"(per instance {result['crops_accuracy_per_instance']:.4f})", flush=True)
        for align, shift, scale in framing_grid(args.grid):
            n, acc = pipeline_accuracy(video, truth, work, align=align, crop_scale=scale,
                                       crop_shift_y=shift)
            result["settings"].append({"align": align, "crop_shift_y": shift,
                                       "crop_scale": scale, "detected": n, "accuracy": acc})
            print(f"align {align:9s} crop_shift_y {shift:+.2f} crop_scale {scale:.2f}: "
                  f"{acc:.4f} ({n} detected)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crop_framing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'crop_framing.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
