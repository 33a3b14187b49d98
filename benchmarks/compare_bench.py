"""Two ``gimefive bench`` results side by side (before / after a change), as Markdown.

    python benchmarks/compare_bench.py BEFORE/bench.json AFTER/bench.json

Per scene: pipeline fps while frames flow, whole-process fps (frames / wall time of the
median run, start-up included), the paper-script baseline of the same run and the
ratio, faces matched per frame, per-stage CPU ms per frame and start-up; then the live
streams sustained.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("source", "detect", "track", "classify", "annotate")


def scene_rows(name: str, result: dict) -> dict:
    item = next(i for i in result["inputs"] if i["name"] == name)
    p, b = item["pipeline"], item.get("baseline") or {}
    whole = p["frames"] / p["wall_s_median_run"]
    base = (b.get("fps") or {}).get("median")
    return {"fps": p["fps"]["median"], "whole": whole, "base": base,
            "ratio": whole / base if base else None, "faces": p["faces_matched"] / p["frames"],
            "base_faces": (b["faces_matched"] / b["frames"]) if b.get("frames") else None,
            "cpu": {s: (p["stages"].get(s) or {}).get("cpu_ms_per_frame") for s in STAGES},
            "startup": {s: (p["stages"].get(s) or {}).get("startup_s") for s in STAGES},
            "latency_p95": p["latency_ms"].get("p95")}


def fmt(value, pattern="{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def main(before_path: str, after_path: str) -> None:
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    print("| scene | fps before -> after | whole-process fps (start-up incl.) | baseline fps "
          "| whole / baseline | faces matched / frame (baseline) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    names = [i["name"] for i in after["inputs"]]
    rows = {n: (scene_rows(n, before), scene_rows(n, after)) for n in names}
    for n, (x, y) in rows.items():
        print(f"| {n} | {fmt(x['fps'])} -> **{fmt(y['fps'])}** | {fmt(x['whole'])} -> "
              f"**{fmt(y['whole'])}** | {fmt(x['base'])} / {fmt(y['base'])} | "
              f"{fmt(x['ratio'], '{:.2f}x')} -> **{fmt(y['ratio'], '{:.2f}x')}** | "
              f"{fmt(x['faces'])} -> {fmt(y['faces'])} ({fmt(y['base_faces'])}) |")
    print("\nCPU ms per frame per stage, before -> after:\n")
    print("| scene | " + " | ".join(STAGES) + " |")
    print("| --- |" + " ---: |" * len(STAGES))
    for n, (x, y) in rows.items():
        print(f"| {n} | " + " | ".join(f"{fmt(x['cpu'][s], '{:.1f}')} -> "
                                       f"{fmt(y['cpu'][s], '{:.1f}')}" for s in STAGES) + " |")
    print("\nStart-up per stage, s (spawn to ready; before: not reported by that version):\n")
    print("| scene | " + " | ".join(STAGES) + " |")
    print("| --- |" + " ---: |" * len(STAGES))
    for n, (x, y) in rows.items():
        print(f"| {n} | " + " | ".join(f"{fmt(x['startup'][s])} -> {fmt(y['startup'][s])}"
                                       for s in STAGES) + " |")
    print("\nLive streams (640x360, 25 fps, annotated output):\n")
    for label, r in (("before", before), ("after", after)):
        s = r.get("scaling") or {}
        steps = "; ".join(
            f"{st['streams']}: fps {st['fps_out']}, dropped {st['dropped_fraction']}, "
            f"p95 {st.get('latency_p95_s', '-')} s, step {st.get('degrade_step_max', '-')}"
            f" -> {'yes' if st['sustained'] else 'no'}" for st in s.get("steps", []))
        if not s:
            print(f"- {label}: not measured (scaling skipped)")
            continue
        print(f"- {label}: **{s.get('streams_sustained')} sustained** ({steps})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
