"""Accuracy and speed against the classify and detect intervals, on the real-faces scene
(issue 13).

The scene of tests/test_pipeline_real_faces.py: 480 RAF-DB test faces, 6 a frame, 60..114
px, moving, 160 frames at 640x360 (960 face instances; every face is replaced by another
in the same place every 2 frames, far more often than in real video). For each setting,
``gimefive annotate`` (the library call) runs the whole pipeline once; the table gives
whole-process fps (start-up included), the share of face-frames classified, accuracy of
the per-frame probabilities (argmax) and of the shown label against the truth, and the
share of face-frames whose shown label equals that of classifying every face on every
frame (``classify_every 1``, the first row).

    python benchmarks/classify_interval.py [--every 1,2,3,5,8] [--look 0.8]
        [--detect-every 1,2,3] [--out DIR]

Recall is that of the boxes written (detected, or carried between detections).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from gimefive.pipeline.bench.scenes import load_dataset_faces, make_scene_video
from gimefive.pipeline.config import load_annotate_config
from gimefive.pipeline.run import annotate_video
from gimefive.pipeline.tracking import match_boxes

from gimefive.labels import EMOTIONS


def face_rows(truth: dict, records: list[dict]) -> list[tuple]:
    """Per true face instance: (frame, slot, label, argmax of probs, shown label, measured),
    the last three None where no detected face matches it."""
    rows = []
    for frame, record in zip(truth["frames"], records, strict=True):
        gt = np.array(frame["boxes"], np.float32).reshape(-1, 4)
        found = np.array([f["box"] for f in record["faces"]], np.float32).reshape(-1, 4)
        pairs = dict(match_boxes(gt, found, 0.5))
        for g, label in enumerate(frame["labels"]):
            face = record["faces"][pairs[g]] if g in pairs else None
            rows.append((frame["index"], g, label,
                         None if face is None else int(np.argmax(face["probs"])),
                         None if face is None else EMOTIONS.index(face["label"]),
                         None if face is None else face.get("measured", True)))
    return rows


def run_one(scene: Path, truth: dict, work: Path, every: int, look: float, detect: int,
            weights) -> dict:
    config = load_annotate_config(None, classify_every=every, classify_look=look,
                                  detect_every=detect,
                                  **({"weights": weights} if weights else {}))
    name = f"{every}_{look}_{detect}"
    jsonl = work / f"faces_{name}.jsonl"
    start = time.perf_counter()
    result = annotate_video(scene, work / f"out_{name}.mp4", json_path=jsonl,
                            config=config, progress=False, force=True)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = face_rows(truth, records)
    found = [r for r in rows if r[3] is not None]
    return {"every": every, "look": look, "detect_every": detect,
            "fps": round(result.frames / wall, 2),
            "recall": round(len(found) / len(rows), 4),
            "classified": round(float(np.mean([r[5] for r in found])), 3),
            "accuracy": round(float(np.mean([r[3] == r[2] for r in found])), 4),
            "shown_accuracy": round(float(np.mean([r[4] == r[2] for r in found])), 4),
            "found": len(found), "instances": len(rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fer-gimefive")
    parser.add_argument("--every", default="1,2,3,5,8")
    parser.add_argument("--look", default="0.8", help="classify_look values, comma-separated")
    parser.add_argument("--detect-every", default="1", help="detect_every values")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args()
    faces = load_dataset_faces(480, "rafdb_test", root=Path(args.data), seed=1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene = work / "scene.mp4"
        truth = make_scene_video(scene, faces, 640, 360, n_frames=160, fps=25, seed=0,
                                 faces_per_frame=6)
        settings = [(1, 0.0, 1)] + [
            (int(e), float(lk), int(d)) for d in args.detect_every.split(",")
            for e in args.every.split(",") for lk in args.look.split(",")
            if (int(e), int(d)) != (1, 1)]
        for every, look, detect in settings:
            results.append(run_one(scene, truth, work, every, look, detect, args.weights))
    base = {(r[0], r[1]): r[4] for r in results[0]["rows"]}
    print(f"{'detect':>6} {'every':>5} {'look':>5} {'fps':>6} {'recall':>6} {'classified':>10} "
          f"{'accuracy':>8} {'shown acc':>9} {'same label as every=1':>21}")
    for r in results:
        same = [row[4] == base.get((row[0], row[1])) for row in r["rows"]
                if row[4] is not None and base.get((row[0], row[1])) is not None]
        r["same_label"] = round(float(np.mean(same)), 4)
        print(f"{r['detect_every']:>6} {r['every']:>5} {r['look']:>5} {r['fps']:>6} "
              f"{r['recall']:>6.1%} {r['classified']:>10.1%} "
              f"{r['accuracy']:>8.2%} {r['shown_accuracy']:>9.2%} {r['same_label']:>21.2%}")
    print(f"({results[0]['instances']} face instances; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for r in results:
            r.pop("rows")
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
