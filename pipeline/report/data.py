"""The report's numbers: per-track summaries and flat per-face rows from ``annotate``'s
JSON lines.

The JSON lines are untrusted input (a file from elsewhere, edited, truncated): every
line is checked, and a bad one is one :class:`~gimefive.errors.GimefiveError` line that
names the file and the line number. The file is read twice, line by line (summaries,
then the flat rows), so memory stays bounded by the number of tracks and label changes,
not by the length of the video.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gimefive.errors import GimefiveError
from gimefive.labels import EMOTIONS, NUM_CLASSES

#: face keys ``frame_record`` writes that the flat rows spell out in their own columns
KNOWN_FACE_KEYS = frozenset({"track_id", "box", "score", "landmarks", "landmarks68", "probs",
                             "smoothed", "label", "label_index", "confidence", "uncertain",
                             "cam"})
#: a line longer than this is not a frame record (a corrupt or hostile file)
MAX_LINE_BYTES = 16 << 20
#: faces written per Parquet row group
PARQUET_BATCH = 20_000


def _bad(path: Path, line: int, why: str) -> GimefiveError:
    return GimefiveError(f"{path}:{line}: {why}")


def _number(value: Any, path: Path, line: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, line, f"{what} is not a finite number: {str(value)[:40]!r}")
    return float(value)


def _numbers(value: Any, n: int, path: Path, line: int, what: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n:
        raise _bad(path, line, f"{what} is not a list of {n} numbers")
    return [_number(v, path, line, what) for v in value]


def check_face(face: Any, path: Path, line: int) -> dict[str, Any]:
    """A face of a frame record, checked; raises one line naming what is wrong."""
    if not isinstance(face, dict):
        raise _bad(path, line, "a face is not a JSON object")
    for key in ("track_id", "box", "label_index", "confidence", "uncertain"):
        if key not in face:
            raise _bad(path, line, f"a face has no {key!r}")
    track = face["track_id"]
    if isinstance(track, bool) or not isinstance(track, int):
        raise _bad(path, line, f"track_id is not an integer: {str(track)[:40]!r}")
    label = face["label_index"]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
        raise _bad(path, line, f"label_index is not 0..{NUM_CLASSES - 1}: {str(label)[:40]!r}")
    _numbers(face["box"], 4, path, line, "box")
    _number(face["confidence"], path, line, "confidence")
    if not isinstance(face["uncertain"], bool):
        raise _bad(path, line, "uncertain is not true/false")
    for key in ("probs", "smoothed"):
        if key in face:
            _numbers(face[key], NUM_CLASSES, path, line, key)
    return face


def check_record(record: Any, path: Path, line: int) -> dict[str, Any]:
    """A frame record (one JSON line), checked."""
    if not isinstance(record, dict):
        raise _bad(path, line, "not a JSON object (expected one frame record per line)")
    frame = record.get("frame")
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise _bad(path, line, "no frame index (\"frame\": a non-negative integer)")
    if record.get("pts") is not None:
        _number(record["pts"], path, line, "pts")
    if not isinstance(record.get("stream", "0"), str):
        raise _bad(path, line, "stream is not a string")
    faces = record.get("faces")
    if not isinstance(faces, list):
        raise _bad(path, line, "no \"faces\" list")
    for face in faces:
        check_face(face, path, line)
    return record


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, checked frame record)`` for every non-blank line of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise GimefiveError(f"{path}: no such file (expected annotate's --json output)")
    seen = 0
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise _bad(path, number, f"line longer than {MAX_LINE_BYTES >> 20} MiB")
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    raise _bad(path, number, "not valid JSON") from None
                seen += 1
                yield number, check_record(record, path, number)
    except OSError as exc:
        raise GimefiveError(f"{path}: cannot read: {exc.strerror}") from None
    if not seen:
        raise GimefiveError(f"{path}: no frame records (the file is empty)")


# ------------------------------------------------------------------------ summaries

@dataclass
class Segment:
    """A run of one track's frames with the same label and uncertain flag."""

    start: float
    end: float
    label: int
    uncertain: bool


