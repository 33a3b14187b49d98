"""Stage start-up: seconds from each stage process's spawn to its ``ready`` report.

Two measurements, each repeated ``--repeat`` times (the median is reported):

* ``pipeline``: a whole ``gimefive annotate`` job on a short generated clip (the
  astronaut's face, 320x240, 20 frames), the five stages started by the real supervisor
  as usual: per stage spawn -> ready, all ready (the source's start signal), the run's
  wall time and processing time, as the summary reports them;
* ``alone``: each stage started by itself (no other stage competing for the cores),
  spawn -> ready, then stopped.

For each stage it also says whether torch was loaded in that process at ``ready``
(``libtorch`` mapped in ``/proc/PID/maps``; Linux only) and the CPU seconds it had used
by then (``/proc/PID/stat``): unlike the wall time, that hardly changes when other work
shares the cores. The figures are measured by the
parent around the real stage processes, so they mean the same before and after a change
to the stages; where the ready report carries the stage's own ``startup_s`` (import and
setup), that is shown too.

``python benchmarks/startup.py --repeat 3 [--out startup.json]``. Not a test: timings
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
from gimefive.pipeline import run
from gimefive.pipeline.config import load_annotate_config
from gimefive.pipeline.stages import ORDER
from gimefive.pipeline.supervisor import StageProcess, Supervisor
from gimefive.pipeline.transport import ipc_endpoint, private_ipc_dir

from gimefive.memory import cpu_seconds


def write_clip(path: Path, frames: int = 20) -> Path:
    """The astronaut's face on a 320x240 grey frame, libx264 at 25 fps."""
    from skimage import data

    face = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), None, fx=0.45,
                      fy=0.45, interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            frame = np.full((240, 320, 3), 70, np.uint8)
            frame[5:5 + face.shape[0], 10 + 2 * i:10 + 2 * i + face.shape[1]] = face
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(video.encode(None))
    return path


def torch_loaded(pid: int) -> bool | None:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


class Recorder(Supervisor):
    """The supervisor, noting each stage's spawn and ready times and the gate's opening."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spawned: dict[str, float] = {}
        self.record: dict[str, dict] = {}
        self.gate_at: float | None = None
        passed_on = self.on_event

        def on_event(stage, event, data):
            if event == "ready":
                self.record[stage.name] = {
                    "spawn_to_ready_s": time.perf_counter() - self.spawned[stage.name],
                    "cpu_s": cpu_seconds(stage.proc.pid), "torch": torch_loaded(stage.proc.pid),
                    "reported": data.get("startup")}
            if passed_on is not None:
                passed_on(stage, event, data)

        self.on_event = on_event

    def spawn(self, stage, cmd, **popen) -> None:
        self.spawned[stage.name] = time.perf_counter()
        super().spawn(stage, cmd, **popen)

    def _open_gate(self) -> None:
        self.gate_at = time.perf_counter()
        super()._open_gate()


def measure_pipeline(clip: Path, out: Path, config) -> dict:
    recorders: list[Recorder] = []

    def make(*args, **kwargs):
        recorders.append(Recorder(*args, **kwargs))
        return recorders[-1]

    original, run.Supervisor = run.Supervisor, make
    try:
        t0 = time.perf_counter()
        result = run.annotate_video(clip, out / "out.mp4", json_path=out / "faces.jsonl",
                                    config=config, progress=False, force=True,
                                    save_resolved_config=False)
    finally:
        run.Supervisor = original
    rec = recorders[0]
    return {"stages": rec.record, "all_ready_s": rec.gate_at - min(rec.spawned.values()),
            "call_to_gate_s": rec.gate_at - t0, "wall_s": result.wall_s,
            "processing_s": result.processing_s, "frames": result.frames,
            "summary_startup": result.to_dict().get("startup")}


def measure_alone(name: str, clip: Path, out: Path, config) -> dict:
    """One stage started as ``annotate`` starts it, until its ready report, then stopped."""
    with private_ipc_dir() as directory:
        endpoints = {n: ipc_endpoint(directory, n) for n in ORDER}
        job = {"input": str(clip), "output": str(out / f"alone-{name}.mp4"),
               "json": out / f"alone-{name}.jsonl", "gate": ipc_endpoint(directory, "gate")}
        stage = StageProcess(name, run.stage_args(name, endpoints, config, job, directory))
        sup = Recorder([stage], ipc_endpoint(directory, "control"), directory)
        try:
            sup.start_all()
            deadline = time.monotonic() + 300
            while stage.ready is None and stage.proc.poll() is None \
                    and time.monotonic() < deadline:
                sup._drain_control(100)
        finally:
            sup.stop()
    if name not in sup.record:
        raise SystemExit(f"stage {name} did not get ready; see {stage.log}")
    return sup.record[name]


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="annotate settings (e.g. backend=onnxruntime)")
    args = parser.parse_args()
    config = load_annotate_config(**dict(kv.split("=", 1) for kv in args.set))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = write_clip(tmp / "clip.mp4")
        pipeline = [measure_pipeline(clip, tmp, config) for _ in range(args.repeat)]
        alone = {n: [measure_alone(n, clip, tmp, config) for _ in range(args.repeat)]
                 for n in ORDER}
    table = {"repeat": args.repeat, "settings": args.set, "stages": {}, "pipeline": {
        k: median_of(pipeline, k) for k in ("all_ready_s", "call_to_gate_s", "wall_s",
                                             "processing_s")}}
    print(f"{'stage':<9} {'alone s':>8} {'in pipeline s':>14} {'CPU s':>6} {'torch':>6}  "
          f"reported")
    for name in ORDER:
        inside = [r["stages"][name] for r in pipeline]
        row = {"alone_s": median_of(alone[name], "spawn_to_ready_s"),
               "pipeline_s": median_of(inside, "spawn_to_ready_s"),
               "cpu_s": median_of(alone[name], "cpu_s"),
               "torch": any(r["torch"] for r in inside + alone[name]),
               "reported": inside[-1]["reported"]}
        table["stages"][name] = row
        print(f"{name:<9} {row['alone_s']:>8.2f} {row['pipeline_s']:>14.2f} "
              f"{row['cpu_s']:>6.2f} {row['torch']!s:>6}  {row['reported'] or '-'}")
    print("pipeline (median): " + ", ".join(f"{k} {v}" for k, v in table["pipeline"].items()))
    if args.out:
        args.out.write_text(json.dumps({"table": table, "pipeline_runs": pipeline,
                                        "alone_runs": alone}, indent=2, default=str))


if __name__ == "__main__":
    main()
