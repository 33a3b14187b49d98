"""Markdown table and PNG charts for a ``system_bench`` result (see system_bench.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PARTS = (("decode", "decode only (PyAV)"),
         ("detect", "detect only (RetinaFace)"),
         ("pipeline", "annotate pipeline"),
         ("baseline", "paper-script baseline"))


def _fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float | int):
        return format(value, spec)
    return str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def machine_line(m: dict[str, Any]) -> str:
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib')} GiB; "
            f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
            f"onnxruntime {m['onnxruntime']}, PyAV {m['av']}, OpenCV {m['opencv']}, "
            f"numpy {m['numpy']}, pyzmq {m['pyzmq']}; commit {m.get('gimefive_commit')}; "
            f"load average at start {[round(v, 2) for v in m['load_average_at_start']]}, "
            f"at end {[round(v, 2) for v in m.get('load_average_at_end', [])]}.")


def input_table(res: dict[str, Any]) -> list[str]:
    lines = ["| measurement | fps, median | fps, best | faces found | per frame "
             "| recall @ IoU 0.5 | precision | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, label in PARTS:
        part = res.get(key)
        if part is None:
            continue
        if "skipped" in part:
            lines.append(f"| {label} | - | - | - | - | - | - | skipped: {part['skipped']} |")
            continue
        notes = []
        if key == "decode":
            notes.append(f"{part['decoder_threads']} decoder thread(s), as the source stage")
        if key == "detect":
            notes.append(f"max side {part['max_side']}, batch {part['batch']}")
        if key == "pipeline":
            cam = ("CAM every frame" if part["cam"] and part["cam_every"] == 1 else
                   f"CAM every {part['cam_every']} frames" if part["cam"] else "no CAM")
            notes.append(f"backend {part.get('backend') or '?'}, {cam}, detect every "
                         f"{part['detect_every']}")
        if key == "baseline":
            notes.append(f"{part['frames']} frames/pass; Haar + torch fp32 autograd CAM")
        found = part.get("faces_found")
        lines.append(
            f"| {label} | {_fmt(part['fps']['median'])} | {_fmt(part['fps']['best'])} "
            f"| {_fmt(found, 'd')} | {_fmt(part.get('faces_per_frame'))} "
            f"| {_pct(part.get('recall'))} | {_pct(part.get('precision'))} "
            f"| {'; '.join(notes)} |")
    return lines


def ratio_lines(r: dict[str, Any]) -> list[str]:
    rows = [("pipeline fps / baseline fps", r.get("pipeline_over_baseline_fps"), "x"),
            ("pipeline fps / decode-only fps", r.get("pipeline_over_decode_fps"), "x"),
            ("faces matched per frame, pipeline / baseline",
             r.get("pipeline_over_baseline_faces_matched"), "x"),
            ("faces found per frame, pipeline / baseline",
             r.get("pipeline_over_baseline_faces_found"), "x"),
            ("parallel efficiency (fps x CPU s per frame / cores)",
             r.get("parallel_efficiency"), "%")]
    out = ["| ratio | value |", "| --- | ---: |"]
    for name, value, unit in rows:
        if value is None:
            continue
        out.append(f"| {name} | {_pct(value) if unit == '%' else _fmt(value) + 'x'} |")
    return out


def size_lines(res: dict[str, Any]) -> list[str]:
    """Recall at IoU 0.5 per face size: where each detector stops finding faces."""
    parts = [(label, res[key]["recall_by_size"]) for key, label in PARTS
             if isinstance(res.get(key), dict) and res[key].get("recall_by_size")]
    if not parts:
        return []
    sizes = sorted({int(k) for _, by in parts for k in by})
    out = ["Recall at IoU 0.5 by face size (px):", "",
           "| | " + " | ".join(str(k) for k in sizes) + " |",
           "| --- |" + " ---: |" * len(sizes)]
    for label, by in parts:
        by = {int(k): v for k, v in by.items()}
        out.append(f"| {label} | " + " | ".join(_pct(by.get(k)) for k in sizes) + " |")
    return out


def stage_lines(p: dict[str, Any]) -> list[str]:
    lat = p.get("latency_ms") or {}
    p50, p95, p99 = (_fmt(lat.get(f"p{q}"), ".0f") for q in (50, 95, 99))
    out = [f"Pipeline stages (median run; decode-to-written latency p50 {p50} ms, "
           f"p95 {p95} ms, p99 {p99} ms):", "",
           "| stage | CPU s | CPU ms/frame | CPU fps | busy fps | blocked s | peak RSS MB "
           "| start-up s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, st in p["stages"].items():
        out.append(f"| {name} | {_fmt(st['cpu_s'])} | {_fmt(st['cpu_ms_per_frame'], '.1f')} "
                   f"| {_fmt(st['cpu_fps'], '.1f')} | {_fmt(st['busy_fps'], '.1f')} "
                   f"| {_fmt(st['blocked_s'], '.1f')} | {_fmt(st['max_rss_mb'], '.0f')} "
                   f"| {_fmt(st.get('startup_s'))} |")
    return out


def classify_lines(c: dict[str, Any]) -> list[str]:
    out = [f"Classify only (faces/s, median of {c['rounds']} rounds, best in brackets; faces: "
           f"{c['faces_source']}):", "",
           "| backend | batch | no CAM | with CAM | time with CAM / without |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for r in c["rows"]:
        out.append(f"| {r['config']} | {r['batch']} | {r['no_cam_median']:.1f} "
                   f"({r['no_cam_best']:.1f}) | {r['cam_median']:.1f} ({r['cam_best']:.1f}) "
                   f"| {r['cam_cost']:.2f}x |")
    return out


def scaling_lines(s: dict[str, Any]) -> list[str]:
    out = [f"Scaling: looping 640x360 files through `monitor` at {s['target_fps']} fps, "
           f"{s['seconds_measured']:g} s measured after {s['warmup_s']:g} s warm-up; "
           f"**{s['streams_sustained']} stream(s) sustained in real time** (every stream "
           ">= 95% of the frame rate written, <= 2% dropped), annotated video and JSON "
           "lines written.", "",
           "| streams | written fps per stream | dropped | latency p95 s | degrade step "
           "| real time | CPU ms / frame, all stages | host steal |",
           "| ---: | --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for st in s["steps"]:
        cpu = st.get("cpu_ms_per_frame") or {}
        steal = st.get("steal_share")
        out.append(f"| {st['streams']} | {st['fps_out']} | {st['dropped_fraction']} "
                   f"| {st.get('latency_p95_s', '-')} | {st.get('degrade_step_max', '-')} "
                   f"| {'yes' if st['sustained'] else 'no'} "
                   f"| {round(sum(cpu.values()), 1) if cpu else '-'} "
                   f"| {'-' if steal is None else f'{100 * steal:.1f}%'} |")
    out += ["", "CPU ms per frame written, by stage (from the status records; a source "
            "counts for all streams' frames):", ""]
    out += [f"- {st['streams']} stream(s): " + ", ".join(
        f"{name} {ms}" for name, ms in (st.get("cpu_ms_per_frame") or {}).items())
        for st in s["steps"] if st.get("cpu_ms_per_frame")]
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# gimefive bench", "", machine_line(result["machine"]), "",
             f"Weights: {result['weights_kind']}. Each figure: {result['repeat']} timed runs "
             "after an untimed warm-up; median and best. Run wall time: "
             f"{result.get('wall_s', '?')} s.", ""]
    for res in result["inputs"]:
        lines += [f"## {res['name']} ({res['width']}x{res['height']})", ""]
        if res.get("faces_source") != "user video":
            settings = ", ".join(f"{k} {v}" for k, v in (res.get("overrides") or {}).items())
            lines += [f"Generated scene: {res.get('faces_per_frame')} faces per frame, sizes "
                      f"{res.get('face_sizes')} px, faces from {res.get('faces_source')}"
                      + (f"; pipeline and detect only with {settings}" if settings else "")
                      + ".", ""]
        lines += input_table(res) + [""]
        sizes = size_lines(res)
        lines += sizes + ([""] if sizes else [])
        if res.get("ratios"):
            lines += ratio_lines(res["ratios"]) + [""]
        if res.get("pipeline", {}).get("stages"):
            lines += stage_lines(res["pipeline"]) + [""]
    for key, title, body in (("classify", "Classifier engines", classify_lines),
                             ("scaling", "Live streams", scaling_lines)):
        part = result.get(key)
        if part:
            lines += [f"## {title}", ""]
            lines += [f"Skipped: {part['skipped']}"] if "skipped" in part else body(part)
            lines += [""]
    if not result.get("complete", True):
        lines += ["**Partial report: the run did not finish.**", ""]
    return "\n".join(lines)


def charts(result: dict[str, Any], out: Path) -> list[str]:
    """PNG charts (matplotlib, Agg): fps per input, faces found, classify, scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    inputs = result["inputs"]
    if inputs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        names = [r["name"] for r in inputs]
        width = 0.8 / len(PARTS)
        for k, (key, label) in enumerate(PARTS):
            fps = [(r.get(key) or {}).get("fps", {}).get("median", 0) for r in inputs]
            recall = [(r.get(key) or {}).get("recall", 0) or 0 for r in inputs]
            xs = [i + k * width for i in range(len(inputs))]
            bars = axes[0].bar(xs, fps, width, label=label)
            axes[0].bar_label(bars, labels=[f"{v:.3g}" if v else "" for v in fps], fontsize=7)
            bars = axes[1].bar(xs, [100 * v for v in recall], width, label=label)
            axes[1].bar_label(bars, labels=[f"{100 * v:.0f}" if v else "" for v in recall],
                              fontsize=7)
        for ax, title in ((axes[0], "frames/s (median, log scale)"),
                          (axes[1], "faces found, recall % at IoU 0.5")):
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(inputs))], names)
            ax.set_title(title)
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fps_and_faces.png", dpi=100)
        plt.close(fig)
        written.append("fps_and_faces.png")
        staged = [r for r in inputs if r.get("pipeline", {}).get("stages")]
        if staged:
            fig, ax = plt.subplots(figsize=(7, 4))
            stages = list(staged[0]["pipeline"]["stages"])
            bottom = [0.0] * len(staged)
            for name in stages:
                vals = [r["pipeline"]["stages"][name]["cpu_ms_per_frame"] or 0 for r in staged]
                ax.bar([r["name"] for r in staged], vals, bottom=bottom, label=name)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            ax.set_ylabel("CPU ms per frame")
            ax.set_title("pipeline CPU per frame, by stage")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / "pipeline_stages.png", dpi=100)
            plt.close(fig)
            written.append("pipeline_stages.png")
    if result.get("classify", {}).get("rows"):
        fig, ax = plt.subplots(figsize=(7, 4))
        rows = result["classify"]["rows"]
        for config in dict.fromkeys(r["config"] for r in rows):
            mine = [r for r in rows if r["config"] == config]
            batches = [r["batch"] for r in mine]
            line, = ax.plot(batches, [r["no_cam_median"] for r in mine], marker="o",
                            label=f"{config}, no CAM")
            ax.plot(batches, [r["cam_median"] for r in mine], marker="x", linestyle="--",
                    color=line.get_color(), label=f"{config}, CAM")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("faces/s")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "classify.png", dpi=100)
        plt.close(fig)
        written.append("classify.png")
    if result.get("scaling", {}).get("steps"):
        s = result["scaling"]
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [st for st in s["steps"] if st["fps_out"]]
        ax.plot([st["streams"] for st in steps], [min(st["fps_out"]) for st in steps],
                marker="o", label="slowest stream")
        ax.axhline(0.95 * s["target_fps"], color="red", linestyle=":", label="real time (95%)")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("written fps per stream")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=100)
        plt.close(fig)
        written.append("scaling.png")
    return written
