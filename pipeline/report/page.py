"""``report.html``: one self-contained page (inline CSS, images as ``data:`` URIs, no
script, nothing fetched from the network).

Everything that comes from the JSON lines or the config is untrusted text and goes
through :func:`html.escape`; numbers are formatted here.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from gimefive.labels import EMOTIONS

from . import figures
from .data import Summary, Track

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f4f4f4}.num{text-align:right}.note{color:#666;font-style:italic}
img.thumb{width:96px;height:96px;image-rendering:auto}img.lane{width:480px;height:18px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
img.figure{max-width:100%}
"""


#: nothing but inline styles and data: images, whatever the page holds
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, cls: str, alt: str) -> str:
    return f'<img class="{cls}" alt="{e(alt)}" src="{data_uri(png)}">'


def _hex(k: int) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in figures.rgb(k))


def _duration(summary: Summary) -> str:
    parts = []
    for stream, clock in summary.streams.items():
        if clock.first_t is None:
            span = f"frames {clock.first_frame}..{clock.last_frame} (no timestamps)"
        else:
            step = clock.frame_s() or 0.0
            span = f"{clock.last_t - clock.first_t + step:.2f} s"
        parts.append(span if len(summary.streams) == 1 else f"stream {stream}: {span}")
    return "; ".join(parts)


def summary_table(summary: Summary, inputs: dict[str, str]) -> str:
    rows = [("JSON lines", inputs["jsonl"]), ("video", inputs["video"] or "not given"),
            ("CAM maps", inputs["cam_npz"] or "not given"),
            ("stream ids", ", ".join(summary.streams)), ("frames", summary.records),
            ("duration", _duration(summary)), ("faces (face-frames)", summary.faces),
            ("faces with a Grad-CAM", summary.faces_with_cam),
            ("tracks (people on screen)", len(summary.tracks))]
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _time(summary: Summary, track: Track, t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t:.2f} s" if summary.streams[track.stream].first_t is not None else f"frame {t:g}"


def people_table(summary: Summary, thumbs: dict[str, dict[str, bytes]],
                 notes: dict[str, str]) -> str:
    """One row per track: ids, times, dominant emotion, thumbnails, timeline lane."""
    t0 = min(c.first_t if c.first_t is not None else c.first_frame
             for c in summary.streams.values())
    t1 = max(seg.end for t in summary.tracks.values() for seg in t.segments)
    head = ("<tr><th>track</th><th>on screen</th><th>seconds</th><th>frames</th>"
            "<th>dominant</th><th>mean confidence</th><th>uncertain</th><th>face</th>"
            "<th>Grad-CAM</th><th>timeline</th></tr>")
    rows = []
    for track in summary.ordered_tracks():
        images = thumbs.get(track.key, {})
        name = f"#{track.track_id}" if len(summary.streams) == 1 else \
            f"{track.stream} #{track.track_id}"
        seconds = summary.seconds(track)
        face = img(images["face"], "thumb", f"face of track {name}") if "face" in images \
            else '<span class="note">-</span>'
        cam = img(images["cam"], "thumb", f"Grad-CAM of track {name}") if "cam" in images \
            else '<span class="note">-</span>'
        lane = img(figures.png_bytes(figures.lane_image(track, t0, t1)), "lane",
                   f"timeline of track {name}")
        dominant = EMOTIONS[track.dominant()]
        rows.append(
            f"<tr><td>{e(name)}</td><td>{e(_time(summary, track, track.first_t))} &ndash; "
            f"{e(_time(summary, track, track.last_t))}</td>"
            f"<td class=num>{'-' if seconds is None else f'{seconds:.2f}'}</td>"
            f"<td class=num>{track.frames}</td><td><span class=swatch style=\"background:"
            f"{_hex(track.dominant())}\"></span>{e(dominant)}</td>"
            f"<td class=num>{track.confidence_sum / track.frames:.2f}</td>"
            f"<td class=num>{track.uncertain_frames / track.frames:.0%}</td>"
            f"<td>{face}</td><td>{cam}</td><td>{lane}</td></tr>")
    said = "".join(f'<p class="note">{e(n)}</p>' for n in notes.values() if n)
    return f"{said}<table>{head}{''.join(rows)}</table>"


def class_table(summary: Summary) -> str:
    frames = [sum(t.class_frames[k] for t in summary.tracks.values()) for k in range(6)]
    total = max(1, sum(frames))
    rows = "".join(
        f"<tr><td><span class=swatch style=\"background:{_hex(k)}\"></span>{e(name)}</td>"
        f"<td class=num>{frames[k]}</td><td class=num>{frames[k] / total:.1%}</td></tr>"
        for k, name in enumerate(EMOTIONS))
    return f"<table><tr><th>class</th><th>face-frames</th><th>share</th></tr>{rows}</table>"


def settings_table(settings: dict[str, Any]) -> str:
    if not settings:
        return ('<p class="note">the run\'s settings are not known (give --config '
                'OUTPUT.config.yaml, written by annotate beside its video)</p>')
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in settings.items())
    return f"<table>{rows}</table>"


def render_page(summary: Summary, settings: dict[str, Any], thumbs: dict[str, dict[str, bytes]],
                notes: dict[str, str], inputs: dict[str, str], folder: Path) -> str:
    """The whole page; ``folder`` holds the finished timeline.png and classes.png."""
    timeline = img((folder / "timeline.png").read_bytes(), "figure", "timeline of all tracks")
    classes = img((folder / "classes.png").read_bytes(), "figure", "time per class")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>gimefive report: {e(summary.path.name)}</title><style>{STYLE}</style></head>
<body><h1>gimefive report: {e(summary.path.name)}</h1>
<h2>Summary</h2>{summary_table(summary, inputs)}
<h2>People</h2>{people_table(summary, thumbs, notes)}
<h2>Timeline</h2>{timeline}
<h2>Class distribution</h2>{class_table(summary)}{classes}
<h2>Settings</h2>{settings_table(settings)}
<p class="note">tracks.csv: one row per track; faces.csv: one row per face per frame.</p>
</body></html>
"""
