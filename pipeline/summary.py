"""What an annotate job measured: per-stage CPU, speed and timers, as the summary
``gimefive annotate`` prints and ``--summary`` writes (kept apart from the job that runs
the stages, so reports and benchmarks can read a summary without starting anything)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from gimefive.pipeline.supervisor import StageProcess

from gimefive.errors import StageError


@dataclass
class AnnotateResult:
    """What ``annotate_video`` measured; ``to_dict()`` is what ``--summary`` writes."""

    frames: int
    faces: int
    wall_s: float          # whole run including process start-up
    processing_s: float    # first frame decoded to last frame written
    fps: float             # frames / processing_s
    cores: int
    parallel_efficiency: float
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(stages: dict[str, StageProcess], wall_s: float) -> AnnotateResult:
    stats = {name: s.stats for name, s in stages.items()}
    missing = [name for name, st in stats.items() if not st]
    if missing:
        raise StageError(f"stage {missing[0]} ended without reporting its statistics")
    last = stats["annotate"]
    frames = int(last["frames_in"])
    # from the first frame decoded to the last one written
    firsts = [st["first_at"] for st in stats.values() if st.get("first_at")]
    processing = max(max(st["last_at"] for st in stats.values()) - min(firsts), 1e-9) \
        if firsts else max(last["wall_s"], 1e-9)
    fps = frames / processing
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_stage = {}
    cpu_per_frame = 0.0
    for name, st in stats.items():
        n = max(1, st["frames_in"] or st["frames_out"])
        cpu_per_frame += st["cpu_s"] / n
        per_stage[name] = {
            "frames": n, "cpu_s": round(st["cpu_s"], 3),
            "cpu_ms_per_frame": round(1000 * st["cpu_s"] / n, 2),
            "busy_fps": round(n / st["busy_s"], 1) if st["busy_s"] > 0 else None,
            "cpu_fps": round(n / st["cpu_s"], 1) if st["cpu_s"] > 0 else None,
            "blocked_s": round(st["blocked_s"], 2), "malformed": st["malformed"],
            "max_rss_mb": round(st["max_rss_mb"], 1),
            "timers_s": {k: round(v, 3) for k, v in st["timers"].items()},
            "counters": st["counters"],
        }
    info = {name: s.ready for name, s in stages.items() if s.ready}
    return AnnotateResult(
        frames=frames, faces=int(last["counters"].get("faces", 0)), wall_s=round(wall_s, 2),
        processing_s=round(processing, 2), fps=round(fps, 2), cores=int(cores or 1),
        parallel_efficiency=round(fps * cpu_per_frame / (cores or 1), 3),
        stages=per_stage, info=info)


def format_summary(result: AnnotateResult) -> str:
    lines = [f"{result.frames} frames, {result.faces} faces in {result.processing_s:.1f} s "
             f"({result.fps:.1f} fps; {result.wall_s:.1f} s with start-up); parallel "
             f"efficiency {result.parallel_efficiency:.0%} on {result.cores} cores",
             f"{'stage':<9} {'cpu ms/frame':>12} {'cpu fps':>8} {'busy fps':>9} "
             f"{'blocked s':>9}  where the time went (s)"]
    for name, st in result.stages.items():
        timers = ", ".join(f"{k} {v:.1f}" for k, v in st["timers_s"].items()) or "-"
        lines.append(f"{name:<9} {st['cpu_ms_per_frame']:>12.1f} {st['cpu_fps'] or 0:>8.1f} "
                     f"{st['busy_fps'] or 0:>9.1f} {st['blocked_s']:>9.1f}  {timers}")
    classify, sink = result.info.get("classify", {}), result.info.get("annotate", {})
    if classify or sink:
        video = sink.get("codec", "-")
        if video not in ("-", "libx264"):
            video += " (libx264 is not in this FFmpeg build)"
        lines.append(f"backend {classify.get('backend', '-')}, uncertain below "
                     f"{classify.get('uncertain_threshold', '-')}; video codec {video}")
    if result.info.get("source", {}).get("decode"):
        lines.append(f"decode: {result.info['source']['decode']}")
    detector = result.info.get("detect", {}).get("detector")
    if detector:
        crops = classify.get("crops")
        lines.append(f"detector: {detector}" + (f"; crops: {crops}" if crops else ""))
    latency = result.stages.get("annotate", {}).get("counters", {})
    if "latency_ms_p50" in latency:
        lines.append("latency decode->written ms: " + ", ".join(
            f"p{q} {latency[f'latency_ms_p{q}']:.0f}" for q in (50, 95, 99)))
    repaired = max((st["counters"].get("pts_repaired", 0) for st in result.stages.values()),
                   default=0)  # the source repairs; the sink only repairs what is left
    if repaired:
        lines.append(f"repaired {repaired:.0f} timestamp(s) that were missing, repeated or "
                     f"went back (every frame kept)")
    malformed = sum(st["malformed"] for st in result.stages.values())
    if malformed:
        lines.append(f"dropped {malformed} malformed message(s)")
    return "\n".join(lines)
