"""The monitor's status during an outage keeps moving instead of repeating the last counts.

Two causes, each tested here without processes (the end-to-end check is in
test_monitor_give_up.py): the live sink reported its written counts only when a frame
came, so the frames written just before an outage stayed "in flight" in the status for
the whole outage; and the last frame's latency was repeated while nothing was written.
"""

from __future__ import annotations

import threading
import time
import types

import zmq
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.control import parse_control
from gimefive.pipeline.live_monitor import Monitor, MonitorConfig
from gimefive.pipeline.messages import EndOfStream
from gimefive.pipeline.stage import StageRunner
from gimefive.pipeline.stages.annotate import AnnotateStage
from gimefive.pipeline.transport import ipc_endpoint, open_socket
from waiting import wait_until


def test_live_counters_are_reported_while_no_frame_comes(tmp_path):
    """The runner asks the stage's ``live_stats`` hook once a second, also while its
    input is silent (every camera in an outage): the frames written just before the
    outage are reported, not left "in flight"."""
    stage = AnnotateStage(AnnotateConfig(), live=True, json=str(tmp_path / "f.jsonl"),
                          streams=["door"])
    ctx = zmq.Context()
    control = open_socket(ctx, zmq.PULL, ipc_endpoint(tmp_path, "control"), bind=True,
                          hwm=100)
    feed = ctx.socket(zmq.PUSH)
    runner = StageRunner(stage, ipc_endpoint(tmp_path, "in"), None,
                         ipc_endpoint(tmp_path, "control"), ends=1)
    try:
        stage.setup()
        stage.close()  # the sink is not under test
        stage.sinks, stage.draw, stage.landmarks68 = [], False, None
        for i in range(3):  # three frames written, then nothing comes
            stage.process(types.SimpleNamespace(boxes=(), t_decoded=time.time(),
                                                stream="door", index=i, extra={}))
        worker = threading.Thread(target=runner._run_filter, daemon=True)
        worker.start()
        written = []

        def two_reports() -> bool:
            if control.poll(200):
                msg = parse_control(control.recv())
                if msg["event"] == "live":
                    written.append(msg["data"]["streams"]["door"]["written"])
            return len(written) >= 2

        wait_until(two_reports, 10, "two live reports", interval_s=0)
        assert written == [3, 3]  # two reports, a second apart, with no frame in between
        feed.connect(ipc_endpoint(tmp_path, "in"))  # end the stream: the loop returns
        feed.send_multipart(EndOfStream(stream="door", frames=0).encode())
        worker.join(10)
        assert not worker.is_alive()
    finally:
        stage.close()
        runner.close()
        feed.close(0)
        control.close(0)
        ctx.term()


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
