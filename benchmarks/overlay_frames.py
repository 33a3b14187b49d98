"""Render the same frame with every Grad-CAM overlay at 640x360 and 1920x1080, to PNGs.

For looking at, not for timing: the frames behind the choice of the default overlay
(docs/overlay.md). A generated scene of real faces (RAF-DB test crops where the dataset
is found, else the astronaut) is run through the detect, classify and track stages in
this process (shipped weights, or --weights); frame ``--frame`` is then drawn with each
overlay of pipeline/draw.py, once more with --blur-faces, and, with ``--before FILE``
(an older pipeline/draw.py, e.g. ``git show HEAD~1:pipeline/draw.py > old_draw.py``),
as that version drew it. The 1920x1080 frame is the 640x360 one enlarged, so the same
faces are compared at both sizes.

    python benchmarks/overlay_frames.py -o /tmp/overlay [--before old_draw.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
from gimefive.pipeline.bench.scenes import default_faces, make_scene_video
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.draw import OVERLAYS, draw_faces
from gimefive.pipeline.messages import EndOfStream, FrameMsg
from gimefive.pipeline.stages.classify import ClassifyStage
from gimefive.pipeline.stages.detect import DetectStage
from gimefive.pipeline.stages.track import TrackStage

SIZES = ((640, 360), (1920, 1080))


def scene_frames(n_frames: int, seed: int) -> list[np.ndarray]:
    """The first ``n_frames`` of a 640x360 scene with five real faces."""
    faces, _ = default_faces(12, seed=seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scene.mp4"
        make_scene_video(path, faces, 640, 360, n_frames=n_frames, seed=seed,
                         faces_per_frame=5)
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def analyse(frames: list[np.ndarray], config: AnnotateConfig) -> list:
    """Detect, classify and track ``frames`` in this process: their TrackedMsgs."""
    msgs = [FrameMsg(stream="s", index=i, pts=i, time_base=[1, 25], image=f)
            for i, f in enumerate(frames)]
    for stage in (DetectStage(config), ClassifyStage(config), TrackStage(config)):
        stage.setup()
        out = [m for msg in msgs for m in stage.process(msg)]
        out += list(stage.end_stream(EndOfStream(stream="s", frames=len(msgs))))
        msgs = [m for m in out if not isinstance(m, EndOfStream)]
        stage.close()
    return msgs


def load_draw_module(path: Path):
    """An older pipeline/draw.py, imported under its own name (for the 'before' frames)."""
    spec = importlib.util.spec_from_file_location("old_draw", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(msg, out: Path, tag: str, before=None) -> list[Path]:
    """Every overlay (and blur, and the old drawing) of ``msg``, as PNGs named by ``tag``."""
    height, width = msg.image.shape[:2]
    size = f"{width}x{height}"
    images = {name: draw_faces(np.array(msg.image), msg, overlay=name) for name in OVERLAYS}
    images["peak_blur"] = draw_faces(np.array(msg.image), msg, blur_faces=True)
    if before is not None:
        images["before"] = before.draw_faces(np.array(msg.image), msg)
    paths = []
    for name, image in images.items():
        paths.append(out / f"{tag}_{name}_{size}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--before", type=Path, help="an older pipeline/draw.py to compare")
    parser.add_argument("--weights", help="GiMeFive weights (default: the shipped ones)")
    parser.add_argument("--frame", type=int, default=11, help="which frame to draw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    before = load_draw_module(args.before) if args.before else None
    config = AnnotateConfig(weights=args.weights, classify_workers=1)
    frames = scene_frames(args.frame + 1, args.seed)
    for width, height in SIZES:
        sized = [cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC)
                 if f.shape[:2] != (height, width) else f for f in frames]
        msg = analyse(sized, config)[args.frame]
        for path in render(msg, args.out, "overlay", before):
            print(path)


if __name__ == "__main__":
    main()
