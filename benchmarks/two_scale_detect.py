"""Two-scale detection: how often must the enlarged pass run? (``detect_upscale_every``)

With ``--detect-upscale`` a 640x360 frame is enlarged to 1280x720 before RetinaFace, so
faces of 16-30 px are found, at about four times the network's cost. The detect stage
can run that enlarged pass on every Nth detected frame only and detect the others at
the frame's own size, carrying the faces the cheap pass misses (see
``pipeline/stages/detect.py``). This drives the real :class:`DetectStage` over the bench's
wide scene (640x360, 12 faces of 16-120 px, 100 frames, the same generator and seed as
``gimefive bench``) for each N and scores its boxes against the ground truth (IoU 0.5),
with the detector's CPU time per frame.

    python benchmarks/two_scale_detect.py --every 1,2,3,4,6
    python benchmarks/two_scale_detect.py --small-side 0,32,40,48,64   # the yield rule

Needs the dataset (``../shared``) for the bench's faces; without it, the astronaut.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gimefive.pipeline.bench.scenes import default_faces, make_scene_video, score_detections
from gimefive.pipeline.bench.system_bench import SCENES, decode_frames
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.messages import EndOfStream, FrameMsg
from gimefive.pipeline.stages import detect as detect_stage


def run_stage(frames: list, every: int, small_side: float | None) -> tuple[list, float]:
    """Boxes per frame from a fresh detect stage, and its CPU seconds."""
    overrides = SCENES["wide"]["overrides"]
    stage = detect_stage.DetectStage(AnnotateConfig(detect_upscale_every=every, **overrides))
    stage.setup()
    if small_side is not None:
        detect_stage.SMALL_SIDE = small_side
    out, start = [], time.process_time()
    for i, image in enumerate(frames):
        msg = FrameMsg(stream="s", index=i, pts=i, time_base=[1, 25], image=image)
        out += stage.process(msg)
    out += [m for m in stage.end_stream(EndOfStream(stream="s", frames=len(frames)))
            if not isinstance(m, EndOfStream)]
    return [m.boxes for m in out], time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", default="1,3", help="detect_upscale_every values")
    parser.add_argument("--small-side", default=None,
                        help="SMALL_SIDE values to try (default: the shipped one)")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("-o", "--out", type=Path, default=None, help="write JSON here")
    args = parser.parse_args()
    faces, source = default_faces(48, seed=0)
    with tempfile.TemporaryDirectory() as work:
        clip = Path(work) / "wide.mp4"
        sizes = tuple(max(16, round(f * 360)) for f in SCENES["wide"]["sizes"])
        truth = make_scene_video(clip, faces, 640, 360, args.frames, 25, 0, sizes=sizes,
                                 faces_per_frame=SCENES["wide"]["faces_per_frame"])
        frames = decode_frames(str(clip), 1)
    smalls = [None] if args.small_side is None else [float(v) for v in
                                                     args.small_side.split(",")]
    rows = []
    print(f"wide scene 640x360, {len(frames)} frames, faces from {source}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'every':>5} {'small':>5} {'matched':>7} {'found':>5} {'recall':>7} "
          f"{'precision':>9} {'CPU ms/frame':>12}")
    for small in smalls:
        for every in [int(v) for v in args.every.split(",")]:
            boxes, cpu = run_stage(frames, every, small)
            score = score_detections(truth, boxes)
            side = detect_stage.SMALL_SIDE
            rows.append({"every": every, "small_side": side, "matched": score["matched"],
                         "found": score["found"], "recall": score["recall"],
                         "precision": score["precision"], "by_size": score["by_size"],
                         "cpu_ms_per_frame": 1000 * cpu / len(frames)})
            print(f"{every:>5} {side:>5g} {score['matched']:>7} {score['found']:>5} "
                  f"{score['recall']:>7.2%} {score['precision']:>9.2%} "
                  f"{1000 * cpu / len(frames):>12.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"faces_source": source, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
