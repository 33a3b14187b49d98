"""GPU check: what a holder of an NVIDIA GPU runs once (via gpu_check.sh) to measure it.

Run on an H200 (benchmarks/results/gpu_check/). Every part has a time budget
and reports itself as absent or failed instead of stopping the run, so one call of
``bash benchmarks/gpu_check.sh`` (at most 8 minutes) always leaves a JSON report:

1. environment: GPU (nvidia-smi), driver, torch and its CUDA/cuDNN, onnxruntime and its
   execution providers, TensorRT;
2. torch CUDA backend faces/s at batch 1..512, fp32 and fp16, without CAM, with the
   in-graph CAM and with autograd Grad-CAM;
3. onnxruntime on CUDA / TensorRT execution providers, and the TensorRT backend, where
   installed (reported absent otherwise);
4. the face detector's fps (as the pipeline runs it) on 1080p frames, and the RetinaFace
   network alone on the CUDA execution provider where there is one;
5. ``annotate`` fps on a generated 1080p clip with the torch CUDA backend and with
   ``auto``, with the decode path that ran;
6. the GPU path of issue 14, part by part: decode fps with NVDEC and on the CPU, the torch
   detector's fps (``gimefive.torch_detector``, reported absent where it is not there),
   tensor crops + preprocessing faces/s (``pipeline/torch_crops.py``).

``--dry-run`` (same as ``--device cpu``) runs parts 5 and 6 and a small classifier sweep
on the CPU at tiny sizes, without a GPU, in seconds: it shows that the script starts and
every part runs (tests/test_gpu_check.py); its figures are not measurements.

Writes ``gpu_check.json`` (and ``gpu_check.md``) to ``$OUT`` when set, else to the
current folder.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEADLINE = time.monotonic() + float(os.environ.get("GPU_CHECK_BUDGET_S", "420"))
BATCHES = (1, 8, 32, 128, 512)


def left() -> float:
    return DEADLINE - time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_part(name: str, result: dict, fn, min_left_s: float = 20.0) -> None:
    """Run one part; store its result or its error; skip it when time is short."""
    if left() < min_left_s:
        result[name] = {"skipped": f"time budget spent ({left():.0f} s left)"}
        log(f"{name}: skipped, time budget spent")
        return
    t0 = time.monotonic()
    try:
        result[name] = fn()
    except Exception as exc:  # one failing part must not lose the others' figures
        result[name] = {"error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=3)}
        log(f"{name}: FAILED {type(exc).__name__}: {exc}")
    result[name]["seconds"] = round(time.monotonic() - t0, 1)


def environment() -> dict:
    import onnxruntime
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cores": os.cpu_count(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "cuda_available": torch.cuda.is_available(),
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "onnxruntime": onnxruntime.__version__,
           "onnxruntime_providers": onnxruntime.get_available_providers()}
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        env["tensorrt"] = None
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                            "compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    return env


def faces_per_second(backend, batch: int, cam: bool, seconds: float = 1.0) -> float:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    for _ in range(3):
        backend(x, cam=cam)  # warm-up: cuDNN autotuning, allocations
    calls, t0 = 0, time.perf_counter()
    while True:
        backend(x, cam=cam)  # returns numpy: the device work is finished
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and calls >= 3:
            return calls * batch / elapsed


def sweep(make, label: str, cam_modes: tuple[str, ...]) -> list[dict]:
    rows = []
    backend = make()
    try:
        for batch in BATCHES:
            if left() < 15:
                rows.append({"batch": batch, "skipped": "time budget spent"})
                break
            row = {"batch": batch}
            for mode in cam_modes:
                row[mode] = round(faces_per_second(backend, batch, cam=mode != "no_cam"), 1)
            rows.append(row)
            log(f"  {label} batch {batch}: {row}")
    finally:
        backend.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    from gimefive.backends import create_backend

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="same as --device cpu")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT") or ".")
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    result["environment"] = environment()
    log(f"environment: {result['environment'].get('gpus')} torch "
        f"{result['environment']['torch']} CUDA {result['environment']['torch_cuda']}")
    if args.dry_run or args.device == "cpu":
        return dry_run(result, out)
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; nothing to measure", file=sys.stderr)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
        return 3
    weights, kind = _weights()
    result["weights"] = kind

    def torch_cuda(precision: str) -> dict:
        def make(method):
            return lambda: create_backend("torch", weights=weights, device="cuda",
                                          precision=precision, cam_method=method)
        graph = sweep(make("graph"), f"torch cuda {precision} in-graph CAM", ("no_cam", "cam"))
        autograd = sweep(make("autograd"), f"torch cuda {precision} autograd CAM", ("cam",))
        for row, auto in zip(graph, autograd, strict=False):
            if "cam" in auto:
                row["cam_autograd"] = auto["cam"]
        return {"faces_per_s": graph}

    def engine(name: str, **options) -> dict:
        def make():
            return create_backend(name, weights=weights, **options)
        return {"faces_per_s": sweep(make, f"{name} {options}", ("no_cam", "cam"))}

    for precision in ("fp32", "fp16"):
        run_part(f"torch_cuda_{precision}", result, lambda p=precision: torch_cuda(p))
    providers = result["environment"]["onnxruntime_providers"]
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        key = f"onnxruntime_{provider.removesuffix('ExecutionProvider').lower()}"
        if provider not in providers:
            result[key] = {"absent": f"{provider} not in onnxruntime's providers "
                                     "(install onnxruntime-gpu)"}
            continue
        run_part(key, result, lambda p=provider: engine(
            "onnxruntime", providers=[p, "CPUExecutionProvider"]), min_left_s=40)
    if result["environment"]["tensorrt"] is None:
        result["tensorrt"] = {"absent": "tensorrt is not installed (pip install tensorrt)"}
    else:
        for precision in ("fp16", "fp32"):
            run_part(f"tensorrt_{precision}", result,
                     lambda p=precision: engine("tensorrt", precision=p), min_left_s=90)
    clip = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "scene_1080p.mp4"
    run_part("detector", result, lambda: detector_fps(clip, providers))
    for backend in ("torch", "auto"):
        run_part(f"annotate_1080p_{backend}", result,
                 lambda b=backend: annotate_fps(clip, weights, b), min_left_s=60)
    gpu_path_parts(result, clip, "cuda")

    result["budget_left_s"] = round(left(), 1)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    log(f"wrote {out / 'gpu_check.json'}")
    return 0


def _weights():
    from gimefive.checkpoint import DEFAULT_WEIGHTS, save_weights
    from gimefive.model import GiMeFive

    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS, "shipped"
    path = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "random.safetensors"
    return save_weights(path, GiMeFive()), "random init (no shipped weights)"


def detector_fps(clip: Path, providers: list[str]) -> dict:
    import av
    from gimefive.pipeline.bench.scenes import default_faces, make_scene_video

    from gimefive.detector import FaceDetector

    faces, source = default_faces(12)
    make_scene_video(clip, faces, 1920, 1080, 100, 25, seed=0)
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    detector = FaceDetector()
    detector.detect(frames[:4])
    t0 = time.perf_counter()
    for i in range(0, len(frames), 4):
        detector.detect(frames[i:i + 4])
    out = {"faces_source": source, "frames": len(frames),
           "pipeline_detector_fps_cpu_provider": round(len(frames) / (time.perf_counter() - t0),
                                                       1)}
    if "CUDAExecutionProvider" in providers:
        import numpy as np
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        sess = ort.InferenceSession(WEIGHTS, providers=["CUDAExecutionProvider"])
        x = np.zeros((4, 3, 360, 640), np.float32)
        sess.run(None, {"input": x})
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 2:
            sess.run(None, {"input": x})
            n += 4
        out["network_only_cuda_640x360_fps"] = round(n / (time.perf_counter() - t0), 1)
    return out


def annotate_fps(clip: Path, weights: Path, backend: str) -> dict:
    from gimefive.pipeline.config import load_annotate_config
    from gimefive.pipeline.run import annotate_video

    if not clip.is_file():
        from gimefive.pipeline.bench.scenes import default_faces, make_scene_video

        make_scene_video(clip, default_faces(12)[0], 1920, 1080, 100, 25, seed=0)
    config = load_annotate_config(backend=backend, weights=str(weights))
    res = annotate_video(clip, clip.with_name(f"annotated_{backend}.mp4"), config=config,
                         progress=False, save_resolved_config=False, force=True).to_dict()
    return {"fps": res["fps"], "frames": res["frames"], "faces": res["faces"],
            "parallel_efficiency": res["parallel_efficiency"],
            "backend_used": res.get("info", {}).get("classify", {}).get("backend"),
            "decode": res.get("info", {}).get("source", {}).get("decode"),
            "stages": {n: {"cpu_ms_per_frame": s["cpu_ms_per_frame"], "busy_fps": s["busy_fps"]}
                       for n, s in res["stages"].items()}}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# gpu_check {result['date_utc']} UTC", "",
             f"GPU: {env.get('nvidia_smi') or env.get('gpus')}; torch {env['torch']} "
             f"(CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}); onnxruntime "
             f"{env['onnxruntime']} {env['onnxruntime_providers']}; TensorRT "
             f"{env['tensorrt'] or 'absent'}; weights: {result.get('weights')}.", "",
             "| engine | batch | faces/s no CAM | faces/s in-graph CAM | faces/s autograd CAM |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key, part in result.items():
        if isinstance(part, dict) and "faces_per_s" in part:
            for row in part["faces_per_s"]:
                lines.append(f"| {key} | {row['batch']} | {row.get('no_cam', '-')} "
                             f"| {row.get('cam', '-')} | {row.get('cam_autograd', '-')} |")
        elif isinstance(part, dict) and ("absent" in part or "error" in part
                                         or "skipped" in part):
            why = part.get("absent") or part.get("error") or part.get("skipped")
            lines.append(f"| {key} | - | - | - | {why} |")
    det = result.get("detector", {})
    lines += ["", f"Detector on 1080p: {det}", ""]
    for backend in ("torch", "auto"):
        a = result.get(f"annotate_1080p_{backend}", {})
        lines.append(f"annotate 1080p, backend {backend}: {a.get('fps', a)} fps "
                     f"(engine {a.get('backend_used')}, decode {a.get('decode')})")
    for key in GPU_PATH_PARTS:
        if key in result:
            lines.append(f"{key}: {result[key]}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ the GPU path (issue 14)

GPU_PATH_PARTS = ("decode", "torch_detector", "torch_crops", "classifier_cpu",
                  "annotate_dry_run")


def gpu_path_parts(result: dict, clip: Path, device: str) -> None:
    """Decode, torch detector and tensor crops on ``device``, each in its own part."""
    run_part("decode", result, lambda: decode_fps(clip))
    run_part("torch_detector", result, lambda: torch_detector_fps(clip, device))
    run_part("torch_crops", result, lambda: torch_crops_fps(clip, device))


def timed_rate(fn, items_per_call: int, seconds: float, sync=None) -> float:
    """Items per second of ``fn`` over at least ``seconds`` (after one warm-up call)."""
    fn()
    if sync:
        sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if sync:
            sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and calls >= 2:
            return round(calls * items_per_call / elapsed, 1)


def decode_fps(clip: Path) -> dict:
    """Whole-clip decode to BGR arrays, NVDEC and CPU, with the path that really ran."""
    from gimefive.pipeline.readers import open_reader

    from gimefive.errors import GimefiveError

    out = {}
    for device in ("cuda", "cpu"):
        try:
            reader = open_reader(str(clip), "file", decode_device=device)
        except GimefiveError as exc:
            out[device] = {"unavailable": str(exc)}
            continue
        t0 = time.perf_counter()
        try:
            n = sum(1 for _ in reader.read())
            out[device] = {"fps": round(n / (time.perf_counter() - t0), 1), "frames": n,
                           "path": reader.info()["decode"]}
        except GimefiveError as exc:
            out[device] = {"failed": str(exc)}
        finally:
            reader.close()
        log(f"  decode {device}: {out[device]}")
    return out


def _clip_frames(clip: Path, n: int):
    import av
    import numpy as np

    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="bgr24") for _, f in zip(range(n), c.decode(video=0),
                                                                      strict=False)]
    return np.stack(frames)


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else None


def torch_detector_fps(clip: Path, device: str, batch: int = 8) -> dict:
    """The torch RetinaFace on ``device``: frames already there, and from host memory."""
    import torch

    try:
        from gimefive.torch_detector import TorchFaceDetector
    except ImportError as exc:
        return {"absent": f"gimefive.torch_detector not importable ({exc})"}
    frames = torch.from_numpy(_clip_frames(clip, batch))
    det = TorchFaceDetector(device=device, max_batch=batch)
    on_device = frames.to(device)
    n = int(det.detect_tensor(on_device)[-1].sum())
    seconds = 2.0 if device == "cuda" else 0.5
    return {"frame_size": list(frames.shape[1:3]), "batch": len(frames), "faces_first_batch": n,
            "fps_frames_on_device": timed_rate(lambda: det.detect_tensor(on_device),
                                               len(frames), seconds, _sync(device)),
            "fps_frames_from_host": timed_rate(lambda: det.detect_tensor(frames), len(frames),
                                               seconds, _sync(device)),
            "half": det.half}


def torch_crops_fps(clip: Path, device: str, faces: int = 64) -> dict:
    """Tensor crops + preprocessing faces/s: ``faces`` squares of 24..200 px per frame."""
    import numpy as np
    import torch
    from gimefive.pipeline.torch_crops import preprocess_crops_torch

    frame = _clip_frames(clip, 1)[0]
    h, w = frame.shape[:2]
    rng = np.random.default_rng(0)
    crops = np.column_stack([rng.uniform(0, w, faces), rng.uniform(0, h, faces),
                             rng.uniform(24, 200, faces), rng.uniform(-20, 20, faces)]
                            ).astype(np.float32)
    on_device = torch.from_numpy(frame).to(device)
    seconds = 2.0 if device == "cuda" else 0.5
    return {"faces_per_call": faces, "frame_size": [h, w],
            "faces_per_s": timed_rate(lambda: preprocess_crops_torch([on_device], [crops]),
                                      faces, seconds, _sync(device))}


def dry_run(result: dict, out: Path) -> int:
    """Every new part on the CPU at tiny sizes: the script is known to start and run."""
    from gimefive.pipeline.bench.scenes import default_faces, make_scene_video

    from gimefive.backends import create_backend

    result["mode"] = "dry run on the CPU (tiny sizes; figures are not measurements)"
    weights, result["weights"] = _weights()
    clip = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "scene_tiny.mp4"
    make_scene_video(clip, default_faces(4)[0], 320, 180, 10, 25, seed=0)
    gpu_path_parts(result, clip, "cpu")

    def classifier() -> dict:
        backend = create_backend("torch", weights=weights, device="cpu")
        try:
            return {"batch": 8, "faces_per_s_cam": round(faces_per_second(
                backend, 8, cam=True, seconds=0.3), 1)}
        finally:
            backend.close()

    run_part("classifier_cpu", result, classifier)
    run_part("annotate_dry_run", result, lambda: annotate_fps(clip, weights, "torch"))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    failed = [k for k in GPU_PATH_PARTS if "error" in result.get(k, {})]
    log(f"dry run wrote {out / 'gpu_check.json'}; failed parts: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
