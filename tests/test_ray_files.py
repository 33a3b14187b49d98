"""`gimefive annotate IN... --out-dir DIR --ray ADDRESS` on a real two-node Ray cluster
(issue 15): every file's outputs complete, exactly once, with the input's frame count;
a node killed while it runs a file, and the file finished on the other node.

The cluster is Ray's own (`ray.cluster_utils.Cluster`): a head and a worker node as two
raylets on 127.0.0.1, one CPU and a 100 MB object store each (tests/ray_cluster.py).
Skips where Ray is not installed (the extra gimefive[ray]; CI installs it). The two
cluster tests are `slow`; the others start nothing. Run with
``-s`` to see what was killed when and the final tables.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from clips import write_still_clip
from waiting import wait_until

from gimefive.cli import main

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'gimefive[ray]')")
from ray_cluster import loopback_cluster  # noqa: E402 - needs ray

SIZE = (128, 128)


@pytest.fixture()
def cluster():
    with loopback_cluster(nodes=2, cpus=1, object_store_mb=100) as (cluster, workers):
        yield cluster, workers[0]


def clips(folder: Path, image, frames: list[int]) -> list[Path]:
    folder.mkdir()
    return [write_still_clip(folder / f"clip{i}.mp4", image, SIZE, n)
            for i, n in enumerate(frames)]


def frame_count(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def check_outputs(out: Path, inputs: list[Path]) -> dict[str, int]:
    """Exactly the expected files, each complete; returns frames per output video."""
    expected = {f"{p.stem}{tail}" for p in inputs for tail in
                ("_annotated.mp4", ".jsonl", ".summary.json", "_annotated.mp4.config.yaml")}
    assert {p.name for p in out.iterdir()} == expected  # no partial, work or extra file
    counts = {}
    for path in inputs:
        records = [json.loads(line) for line in (out / f"{path.stem}.jsonl").open()]
        assert [r["frame"] for r in records] == list(range(frame_count(path)))  # each once
        summary = json.loads((out / f"{path.stem}.summary.json").read_text())
        assert summary["frames"] == len(records)
        counts[path.name] = frame_count(out / f"{path.stem}_annotated.mp4")
        assert counts[path.name] == frame_count(path)
    return counts


def test_nothing_answering_is_one_line_in_seconds(tmp_path, capsys, monkeypatch):
    """A cluster address where nothing listens (a typo, a cluster gone): one line at
    once, where ray.init alone retries for many minutes. Loopback only."""
    import socket

    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # keep 127.0.0.1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed
    (tmp_path / "out").mkdir()
    a, b = (write_still_clip(tmp_path / f"{n}.mp4", np.zeros((8, 8, 3), np.uint8), (16, 16), 1)
            for n in "ab")
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", str(a), str(b), "--out-dir", str(tmp_path / "out"),
              "--ray", f"127.0.0.1:{port}"])
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert f"nothing answers at 127.0.0.1:{port} (Connection refused)" in lines[0]
    assert time.monotonic() - started < 30
    assert list((tmp_path / "out").iterdir()) == []


def test_the_transfer_probe_sees_what_the_driver_sees(tmp_path):
    from gimefive.pipeline.ray_files import _sees

    (tmp_path / "probe").write_text("token")
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"1234")
    assert _sees(str(tmp_path), "token", [(str(clip), 4)])
    assert not _sees(str(tmp_path), "other", [(str(clip), 4)])  # another folder of that name
    assert not _sees(str(tmp_path), "token", [(str(clip), 5)])  # another file of that name
    assert not _sees(str(tmp_path / "absent"), "token", [])


@pytest.mark.slow
def test_four_clips_over_two_nodes_bytes(cluster, tmp_path, astronaut_bgr, capsys):
    """The command itself, outputs coming back through the object store: all four files
    complete, once each, with their input's frame count, and both nodes did work."""
    head, worker = cluster[0].head_node, cluster[1]
    inputs = clips(tmp_path / "in", astronaut_bgr, [12, 14, 16, 18])
    out = tmp_path / "out"
    out.mkdir()
    main(["annotate", *map(str, inputs), "--out-dir", str(out),
          "--ray", cluster[0].address, "--ray-cpus", "1", "--ray-transfer", "bytes"])
    table = capsys.readouterr().out
    print(table)
    counts = check_outputs(out, inputs)
    assert counts == {p.name: n for p, n in zip(inputs, [12, 14, 16, 18], strict=True)}
    assert "4 of 4 files ok" in table
    nodes = {line.split()[4] for line in table.splitlines()[1:5]}
    assert nodes == {head.node_id[:8], worker.node_id[:8]}, table  # spread over both


@pytest.mark.slow
def test_a_node_killed_mid_file_is_finished_on_the_other(cluster, tmp_path, astronaut_bgr):
    """Shared filesystem (auto finds it): the worker node is removed as soon as it starts
    a file; Ray runs that file again on the head. Nothing partial or doubled is left."""
    from gimefive.pipeline.batch import BatchOptions, run_batch
    from gimefive.pipeline.config import load_annotate_config

    c, worker = cluster
    inputs = clips(tmp_path / "in", astronaut_bgr, [40, 40])
    out = tmp_path / "out"
    out.mkdir()
    killed: dict = {}

    def kill_when_the_worker_starts_a_file() -> None:
        def started_there():
            for record in out.glob(".gimefive-batch-*/attempts/*.json"):
                with open(record) as fh:
                    text = fh.read()
                if text and json.loads(text)["node"] == worker.node_id:
                    return record.stem
            return None
        killed["attempt"] = wait_until(started_there, 120, "a file started on the worker")
        killed["t"] = time.monotonic()
        c.remove_node(worker, allow_graceful=False)

    killer = threading.Thread(target=kill_when_the_worker_starts_a_file, daemon=True)
    config = load_annotate_config()
    options = BatchOptions(ray=c.address, ray_cpus=1, ray_retries=2)
    t0 = time.monotonic()
    killer.start()
    outcomes = run_batch([str(p) for p in inputs], out, config, options, quiet=True)
    killer.join(10)
    lost = int(killed["attempt"].split("-")[0])
    print(f"\nkilled the worker node {worker.node_id[:8]} {killed['t'] - t0:.1f} s after "
          f"the start, while it ran {inputs[lost].name} (attempt {killed['attempt']}); "
          f"batch done after {time.monotonic() - t0:.1f} s")
    head = c.head_node.node_id
    for outcome in outcomes:
        print(f"{Path(outcome['file']).name}: {outcome['status']}, {outcome['frames']} "
              f"frames, tries {outcome['tries']}, finished on node {outcome['node'][:8]}")
    assert [o["status"] for o in outcomes] == ["ok", "ok"]
    assert outcomes[lost]["tries"] == 2 and outcomes[lost]["node"] == head  # retried there
    assert "reused" not in outcomes[lost]  # it had not been published before the kill
    counts = check_outputs(out, inputs)
    print(f"output frame counts: {counts}")
    assert counts == {"clip0.mp4": 40, "clip1.mp4": 40}
