"""`gimefive report`: per-track tables, flat per-face rows, figures and one HTML page from
annotate's JSON lines; checked on hand-made lines (fast), on a real multi-person annotate
run (slow) and in a real headless Chromium (slow)."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from waiting import wait_until

from gimefive.cli import main
from gimefive.labels import EMOTIONS


def face(track: int, label: int, conf: float = 0.8, uncertain: bool = False, **extra):
    probs = [0.02] * 6
    probs[label] = conf
    return {"track_id": track, "box": [10.0 + track, 20.0, 50.0, 70.0], "score": 0.9,
            "landmarks": [[20, 35], [40, 35], [30, 45], [22, 58], [38, 58]],
            "probs": probs, "smoothed": probs, "label": EMOTIONS[label],
            "label_index": label, "confidence": conf, "uncertain": uncertain,
            "cam": {"layer": "conv5", "peak": [30.5, 40.5], "mean": 0.25, "shape": [4, 4]},
            **extra}


#: 6 frames at 10 fps. Track 1: happiness, happiness, anger, anger (uncertain), happiness,
#: happiness. Track 2 on frames 2..3: sadness.
FRAMES = [[face(1, 0, 0.9, age=0)], [face(1, 0, 0.7, age=1)],
          [face(1, 3, 0.6, age=2), face(2, 2, 0.95, age=0)],
          [face(1, 3, 0.3, True, age=3), face(2, 2, 0.85, age=1)],
          [face(1, 0, 0.8, age=4)], [face(1, 0, 0.8, age=5)]]


def write_jsonl(path: Path, frames=FRAMES, fps: float = 10.0) -> Path:
    lines = [json.dumps({"stream": "0", "frame": i, "pts": round(i / fps, 6),
                         "detected": True, "faces": faces}) for i, faces in enumerate(frames)]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status (0: returned) and the stderr lines of `gimefive ARGV`."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr().err.splitlines()


# ----------------------------------------------------------------- fast: hand-made lines

def test_tracks_csv_sums_up_each_track(tmp_path, capsys):
    jsonl = write_jsonl(tmp_path / "f.jsonl")
    code, lines = run_cli(["report", str(jsonl), "-o", str(tmp_path / "r")], capsys)
    assert code == 0, lines
    rows = {r["track_id"]: r for r in read_csv(tmp_path / "r" / "tracks.csv")}
    one, two = rows["1"], rows["2"]
    assert (one["first_frame"], one["last_frame"], one["frames"]) == ("0", "5", "6")
    assert (float(one["first_s"]), float(one["last_s"])) == (0.0, 0.5)
    assert float(one["seconds"]) == pytest.approx(0.6)  # 6 frames x 0.1 s
    assert one["dominant"] == "happiness"
    assert float(one["share_happiness"]) == pytest.approx(4 / 6, abs=1e-6)
    assert float(one["share_anger"]) == pytest.approx(2 / 6, abs=1e-6)
    assert float(one["share_uncertain"]) == pytest.approx(1 / 6, abs=1e-6)
    mean = (0.9 + 0.7 + 0.6 + 0.3 + 0.8 + 0.8) / 6
    assert float(one["mean_confidence"]) == pytest.approx(mean, abs=1e-4)
    assert one["label_changes"] == "2"
    assert (two["first_frame"], two["frames"], two["dominant"]) == ("2", "2", "sadness")
    assert two["label_changes"] == "0"
    for row in rows.values():
        assert sum(float(row[f"share_{e}"]) for e in EMOTIONS) == pytest.approx(1, abs=1e-5)


def test_faces_csv_and_parquet_are_flat(tmp_path, capsys):
    jsonl = write_jsonl(tmp_path / "f.jsonl")
    assert run_cli(["report", str(jsonl), "-o", str(tmp_path / "r")], capsys)[0] == 0
    rows = read_csv(tmp_path / "r" / "faces.csv")
    assert len(rows) == sum(len(f) for f in FRAMES) == 8
    first = rows[0]
    assert (first["stream"], first["frame"], first["pts"], first["track_id"]) == \
        ("0", "0", "0.0", "1")
    assert (first["x1"], first["y2"], first["label"], first["uncertain"]) == \
        ("11.0", "70.0", "happiness", "False")
    assert float(first["p_happiness"]) == 0.9 and float(first["s_fear"]) == 0.02
    assert (first["cam_peak_x"], first["cam_mean"], first["age"]) == ("30.5", "0.25", "0")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "r" / "faces.parquet")
    assert table.num_rows == 8 and table.column_names == list(first)
    assert table.column("track_id").to_pylist() == [int(r["track_id"]) for r in rows]


@pytest.mark.parametrize("content,where", [
    ("", "no frame records (the file is empty)"),
    ('{"frame": 0, "faces": []}\n{"frame": 1, "faces": [\n', ":2: not valid JSON"),
    ('{"frame": 0, "faces": []}\n\n[1, 2]\n',
     ":3: not a JSON object (expected one frame record per line)"),
    ('{"frame": 0, "faces": [{"box": [1, 2, 3, 4]}]}\n', ":1: a face has no 'track_id'"),
    ('{"frame": 0, "faces": [' + json.dumps(face(1, 0) | {"label_index": 9}) + "]}\n",
     ":1: label_index is not 0..5: '9'"),
    ('{"frame": 0, "faces": [' + json.dumps(face(1, 0) | {"box": [1, 2, "x", 4]}) + "]}\n",
     ":1: box is not a finite number: 'x'"),
    ('{"frame": -3, "faces": []}\n', ':1: no frame index ("frame": a non-negative integer)'),
])
def test_bad_json_lines_give_one_line_with_the_line_number(tmp_path, capsys, content, where):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(content)
    code, lines = run_cli(["report", str(jsonl), "-o", str(tmp_path / "r")], capsys)
    assert code != 0
    assert lines == [f"gimefive: error: {jsonl}{'' if where.startswith(':') else ': '}{where}"]
    assert not (tmp_path / "r").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]  # no partial folder left


def test_a_missing_file_is_named(tmp_path, capsys):
    code, lines = run_cli(["report", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r")],
                          capsys)
    assert code != 0
    assert lines == [f"gimefive: error: {tmp_path / 'nope.jsonl'}: no such file (expected "
                     f"annotate's --json output)"]


def test_a_non_empty_folder_needs_force_and_is_swapped_whole(tmp_path, capsys):
    jsonl = write_jsonl(tmp_path / "f.jsonl")
    out = tmp_path / "r"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, lines = run_cli(["report", str(jsonl), "-o", str(out)], capsys)
    assert code != 0
    assert lines == [f"gimefive: error: report folder {out} is not empty (give --force to "
                     f"replace it)"]
    assert (out / "mine.txt").read_text() == "keep me"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nonsense\n")
    assert run_cli(["report", str(bad), "-o", str(out), "--force"], capsys)[0] != 0
    assert (out / "mine.txt").read_text() == "keep me"  # a failed report loses nothing
    assert run_cli(["report", str(jsonl), "-o", str(out), "--force"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.png", "faces.csv", "faces.parquet", "report.html", "timeline.png",
        "tracks.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "f.jsonl", "r"]


def test_the_page_is_self_contained_and_escapes_what_it_shows(tmp_path, capsys):
    frames = [[face(1, 0, 0.9, note="<script>alert(1)</script>")] for _ in range(3)]
    jsonl = write_jsonl(tmp_path / "f.jsonl", frames)
    config = tmp_path / "run.config.yaml"
    config.write_text("backend: '<img src=http://example.com/x.png>'\ncam: true\n")
    code, _ = run_cli(["report", str(jsonl), "-o", str(tmp_path / "r"), "--config",
                       str(config)], capsys)
    assert code == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<script" not in page and "<img src=http" not in page
    assert "&lt;img src=http://example.com/x.png&gt;" in page  # shown, as text
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for src in srcs:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "no face thumbnails: no --video given" in page
    assert "no CAM maps given" in page


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    """A 6-frame clip with the astronaut's face, and JSON lines that put two tracks on it."""
    from gimefive.pipeline.bench.scenes import astronaut_face, make_scene_video

    folder = tmp_path_factory.mktemp("small")
    truth = make_scene_video(folder / "v.mp4", [(astronaut_face(), None)], 320, 180,
                             n_frames=6, fps=10, sizes=(80, 80))
    frames = [[face(1, 0) | {"box": [float(v) for v in f["boxes"][0]]}, face(2, 3)]
              for f in truth["frames"]]
    return folder / "v.mp4", write_jsonl(folder / "f.jsonl", frames)


