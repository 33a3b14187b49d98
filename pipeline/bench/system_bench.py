"""The whole system side by side, on the same inputs, in one run (``gimefive bench``).

    nice gimefive bench [VIDEO] [-o DIR]          # or: python benchmarks/system_bench.py

The options are the click command's (pipeline/bench_cli.py); :func:`run` takes them.

For each input (the user's video, or generated 640x360 and 1280x720 scenes of real faces
at several sizes, with ground truth) it measures:

- decode only: PyAV to BGR arrays, with the source stage's decoder settings;
- detect only: :class:`gimefive.detector.FaceDetector` on the decoded frames held in
  memory, the pipeline's detector settings, batches as the detect stage makes them;
- the full ``annotate`` pipeline (all stages as processes, CAM on every frame by
  default): fps, per-stage CPU seconds, fps and peak RSS, decode-to-written latency
  percentiles, all from the pipeline's own summary; faces from its JSON lines;
- the paper-script baseline (``paper_baseline.py`` in its OpenCV 4 venv): fps, faces;

once per run: classify only (every backend configuration of ``backends_bench``, batch
sizes, CAM off and on), and scaling (1, 2, 4, ... looping 640x360 files through
``monitor`` at their real frame rate until real time breaks).

Timing rules: every measurement is repeated (``--repeat``) and reported as median and
best; warm-up is excluded (a first pass that is not timed for decode and detect, an
untimed warm-up clip through the pipeline, the baseline's own warm-up frames; the
pipeline's fps is over first-frame-decoded to last-frame-written, so process start-up
and model loading are outside it). Faces found are scored against the scene's ground
truth (IoU >= 0.5) when the input was generated here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from gimefive.pipeline.bench import bench_file
from gimefive.pipeline.bench.machine import (
    cpu_times,
    load_average,
    machine_info,
    steal_share,
)

#: relative to the working directory, like the default output folder
BASELINE_VENV = Path("benchmarks/.venv-baseline")
RESOLUTIONS = {"640x360": (640, 360), "1280x720": (1280, 720)}
#: generated scenes: faces per frame (None: the generator's 5), face sizes as fractions of
#: the frame height (None: its default, height/6 .. height/1.8), and the annotate settings
#: a user would pick for such footage. ``closeup``: a few large faces, the detector on a
#: 640 px copy. ``wide``: a group seen from afar, 12 faces from 1/22 to 1/3 of the height
#: (16..120 px at 360 lines), the detector on frames enlarged or kept at 1280 px so that
#: faces under 30 px are found (``--detect-size 1280 --detect-upscale``).
SCENES: dict[str, dict[str, Any]] = {
    "closeup": {"faces_per_frame": None, "sizes": None, "overrides": {}},
    "wide": {"faces_per_frame": 12, "sizes": (1 / 22.5, 1 / 3),
             "overrides": {"detect_max_side": 1280, "detect_upscale": True}},
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary_stats(values: list[float], higher_is_better: bool = True) -> dict[str, Any]:
    best = max(values) if higher_is_better else min(values)
    return {"runs": [round(v, 3) for v in values], "median": round(statistics.median(values), 3),
            "best": round(best, 3)}


# ------------------------------------------------------------------------------ inputs

def prepare_inputs(video: str | None, resolutions: list[str], n_frames: int, fps: int,
                   work: Path, seed: int = 0, face_sizes: tuple[int, int] | None = None,
                   scenes: tuple[str, ...] = ("closeup",)) -> list[dict[str, Any]]:
    """The user's video, or one generated scene per resolution and scene kind (with
    ground truth). ``face_sizes`` (px at 360 lines, scaled with the frame height)
    overrides the close-up scene's size range."""
    if video is not None:
        from gimefive.pipeline.probe import probe_input

        info = probe_input(Path(video))
        return [{"name": Path(video).name, "path": str(video), "width": info.width,
                 "height": info.height, "truth": None, "faces_source": "user video",
                 "overrides": {}}]
    from gimefive.pipeline.bench.scenes import default_faces, make_scene_video

    faces, source = default_faces(48, seed=seed)
    inputs = []
    for scene in scenes:
        spec = SCENES[scene]
        for res in resolutions:
            width, height = RESOLUTIONS[res]
            name = res if scene == "closeup" else f"{res} {scene}"
            path = work / f"scene_{res}_{scene}.mp4"
            if spec["sizes"] is not None:
                sizes = tuple(max(16, round(f * height)) for f in spec["sizes"])
            else:
                sizes = None if face_sizes is None else tuple(
                    max(16, round(v * height / 360)) for v in face_sizes)
            truth = make_scene_video(path, faces, width, height, n_frames, fps, seed,
                                     sizes=sizes, faces_per_frame=spec["faces_per_frame"])
            (work / f"scene_{res}_{scene}.truth.json").write_text(json.dumps(truth))
            inputs.append({"name": name, "scene": scene, "path": str(path), "width": width,
                           "height": height, "truth": truth, "faces_source": source,
                           "face_sizes": truth["sizes"],
                           "faces_per_frame": truth["faces_per_frame"],
                           "overrides": spec["overrides"]})
            log(f"generated {path.name}: {n_frames} frames, {truth['faces_per_frame']} faces "
                f"per frame of {truth['sizes']} px ({source})")
    return inputs


