"""What an annotate job measured: per-stage CPU, speed and timers, as the summary
``gimefive annotate`` prints and ``--summary`` writes (kept apart from the job that runs
the stages, so reports and benchmarks can read a summary without starting anything)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from gimefive.pipeline.replicas import SPLIT, base_name
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
    #: from the ready reports: ``stages`` per stage ``startup_s`` (process start to ready)
    #: = ``import_s`` + ``setup_s``, and ``torch`` (imported); ``startup_s`` the slowest
    #: stage's (they start in parallel)
    startup: dict[str, Any] = field(default_factory=dict)

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
    for name, group in _by_stage(stats).items():
        per_stage[name], cpu = _stage_entry(name, group)
        cpu_per_frame += cpu
    info = {name: {k: v for k, v in s.ready.items() if k != "startup"}
            for name, s in stages.items() if s.ready and "#" not in name}  # not replicas
    return AnnotateResult(
        frames=frames, faces=int(last["counters"].get("faces", 0)), wall_s=round(wall_s, 2),
        processing_s=round(processing, 2), fps=round(fps, 2), cores=int(cores or 1),
        parallel_efficiency=round(fps * cpu_per_frame / (cores or 1), 3),
        stages=per_stage, info=info, startup=startup_of(stages))


def _by_stage(stats: dict[str, dict]) -> dict[str, list[dict]]:
    """Each stage's processes: its replicas (``detect#1``...) with replica 0 (``detect``)."""
    groups: dict[str, list[dict]] = {}
    for name, st in stats.items():
        groups.setdefault(base_name(name), []).append(st)
    return groups


def _stage_entry(name: str, group: list[dict]) -> tuple[dict[str, Any], float]:
    """A stage's summary and its CPU seconds per frame; replicas added up. Frames shared
    out (detect): the frames and busy fps are the replicas' sum; every frame through each
    (classify, its faces shared): the frames are each one's, the busy fps the slowest's."""
    ns = [max(1, st["frames_in"] or st["frames_out"]) for st in group]
    shared = SPLIT.get(name) == "frames"
    n, cpu = (sum(ns) if shared else max(ns)), sum(st["cpu_s"] for st in group)
    busy = [k / st["busy_s"] for k, st in zip(ns, group, strict=True) if st["busy_s"] > 0]
    busy_fps = (sum(busy) if shared else min(busy)) if len(busy) == len(group) else None
    entry = {
        "frames": n, "cpu_s": round(cpu, 3), "cpu_ms_per_frame": round(1000 * cpu / n, 2),
        "busy_fps": round(busy_fps, 1) if busy_fps is not None else None,
        "cpu_fps": round(n / cpu, 1) if cpu > 0 else None,
        "blocked_s": round(sum(st["blocked_s"] for st in group), 2),
        "malformed": sum(st["malformed"] for st in group),
        "max_rss_mb": round(sum(st["max_rss_mb"] for st in group), 1),
        "timers_s": {k: round(v, 3) for k, v in _added(st["timers"] for st in group).items()},
        "counters": group[0]["counters"] if len(group) == 1
        else _added(st["counters"] for st in group),
    }
    if len(group) > 1:
        entry["replicas"] = len(group)
    return entry, cpu / n


def _added(dicts) -> dict[str, Any]:
    """Numbers added up key by key (anything else: the first one's)."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            number = isinstance(v, int | float) and not isinstance(v, bool)
            out[k] = out[k] + v if k in out and number else out.get(k, v)
    return out


def startup_of(stages: dict[str, StageProcess]) -> dict[str, Any]:
    """Each stage's start-up from its ready report, and the slowest (the stages start
    together, so the run waits for that one)."""
    per = {name: s.ready["startup"] for name, s in stages.items()
           if s.ready and isinstance(s.ready.get("startup"), dict)}
    slowest = [st["startup_s"] for st in per.values() if st.get("startup_s") is not None]
    return {"startup_s": max(slowest), "stages": per} if slowest else {"stages": per}


def startup_line(startup: dict[str, Any]) -> str | None:
    """``start-up 1.2 s (stages in parallel); per stage s, imports + setup: ...``."""
    per = startup.get("stages") or {}
    if not per:
        return None
    parts = [f"{name} {st['startup_s']:.2f} ({st['import_s']:.2f} + {st['setup_s']:.2f})"
             if st.get("startup_s") is not None else f"{name} - (setup {st['setup_s']:.2f})"
             for name, st in per.items()]
    torch = [name for name, st in per.items() if st.get("torch")]
    total = startup.get("startup_s")
    head = f"start-up {total:.2f} s (stages in parallel)" if total is not None else "start-up"
    return (f"{head}; per stage s, imports + setup: {', '.join(parts)}"
            + (f"; torch imported by {', '.join(torch)}" if torch else ""))


def format_summary(result: AnnotateResult) -> str:
    lines = [f"{result.frames} frames, {result.faces} faces in {result.processing_s:.1f} s "
             f"({result.fps:.1f} fps; {result.wall_s:.1f} s with start-up); parallel "
             f"efficiency {result.parallel_efficiency:.0%} on {result.cores} cores",
             f"{'stage':<11} {'cpu ms/frame':>12} {'cpu fps':>8} {'busy fps':>9} "
             f"{'blocked s':>9}  where the time went (s)"]
    for name, st in result.stages.items():
        timers = ", ".join(f"{k} {v:.1f}" for k, v in st["timers_s"].items()) or "-"
        label = f"{name} x{st['replicas']}" if st.get("replicas") else name
        lines.append(f"{label:<11} {st['cpu_ms_per_frame']:>12.1f} {st['cpu_fps'] or 0:>8.1f} "
                     f"{st['busy_fps'] or 0:>9.1f} {st['blocked_s']:>9.1f}  {timers}")
    if line := startup_line(result.startup):
        lines.append(line)
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
