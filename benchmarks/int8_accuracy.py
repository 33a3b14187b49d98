"""INT8 quantization methods side by side: RAF-DB test accuracy, agreement with fp32, speed.

Every configuration quantizes the exported (probs, cam) graph of the same weights with
export/quantize.py (calibrated on a fixed, seeded sample of RAF-DB *training* crops),
then classifies all of RAF-DB test as ``gimefive eval`` does (cached decode, the same
normalisation). Speed is faces per wall second at batch 1, 8 and 32 for fp32, today's
default method and the old one, on this machine as loaded (the load average is written).

``--avx2-faces N`` also runs each int8 model on N test faces under
``qemu-x86_64 -cpu Haswell`` (apt: qemu-user), i.e. ONNX Runtime's AVX2 kernels without
VNNI, where u8 x s8 products saturate int16: slow (minutes per model), so off by default.

    nice python benchmarks/int8_accuracy.py -o benchmarks/results/int8
    nice python benchmarks/int8_accuracy.py --all --avx2-faces 128 -o benchmarks/results/int8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from gimefive.export.quantize import DEFAULT_METHOD, Int8Method

OLD = Int8Method("minmax", reduce_range=False)  # `gimefive export --precision int8` before
MINMAX7 = Int8Method("minmax")
PCT8 = Int8Method("percentile", 99.99, reduce_range=False)
#: name -> (method, calibration faces); the default run measures the first five.
#: "8bit"/"7bit": weights; 7-bit is ``reduce_range``, safe from AVX2 int16 saturation.
CONFIGS = {
    "minmax-8bit-512 (old default)": (OLD, 512),
    "pct99.99-7bit-2048 (default)": (DEFAULT_METHOD, 2048),
    "minmax-7bit-2048": (MINMAX7, 2048),
    "minmax-7bit-512": (MINMAX7, 512),
    "pct99.99-8bit-2048": (PCT8, 2048),
    "pct99.99-7bit-512": (DEFAULT_METHOD, 512),
    "pct99.999-8bit-512": (replace(PCT8, percentile=99.999), 512),
    "entropy-8bit-512": (Int8Method("entropy", reduce_range=False), 512),
    "minmax-8bit-2048": (OLD, 2048),
    "minmax-8bit-symact-512": (replace(OLD, symmetric_activations=True), 512),
    "minmax-8bit-u8u8-512": (replace(OLD, weights="uint8"), 512),
    "minmax-8bit-conv1fp32-512": (replace(OLD, exclude=("/conv1/Conv",)), 512),
    "minmax-8bit-fc3fp32-512": (replace(OLD, exclude=("/fc3/Gemm",)), 512),
    "minmax-8bit-qoperator-512": (replace(OLD, quant_format="qoperator"), 512),
    "minmax-8bit-preprocess-512": (replace(OLD, preprocess=True), 512),
}
DEFAULT_RUN = list(CONFIGS)[:5]
CAM_FACES = 256  # first test faces compared for the CAM difference
SPEED = ("fp32", "minmax-8bit-512 (old default)", "pct99.99-7bit-2048 (default)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", type=Path, default=None, help="write int8_accuracy.json/.md")
    p.add_argument("--weights", default=None, help="default: the shipped weights")
    p.add_argument("--all", action="store_true", help=f"all {len(CONFIGS)} configurations")
    p.add_argument("--configs", default=None, help="comma-separated names from CONFIGS")
    p.add_argument("--batches", default="1,8,32", help='"" skips the speed runs')
    p.add_argument("--speed-seconds", type=float, default=6.0,
                   help="per batch size and model, split over 3 rounds")
    p.add_argument("--avx2-faces", type=int, default=0, help="emulated AVX2 check (qemu)")
    p.add_argument("--predict", nargs=3, metavar=("MODEL", "FACES_NPY", "OUT_NPY"),
                   help=argparse.SUPPRESS)  # the child run under qemu
    return p.parse_args(argv)


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(path, x: np.ndarray, batch: int = 128) -> np.ndarray:
    s = session(path)
    return np.concatenate([s.run(["probs"], {"input": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def cam_difference(fp32, int8, x: np.ndarray) -> float:
    """Mean |CAM int8 - CAM fp32| (0..1 maps) over ``x``: what the overlay would show."""
    return float(np.abs(session(int8).run(["cam"], {"input": x})[0]
                        - session(fp32).run(["cam"], {"input": x})[0]).mean())


def faces_per_second(sess, x: np.ndarray, batch: int, seconds: float) -> tuple[float, float]:
    """(faces per wall second, per CPU second of this process) through (probs, cam).

    CPU seconds are what a face costs whatever else the machine runs; wall seconds are
    what a user waits on this machine as loaded.
    """
    feed = {"input": np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))}
    sess.run(None, feed)  # warm-up
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while done == 0 or time.perf_counter() - t0 < seconds:
        sess.run(None, feed)
        done += batch
    return done / (time.perf_counter() - t0), done / max(time.process_time() - c0, 1e-9)


def emulated_avx2(path, x: np.ndarray, workdir: Path) -> np.ndarray:
    """Probabilities computed by ONNX Runtime's AVX2 (no VNNI) kernels under qemu."""
    faces, out = workdir / "avx2_faces.npy", workdir / "avx2_probs.npy"
    np.save(faces, x)
    subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, __file__, "--predict",
                    str(path), str(faces), str(out)], check=True, stderr=subprocess.DEVNULL)
    return np.load(out)