def _page_images(page: str) -> list[str]:
    return re.findall(r'<img class="thumb" alt="([^"]*)"', page)


def test_thumbnails_come_from_the_video_unless_faces_were_hidden(tmp_path, capsys,
                                                                 small_scene):
    video, jsonl = small_scene
    cams = tmp_path / "cam.npz"
    np.savez(cams, frame=np.arange(6), track_id=np.ones(6, np.int64),
             box=np.zeros((6, 4), np.float32), cam=np.random.default_rng(0).random(
                 (6, 4, 4)).astype(np.float32))
    args = ["report", str(jsonl), "--video", str(video), "--cam-npz", str(cams)]
    assert run_cli([*args, "-o", str(tmp_path / "r")], capsys)[0] == 0
    shown = _page_images((tmp_path / "r" / "report.html").read_text())
    assert shown == ["face of track #1", "Grad-CAM of track #1", "face of track #2"]
    hidden = tmp_path / "hidden.config.yaml"
    hidden.write_text("blur_faces: true\n")
    assert run_cli([*args, "-o", str(tmp_path / "h"), "--config", str(hidden)], capsys)[0] == 0
    page = (tmp_path / "h" / "report.html").read_text()
    assert _page_images(page) == ["Grad-CAM of track #1"]  # the map alone, no face pixels
    assert "faces were hidden in this run (--blur-faces): no face thumbnails" in page