@dataclass
class Track:
    """One person on screen (a track of one stream), summed up while reading."""

    stream: str
    track_id: int
    first_frame: int
    last_frame: int = -1
    first_t: float | None = None
    last_t: float | None = None
    frames: int = 0
    class_frames: list[int] = field(default_factory=lambda: [0] * NUM_CLASSES)
    uncertain_frames: int = 0
    confidence_sum: float = 0.0
    changes: int = 0
    last_label: int | None = None
    segments: list[Segment] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the face and frame with the highest confidence
    best_has_cam: bool = False

    @property
    def key(self) -> str:
        return f"{self.stream}/{self.track_id}"

    def shares(self) -> list[float]:
        return [n / self.frames for n in self.class_frames] if self.frames else [0.0] * 6

    def dominant(self) -> int:
        return max(range(NUM_CLASSES), key=lambda k: (self.class_frames[k], -k))


@dataclass
class StreamClock:
    """A stream's frame range and time range, for its mean frame interval."""

    first_frame: int
    last_frame: int
    first_t: float | None = None
    last_t: float | None = None
    frames: int = 0

    def frame_s(self) -> float | None:
        """Mean seconds per frame (``None`` without two timed frames)."""
        if self.first_t is None or self.last_frame <= self.first_frame:
            return None
        step = (self.last_t - self.first_t) / (self.last_frame - self.first_frame)
        return step if step > 0 else None


@dataclass
class Summary:
    """What the report says about one JSON lines file."""

    path: Path
    records: int = 0
    faces: int = 0
    faces_with_cam: int = 0
    tracks: dict[tuple[str, int], Track] = field(default_factory=dict)
    streams: dict[str, StreamClock] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)  # e.g. classified, age
    hidden_faces: bool = False  # a record says faces were hidden (blurred)

    def frame_s(self, stream: str) -> float | None:
        return self.streams[stream].frame_s()

    def seconds(self, track: Track) -> float | None:
        """Seconds on screen: frames on screen x the stream's mean frame interval."""
        step = self.frame_s(track.stream)
        return None if step is None else track.frames * step

    def ordered_tracks(self) -> list[Track]:
        """By stream, then first appearance, then id."""
        return sorted(self.tracks.values(), key=lambda t: (t.stream, t.first_frame, t.track_id))


def _time(record: dict[str, Any]) -> float:
    """A record's time: its pts in seconds, else its frame index (then the unit is frames)."""
    pts = record.get("pts")
    return float(pts) if pts is not None else float(record["frame"])


def _add_face(track: Track, record: dict[str, Any], face: dict[str, Any], t: float) -> None:
    label, uncertain = int(face["label_index"]), bool(face["uncertain"])
    track.frames += 1
    track.class_frames[label] += 1
    track.uncertain_frames += uncertain
    confidence = float(face["confidence"])
    track.confidence_sum += confidence
    if track.last_label is not None and label != track.last_label:
        track.changes += 1
    seg = track.segments[-1] if track.segments else None
    contiguous = record["frame"] == track.last_frame + 1
    if seg is not None and contiguous and seg.label == label and seg.uncertain == uncertain:
        seg.end = t  # the time of its last frame until summarize() adds one frame
    else:
        track.segments.append(Segment(t, t, label, uncertain))
    track.last_label, track.last_frame, track.last_t = label, record["frame"], t
    has_cam = isinstance(face.get("cam"), dict)
    # the thumbnail frame: highest confidence, among frames with a Grad-CAM when any has one
    better = track.best is None or (has_cam, confidence) > (track.best_has_cam,
                                                            track.best["confidence"])
    if better:
        track.best = {"frame": record["frame"], "confidence": confidence,
                      "box": face["box"], "landmarks": face.get("landmarks")}
        track.best_has_cam = has_cam