def load_data():
    from gimefive.train.data import load_split

    from gimefive.dataset import find_dataset
    from gimefive.preprocess import normalize_gray

    root = find_dataset()
    if root is None:
        sys.exit("int8_accuracy: FER data not found (set GIMEFIVE_DATA or place ../shared/data)")
    test = load_split(root / "test", root / "splits" / "rafdb_test.csv")
    return normalize_gray(test.images), test.labels


def evaluate(name, method, n_calib, fp32, x, y, ref, args, workdir, avx2_idx):
    from gimefive.export.faces import calibration_faces
    from gimefive.export.quantize import quantize_int8

    t0 = time.perf_counter()
    path = workdir / f"int8-{len(os.listdir(workdir))}.onnx"
    quantize_int8(fp32, path, calibration_faces(n_calib).x, method=method)
    built = time.perf_counter() - t0
    probs = predict(path, x)
    pred = probs.argmax(1)
    row = {"config": name, "method": asdict(method), "tag": method.tag,
           "calibration_faces": n_calib, "build_seconds": round(built, 1),
           "accuracy": float((pred == y).mean()), "agreement": float((pred == ref).mean()),
           "cam_mean_abs_diff": cam_difference(fp32, path, x[:CAM_FACES])}
    if len(avx2_idx):
        emu_probs = emulated_avx2(path, x[avx2_idx], workdir)
        emu = emu_probs.argmax(1)
        row["avx2_faces"] = len(avx2_idx)
        row["native_agreement_same_faces"] = float((pred[avx2_idx] == ref[avx2_idx]).mean())
        row["avx2_vs_native_max_prob_diff"] = float(np.abs(emu_probs - probs[avx2_idx]).max())
        row["avx2_accuracy"] = float((emu == y[avx2_idx]).mean())
        row["avx2_agreement"] = float((emu == ref[avx2_idx]).mean())
    print(f"  {name:44s} {row['accuracy'] * 100:6.2f}%  agree {row['agreement'] * 100:6.2f}%"
          + (f"  avx2 agree {row['avx2_agreement'] * 100:6.2f}%" if len(avx2_idx) else "")
          + f"  ({built:.0f} s to build)", flush=True)
    return row, path


def speed_rows(paths, x, batches, seconds, rounds=3):
    """Medians over ``rounds`` interleaved passes, so load changes hit every model alike."""
    sessions = {name: session(path) for name, path in paths.items()}
    rows = []
    for b in batches:
        samples = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, sess in sessions.items():
                samples[name].append(faces_per_second(sess, x, b, seconds / rounds))
        for name, got in samples.items():
            row = {"config": name, "batch": b,
                   "wall": round(statistics.median(w for w, _ in got), 1),
                   "cpu": round(statistics.median(c for _, c in got), 1)}
            print(f"  batch {b:3d} {name:36s} {row['wall']:7.1f}/s {row['cpu']:7.1f}/cpu-s",
                  flush=True)
            rows.append(row)
    return rows


