"""``build_report``: every file of the report, written into a temporary folder beside
the target and renamed into place only when all of them are done.

Like ``annotate``'s outputs: an existing, non-empty report folder is replaced only with
``force``, and a failed run leaves the earlier folder as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gimefive.errors import GimefiveError

from . import figures
from .data import Summary, Track, summarize, write_faces, write_tracks_csv

#: config keys whose true value means the run hid faces: no face pixels in the report
HIDE_FACE_KEYS = ("blur_faces", "hide_faces")


@dataclass
class ReportResult:
    """What ``build_report`` wrote and the lines worth telling the user."""

    out_dir: Path
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: Summary | None = None


def check_report_dir(out_dir: str | Path, force: bool = False) -> Path:
    """One line for a report folder that cannot be written; before any work is done."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GimefiveError(f"report folder {out_dir} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise GimefiveError(f"report folder {out_dir} is not empty (give --force to "
                            f"replace it)")
    if not out_dir.parent.is_dir():
        raise GimefiveError(f"report folder {out_dir}: its parent folder does not exist")
    if not os.access(out_dir.parent, os.W_OK):
        raise GimefiveError(f"report folder {out_dir}: cannot write in {out_dir.parent}")
    return out_dir


def read_settings(path: Path | None) -> dict[str, Any]:
    """The run's resolved config (``OUTPUT.config.yaml``) as a plain mapping, or {}."""
    if path is None or not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise GimefiveError(f"{path}: not a readable YAML config ({type(exc).__name__})"
                            ) from None
    if not isinstance(data, dict):
        raise GimefiveError(f"{path}: expected a mapping of settings")
    return {str(k): v for k, v in data.items()}


def default_config_path(video: Path | None) -> Path | None:
    """Where ``annotate`` saved the resolved config of the run that wrote ``video``."""
    if video is None:
        return None
    beside = video.with_name(video.name + ".config.yaml")
    return beside if beside.is_file() else None


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished folder in; the old one (``force``) goes only after that."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_report(jsonl: str | Path, out_dir: str | Path, video: str | Path | None = None,
                 cam_npz: str | Path | None = None, settings: dict[str, Any] | None = None,
                 config_path: str | Path | None = None, force: bool = False,
                 thumbnails: bool = True) -> ReportResult:
    """Write the report of ``jsonl`` (``annotate --json``) into ``out_dir``.

    ``video``: the annotated or the source video, for face thumbnails; ``cam_npz``:
    ``annotate --cam-npz``, for Grad-CAM thumbnails; ``settings`` (or ``config_path``, by
    default ``VIDEO.config.yaml``): the run's settings. No face pixels are shown when
    ``thumbnails`` is off or the settings or records say the faces were hidden.
    """
    jsonl, out_dir = Path(jsonl), check_report_dir(out_dir, force)
    video = Path(video) if video else None
    if video is not None and not video.is_file():
        raise GimefiveError(f"video not found: {video}")
    if cam_npz is not None and not Path(cam_npz).is_file():
        raise GimefiveError(f"CAM file not found: {cam_npz}")
    if settings is None:
        config_path = Path(config_path) if config_path else default_config_path(video)
        settings = read_settings(config_path)
    summary = summarize(jsonl)
    result = ReportResult(out_dir, summary=summary)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_all(tmp, summary, video, cam_npz, settings, thumbnails, result)
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _write_all(tmp: Path, summary: Summary, video: Path | None, cam_npz: str | Path | None,
               settings: dict[str, Any], thumbnails: bool, result: ReportResult) -> None:
    from .page import render_page

    write_tracks_csv(summary, tmp / "tracks.csv")
    result.files.append("tracks.csv")
    if write_faces(summary, tmp / "faces.csv", tmp / "faces.parquet"):
        result.files += ["faces.csv", "faces.parquet"]
    else:
        result.files.append("faces.csv")
        result.notes.append("faces.parquet skipped: pyarrow is not installed "
                            "(pip install pyarrow)")
    figures.save_timeline(summary, tmp / "timeline.png")
    figures.save_classes(summary, tmp / "classes.png")
    result.files += ["timeline.png", "classes.png"]
    hidden = summary.hidden_faces or any(bool(settings.get(k)) for k in HIDE_FACE_KEYS)
    thumbs, why = _thumbnails(summary, video, cam_npz, settings,
                              faces_allowed=thumbnails and not hidden)
    notes = {"faces": why["faces"] if not hidden else
             "faces were hidden in this run (--blur-faces): no face thumbnails",
             "cam": why["cam"]}
    (tmp / "report.html").write_text(render_page(summary, settings, thumbs, notes, {
        "jsonl": str(summary.path), "video": str(video) if video else "",
        "cam_npz": str(cam_npz) if cam_npz else ""}, tmp), encoding="utf-8")
    result.files.append("report.html")


