"""Classifier backends side by side: faces/s with and without Grad-CAM, and accuracy.

    nice python benchmarks/backends_bench.py [--weights W] [-o benchmarks/results/backends]

One run measures every CPU backend configuration on the same faces, interleaved
round by round (so drift from other jobs on the machine hits all of them alike), at
batch 1, 8, 32 and 128, each with the CAM off and on. "autograd CAM" asks autograd
for d score / d conv5 only (backward through the head); "full-backward CAM" is how
pytorch-grad-cam and the paper's script get it (``backward()`` through the whole
network, every parameter gradient filled); "in-graph" is the closed form that the
exported engines run in the forward pass. Reported: faces per CPU second and per wall
second (median and best over the rounds), and the CAM's cost as a ratio of the same
configuration without it. Then the accuracy of every configuration on RAF-DB test
(when the data is here) and how far its CAMs are from the fp32 autograd reference.
Writes backends.json and backends.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from gimefive.pipeline.bench.machine import load_average, machine_info

CONFIGS = {
    # name: (backend, options)
    "torch fp32 (autograd CAM)": ("torch", {"precision": "fp32"}),
    "torch fp32 (full-backward CAM)": ("torch", {"precision": "fp32", "cam_method": "backward"}),
    "torch bf16 (autograd CAM)": ("torch", {"precision": "bf16"}),
    "torch fp32 (in-graph CAM)": ("torch", {"precision": "fp32", "cam_method": "graph"}),
    "torch bf16 (in-graph CAM)": ("torch", {"precision": "bf16", "cam_method": "graph"}),
    "onnxruntime fp32": ("onnxruntime", {"precision": "fp32"}),
    "onnxruntime int8": ("onnxruntime", {"precision": "int8"}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None,
                   help="weights file (default: the shipped weights, else a random-init model)")
    p.add_argument("-o", "--out", default="benchmarks/results/backends")
    p.add_argument("--batches", default="1,8,32,128")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--faces-per-measure", type=int, default=64,
                   help="each measurement runs ceil(this / batch) calls ...")
    p.add_argument("--max-seconds", type=float, default=5.0,
                   help="... or stops after this long (at least one call)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--accuracy-faces", type=int, default=None,
                   help="a seeded subset of RAF-DB test (default: all 2,388)")
    p.add_argument("--cam-faces", type=int, default=128,
                   help="faces for the CAM-vs-reference comparison")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads per backend (1: what a pipeline classify stage "
                        "uses; 0: the library default, all cores)")
    return p.parse_args(argv)


def measure(backend, x, cam, calls, max_seconds):
    """(faces per wall second, faces per CPU second) over ``calls`` calls, stopping early
    (after at least one) past ``max_seconds``.

    CPU seconds (this process, all its threads) are what a face costs whatever else
    the machine runs; wall seconds are what a user waits on this machine as loaded.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    while done < calls and (done == 0 or time.perf_counter() - t0 < max_seconds):
        backend(x, cam=cam)
        done += 1
    faces = done * len(x)
    return faces / (time.perf_counter() - t0), faces / max(time.process_time() - c0, 1e-9)