def _extra_keys(face: dict[str, Any]) -> list[str]:
    """Face keys beyond ``frame_record``'s with a scalar value (e.g. classified, age)."""
    return [k for k, v in face.items() if k not in KNOWN_FACE_KEYS
            and (v is None or isinstance(v, bool | int | float | str)) and k.isidentifier()]


def summarize(path: str | Path) -> Summary:
    """Read ``path`` once: per-track and per-stream summaries, in bounded memory."""
    summary = Summary(Path(path))
    extra: dict[str, None] = {}
    for _, record in read_records(path):
        summary.records += 1
        stream, t = str(record.get("stream", "0")), _time(record)
        clock = summary.streams.setdefault(stream, StreamClock(record["frame"], record["frame"]))
        clock.first_frame = min(clock.first_frame, record["frame"])
        clock.last_frame = max(clock.last_frame, record["frame"])
        clock.frames += 1
        if record.get("pts") is not None:
            clock.first_t = t if clock.first_t is None else min(clock.first_t, t)
            clock.last_t = t if clock.last_t is None else max(clock.last_t, t)
        summary.hidden_faces |= bool(record.get("blur_faces") or record.get("faces_hidden")
                                     or record.get("blurred"))  # annotate writes blur_faces
        for face in record["faces"]:
            key = (stream, face["track_id"])
            if key not in summary.tracks:
                summary.tracks[key] = Track(stream, face["track_id"], record["frame"],
                                            first_t=t)
            _add_face(summary.tracks[key], record, face, t)
            summary.faces += 1
            summary.faces_with_cam += isinstance(face.get("cam"), dict)
            extra.update(dict.fromkeys(_extra_keys(face)))
    for track in summary.tracks.values():  # a run lasts until its last frame ends
        clock = summary.streams[track.stream]
        step = clock.frame_s() or (1.0 if clock.first_t is None else 0.04)
        for seg in track.segments:
            seg.end += step
    summary.extra_columns = list(extra)
    return summary


# ------------------------------------------------------------------------ the tables

TRACK_COLUMNS = ["stream", "track_id", "first_frame", "last_frame", "first_s", "last_s",
                 "seconds", "frames", "dominant", *(f"share_{e}" for e in EMOTIONS),
                 "mean_confidence", "share_uncertain", "label_changes"]


def _r(value: float | None, digits: int = 4) -> float | str:
    return "" if value is None else round(value, digits)


def track_rows(summary: Summary) -> list[dict[str, Any]]:
    """One row per track, as ``tracks.csv`` holds them (times empty without pts)."""
    rows = []
    for t in summary.ordered_tracks():
        timed = summary.streams[t.stream].first_t is not None
        rows.append({
            "stream": t.stream, "track_id": t.track_id, "first_frame": t.first_frame,
            "last_frame": t.last_frame, "first_s": _r(t.first_t if timed else None, 6),
            "last_s": _r(t.last_t if timed else None, 6), "seconds": _r(summary.seconds(t)),
            "frames": t.frames, "dominant": EMOTIONS[t.dominant()],
            **{f"share_{e}": round(s, 6) for e, s in zip(EMOTIONS, t.shares(), strict=True)},
            "mean_confidence": round(t.confidence_sum / t.frames, 4),
            "share_uncertain": round(t.uncertain_frames / t.frames, 6),
            "label_changes": t.changes})
    return rows


def write_tracks_csv(summary: Summary, path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, TRACK_COLUMNS)
        writer.writeheader()
        writer.writerows(track_rows(summary))


def face_columns(extra: list[str]) -> list[str]:
    return ["stream", "frame", "pts", "detected", "track_id", "x1", "y1", "x2", "y2", "score",
            "label", "label_index", "confidence", "uncertain",
            *(f"p_{e}" for e in EMOTIONS), *(f"s_{e}" for e in EMOTIONS),
            "cam_peak_x", "cam_peak_y", "cam_mean", *extra]