def markdown(result) -> str:
    fp = result["fp32_accuracy"]
    avx2 = any("avx2_agreement" in r for r in result["rows"])
    head = ["config", "method tag", "calibration faces", "RAF-DB test", "vs fp32",
            "top-1 agreement", f"CAM mean abs diff ({CAM_FACES} faces)"]
    head += ["AVX2 (emulated) agreement"] if avx2 else []
    lines = [f"{result['date']}, {result['machine']}; load average at start "
             f"{result['load_start']}, at end {result['load_end']}. RAF-DB test "
             f"({result['faces']} faces): onnxruntime fp32 {fp * 100:.2f}%.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result["rows"]:
        cells = [r["config"], r["tag"], str(r["calibration_faces"]),
                 f"{r['accuracy'] * 100:.2f}%", f"{(r['accuracy'] - fp) * 100:+.2f}",
                 f"{r['agreement'] * 100:.2f}%", f"{r['cam_mean_abs_diff']:.3f}"]
        if avx2:
            cells.append(f"{r['avx2_agreement'] * 100:.1f}% of {r['avx2_faces']} (native "
                         f"{r['native_agreement_same_faces'] * 100:.1f}%, max prob diff "
                         f"{r['avx2_vs_native_max_prob_diff']:.2g})" if "avx2_agreement" in r
                         else "")
        lines.append("| " + " | ".join(cells) + " |")
    if not result["speed"]:
        return "\n".join(lines) + "\n"
    lines += ["", "Faces per second through the (probs, cam) graph, median of interleaved "
              "rounds; provisional (machine shared, see the load average):", "",
              "| model | batch | faces / wall s | faces / CPU s |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['config']} | {r['batch']} | {r['wall']} | {r['cpu']} |"
              for r in result["speed"]]
    return "\n".join(lines) + "\n"


def machine() -> str:
    import platform

    import onnxruntime

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "avx2") if f" {f}" in flags]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            f"({', '.join(isa)}), onnxruntime {onnxruntime.__version__}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.predict:
        model, faces, out = args.predict
        np.save(out, predict(model, np.load(faces)))
        return 0
    from gimefive.export.artifacts import onnx_artifact

    if args.avx2_faces and not shutil.which("qemu-x86_64"):
        sys.exit("int8_accuracy: --avx2-faces needs qemu-x86_64 (apt-get install qemu-user)")
    names = args.configs.split(",") if args.configs else list(CONFIGS) if args.all else DEFAULT_RUN
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"int8_accuracy: unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    started, load_start = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    x, y = load_data()
    fp32 = onnx_artifact(args.weights, "conv5", True, "fp32")
    ref = predict(fp32, x).argmax(1)
    print(f"  fp32 {(ref == y).mean() * 100:.2f}% on RAF-DB test ({len(y)} faces)", flush=True)
    avx2_idx = np.linspace(0, len(x) - 1, args.avx2_faces).astype(int) if args.avx2_faces \
        else np.zeros(0, int)
    rows, paths = [], {"fp32": fp32}
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        for name in names:
            row, path = evaluate(name, *CONFIGS[name], fp32, x, y, ref, args, Path(tmp),
                                 avx2_idx)
            rows.append(row)
            if name in SPEED:
                paths[name] = path
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        speed = speed_rows(paths, x, batches, args.speed_seconds)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "faces": len(y),
              "fp32_accuracy": float((ref == y).mean()), "rows": rows, "speed": speed,
              "load_start": load_start, "load_end": [round(v, 2) for v in os.getloadavg()],
              "seconds": round(time.perf_counter() - started, 1),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    print(markdown(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "int8_accuracy.json").write_text(json.dumps(result, indent=2))
        (args.out / "int8_accuracy.md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
