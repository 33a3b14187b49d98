"""Many files in one `gimefive annotate` (issue 15): inputs, names, refusals, publishing.

The fast tests check planning and publishing with a stand-in for the pipeline; one slow
test runs three real clips two at a time, with a broken file among them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import av
import pytest
from clips import write_still_clip
from gimefive.pipeline import batch
from gimefive.pipeline.batch import (
    BatchOptions,
    WorkFolder,
    annotate_file,
    expand_inputs,
    format_table,
    plan_jobs,
)
from gimefive.pipeline.config import AnnotateConfig

from gimefive.cli import main
from gimefive.errors import GimefiveError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by these tests")
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.splitlines()


# --------------------------------------------------------------------------- inputs
def test_inputs_are_paths_globs_and_lists_each_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b, c = touch(tmp_path / "a.mp4"), touch(tmp_path / "b.mp4"), touch(tmp_path / "s/c.mp4")
    (tmp_path / "list.txt").write_text("# my clips\ns/c.mp4\n\n*.mp4\n")
    assert expand_inputs(["b.mp4", "@list.txt", str(a)]) == [b, c, a]


@pytest.mark.parametrize("arg, line", [
    ("rtsp://user:secret@cam.local/x", "a camera cannot be one of several inputs"),
    ("nothing*.mp4", "no file matches nothing*.mp4"),
    ("missing.mp4", "input not found (or not a file): missing.mp4"),
    ("@absent.txt", "cannot read the list file absent.txt"),
])
def test_a_bad_input_is_one_line(arg, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GimefiveError) as info:
        expand_inputs([arg])
    assert line in str(info.value) and "secret" not in str(info.value)


def test_outputs_are_named_after_inputs_and_clashes_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    talk, other_talk = touch(tmp_path / "talk.mp4"), touch(tmp_path / "b" / "talk.mp4")
    (job,) = plan_jobs([talk], out)
    assert {k: p.name for k, p in job.finals.items()} == {
        "output": "talk_annotated.mp4", "json": "talk.jsonl", "summary": "talk.summary.json",
        "config": "talk_annotated.mp4.config.yaml"}
    assert all(p.parent == out for p in job.finals.values())
    with pytest.raises(GimefiveError, match="would write the same outputs"):
        plan_jobs([talk, other_talk], out)
    (out / "talk.jsonl").write_text("old")
    with pytest.raises(GimefiveError, match="talk.jsonl already exists"):
        plan_jobs([talk], out)
    assert plan_jobs([talk], out, force=True)[0].finals["json"].name == "talk.jsonl"
    with pytest.raises(GimefiveError, match="would replace an input"):
        plan_jobs([touch(out / "x.mp4"), touch(out / "x_annotated.mp4")], out, force=True)
    with pytest.raises(GimefiveError, match="does not exist"):
        plan_jobs([talk], tmp_path / "absent")


@pytest.mark.parametrize("extra, line", [
    ([], "several inputs: give --out-dir DIR"),
    (["--ray", "auto"], "--ray: give --out-dir DIR"),
    (["--out-dir", "OUT", "-o", "x.mp4"], "-o names one input's output"),
    (["--out-dir", "OUT", "--json", "x.jsonl"], "--json names one input's output"),
    (["--out-dir", "OUT", "--jobs", "-1"], "must be >= 0"),
    (["--out-dir", "OUT", "--ray-transfer", "ftp"], "'ftp' is not one of"),
])
def test_cli_refuses_with_one_line(extra, line, tmp_path, capsys):
    (tmp_path / "OUT").mkdir()
    a, b = touch(tmp_path / "a.mp4"), touch(tmp_path / "b.mp4")
    extra = [str(tmp_path / e) if e == "OUT" else e for e in extra]
    code, lines = run_cli(["annotate", str(a), str(b), *extra], capsys)
    assert code == 2 and line in " ".join(lines), lines
    assert not any("Traceback" in x for x in lines)
    assert list((tmp_path / "OUT").iterdir()) == []


def test_without_ray_the_option_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    (tmp_path / "out").mkdir()
    a, b = touch(tmp_path / "a.mp4"), touch(tmp_path / "b.mp4")
    code, lines = run_cli(["annotate", str(a), str(b), "--out-dir", str(tmp_path / "out"),
                           "--ray", "auto"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "pip install 'gimefive[ray]'" in lines[0]
    assert list((tmp_path / "out").iterdir()) == []


def test_batch_options_document_themselves():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(BatchOptions))
    assert BatchOptions(jobs=3).local_jobs() == 3
    assert BatchOptions().local_jobs() >= 1
    for cores, jobs in ((1, 1), (2, 2), (3, 2), (4, 2), (8, 4), (16, 8)):
        with mock.patch("os.sched_getaffinity", return_value=set(range(cores))):
            assert BatchOptions().local_jobs() == jobs, cores
    with pytest.raises(GimefiveError, match="ray_transfer"):
        BatchOptions(ray_transfer="ftp")


# --------------------------------------------------------------------------- publishing
class StandIn:
    """annotate_in_folder's stand-in: writes the outputs; fails when told to, after
    writing half of them (what a killed run leaves)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.calls = fail, 0

    def __call__(self, input_path, folder, names, config):
        self.calls += 1
        (folder / names["output"]).write_bytes(b"video")
        if self.fail:
            raise GimefiveError("stage detect: it broke")
        for key in ("json", "summary"):
            (folder / names[key]).write_text(key)
        return {"frames": 3, "faces": 2, "fps": 10.0, "wall_s": 1.0}


