"""``gimefive monitor --metrics-port``: Prometheus metrics, /healthz and /readyz.

The metrics module is fed status records and camera events directly (no processes) and
its HTTP server is scraped on 127.0.0.1 (port 0: a free one), parsed with
prometheus_client's own parser. One slow test scrapes a real ``gimefive monitor``.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from gimefive.pipeline.metrics import MonitorMetrics, serve_metrics
from prometheus_client.parser import text_string_to_metric_families


def stream(**overrides) -> dict:
    """One camera's part of a status record (live_monitor.Monitor.status)."""
    record = {"connected": True, "fps_in": 25.0, "fps_out": 25.0, "decoded": 0,
              "written": 0, "dropped": 0, "queue": 0, "in_flight": 0, "reconnects": 0,
              "outage_s": None, "latency_s": None, "faces": 0, "ended": False}
    record.update(overrides)
    return record


def status(streams: dict, stages: dict | None = None) -> dict:
    stages = stages or {"detect": {"restarts": 0, "rss_mb": 100.0, "cpu_s": 1.5,
                                   "alive": True}}
    return {"kind": "status", "time": 0.0, "uptime_s": 1.0, "streams": streams,
            "stages": stages}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics``: (sample name, sorted labels) -> value."""
    code, text = get(base + "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture()
def served():
    metrics = MonitorMetrics(["door", "hall"])
    server = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        yield metrics, f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


def test_cameras_added_and_removed_while_running(served):
    metrics, base = served
    metrics.update(status({"door": stream(decoded=10, written=10),
                           "hall": stream(decoded=10, written=10)}))
    metrics.set_cameras(["hall", "yard"])  # the cameras file changed: door out, yard in
    samples = scrape(base)
    cameras = {dict(labels).get("camera") for (_, labels) in samples}
    assert "door" not in cameras and {"hall", "yard"} <= cameras
    assert samples[("gimefive_camera_up", (("camera", "yard"),))] == 0
    assert get(base + "/readyz") == (503, "waiting for the first frame of yard\n")
    metrics.update(status({"hall": stream(decoded=20, written=20),
                           "yard": stream(decoded=5, written=5)}))
    assert get(base + "/readyz") == (200, "ready\n")
    assert scrape(base)[("gimefive_frames_written_total", (("camera", "yard"),))] == 5


def test_counters_across_an_outage(served):
    metrics, base = served
    door = (("camera", "door"),)
    metrics.update(status({"door": stream(decoded=100, written=90, dropped=2, faces=5,
                                          latency_s=0.2),
                           "hall": stream(decoded=10, written=10)}))
    before = scrape(base)
    assert before[("gimefive_frames_decoded_total", door)] == 100
    assert before[("gimefive_frames_written_total", door)] == 90
    assert before[("gimefive_frames_dropped_total", door)] == 2
    assert before[("gimefive_faces_total", door)] == 5
    assert before[("gimefive_reconnects_total", door)] == 0
    assert before[("gimefive_camera_up", door)] == 1
    assert before[("gimefive_camera_outage_seconds", door)] == 0
    assert before[("gimefive_latency_seconds_count", door)] == 1
    assert before[("gimefive_stage_cpu_seconds", (("stage", "detect"),))] == 1.5
    assert before[("gimefive_stage_resident_memory_bytes", (("stage", "detect"),))] \
        == 100.0 * 2**20

    metrics.update(status({"door": stream(connected=False, decoded=100, written=90,
                                          outage_s=4.0, dropped=2, faces=5),
                           "hall": stream(decoded=20, written=20)}))
    during = scrape(base)
    assert during[("gimefive_camera_up", door)] == 0
    assert during[("gimefive_camera_outage_seconds", door)] == 4.0
    assert during[("gimefive_latency_seconds_count", door)] == 1  # nothing fresh written

    # back, its source restarted: cumulative figures started again from 0
    metrics.update(status({"door": stream(decoded=30, written=25, reconnects=1,
                                          dropped=2, faces=5, latency_s=0.3),
                           "hall": stream(decoded=30, written=30)},
                          {"detect": {"restarts": 1, "rss_mb": 110.0, "cpu_s": 2.0,
                                      "alive": True}}))
    after = scrape(base)
    assert after[("gimefive_reconnects_total", door)] == 1
    assert after[("gimefive_camera_up", door)] == 1
    assert after[("gimefive_camera_outage_seconds", door)] == 0
    assert after[("gimefive_frames_decoded_total", door)] == 130  # never goes back
    assert after[("gimefive_frames_written_total", door)] == 115
    assert after[("gimefive_latency_seconds_count", door)] == 2
    assert after[("gimefive_stage_restarts_total", (("stage", "detect"),))] == 1


def test_healthz_says_why_a_camera_ended(served):
    metrics, base = served
    metrics.update(status({"door": stream(), "hall": stream()}))
    assert get(base + "/healthz") == (200, "ok\n")
    metrics.update(status({"door": stream(connected=False, outage_s=9.0), "hall": stream()}))
    assert get(base + "/healthz")[0] == 200  # reconnecting within its budget
    line = "camera door gave up after 3 reconnect attempt(s): connection refused"
    metrics.camera_ended("door", line)
    metrics.update(status({"door": stream(connected=False, ended=True), "hall": stream()}))
    assert get(base + "/healthz") == (503, line + "\n")


def test_healthz_names_a_dead_stage(served):
    metrics, base = served
    metrics.update(status({"door": stream(), "hall": stream()},
                          {"classify": {"restarts": 5, "rss_mb": None, "cpu_s": None,
                                        "alive": False}}))
    code, text = get(base + "/healthz")
    assert code == 503 and text.startswith("stage classify is not running")


def test_readyz_once_every_camera_wrote_a_frame(served):
    metrics, base = served
    assert get(base + "/readyz") == (503, "waiting for the first frame of door, hall\n")
    metrics.update(status({"door": stream(written=3), "hall": stream()}))
    assert get(base + "/readyz") == (503, "waiting for the first frame of hall\n")
    metrics.update(status({"door": stream(written=3), "hall": stream(written=1)}))
    assert get(base + "/readyz") == (200, "ready\n")
    assert get(base + "/nothing")[0] == 404


def test_a_port_in_use_is_one_line():
    from gimefive.errors import GimefiveError

    first = serve_metrics(MonitorMetrics(["cam0"]), "127.0.0.1", 0)
    try:
        with pytest.raises(GimefiveError, match=rf"--metrics-port {first.port}: cannot "
                                                rf"listen on 127.0.0.1:{first.port}"):
            serve_metrics(MonitorMetrics(["cam0"]), "127.0.0.1", first.port)
    finally:
        first.close()


@pytest.mark.slow
def test_a_running_monitor_serves_metrics(tmp_path, weights, astronaut_bgr):
    """The real ``gimefive monitor`` (a looping file camera): /metrics counts the
    frames it writes, /readyz turns 200 and /healthz says ok while it runs."""
    import socket

    from clips import write_still_clip
    from test_monitor_give_up import MonitorRun

    clip = write_still_clip(tmp_path / "hall.mp4", astronaut_bgr, (128, 128), 10)
    with socket.socket() as probe:  # a free port for the monitor to take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    run = MonitorRun(tmp_path, weights, "-s", f"hall={clip}", "--metrics-port", str(port))
    hall = (("camera", "hall"),)
    try:
        run.wait_for(lambda: run.records("hall") >= 5, 240, "5 hall records")

        def written() -> float:
            return scrape(base).get(("gimefive_frames_written_total", hall), 0)

        run.wait_for(lambda: written() > 0, 60, "frames written in /metrics")
        assert get(base + "/readyz") == (200, "ready\n")
        assert get(base + "/healthz") == (200, "ok\n")
        samples = scrape(base)
        assert samples[("gimefive_camera_up", hall)] == 1
        assert samples[("gimefive_stage_cpu_seconds", (("stage", "detect"),))] > 0
    finally:
        rc = run.stop()
    assert rc == 0, run.tail()


@pytest.mark.slow
def test_metrics_across_a_real_camera_outage(tmp_path, weights):
    """The real ``gimefive monitor`` on a real RTSP camera whose server is stopped and
    started again: /metrics, parsed by prometheus_client's own parser, shows the camera
    down during the outage and up after it, with one more reconnect and more frames."""
    from rtsp_server import RtspServer, free_port, skip_without_server
    from test_monitor_give_up import MonitorRun

    skip_without_server()
    server = RtspServer(path="door", width=160, height=120, fps=10).start()
    port = free_port()
    base, door = f"http://127.0.0.1:{port}", (("camera", "door"),)
    run = MonitorRun(tmp_path, weights, "-s", f"door={server.url}", "--metrics-port",
                     str(port))
    names = ("gimefive_camera_up", "gimefive_reconnects_total", "gimefive_frames_decoded_total",
             "gimefive_frames_written_total", "gimefive_camera_outage_seconds")

    def sample(name: str) -> float:
        try:
            return scrape(base).get((name, door), -1)
        except urllib.error.URLError:  # the monitor has not opened its port yet
            return -1

    def snapshot() -> dict[str, float]:
        samples = scrape(base)
        return {name: samples.get((name, door), -1) for name in names}

    try:
        run.wait_for(lambda: sample("gimefive_camera_up") == 1
                     and sample("gimefive_frames_written_total") > 0, 240, "frames written")
        before = snapshot()
        server.stop()
        run.wait_for(lambda: sample("gimefive_camera_up") == 0, 60, "the camera shown down")
        during = snapshot()
        server.start()
        # back up: reconnected, decoding and writing again (frames still in flight when
        # the camera went down may be written after the "during" snapshot: not enough)
        run.wait_for(lambda: sample("gimefive_camera_up") == 1
                     and sample("gimefive_reconnects_total")
                     > before["gimefive_reconnects_total"]
                     and sample("gimefive_frames_decoded_total")
                     > during["gimefive_frames_decoded_total"]
                     and sample("gimefive_frames_written_total")
                     > during["gimefive_frames_written_total"], 90, "the camera back up")
        after = snapshot()
    finally:
        rc = run.stop()
        server.stop()
    print("\n/metrics for camera door (before / during / after the outage)")
    for name in names:
        print(f"{name:<34} {before[name]:>8.0f} {during[name]:>8.0f} {after[name]:>8.0f}")
    assert rc == 0, run.tail()
    assert (before["gimefive_camera_up"], during["gimefive_camera_up"],
            after["gimefive_camera_up"]) == (1, 0, 1)
    assert during["gimefive_camera_outage_seconds"] > 0
    assert after["gimefive_reconnects_total"] >= before["gimefive_reconnects_total"] + 1
    assert after["gimefive_frames_decoded_total"] > during["gimefive_frames_decoded_total"]
    assert after["gimefive_frames_written_total"] > before["gimefive_frames_written_total"]


def test_degrade_step_and_intervals_are_exported(served):
    """A camera degraded to keep up: its step and the intervals in force are gauges, back
    to the configured ones when it catches up; a removed camera's series go."""
    metrics, base = served
    raised = {"detect_every": 1, "classify_every": 10, "cam_every": 2}
    metrics.update(status({"door": stream(degrade_step=2, intervals=raised),
                           "hall": stream()}))
    samples = scrape(base)
    assert samples[("gimefive_degrade_step", (("camera", "door"),))] == 2
    assert samples[("gimefive_interval_frames", (("camera", "door"), ("work", "classify")))] \
        == 10
    assert samples[("gimefive_degrade_step", (("camera", "hall"),))] == 0
    metrics.update(status({"door": stream(degrade_step=0, intervals={
        "detect_every": 1, "classify_every": 5, "cam_every": 1}), "hall": stream()}))
    samples = scrape(base)
    assert samples[("gimefive_degrade_step", (("camera", "door"),))] == 0
    assert samples[("gimefive_interval_frames", (("camera", "door"), ("work", "cam")))] == 1
    metrics.set_cameras(["hall"])
    assert not any(dict(labels).get("camera") == "door" for (_, labels) in scrape(base))
