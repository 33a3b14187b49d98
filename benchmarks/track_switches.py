"""Identity switches on the crossing scene, with track re-linking off and on (issue 16).

Writes the generated crossing scene (:mod:`gimefive.pipeline.bench.crossing`: five real
faces, 48..110 px, two crossing pairs, a pillar, one face leaving the frame for about a
second), runs ``annotate`` on it with the default settings (JSON lines only) once with
``relink_s`` 0 (the IoU tracker alone) and once with the default, and prints a table of
identity switches, fragmentations and track ids per true face. The classifier does not
matter for tracking: the shipped weights, else random ones.

    python benchmarks/track_switches.py [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gimefive.pipeline.bench.crossing import make_crossing_scene_video, score_identities
from gimefive.pipeline.bench.scenes import default_faces
from gimefive.pipeline.config import AnnotateConfig, load_annotate_config
from gimefive.pipeline.run import annotate_video

from gimefive.checkpoint import DEFAULT_WEIGHTS


def _weights(folder: Path) -> str:
    if DEFAULT_WEIGHTS.is_file():
        return str(DEFAULT_WEIGHTS)
    import torch

    from gimefive.checkpoint import save_weights
    from gimefive.model import GiMeFive

    torch.manual_seed(0)
    return str(save_weights(folder / "random.safetensors", GiMeFive().eval()))


def run_scene(scene: Path, truth: dict, out: Path, **overrides) -> dict:
    """Annotate ``scene`` (JSON lines only) with ``overrides``; score its track ids."""
    config = load_annotate_config(None, **overrides)
    json_path = out / "faces.jsonl"
    annotate_video(scene, None, json_path=json_path, config=config, progress=False,
                   force=True)
    records = [json.loads(line) for line in json_path.read_text().splitlines()]
    return score_identities(truth, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="scenes (face choices) to run")
    parser.add_argument("--out", type=Path, default=None, help="keep the files here")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="track_switches_"))
    folder.mkdir(parents=True, exist_ok=True)
    weights = _weights(folder)
    default_relink = AnnotateConfig.__dataclass_fields__["relink_s"].default
    modes = (("IoU only (relink_s 0)", 0.0), (f"re-link (relink_s {default_relink})", None))
    print("| scene | tracker | shown | matched | switches | fragmentations | track ids "
          "(5 faces) | ids per face |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        faces, source = default_faces(5, seed=seed)
        scene = folder / f"crossing_{seed}.mp4"
        truth = make_crossing_scene_video(scene, faces, seed=seed)
        for name, relink in modes:
            overrides = {"weights": weights}
            if relink is not None:
                overrides["relink_s"] = relink
            out = folder / f"run_{seed}_{relink}"
            out.mkdir(exist_ok=True)
            s = run_scene(scene, truth, out, **overrides)
            per_face = " ".join(str(v) for v in s["ids_per_face"].values())
            print(f"| {seed} ({source}) | {name} | {s['shown']} | {s['matched']} | "
                  f"{s['switches']} | {s['fragmentations']} | {s['track_ids']} | {per_face} |",
                  flush=True)


if __name__ == "__main__":
    main()