def speed(backends, faces, batches, rounds, per_measure, max_seconds):
    rows = []
    for batch in batches:
        x = faces[:batch] if len(faces) >= batch else np.resize(faces, (batch, *faces.shape[1:]))
        calls = max(1, -(-per_measure // batch))
        samples = {(n, cam): [] for n in backends for cam in (False, True)}
        for b in backends.values():  # warm-up (first-call allocation, autotuning)
            b(x[:8], cam=False)
            b(x[:8], cam=True)
        for _ in range(rounds):
            for n, b in backends.items():
                for cam in (False, True):
                    samples[(n, cam)].append(measure(b, x, cam, calls, max_seconds))
        for n in backends:
            off = [w for w, _ in samples[(n, False)]]
            on = [w for w, _ in samples[(n, True)]]
            off_cpu = [c for _, c in samples[(n, False)]]
            on_cpu = [c for _, c in samples[(n, True)]]
            rows.append({"config": n, "batch": batch,
                         "no_cam_median": statistics.median(off), "no_cam_best": max(off),
                         "cam_median": statistics.median(on), "cam_best": max(on),
                         "cam_cost": statistics.median(off) / statistics.median(on),
                         "no_cam_per_cpu_s": statistics.median(off_cpu),
                         "cam_per_cpu_s": statistics.median(on_cpu),
                         "cam_cost_cpu": statistics.median(off_cpu) / statistics.median(on_cpu)})
            r = rows[-1]
            print(f"  batch {batch:4d} {n:28s} no CAM {r['no_cam_median']:8.1f}/s "
                  f"{r['no_cam_per_cpu_s']:8.1f}/cpu-s  CAM {r['cam_median']:8.1f}/s "
                  f"{r['cam_per_cpu_s']:8.1f}/cpu-s  cost x{r['cam_cost']:.2f} "
                  f"(cpu x{r['cam_cost_cpu']:.2f})", flush=True)
    return rows


def accuracy(backends, reference, cam_faces, limit=None):
    """Predictions once per (backend, precision): the CAM method does not touch probs."""
    from gimefive.export.faces import load_split

    test = load_split("rafdb_test", limit=limit)
    rows, predictions = [], {}
    ref_probs, ref_cam = reference(test.x[:cam_faces])
    for n, b in backends.items():
        group = (CONFIGS[n][0], CONFIGS[n][1]["precision"])
        if group not in predictions:
            predictions[group] = np.concatenate([
                b(test.x[i:i + 128], cam=False)[0].argmax(1) for i in range(0, len(test.x), 128)])
        preds = predictions[group]
        probs, cam = b(test.x[:cam_faces], cam=True)
        rows.append({"config": n, "faces": len(test.x),
                     "accuracy": float((preds == test.labels).mean()),
                     "cam_mean_abs_diff_vs_fp32_autograd": float(np.abs(cam - ref_cam).mean()),
                     "cam_max_abs_diff_vs_fp32_autograd": float(np.abs(cam - ref_cam).max()),
                     "top1_agreement_vs_fp32": float((probs.argmax(1) ==
                                                      ref_probs.argmax(1)).mean())})
        print(f"  {n:28s} RAF-DB test {rows[-1]['accuracy'] * 100:.2f}%", flush=True)
    return rows, test.source


def markdown(result) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}; intra-op threads per backend: {result['threads']}; load average "
             f"at start {m['load_average_at_start']}, at end {result['load_average_at_end']}. "
             f"Weights: {result['weights_kind']}. Faces: {result['faces_source']}.", "",
             ]
    if result["speed"]:
        lines += ["Faces per CPU second (this process, all threads: robust to other jobs) "
                  "and per wall second (median of rounds, best in brackets); CAM cost = "
                  "time with CAM / time without, from CPU time (wall time in brackets).", "",
                  "| config | batch | faces/CPU-s, no CAM | faces/CPU-s, CAM | faces/s, no CAM "
                  "| faces/s, CAM | CAM cost |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["speed"]:
        lines.append(f"| {r['config']} | {r['batch']} | {r['no_cam_per_cpu_s']:.1f} | "
                     f"{r['cam_per_cpu_s']:.1f} | {r['no_cam_median']:.1f} "
                     f"({r['no_cam_best']:.1f}) | {r['cam_median']:.1f} ({r['cam_best']:.1f}) "
                     f"| {r['cam_cost_cpu']:.2f}x ({r['cam_cost']:.2f}x) |")
    if result.get("accuracy"):
        lines += ["", f"Accuracy on {result['accuracy_source']}; CAM difference from torch "
                  "fp32 autograd Grad-CAM on the first "
                  f"{result['accuracy'][0]['cam_faces']} faces (0..1 maps).", "",
                  "| config | RAF-DB test accuracy | top-1 agreement with fp32 | CAM mean abs diff "
                  "| CAM max abs diff |", "| --- | ---: | ---: | ---: | ---: |"]
        for r in result["accuracy"]:
            lines.append(f"| {r['config']} | {r['accuracy'] * 100:.2f}% | "
                         f"{r['top1_agreement_vs_fp32'] * 100:.1f}% | "
                         f"{r['cam_mean_abs_diff_vs_fp32_autograd']:.2e} | "
                         f"{r['cam_max_abs_diff_vs_fp32_autograd']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from gimefive.export.faces import verification_faces
    from gimefive.pipeline.bench.system_bench import resolve_weights

    from gimefive.backends import create_backend
    from gimefive.dataset import find_dataset

    weights, kind = resolve_weights(args.weights)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"backends_bench: unknown config(s) {unknown}; expected some of {list(CONFIGS)}")
    if "onnxruntime int8" in names and find_dataset() is None:
        names.remove("onnxruntime int8")  # INT8 needs training crops for calibration
    started = time.time()
    result = {"machine": machine_info(), "weights": str(weights), "weights_kind": kind}
    print(f"weights: {weights} ({kind}); building backends ...", flush=True)
    backends = {n: create_backend(CONFIGS[n][0], weights=weights, threads=args.threads or None,
                                  **CONFIGS[n][1]) for n in names}
    result["threads"] = args.threads or "library default"
    faces = verification_faces(128, seed=1)
    result["faces_source"] = faces.source
    batches = [int(b) for b in args.batches.split(",")]
    result["speed"] = []
    if not args.no_speed:
        print("speed:", flush=True)
        result["speed"] = speed(backends, faces.x, batches, args.rounds, args.faces_per_measure,
                                args.max_seconds)
    if not args.no_accuracy and find_dataset() is not None:
        print("accuracy:", flush=True)
        reference = backends.get("torch fp32 (autograd CAM)") or create_backend(
            "torch", weights=weights)
        rows, source = accuracy(backends, reference, args.cam_faces, args.accuracy_faces)
        for r in rows:
            r["cam_faces"] = args.cam_faces
        result["accuracy"], result["accuracy_source"] = rows, source
    result["load_average_at_end"] = load_average()
    result["seconds"] = round(time.time() - started, 1)
    for b in backends.values():
        b.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backends.json").write_text(json.dumps(result, indent=2))
    (out / "backends.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / 'backends.json'} and {out / 'backends.md'} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