def score(truth: dict | None, boxes: list) -> dict[str, Any]:
    """Faces found, and recall/precision against the ground truth where there is one."""
    found = sum(len(b) for b in boxes)
    out: dict[str, Any] = {"faces_found": found,
                           "faces_per_frame": round(found / max(1, len(boxes)), 3)}
    if truth is not None:
        from gimefive.pipeline.bench.scenes import score_detections

        if len(boxes) == len(truth["frames"]):
            s = score_detections(truth, boxes)
            out.update(faces_truth=s["truth"], faces_matched=s["matched"],
                       recall=round(s["recall"], 4), precision=round(s["precision"], 4),
                       recall_by_size={size: round(m / n, 3)
                                       for size, (m, n) in s["by_size"].items()})
        else:
            out["scoring_error"] = f"{len(boxes)} frames of boxes vs {len(truth['frames'])}"
    return out


# ----------------------------------------------------------------- decode, detect only

def decode_frames(path: str, threads: int) -> list:
    """Every frame of ``path`` as BGR, decoded and converted as the source stage does."""
    import av
    from gimefive.pipeline.readers import BgrConverter

    to_bgr = BgrConverter(threads)
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = max(1, threads)
        return [to_bgr(f) for f in container.decode(stream)]


def bench_decode(path: str, repeat: int, threads: int) -> dict[str, Any]:
    decode_frames(path, threads)  # warm-up: file cache, codec initialisation
    fps = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        frames = decode_frames(path, threads)
        fps.append(len(frames) / (time.perf_counter() - t0))
    return {"fps": summary_stats(fps), "frames": len(frames), "decoder_threads": threads}


def bench_detect(frames: list, config, repeat: int, truth: dict | None) -> dict[str, Any]:
    from gimefive.detector import FaceDetector

    detector = FaceDetector(max_side=config.detect_max_side, score_threshold=config.detect_score,
                            nms_threshold=config.detect_nms, min_size=config.min_face,
                            max_batch=config.detect_batch, upscale=config.detect_upscale)
    batch = config.detect_batch

    def run() -> list:
        out = []
        for i in range(0, len(frames), batch):
            out += [d.boxes for d in detector.detect(frames[i:i + batch])]
        return out

    run()  # warm-up
    fps, boxes = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        boxes = run()
        fps.append(len(frames) / (time.perf_counter() - t0))
    return {"fps": summary_stats(fps), "max_side": config.detect_max_side, "batch": batch,
            **score(truth, [b.tolist() for b in boxes])}


# --------------------------------------------------------------------------- pipeline

def _pipeline_config(args):
    from gimefive.pipeline.config import load_annotate_config

    # args.pipeline: the annotate settings given as bench flags (bench_cli)
    return load_annotate_config(args.config, **getattr(args, "pipeline", {}),
                                weights=str(args.weights) if args.weights else None)


def read_jsonl_boxes(path: Path, n_frames: int) -> list[list]:
    boxes: list[list] = [[] for _ in range(n_frames)]
    with path.open() as f:
        for line in f:
            rec = json.loads(line)
            if 0 <= rec["frame"] < n_frames:
                boxes[rec["frame"]] = [face["box"] for face in rec["faces"]]
    return boxes