# ------------------------------------------------------------------------ thumbnails

def _thumbnails(summary: Summary, video: Path | None, cam_npz: str | Path | None,
                settings: dict[str, Any], faces_allowed: bool
                ) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    """Per track key ``{"face": PNG, "cam": PNG}`` (either may be missing) and, per kind,
    a sentence saying why there are none ("" when there are)."""
    why = {"faces": "", "cam": ""}
    single = len(summary.streams) == 1
    if video is None:
        why["faces"] = "no face thumbnails: no --video given"
    elif not single:
        why["faces"] = "no face thumbnails: the JSON lines hold several streams, --video one"
    elif not faces_allowed:
        why["faces"] = "no face thumbnails (turned off)"
    cams = _load_cams(summary, cam_npz) if cam_npz and single else {}
    if not cam_npz:
        why["cam"] = "no CAM maps given (annotate --cam-npz FILE, then report --cam-npz FILE)"
    elif not single:
        why["cam"] = "no CAM maps: the CAM file has no stream ids and the JSON has several"
    elif not cams:
        why["cam"] = "no CAM maps for these tracks in the CAM file"
    frames = _grab_frames(video, summary) if video is not None and single \
        and (faces_allowed or cams) else {}
    out: dict[str, dict[str, bytes]] = {}
    for track in summary.tracks.values():
        images, frame = {}, frames.get(track.best["frame"]) if track.best else None
        if frame is not None and faces_allowed:
            images["face"] = figures.png_bytes(figures.face_thumbnail(frame, track.best["box"]))
        if track.key in cams:
            crop = _model_crop(frame, track, settings) if frame is not None \
                and faces_allowed else None
            images["cam"] = figures.png_bytes(figures.cam_thumbnail(cams[track.key], crop))
        out[track.key] = images
    return out, why


def _load_cams(summary: Summary, path: str | Path) -> dict[str, np.ndarray]:
    """Each track's Grad-CAM map at its thumbnail frame, from ``annotate --cam-npz``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            frame, track_id, cam = data["frame"], data["track_id"], data["cam"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise GimefiveError(f"{path}: not a CAM file of annotate --cam-npz "
                            f"({type(exc).__name__})") from None
    if cam.ndim != 3 or len(frame) != len(cam) or len(track_id) != len(cam):
        raise GimefiveError(f"{path}: frame, track_id and cam do not line up")
    stream = next(iter(summary.streams))
    wanted = {(t.best["frame"], t.track_id): t.key for t in summary.tracks.values()
              if t.best and t.best_has_cam}
    found = {}
    for i in range(len(cam)):
        key = wanted.get((int(frame[i]), int(track_id[i])))
        if key is not None and key.startswith(f"{stream}/"):
            found[key] = np.asarray(cam[i], np.float32)
    return found


def _grab_frames(video: Path, summary: Summary) -> dict[int, np.ndarray]:
    """The frames the thumbnails are cut from, in one pass over ``video``."""
    from gimefive.pipeline.readers import FileReader

    wanted = {t.best["frame"] for t in summary.tracks.values() if t.best}
    if not wanted:
        return {}
    frames: dict[int, np.ndarray] = {}
    reader = FileReader(str(video))
    try:
        for item in reader.read():
            if item.index in wanted:
                frames[item.index] = item.image
            if item.index >= max(wanted):
                break
    finally:
        with contextlib.suppress(Exception):
            reader.close()
    return frames


def _model_crop(frame: np.ndarray, track: Track, settings: dict[str, Any]) -> np.ndarray | None:
    """The square the classifier saw (the CAM's coordinates), rebuilt from the face's box
    and landmarks with the run's crop settings (the defaults when not known)."""
    from gimefive.pipeline.crops import crop_geometry, cut_faces

    box = np.asarray([track.best["box"]], np.float32)
    marks = track.best.get("landmarks")
    try:
        marks = np.asarray([marks], np.float32).reshape(1, 5, 2)
    except (TypeError, ValueError):
        marks = None
    align = settings.get("align", "eyes") if marks is not None else "none"
    try:
        crop = crop_geometry(box, marks if marks is not None else np.zeros((1, 5, 2)),
                             float(settings.get("crop_scale", 1.0)), str(align),
                             float(settings.get("crop_shift_y", 0.0)))
    except (TypeError, ValueError):
        return None
    return cut_faces(frame, crop)[0]
