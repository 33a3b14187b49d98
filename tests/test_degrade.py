"""A live run degrades before it drops: the step ladder, the stages that apply it, and a
live source that falls behind in this process."""

from __future__ import annotations

import numpy as np
import pytest
from gimefive.pipeline import degrade
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.degrade import LADDER, Degrader, multipliers, step_of
from gimefive.pipeline.messages import FrameMsg
from gimefive.pipeline.stages.detect import DetectStage
from gimefive.pipeline.stages.source import SourceStage
from test_pipeline_stages import standin_backend  # noqa: F401  (a fixture)
from waiting import wait_until


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


def test_ladder_raises_cam_first_then_classify_then_detect():
    cam_first = next(i for i, (d, c, m) in enumerate(LADDER) if m > 1)
    classify_first = next(i for i, (d, c, m) in enumerate(LADDER) if c > 1)
    detect_first = next(i for i, (d, c, m) in enumerate(LADDER) if d > 1)
    assert LADDER[0] == (1, 1, 1) and cam_first < classify_first < detect_first
    assert all(all(b >= a for a, b in zip(lo, hi, strict=True))
               for lo, hi in zip(LADDER, LADDER[1:], strict=False))  # never less work


def test_behind_raises_a_step_a_second_and_calm_lowers_it(fake_clock):
    d = Degrader(clock=fake_clock)
    assert d.update(depth=0, capacity=2, dropped=0) == 0
    assert d.update(depth=2, capacity=2, dropped=0) == 1  # full: the next frame would drop
    fake_clock.advance(0.5)
    assert d.update(depth=2, capacity=2, dropped=0) == 1  # full, but within a second
    fake_clock.advance(0.6)
    assert d.update(depth=1, capacity=2, dropped=3) == 2  # dropped since: behind
    for _ in range(20):
        fake_clock.advance(1.0)
        d.update(depth=2, capacity=2, dropped=3)
    assert d.step == len(LADDER) - 1 and d.raises == len(LADDER) - 1  # the top, no further
    fake_clock.advance(1.0)
    assert d.update(depth=0, capacity=2, dropped=3) == len(LADDER) - 1  # calm starts
    fake_clock.advance(degrade.CALM_S - 0.1)
    assert d.update(depth=0, capacity=2, dropped=3) == len(LADDER) - 1
    fake_clock.advance(0.2)
    assert d.update(depth=0, capacity=2, dropped=3) == len(LADDER) - 2  # one step down
    fake_clock.advance(degrade.CALM_S + 0.1)
    assert d.update(depth=0, capacity=2, dropped=3) == len(LADDER) - 3  # and another


def test_dropping_frames_raises_a_step_every_quarter_second(fake_clock):
    """A camera losing frames climbs the ladder four times as fast as one whose queue is
    merely full; without drops, a second a step again."""
    d = Degrader(clock=fake_clock)
    assert d.update(depth=8, capacity=8, dropped=1) == 1
    for dropped in range(2, 6):
        fake_clock.advance(degrade.DROPPING_RAISE_EVERY_S / 2)
        d.update(depth=8, capacity=8, dropped=dropped)
    assert d.step == 3  # half a second of drops: 2 more steps (a second a step: none)
    fake_clock.advance(degrade.DROPPING_RAISE_EVERY_S)
    assert d.update(depth=8, capacity=8, dropped=5) == 3  # full, no new drop: waits
    fake_clock.advance(degrade.RAISE_EVERY_S)
    assert d.update(depth=8, capacity=8, dropped=5) == 4


def test_a_step_down_taken_back_doubles_the_calm_the_next_one_waits_for(fake_clock):
    """A run at its limit: each try of a lower step fills the queue again. The calm before
    the next try doubles (10, 20, 40, 80 s, no more); a step down that holds halves it."""
    d = Degrader(clock=fake_clock, step=5)

    def calm_from(step: int) -> float:
        waited = 0.0
        while d.update(depth=0, capacity=8, dropped=0) == step:
            fake_clock.advance(0.5)
            waited += 0.5
        return waited

    waits = []
    for _ in range(5):
        waits.append(calm_from(5))
        fake_clock.advance(2.0)
        assert d.update(depth=8, capacity=8, dropped=0) == 5  # too low: back up at once
    assert waits == [10.0, 20.0, 40.0, 80.0, 80.0]
    assert calm_from(5) == 80.0  # to step 4, which holds: 80 s more to step 3 ...
    assert calm_from(4) == 80.0
    assert calm_from(3) == 40.0 and calm_from(2) == 20.0  # ... then half, and half again
    assert calm_from(1) == 10.0 and d.step == 0


