"""The monitor's status during an outage keeps moving instead of repeating the last counts.

Two causes, each tested here without processes (the end-to-end check is in
test_monitor_give_up.py): the live sink reported its written counts only when a frame
came, so the frames written just before an outage stayed "in flight" in the status for
the whole outage; and the last frame's latency was repeated while nothing was written.
"""

from __future__ import annotations

import copy
import types

from gimefive.pipeline import live_stages
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.live_monitor import Monitor, MonitorConfig
from gimefive.pipeline.live_stages import REPORT_EVERY_S, LiveAnnotateStage


def test_live_sink_reports_while_no_frame_comes(monkeypatch, tmp_path):
    clock = [1000.0]
    monkeypatch.setattr(live_stages, "time", types.SimpleNamespace(
        monotonic=lambda: clock[0], time=lambda: 5000.0))
    stage = LiveAnnotateStage(AnnotateConfig(), json=str(tmp_path / "f.jsonl"),
                              streams=["door"])
    stage.setup()
    stage.close()  # the sink is not under test
    stage.sinks, stage.draw = [], False
    reports: list[dict] = []
    stage.report = lambda event, **data: reports.append(copy.deepcopy(data))
    for i in range(3):  # three frames within a second: one report (the first)
        stage.process(types.SimpleNamespace(boxes=(), t_decoded=4999.9, stream="door",
                                            index=i, extra={}))
    assert reports[-1]["streams"]["door"]["written"] == 1
    # then the camera goes down: the runner waits at most wait_ms, then calls flush
    wait = stage.wait_ms()
    assert wait is not None and 0 <= wait <= 1000 * REPORT_EVERY_S
    clock[0] += wait / 1000
    assert list(stage.flush()) == []
    assert reports[-1]["streams"]["door"]["written"] == 3  # not stuck at 1


def test_status_shows_no_latency_when_nothing_was_written(monkeypatch):
    monitor = Monitor({"door": "rtsp://127.0.0.1:1/door"}, MonitorConfig(json="x.jsonl"),
                      AnnotateConfig(), quiet=True)
    monitor.supervisor = types.SimpleNamespace(stages={})
    monitor.source_live["door"] = {"decoded": 20, "sent": 10, "connected": True}
    monitor.sink_live = {"door": {"written": 10, "latency_s": 0.05}}
    assert monitor.status()["streams"]["door"]["latency_s"] == 0.05
    monitor.source_live["door"] = {"decoded": 20, "sent": 10, "connected": False,
                                   "outages": [{"started": 1.0, "duration_s": None}]}
    down = monitor.status()["streams"]["door"]
    assert down["fps_in"] == 0 and down["fps_out"] == 0
    assert down["latency_s"] is None  # nothing written since: no stale latency
    assert down["outage_s"] > 0