def test_outputs_appear_only_when_complete_and_once(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (job,) = plan_jobs([touch(tmp_path / "talk.mp4")], out)
    with WorkFolder(out) as work:
        monkeypatch.setattr(batch, "annotate_in_folder", StandIn(fail=True))
        failed = annotate_file(job, AnnotateConfig(), work)
        assert failed["status"] == "failed: stage detect: it broke"
        assert sorted(p.name for p in out.iterdir()) == [work.name]  # nothing published
        stand_in = StandIn()
        monkeypatch.setattr(batch, "annotate_in_folder", stand_in)
        ok = annotate_file(job, AnnotateConfig(), work)
        again = annotate_file(job, AnnotateConfig(), work)  # a retry after publishing
        assert ok["status"] == again["status"] == "ok" and again["reused"]
        assert stand_in.calls == 1  # not run, nor written, a second time
        assert len(batch.attempts_of(work, job.index)) == 3
        assert sorted(p.name for p in work.iterdir()) == ["attempts", "done"]
    assert sorted(p.name for p in out.iterdir()) == ["talk.jsonl", "talk.summary.json",
                                                     "talk_annotated.mp4"]
    assert (out / "talk.jsonl").read_text() == "json"


def test_table_has_a_row_per_file_and_a_total():
    outcomes = [{"file": "/v/a.mp4", "frames": 30, "faces": 28, "fps": 41.25, "status": "ok",
                 "node": "0123456789", "tries": 2},
                {"file": "/v/long_name.mp4", "status": "failed: input not found"}]
    lines = format_table(outcomes, 6.0, ray=True).splitlines()
    assert lines[0].split() == ["file", "frames", "faces", "fps", "node", "tries", "status"]
    assert lines[1].split() == ["a.mp4", "30", "28", "41.2", "01234567", "2", "ok"]
    assert lines[2].split()[:5] == ["long_name.mp4", "-", "-", "-", "-"]
    assert lines[3] == "1 of 2 files ok, 30 frames in 6.0 s (5.0 frames/s overall)"
    assert format_table(outcomes, 6.0).splitlines()[0].split()[-1] == "status"


# --------------------------------------------------------------------------- for real
def frame_count(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.slow
def test_files_run_two_at_a_time_and_a_broken_one_is_reported(tmp_path, astronaut_bgr,
                                                               capsys):
    """Three clips and a broken file, --jobs 2: the clips' outputs complete with their
    frame counts, the broken file named in the table and the exit status, nothing else
    (no partial file, no work folder) left in --out-dir."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    frames = {"c0": 8, "c1": 10, "c2": 12}
    for stem, n in frames.items():
        write_still_clip(src / f"{stem}.mp4", astronaut_bgr, (128, 128), n)
    (src / "broken.mp4").write_bytes(b"\x00" * 4096)
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", str(src / "*.mp4"), "--out-dir", str(out), "-j", "2"])
    captured = capsys.readouterr()
    err, table = captured.err.splitlines(), captured.out.splitlines()
    assert exit_info.value.code == 3, err[-3:]
    assert "1 of 4 files failed; first: broken.mp4" in err[-1]
    assert [row.split()[0] for row in table[1:5]] == ["broken.mp4", "c0.mp4", "c1.mp4",
                                                     "c2.mp4"]
    assert table[1].split()[1:5] == ["-", "-", "-", "failed:"]
    assert table[-1].startswith("3 of 4 files ok, 30 frames in ")
    for stem, n in frames.items():
        assert frame_count(out / f"{stem}_annotated.mp4") == n
        records = [json.loads(line) for line in (out / f"{stem}.jsonl").open()]
        assert [r["frame"] for r in records] == list(range(n))
        assert json.loads((out / f"{stem}.summary.json").read_text())["frames"] == n
    assert len(list(out.iterdir())) == 4 * len(frames)  # video, JSON, summary, config