# ------------------------------------------------------------ slow: a real annotate run

@pytest.fixture(scope="module")
def annotated(tmp_path_factory, weights):
    """A generated multi-person scene through the real `gimefive annotate --report`."""
    from gimefive.pipeline.bench.scenes import default_faces, make_scene_video

    folder = tmp_path_factory.mktemp("annotated")
    faces, _ = default_faces(4, seed=1)
    make_scene_video(folder / "scene.mp4", faces, 640, 360, n_frames=40, fps=10, seed=2,
                     faces_per_frame=4, sizes=(90, 130))
    argv = ["annotate", str(folder / "scene.mp4"), "-o", str(folder / "out.mp4"), "--json",
            str(folder / "faces.jsonl"), "--cam-npz", str(folder / "cam.npz"), "--weights",
            str(weights), "--backend", "torch", "--report", str(folder / "report"), "-q"]
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    return folder


@pytest.mark.slow
def test_tracks_csv_agrees_with_the_json_lines(annotated):
    records = [json.loads(line) for line in (annotated / "faces.jsonl").read_text().splitlines()]
    rows = read_csv(annotated / "report" / "tracks.csv")
    per_track: dict[int, list[float]] = {}
    for record in records:
        for f in record["faces"]:
            per_track.setdefault(f["track_id"], []).append(record["pts"])
    face_frames = sum(len(r["faces"]) for r in records)
    assert len(records) == 40 and face_frames >= 40, "the scene's faces should be found"
    assert sum(int(r["frames"]) for r in rows) == face_frames
    assert {int(r["track_id"]) for r in rows} == set(per_track)
    for row in rows:
        times = per_track[int(row["track_id"])]
        assert int(row["frames"]) == len(times)
        assert float(row["first_s"]) == pytest.approx(min(times))
        assert float(row["last_s"]) == pytest.approx(max(times))
        assert float(row["seconds"]) == pytest.approx(len(times) * 0.1, rel=1e-3)
        assert sum(float(row[f"share_{e}"]) for e in EMOTIONS) == pytest.approx(1, abs=1e-5)
    assert len(read_csv(annotated / "report" / "faces.csv")) == face_frames
    summary = {"frames": len(records), "face_frames": face_frames, "tracks": len(rows),
               "frames_per_track": {r["track_id"]: int(r["frames"]) for r in rows}}
    print(f"\ntracks.csv against the JSON lines: {json.dumps(summary)}")  # shown with -s
    page = (annotated / "report" / "report.html").read_text()
    assert len(_page_images(page)) == 2 * len(rows)  # a face and a Grad-CAM per person