def test_a_step_down_that_held_halves_the_calm_even_if_a_spike_comes_later(fake_clock):
    """Doubled to 80 s at the limit; then the load eases: a step down that holds for its
    calm halves the wait at once, whatever comes after it (a new spike is not the step
    down taken back)."""
    d = Degrader(clock=fake_clock, step=5)
    for _ in range(4):  # four tries taken back: 10 -> 20 -> 40 -> 80 s
        while d.update(depth=0, capacity=8, dropped=0) == 5:
            fake_clock.advance(0.5)
        fake_clock.advance(1.0)
        d.update(depth=8, capacity=8, dropped=0)
    assert d.calm_needed == degrade.MAX_CALM_S and d.step == 5
    while d.update(depth=0, capacity=8, dropped=0) == 5:
        fake_clock.advance(0.5)
    fake_clock.advance(degrade.MAX_CALM_S)  # step 4 held for its calm (busy, not empty)
    assert d.update(depth=3, capacity=8, dropped=0) == 4
    assert d.calm_needed == degrade.MAX_CALM_S / 2
    d.update(depth=8, capacity=8, dropped=1)  # a spike, long after
    assert d.step == 5 and d.calm_needed == degrade.MAX_CALM_S / 2


@pytest.mark.parametrize("value", [-1, len(LADDER), True, "3", 2.0, None, 10**30])
def test_a_hostile_step_degrades_nothing(value):
    assert step_of({degrade.KEY: value}) == 0 and multipliers({degrade.KEY: value}) == (1, 1, 1)


def frame(index: int, step: int | None = None) -> FrameMsg:
    extra = {} if step is None else {degrade.KEY: step}
    return FrameMsg(stream="s", index=index, pts=index, time_base=[1, 25], extra=extra,
                    image=np.zeros((32, 32, 3), np.uint8))


def test_detect_stretches_its_interval_with_the_step():
    stage = DetectStage(AnnotateConfig(detect_every=1))
    stage.last_detected = {}  # what setup() starts with (without loading the detector)
    step = next(i for i, (d, _, _) in enumerate(LADDER) if d == 2)
    assert [stage._needs_detection(frame(i)) for i in range(4)] == [True] * 4
    assert [stage._needs_detection(frame(i, step)) for i in range(4, 10)] == \
        [False, True, False, True, False, True]  # 4 is 1 frame after 3: not yet


@pytest.mark.usefixtures("standin_backend")
def test_classify_stretches_its_intervals_with_the_step():
    from test_pipeline_stages import classify_stage, run_all, with_faces, with_ids

    step = next(i for i, (_, c, m) in enumerate(LADDER) if c == 2 and m == 2)
    stage = classify_stage(classify_every=1, cam_every=1, classify_look=0)
    msgs = []
    for i in range(8):
        m = with_ids(with_faces(frame(i, None if i < 4 else step), 1))
        msgs.append(m)
    out = run_all(stage, msgs)[:-1]
    # from frame 4: classify every 2 frames, Grad-CAM at most every 2 (frame 3 had both)
    assert [bool(m.measured[0]) for m in out] == [True] * 4 + [False, True, False, True]
    assert [int(m.cam_from[0]) for m in out] == [0, 1, 2, 3, 3, 5, 5, 7]
    stage.close()


def test_a_live_source_that_falls_behind_degrades_and_files_never_do(tmp_path):
    """A camera (a file played as one) whose frames are not taken for a while: its queue
    fills, the frames it then sends carry a raised step, and its status shows the
    intervals in force. A file's frames carry no step at all."""
    from clips import write_still_clip

    picture = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    clip = write_still_clip(tmp_path / "c.mp4", picture, (64, 48), 50, fps=25)
    live = SourceStage(AnnotateConfig(), input=str(clip), reader="loop")
    live.setup()
    try:
        frames = live.messages()
        first = next(m for m in frames if m is not None)
        assert first.extra[degrade.KEY] == 0
        wait_until(lambda: live.feed.queue.dropped > 2, 10, "the queue to drop frames")
        later = [next(m for m in frames if m is not None) for _ in range(3)]
        assert max(m.extra[degrade.KEY] for m in later) >= 1
        stats = live.live_stats()
        assert stats["degrade_step"] >= 1 and stats["degrade_raises"] >= 1
        assert stats["intervals"] == degrade.intervals(live.config, stats["degrade_step"])
    finally:
        live.close()
    file = SourceStage(AnnotateConfig(), input=str(clip))
    file.setup()
    try:
        sent = [m for m in file.messages() if m is not None and m.KIND == "frame"]
    finally:
        file.close()
    assert len(sent) == 50 and all(degrade.KEY not in m.extra for m in sent)



def test_the_status_line_shows_the_intervals_while_degraded():
    from gimefive.pipeline.live_monitor import format_status

    stream = {"ended": False, "connected": True, "outage_s": None, "fps_in": 25.0,
              "fps_out": 24.0, "dropped": 3, "queue": 1, "in_flight": 2, "reconnects": 0,
              "degrade_step": 0, "intervals": degrade.intervals(AnnotateConfig(), 0)}
    record = {"uptime_s": 60, "stages": {}, "streams": {"door": stream}}
    assert "degraded" not in format_status(record)
    stream.update(degrade_step=2, intervals=degrade.intervals(AnnotateConfig(), 2))
    assert "degraded (step 2: detect every 1, classify every 10, CAM every 2)" in \
        format_status(record)