def bench_pipeline(item: dict, config, repeat: int, work: Path) -> dict[str, Any]:
    from gimefive.pipeline.run import annotate_video

    runs = []
    boxes: list = []
    for r in range(repeat):
        out = work / f"annotated_{item['name']}_{r}.mp4"
        jsonl = work / f"faces_{item['name']}.jsonl"
        result = annotate_video(item["path"], out, json_path=jsonl, config=config,
                                progress=False, save_resolved_config=False,
                                force=True).to_dict()
        runs.append(result)
        log(f"  pipeline run {r + 1}/{repeat}: {result['fps']:.2f} fps, "
            f"efficiency {result['parallel_efficiency']:.0%}")
        boxes = read_jsonl_boxes(jsonl, result["frames"])
        out.unlink(missing_ok=True)
    fps = [r["fps"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["fps"])[len(runs) // 2]
    stages = {}
    startup = median_run.get("startup", {}).get("stages", {})
    for name, st in median_run["stages"].items():
        stages[name] = {k: st.get(k) for k in ("cpu_s", "cpu_ms_per_frame", "cpu_fps",
                                               "busy_fps", "blocked_s", "max_rss_mb")}
        stages[name]["startup_s"] = startup.get(name, {}).get("startup_s")  # spawn to ready
    counters = median_run["stages"].get("annotate", {}).get("counters", {})
    latency = {f"p{q}": counters.get(f"latency_ms_p{q}") for q in (50, 95, 99)}
    cpu_per_frame = sum(st["cpu_ms_per_frame"] for st in stages.values()) / 1000
    return {"fps": summary_stats(fps), "frames": median_run["frames"],
            "wall_s_median_run": median_run["wall_s"],
            "parallel_efficiency": {"runs": [r["parallel_efficiency"] for r in runs],
                                    "median_run": median_run["parallel_efficiency"]},
            "parallel_efficiency_recomputed": round(
                median_run["fps"] * cpu_per_frame / median_run["cores"], 3),
            "cpu_s_per_frame": round(cpu_per_frame, 4), "cores": median_run["cores"],
            "latency_ms": latency, "stages": stages,
            "backend": median_run.get("info", {}).get("classify", {}).get("backend"),
            "cam": config.cam, "cam_every": config.cam_every,
            "detect_every": config.detect_every,
            "summary_median_run": median_run, **score(item["truth"], boxes)}


def warm_pipeline(config, work: Path) -> None:
    """One short annotate run so that first-use caches (ONNX export) are built."""
    from gimefive.pipeline.bench.scenes import astronaut_face, make_scene_video
    from gimefive.pipeline.run import annotate_video

    clip = work / "warmup.mp4"
    make_scene_video(clip, [(astronaut_face(), None)], 320, 180, 10, 25)
    annotate_video(clip, work / "warmup_out.mp4", config=config, progress=False,
                   save_resolved_config=False, force=True)


# --------------------------------------------------------------------------- baseline

def baseline_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_baseline_venv(venv: Path, create: bool) -> str | None:
    """None when the baseline can run, else why not."""
    if baseline_python(venv).is_file():
        return None
    script = bench_file("setup_baseline_venv.sh")
    if not create:
        return f"baseline venv not found at {venv}; create it with `bash {script} {venv}`"
    log(f"creating the baseline venv (OpenCV 4 + torch) at {venv} (once, a few minutes)")
    proc = subprocess.run(["bash", str(script), str(venv)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return f"could not create the baseline venv: {tail[0]}"
    return None


def gimefive_import_root(work: Path) -> Path:
    """A folder holding only a link to this gimefive package, for the baseline venv's
    sys.path: the package's own parent may be a site-packages whose numpy, torch and
    OpenCV 5 would shadow the baseline venv's."""
    import gimefive

    root = work / "baseline_import_root"
    if not root.is_dir():
        root.mkdir()
        (root / "gimefive").symlink_to(Path(gimefive.__file__).resolve().parent)
    return root


def bench_baseline(item: dict, weights: Path, repeat: int, venv: Path, work: Path,
                   max_frames: int | None) -> dict[str, Any]:
    report = work / f"baseline_{item['name']}.json"
    cmd = [str(baseline_python(venv)), str(bench_file("paper_baseline.py")), item["path"],
           "--weights", str(weights), "--repeat", str(repeat), "--json", str(report)]
    if max_frames:
        cmd += ["--max-frames", str(max_frames)]
    env = {**os.environ, "GIMEFIVE_IMPORT_ROOT": str(gimefive_import_root(work))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        return {"skipped": f"baseline failed (exit {proc.returncode}): {lines[-1]}"}
    data = json.loads(report.read_text())
    boxes = data.pop("boxes")
    truth = item["truth"]
    if truth is not None and len(boxes) < len(truth["frames"]):
        truth = {**truth, "frames": truth["frames"][:len(boxes)]}
    return {"fps": {"runs": [round(v, 3) for v in data["fps_runs"]],
                    "median": round(data["fps_median"], 3), "best": round(data["fps_max"], 3)},
            "frames": data["frames"], "cpu_s_per_frame": data["cpu_s_per_frame"],
            "peak_rss_mb": round(data["peak_rss_mb"], 1), "versions": data["versions"],
            "omitted": data["omitted"], **score(truth, boxes)}


# --------------------------------------------------------------------------- classify

def bench_classify(weights: Path, configs: list[str], batches: list[int], rounds: int
                   ) -> dict[str, Any]:
    """Faces/s per backend configuration, reusing backends_bench's measurement loop."""
    from gimefive.pipeline.bench import backends_bench

    from gimefive.backends import create_backend

    unknown = [c for c in configs if c not in backends_bench.CONFIGS]
    if unknown:
        from gimefive.errors import GimefiveError

        raise GimefiveError(f"unknown classify config(s) {unknown}; expected some of "
                            f"{list(backends_bench.CONFIGS)}")
    from gimefive.export.faces import verification_faces

    faces = verification_faces(128, seed=1)
    engines = {}
    for name in configs:
        backend, options = backends_bench.CONFIGS[name]
        try:
            engines[name] = create_backend(backend, weights=weights, **options)
        except Exception as exc:  # one unavailable configuration must not end the run
            log(f"  classify: {name} unavailable ({exc})")
    try:
        # backends_bench (the export engineer's) owns the measurement loop; pass only
        # the arguments its signature has, so both evolve without breaking each other
        import inspect

        options = {"per_measure": 128, "max_seconds": 3.0}
        accepted = inspect.signature(backends_bench.speed).parameters
        rows = backends_bench.speed(engines, faces.x, batches, rounds,
                                    **{k: v for k, v in options.items() if k in accepted})
    finally:
        for engine in engines.values():
            engine.close()
    return {"rows": rows, "faces_source": faces.source, "rounds": rounds}


# --------------------------------------------------------------------------- scaling

def bench_scaling(clip: str, config, max_streams: int, seconds: float, warmup_s: float,
                  work: Path, target_fps: float, startup_timeout_s: float = 180.0
                  ) -> dict[str, Any]:
    """1, 2, 3, 4, 6, 8... looping copies of ``clip`` through ``monitor``, annotated video
    (segments) and JSON lines written, until real time breaks.

    ``gimefive monitor`` runs as a subprocess (it owns its signal handlers) and is
    stopped with SIGTERM once frames have flowed for ``warmup_s + seconds``. A count is
    sustained when every stream's written fps over the measured part is at least 95% of
    ``target_fps`` and at most 2% of its decoded frames were dropped. Each step also
    gives the decode-to-written latency p95 and the highest degrade step reached.
    """
    from gimefive.config import save_config

    stage_yaml = save_config(config, work / "scaling_stage_config.yaml")
    steps = []
    for n in stream_counts(max_streams):
        status = work / f"scaling_{n}.status.jsonl"
        status.unlink(missing_ok=True)
        video = work / f"scaling_{n}_video"
        video.mkdir(exist_ok=True)
        cmd = [sys.executable, "-c", "from gimefive.cli import main; main()", "monitor",
               *([clip] * n), "--json", str(work / f"scaling_{n}.jsonl"),
               "-o", str(video / "out.mp4"),
               "--status-json", str(status), "--status-every", "1",
               "--stage-config", str(stage_yaml), "--quiet",
               "--log-dir", str(work / f"scaling_{n}_logs")]
        before = cpu_times()
        problem = run_until_measured(cmd, status, warmup_s + seconds, startup_timeout_s)
        step = scaling_step(status, n, warmup_s, target_fps)
        step["steal_share"] = steal_share(before, cpu_times())
        if problem:
            step["error"] = problem
            step["sustained"] = False
        steps.append(step)
        log(f"  scaling {n} stream(s): per-stream out fps {step['fps_out']} "
            f"dropped {step['dropped_fraction']}, latency p95 {step.get('latency_p95_s')} s, "
            f"degrade step up to {step.get('degrade_step_max')} -> "
            f"{'real time' if step['sustained'] else 'BROKEN'}"
            f"{' (' + step['error'] + ')' if step.get('error') else ''}")
        if not step["sustained"]:
            break
    sustained = [s["streams"] for s in steps if s["sustained"]]
    return {"target_fps": target_fps, "seconds_measured": seconds, "warmup_s": warmup_s,
            "steps": steps, "streams_sustained": max(sustained) if sustained else 0}


#: live stream counts the scaling part tries, in order, up to ``--scaling-max``
STREAM_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def stream_counts(most: int) -> list[int]:
    """Every count up to 4 (each a target on small machines), then about 1.5x apart."""
    return [n for n in STREAM_COUNTS if n <= most]


def _flowing_since(status: Path) -> tuple[float | None, float]:
    """(uptime when every stream had written a frame, latest uptime) from the status file."""
    since, latest = None, 0.0
    if not status.is_file():
        return since, latest
    for line in status.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if rec.get("kind") != "status":
            continue
        latest = rec["uptime_s"]
        if since is None and rec["streams"] and all(
                s["written"] > 0 for s in rec["streams"].values()):
            since = rec["uptime_s"]
    return since, latest


def run_until_measured(cmd: list[str], status: Path, needed_s: float,
                       startup_timeout_s: float) -> str | None:
    """Run ``monitor`` until frames have flowed ``needed_s`` seconds; None when they did."""
    import signal

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    problem = None
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                err = (proc.stderr.read() or "").strip().splitlines()
                return f"monitor exited early ({proc.returncode}): {err[-1] if err else ''}"
            since, latest = _flowing_since(status)
            if since is not None and latest - since >= needed_s:
                break
            if since is None and time.monotonic() - started > startup_timeout_s:
                problem = f"no frame written within {startup_timeout_s:g} s of starting"
                break
            time.sleep(0.5)  # polling a file another process appends to, not a peer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # monitor finalises on SIGTERM like Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return problem


def scaling_step(status_path: Path, n: int, warmup_s: float, target_fps: float
                 ) -> dict[str, Any]:
    """Per-stream written fps and dropped fraction from ``monitor``'s status records,
    counted from ``warmup_s`` after every stream has written its first frame."""
    records = [json.loads(line) for line in status_path.read_text().splitlines() if line]
    records = [r for r in records if r.get("kind") == "status"]
    flowing = [r["uptime_s"] for r in records
               if r["streams"] and all(s["written"] > 0 for s in r["streams"].values())]
    start = flowing[0] + warmup_s if flowing else float("inf")
    timed = [r for r in records if r["uptime_s"] >= start]
    if len(timed) < 2:
        return {"streams": n, "sustained": False, "fps_out": None, "dropped_fraction": None,
                "error": f"only {len(timed)} status records after the warm-up "
                         f"(frames flowing from {flowing[0] if flowing else 'never'} s)"}
    first, last = timed[0], timed[-1]
    dt = last["uptime_s"] - first["uptime_s"]
    fps_out, dropped = [], []
    for sid, end in last["streams"].items():
        start = first["streams"].get(sid, {"written": 0, "decoded": 0, "dropped": 0})
        fps_out.append((end["written"] - start["written"]) / dt)
        decoded = max(1, end["decoded"] - start["decoded"])
        dropped.append((end["dropped"] - start["dropped"]) / decoded)
    sustained = min(fps_out) >= 0.95 * target_fps and max(dropped) <= 0.02
    latencies = [s["latency_s"] for r in timed for s in r["streams"].values()
                 if s.get("latency_s") is not None]
    steps = [int(s.get("degrade_step") or 0) for r in timed for s in r["streams"].values()]
    written = sum(end["written"] - first["streams"].get(sid, {"written": 0})["written"]
                  for sid, end in last["streams"].items())
    return {"streams": n, "sustained": sustained,
            "cpu_ms_per_frame": stage_cpu_ms(first, last, written),
            "fps_out": [round(v, 2) for v in fps_out],
            "dropped_fraction": [round(v, 4) for v in dropped], "measured_s": round(dt, 1),
            "latency_p95_s": round(float(np.percentile(latencies, 95, method="inverted_cdf")),
                                   3) if latencies else None,
            "degrade_step_max": max(steps) if steps else 0}


def stage_cpu_ms(first: dict[str, Any], last: dict[str, Any], written: int
                 ) -> dict[str, float]:
    """CPU ms each stage spent per frame written (all streams) between two status
    records; a stage restarted in between (its CPU counted from 0 again) is left out."""
    out: dict[str, float] = {}
    for name, end in (last.get("stages") or {}).items():
        begin = (first.get("stages") or {}).get(name) or {}
        if written > 0 and end.get("cpu_s") is not None and begin.get("cpu_s") is not None \
                and end.get("restarts") == begin.get("restarts"):
            out[name] = round((end["cpu_s"] - begin["cpu_s"]) * 1000 / written, 2)
    return out


# ----------------------------------------------------------------------------- ratios

def ratios(res: dict[str, Any]) -> dict[str, Any]:
    def med(key):
        part = res.get(key) or {}
        return (part.get("fps") or {}).get("median")

    pipe, base, dec = med("pipeline"), med("baseline"), med("decode")
    out: dict[str, Any] = {}
    if pipe and base:
        out["pipeline_over_baseline_fps"] = round(pipe / base, 2)
    if pipe and dec:
        out["pipeline_over_decode_fps"] = round(pipe / dec, 3)
    p, b = res.get("pipeline") or {}, res.get("baseline") or {}
    if "faces_matched" in p and "faces_matched" in b and b.get("frames"):
        # the baseline may have run on fewer frames: compare per frame
        pf = p["faces_matched"] / max(1, p["frames"])
        bf = b["faces_matched"] / max(1, b["frames"])
        out["pipeline_over_baseline_faces_matched"] = round(pf / bf, 2) if bf else None
    if p.get("faces_found") is not None and b.get("faces_found") is not None:
        pf = p["faces_found"] / max(1, p["frames"])
        bf = b["faces_found"] / max(1, b["frames"])
        out["pipeline_over_baseline_faces_found"] = round(pf / bf, 2) if bf else None
    if p.get("parallel_efficiency"):
        out["parallel_efficiency"] = p["parallel_efficiency"]["median_run"]
    return out


# --------------------------------------------------------------------------- run all

SKIPPABLE = ("decode", "detect", "classify", "pipeline", "baseline", "scaling")


def resolve_weights(arg: str | None) -> tuple[Path, str]:
    from gimefive.checkpoint import DEFAULT_WEIGHTS, save_weights
    from gimefive.model import GiMeFive

    if arg:
        if not Path(arg).is_file():
            from gimefive.errors import GimefiveError

            raise GimefiveError(f"weights file not found: {arg}")
        return Path(arg), "given"
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS, "shipped"
    import torch

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix="gimefive-bench-")) / "random.safetensors"
    save_weights(path, GiMeFive())
    return path, "random init (no shipped weights in this install)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gimefive.errors import GimefiveError

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(SKIPPABLE):
        raise GimefiveError(f"--skip: unknown part(s) {sorted(skip - set(SKIPPABLE))}; "
                            f"expected some of {list(SKIPPABLE)}")
    resolutions = [r.strip() for r in args.resolutions.split(",") if r.strip()]
    bad = [r for r in resolutions if r not in RESOLUTIONS]
    if bad:
        raise GimefiveError(f"--resolutions: unknown {bad}; expected some of {list(RESOLUTIONS)}")
    if args.video is not None and not Path(args.video).is_file():
        raise GimefiveError(f"video not found: {args.video}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    weights, weights_kind = resolve_weights(args.weights)
    args.weights = str(weights)
    config = _pipeline_config(args)
    result: dict[str, Any] = {"machine": machine_info(), "weights": str(weights),
                              "weights_kind": weights_kind, "repeat": args.repeat,
                              "skipped": sorted(skip), "inputs": []}
    log(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
        f"weights: {weights_kind}")
    def save_partial() -> None:  # an interrupted or failed run keeps what it measured
        result["wall_s"] = round(time.time() - started, 1)
        write_reports(result, out, charts=False)

    with tempfile.TemporaryDirectory(prefix="gimefive-bench-") as tmp:
        work = Path(tmp)
        inputs = prepare_inputs(args.video, resolutions, args.frames, args.fps, work,
                                face_sizes=parse_face_sizes(args.face_sizes),
                                scenes=parse_scenes(args.scenes))
        if "pipeline" not in skip and not args.no_warmup:
            log("warming up the pipeline (untimed)")
            attempt("pipeline warm-up", lambda: warm_pipeline(config, work))
        venv = Path(args.baseline_venv)
        baseline_problem = None if "baseline" in skip else ensure_baseline_venv(
            venv, create=not args.no_create_baseline_venv)
        for item in inputs:
            res = {k: v for k, v in item.items() if k != "truth"}
            result["inputs"].append(res)
            bench_input(res, item, args, config, skip, work, venv, baseline_problem, weights,
                        save_partial)
        if "classify" not in skip:
            log("classify only (backends side by side)")
            result["classify"] = attempt("classify", lambda: bench_classify(
                weights, [c.strip() for c in args.classify_configs.split(",") if c.strip()],
                [int(b) for b in args.classify_batches.split(",")], args.repeat))
            save_partial()
        if "scaling" not in skip:
            clip = next((i for i in inputs if i["name"] == "640x360"), inputs[0])
            log(f"scaling: looping {clip['name']} streams at {args.fps} fps through monitor")
            result["scaling"] = attempt("scaling", lambda: bench_scaling(
                clip["path"], config, args.scaling_max, args.scaling_seconds,
                args.scaling_warmup, work, target_fps=args.fps))
    result["machine"]["load_average_at_end"] = load_average()
    result["wall_s"] = round(time.time() - started, 1)
    write_reports(result, out)
    return result


def parse_scenes(text: str) -> tuple[str, ...]:
    from gimefive.errors import GimefiveError

    scenes = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in scenes if s not in SCENES]
    if bad or not scenes:
        raise GimefiveError(f"--scenes: expected some of {list(SCENES)}, got {text!r}")
    return scenes


def parse_face_sizes(text: str | None) -> tuple[int, int] | None:
    from gimefive.errors import GimefiveError

    if not text:
        return None
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise GimefiveError(f"--face-sizes: expected MIN,MAX in pixels, got {text!r}") from None
    if not 16 <= lo <= hi:
        raise GimefiveError(f"--face-sizes: expected 16 <= MIN <= MAX, got {text!r}")
    return lo, hi


def attempt(name: str, measure) -> dict[str, Any]:
    """Run one measurement; a failure the system reports (one clear line) is recorded
    in the results and the run goes on to the next part."""
    from gimefive.errors import GimefiveError

    try:
        return measure()
    except GimefiveError as exc:
        log(f"  {name} FAILED: {exc}")
        return {"skipped": f"failed: {exc}"}


def bench_input(res, item, args, config, skip, work, venv, baseline_problem, weights,
                save_partial) -> None:
    """Every per-input measurement into ``res``, saving the report after each."""
    log(f"input {item['name']}")
    config = dataclasses.replace(config, **item["overrides"])
    if "decode" not in skip:
        res["decode"] = bench_decode(item["path"], args.repeat, config.decode_threads)
        log(f"  decode only: {res['decode']['fps']['median']:.1f} fps")
    if "detect" not in skip:
        frames = decode_frames(item["path"], config.decode_threads)
        res["detect"] = bench_detect(frames, config, args.repeat, item["truth"])
        del frames
        log(f"  detect only: {res['detect']['fps']['median']:.1f} fps")
    save_partial()
    if "pipeline" not in skip:
        res["pipeline"] = attempt("pipeline", lambda: bench_pipeline(item, config, args.repeat,
                                                                     work))
        save_partial()
    if "baseline" not in skip:
        if baseline_problem:
            res["baseline"] = {"skipped": baseline_problem}
        else:
            log("  paper-script baseline (slow: one forward + backward per face)")
            res["baseline"] = bench_baseline(item, weights, args.baseline_repeat or args.repeat,
                                             venv, work, args.baseline_frames)
        if "fps" in res["baseline"]:
            log(f"  baseline: {res['baseline']['fps']['median']:.2f} fps")
        else:
            log(f"  baseline skipped: {res['baseline']['skipped']}")
    res["ratios"] = ratios(res)
    save_partial()


def write_reports(result: dict[str, Any], out: Path, charts: bool = True) -> None:
    from gimefive.pipeline.bench import report

    result["complete"] = charts
    if charts:
        result["charts"] = report.charts(result, out)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "bench.md").write_text(report.markdown(result))