# --------------------------------------------------------- slow: a real headless browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _devtools_page(port: int) -> str:
    """The websocket URL of the browser's first page (once DevTools answers)."""
    import urllib.request

    def ready():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [p for p in json.load(r) if p.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None
        except OSError:
            return None

    return wait_until(ready, 60, "Chromium's DevTools endpoint")


class DevTools:
    """A tiny DevTools-protocol client: commands, and the console events seen so far."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id, self.events = 0, []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def errors(self) -> list[str]:
        out = []
        for m in self.events:
            p = m.get("params", {})
            if m.get("method") == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif m.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(str(p.get("args")))
            elif m.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"].get("text", ""))
        return out


@pytest.mark.slow
def test_the_page_loads_in_headless_chromium(annotated, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/setup.sh)")
    page = annotated / "report" / "report.html"
    port = _free_port()
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         f"--remote-debugging-port={port}", "--window-size=1280,2000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tools = DevTools(_devtools_page(port))
        for domain in ("Runtime", "Log", "Page"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=page.as_uri())
        loaded = "location.protocol === 'file:' && document.readyState === 'complete'"
        wait_until(lambda: tools.call("Runtime.evaluate", expression=loaded,
                                      returnByValue=True)["result"]["value"],
                   60, "the report page to load")
        check = ("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        images = tools.call("Runtime.evaluate", expression=check,
                            returnByValue=True)["result"]["value"]
        shot = tools.call("Page.captureScreenshot", format="png",
                          captureBeyondViewport=True)["data"]
        errors = tools.errors()
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert errors == []
    assert len(images) >= 4 and all(ok for _, ok in images), images
    png = base64.b64decode(shot)
    import cv2

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] >= 1000 and image.std() > 10  # not blank
    shot_path = annotated / "report_screenshot.png"
    shot_path.write_bytes(png)
    print(f"\nheadless Chromium screenshot: {shot_path}")  # shown with -s


def test_annotate_refuses_a_non_empty_report_folder_before_running(tmp_path, capsys):
    from test_probe import write_video

    video = write_video(tmp_path / "in.mp4")
    out = tmp_path / "r"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, lines = run_cli(["annotate", str(video), "--report", str(out)], capsys)
    assert code != 0
    assert lines == [f"gimefive: error: report folder {out} is not empty (give --force to "
                     f"replace it)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "r"]  # no scratch left


def test_annotate_report_without_json_uses_a_scratch_folder_it_removes(tmp_path):
    from gimefive.pipeline.report.cli import ReportAfterRun

    job = ReportAfterRun(tmp_path / "r", None, None, cam=True, force=False)
    assert job.json_path.parent == job.cam_npz.parent == job.scratch
    assert job.scratch.parent == tmp_path and job.scratch.name.startswith(".r.")
    job.cleanup()
    assert list(tmp_path.iterdir()) == []
    kept = ReportAfterRun(tmp_path / "r", tmp_path / "f.jsonl", None, cam=False, force=False)
    assert kept.scratch is None and kept.json_path == tmp_path / "f.jsonl"