def _cam_fields(cam: Any) -> tuple[Any, Any, Any]:
    if not isinstance(cam, dict):
        return None, None, None
    peak = cam.get("peak")
    ok = isinstance(peak, list) and len(peak) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in peak)
    mean = cam.get("mean")
    mean = mean if isinstance(mean, int | float) and not isinstance(mean, bool) else None
    return (peak[0] if ok else None), (peak[1] if ok else None), mean


def face_rows(path: Path, extra: list[str]) -> Iterator[dict[str, Any]]:
    """One flat row per face per frame (``None``: no value)."""
    for _, record in read_records(path):
        head = {"stream": str(record.get("stream", "0")), "frame": record["frame"],
                "pts": record.get("pts"), "detected": record.get("detected")}
        for face in record["faces"]:
            label = int(face["label_index"])
            probs = face.get("probs") or [None] * NUM_CLASSES
            smoothed = face.get("smoothed") or [None] * NUM_CLASSES
            peak_x, peak_y, mean = _cam_fields(face.get("cam"))
            row = {**head, "track_id": face["track_id"],
                   **dict(zip(("x1", "y1", "x2", "y2"), face["box"], strict=True)),
                   "score": face.get("score"), "label": EMOTIONS[label], "label_index": label,
                   "confidence": face["confidence"], "uncertain": face["uncertain"],
                   **{f"p_{e}": p for e, p in zip(EMOTIONS, probs, strict=True)},
                   **{f"s_{e}": p for e, p in zip(EMOTIONS, smoothed, strict=True)},
                   "cam_peak_x": peak_x, "cam_peak_y": peak_y, "cam_mean": mean}
            for key in extra:
                value = face.get(key)
                row[key] = value if isinstance(value, bool | int | float | str) else None
            yield row


def write_faces(summary: Summary, csv_path: Path, parquet_path: Path | None) -> bool:
    """``faces.csv`` and, when ``parquet_path`` is given and pyarrow importable, Parquet.

    Returns whether the Parquet file was written."""
    columns = face_columns(summary.extra_columns)
    writer = _parquet_writer(parquet_path, summary.extra_columns) if parquet_path else None
    batch: list[dict[str, Any]] = []
    with open(csv_path, "w", newline="") as file:
        out = csv.DictWriter(file, columns)
        out.writeheader()
        for row in face_rows(summary.path, summary.extra_columns):
            out.writerow({k: "" if v is None else v for k, v in row.items()})
            if writer is not None:
                batch.append(row)
                if len(batch) >= PARQUET_BATCH:
                    writer.write(batch)
                    batch = []
    if writer is not None:
        writer.write(batch)
        writer.close()
    return writer is not None


class _ParquetRows:
    """Rows appended to a Parquet file in row groups (bounded memory)."""

    def __init__(self, path: Path, schema) -> None:
        import pyarrow.parquet as pq

        self.schema = schema
        self.writer = pq.ParquetWriter(str(path), schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        if rows:
            extra = self.schema.names[len(face_columns([])):]
            rows = [r | {k: None if r[k] is None else str(r[k]) for k in extra} for r in rows]
            self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def _parquet_writer(path: Path, extra: list[str]) -> _ParquetRows | None:
    try:
        import pyarrow as pa
    except ImportError:
        return None
    types = {"stream": pa.string(), "frame": pa.int64(), "pts": pa.float64(),
             "detected": pa.bool_(), "track_id": pa.int64(), "label": pa.string(),
             "label_index": pa.int64(), "uncertain": pa.bool_()}
    fields = [pa.field(c, types.get(c, pa.float64())) for c in face_columns([])]
    fields += [pa.field(c, pa.string()) for c in extra]  # unknown kinds: kept as text
    return _ParquetRows(path, pa.schema(fields))
