"""Throughput of many short files: one at a time, several at once, and on a Ray cluster.

Writes ``--files`` generated clips (skimage's astronaut, ``--frames`` frames at
``--size``), then annotates all of them with ``gimefive annotate ... --out-dir``'s own
code (pipeline/batch.py) in three ways:

* ``local, 1 at a time``: ``--jobs 1``;
* ``local, N at once``: ``--jobs N`` for each N of ``--jobs``;
* ``ray, 2 nodes``: a two-node Ray cluster on this machine (tests/ray_cluster.py: two
  raylets on 127.0.0.1, ``--node-cpus`` CPUs each, one file per CPU), files through the
  shared filesystem and, with ``--bytes``, through the object store too.

All on one machine, so Ray cannot add cores: what it shows is Ray's overhead
(scheduling, worker start, the extra processes of two nodes). The cluster's own start
is timed apart and not counted. Each way runs ``--repeat`` times, round robin, and its
median is reported, so a burst of other load is shared out. Prints a table and the
command line; the load average before and after says whether something else ran.

Usage: ``python benchmarks/ray_files_bench.py --bytes --repeat 3`` (about 7 minutes on
2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from clips import write_still_clip  # noqa: E402
from gimefive.pipeline.batch import BatchOptions, run_batch  # noqa: E402
from gimefive.pipeline.config import load_annotate_config  # noqa: E402


def make_clips(folder: Path, files: int, frames: int, size: tuple[int, int]) -> list[Path]:
    import numpy as np
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    return [write_still_clip(folder / f"clip{i}.mp4", image, size, frames)
            for i in range(files)]


def timed(name: str, clips: list[Path], work: Path, options: BatchOptions) -> dict:
    out = work / "out"
    out.mkdir()
    config = load_annotate_config()
    start = time.perf_counter()
    outcomes = run_batch([str(c) for c in clips], out, config, options, quiet=True)
    wall = time.perf_counter() - start
    shutil.rmtree(out)
    return {"way": name, "files": len(outcomes), "wall_s": wall,
            "frames": sum(o["frames"] for o in outcomes)}


def ways(args: argparse.Namespace, address: str | None) -> dict[str, BatchOptions]:
    found = {"local, 1 at a time": BatchOptions(jobs=1)}
    for jobs in (int(j) for j in args.jobs.split(",")):
        found[f"local, {jobs} at once"] = BatchOptions(jobs=jobs)
    if address:
        for mode in ["shared", "bytes"] if args.bytes else ["shared"]:
            found[f"ray, 2 nodes x {args.node_cpus} CPU, {mode}"] = BatchOptions(
                ray=address, ray_cpus=1, ray_transfer=mode)
    return found


def measure(args: argparse.Namespace, clips: list[Path], work: Path,
            address: str | None) -> list[dict]:
    """Every way ``--repeat`` times, round robin (so a burst of other load is shared
    out); each way's median wall time."""
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        for name, options in ways(args, address).items():
            runs.setdefault(name, []).append(timed(name, clips, work, options))
            print(f"{name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr)
    rows = []
    for name, results in runs.items():
        walls = sorted(r["wall_s"] for r in results)
        wall = statistics.median(walls)
        rows.append({"way": name, "files": results[0]["files"], "frames": results[0]["frames"],
                     "wall_s": wall, "walls": walls, "files_per_s": results[0]["files"] / wall,
                     "fps": results[0]["frames"] / wall})
    return rows


def table(rows: list[dict]) -> str:
    base = rows[0]["wall_s"]
    lines = ["| way | files | frames | wall s (median) | runs, s | files/s | frames/s | "
             "vs 1 at a time |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        runs = ", ".join(f"{w:.1f}" for w in r["walls"])
        lines.append(f"| {r['way']} | {r['files']} | {r['frames']} | {r['wall_s']:.1f} | "
                     f"{runs} | {r['files_per_s']:.2f} | {r['fps']:.1f} | "
                     f"{base / r['wall_s']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    parser.add_argument("--jobs", default="2", help="comma-separated --jobs to time")
    parser.add_argument("--node-cpus", type=int, default=1)
    parser.add_argument("--bytes", action="store_true", help="also time --ray-transfer bytes")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ray-files-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        (work / "in").mkdir()
        clips = make_clips(work / "in", args.files, args.frames, size)
        address = None
        if not args.no_ray:
            from ray_cluster import loopback_cluster

            start = time.perf_counter()
            cluster, _ = stack.enter_context(loopback_cluster(
                nodes=2, cpus=args.node_cpus, object_store_mb=200))
            address = cluster.address
            print(f"ray: two-node cluster up in {time.perf_counter() - start:.1f} s (not "
                  "counted; it stays up, idle, during the local runs)", file=sys.stderr)
        rows = measure(args, clips, work, address)
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    print(f"{date}; {os.cpu_count()} cores; {args.files} clips of {args.frames} frames at "
          f"{args.size}; load average before {load_before[0]:.2f}, after "
          f"{os.getloadavg()[0]:.2f}")
    print(table(rows))
    print("command: python benchmarks/ray_files_bench.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
