"""Frames in shared memory (pipeline.shared_frames): a frame written once by its source,
referred to by every message after, released by the last stage; hostile references
refused as malformed messages, never read elsewhere."""

import os
import stat
import threading
import time

import numpy as np
import pytest
from gimefive.pipeline import shared_frames
from gimefive.pipeline.messages import (
    DetectionsMsg,
    FrameMsg,
    WireError,
    decode,
)
from gimefive.pipeline.shared_frames import (
    FILE_SLOTS,
    LIVE_SLOTS,
    FrameRing,
    SharedFrames,
    frames_dir,
    ring_slots,
)

pytestmark = pytest.mark.skipif(not shared_frames.SHM_PARENT.is_dir(), reason="no /dev/shm")


@pytest.fixture
def folder():
    with frames_dir() as directory:
        yield directory


def _image(seed: int, shape=(36, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _frame(image, index=0) -> FrameMsg:
    return FrameMsg(stream="cam0", index=index, pts=index, time_base=[1, 25], image=image)


def _ring(folder, slots=3, frame=(36, 64, 3)) -> FrameRing:
    return FrameRing(folder, "cam0-1", slots, int(np.prod(frame)))


def test_the_folder_is_private_on_dev_shm_and_removed_after(folder):
    assert folder.parent == shared_frames.SHM_PARENT
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    with frames_dir() as other:
        assert other != folder and other.is_dir()
    assert not other.exists()
    with frames_dir(enabled=False) as none:
        assert none is None


def test_a_frame_crosses_hops_as_a_reference_and_reads_back_exactly(folder):
    ring, frames = _ring(folder), SharedFrames(folder)
    image = _image(1)
    parts = _frame(ring.put(image)).encode()
    assert len(parts) == 1  # the header only: no image bytes on the socket
    assert b'"ring":"cam0-1","slot":0,"seq":0' in parts[0]
    msg = decode(parts, frames=frames)
    assert np.array_equal(msg.image, image) and msg.image.ref == ("cam0-1", 0, 0)
    assert not msg.image.flags.writeable  # no stage draws on the source's frame
    # the next hop's message built from it refers to the same slot, not to a copy
    k = np.zeros((0, 4), np.float32)
    nxt = DetectionsMsg(**msg.frame_fields(), boxes=k, scores=np.zeros(0, np.float32),
                        landmarks=np.zeros((0, 5, 2), np.float32))
    parts = nxt.encode()
    assert len(parts) == 4 and b'"ring":"cam0-1"' in parts[0]
    assert np.array_equal(decode(parts, frames=frames).image, image)
    # a crop or a copy of it is plain data and travels inside the message
    assert _frame(msg.image[:10]).encode()[1].nbytes == 10 * 64 * 3
    frames.close()
    ring.close()


def test_slots_are_taken_in_turn_and_freed_by_release(folder):
    ring, frames = _ring(folder, slots=2), SharedFrames(folder)
    first, second = ring.put(_image(1)), ring.put(_image(2))
    assert (first.ref[1], second.ref[1]) == (0, 1)
    assert not ring.wait(0) and ring.put(_image(3)) is None  # full: nothing overwritten
    decode(_frame(first).encode(), frames=frames)  # the last stage maps the ring
    frames.release(first)
    assert ring.wait(0) and ring.in_flight == 1
    third = ring.put(_image(3))
    assert third.ref == ("cam0-1", 0, 2)
    frames.release(third)  # cumulative: frame 2 done means 1 is too
    assert ring.in_flight == 0
    frames.release(second)  # late and older: changes nothing
    assert ring.in_flight == 0
    frames.close()
    ring.close()


def test_a_release_in_another_thread_wakes_a_waiting_source(folder):
    ring, frames = _ring(folder, slots=2), SharedFrames(folder)
    held = [ring.put(_image(i)) for i in range(2)]
    decode(_frame(held[0]).encode(), frames=frames)

    def release_later():
        time.sleep(0.2)  # the consumer is busy for a while
        frames.release(held[1])

    threading.Thread(target=release_later).start()
    start = time.monotonic()
    assert ring.wait(10)  # woken by the FIFO, not by the timeout
    assert time.monotonic() - start < 5
    frames.close()
    ring.close()


def test_a_reference_to_an_overwritten_frame_is_refused(folder):
    ring, frames = _ring(folder, slots=2), SharedFrames(folder)
    old = _frame(ring.put(_image(1))).encode()
    second = ring.put(_image(2))
    decode(old, frames=frames)
    frames.release(second)  # a forged or stray reference that outlived its frame
    ring.put(_image(3))  # frame 2 now lies in slot 0
    with pytest.raises(WireError, match="no longer in its slot"):
        decode(old, frames=frames)
    frames.close()
    ring.close()


def _forged(name="cam0-1", slot=0, seq=0, shape=(36, 64, 3), dtype="uint8") -> list[bytes]:
    import json

    header = {"schema": 1, "kind": "frame",
              "fields": {"stream": "cam0", "index": 0, "pts": 0, "time_base": [1, 25],
                         "rate": None, "t_decoded": 1.0, "extra": {}, "seq": None},
              "arrays": [{"name": "image", "dtype": dtype, "shape": list(shape),
                          "ring": name, "slot": slot, "seq": seq}]}
    return [json.dumps(header).encode()]


@pytest.mark.parametrize(("forged", "pattern"), [
    (_forged(name="../../etc/passwd"), "ring name"),
    (_forged(name=["cam0-1"]), "ring name"),
    (_forged(name="nobody-2"), "cannot be opened"),
    (_forged(slot=7), "slot 7"),
    (_forged(slot=-1), "slot -1"),
    (_forged(slot=True), "expected integers"),
    (_forged(seq=-3), "expected integers"),
    (_forged(seq=1.0), "expected integers"),
    (_forged(seq=5), "no longer in its slot"),
    (_forged(shape=(360, 640, 3)), "is not in ring"),
    (_forged(dtype="float32", shape=(36, 64, 3)), "must be uint8"),
    (_forged(shape=(36, 64, 3, 1, 1)), "dimensions"),
])
def test_hostile_references_are_malformed_messages(folder, forged, pattern):
    ring, frames = _ring(folder), SharedFrames(folder)
    ring.put(_image(1))
    with pytest.raises(WireError, match=pattern):
        decode(forged, frames=frames)
    frames.close()
    ring.close()


def test_a_reference_is_refused_where_frames_are_not_read_and_to_what_is_no_ring(folder):
    ring = _ring(folder)
    parts = _frame(ring.put(_image(1))).encode()
    with pytest.raises(WireError, match="no --frames-dir"):
        decode(parts)  # a stage on another host
    (folder / "junk.ring").write_bytes(b"x" * 8192)
    os.symlink(folder / "cam0-1.ring", folder / "link.ring")
    frames = SharedFrames(folder)
    for name, pattern in (("junk", "not a ring"), ("link", "cannot be opened")):
        with pytest.raises(WireError, match=pattern):
            decode(_forged(name=name), frames=frames)
    # an extra key next to a reference is refused like any other
    import json

    header = json.loads(parts[0])
    header["arrays"][0]["path"] = "/etc/passwd"
    with pytest.raises(WireError, match="array spec expected keys"):
        decode([json.dumps(header).encode()], frames=frames)
    frames.close()
    ring.close()


def test_a_frame_bigger_than_a_slot_is_not_put():
    with frames_dir() as folder:
        ring = _ring(folder, frame=(36, 64, 3))
        assert ring.put(_image(1, (72, 64, 3))) is None and ring.in_flight == 0
        ring.close()


def test_ring_sizes_follow_the_kind_of_input_and_a_memory_cap():
    frame = 640 * 360 * 3
    assert ring_slots(frame, live=True) == LIVE_SLOTS
    assert ring_slots(frame, live=False, held=4) == FILE_SLOTS + 4
    big = 7680 * 4320 * 3  # 8K: the cap decides, never fewer than 2
    assert ring_slots(big, live=False) * big <= shared_frames.MAX_RING_BYTES
    assert ring_slots(big * 40, live=True) == 2


def test_a_restarted_sources_new_ring_replaces_its_old_one_in_the_readers(folder):
    old, frames = FrameRing(folder, "cam0-100", 2, 64 * 36 * 3), SharedFrames(folder)
    other = FrameRing(folder, "cam0-extra-7", 2, 64 * 36 * 3)  # another stream's
    for ring in (old, other):
        decode(_frame(ring.put(_image(1))).encode(), frames=frames)
    new = FrameRing(folder, "cam0-101", 2, 64 * 36 * 3)
    decode(_frame(new.put(_image(2))).encode(), frames=frames)
    assert list(frames.rings) == ["cam0-extra-7", "cam0-101"]
    frames.close()
    for ring in (old, other, new):
        ring.close()


def _source(folder, live: bool):
    """A source stage as far as its ring goes: the reader only says live or not."""
    from types import SimpleNamespace

    from gimefive.pipeline.config import load_annotate_config
    from gimefive.pipeline.stages.source import SourceStage

    stage = SourceStage(load_annotate_config(None), frames_dir=str(folder), stream="cam0")
    stage.reader = SimpleNamespace(live=live)
    return stage


def test_a_camera_source_starts_a_fresh_ring_when_nothing_is_released(folder, monkeypatch):
    monkeypatch.setattr("gimefive.pipeline.stages.source.RENEW_S", 0.3)
    stage = _source(folder, live=True)
    images = [stage._shared(_image(i)) for i in range(LIVE_SLOTS)]
    assert all(i.ref for i in images) and stage.ring.in_flight == LIVE_SLOTS
    frames = SharedFrames(folder)
    held = decode(_frame(images[0]).encode(), frames=frames).image  # a stage holds it
    start = time.monotonic()
    again = stage._shared(_image(99))  # every slot taken, and nothing comes back
    assert time.monotonic() - start >= 0.3 and stage.counters["ring_renewals"] == 1
    assert again.ref[0] != images[0].ref[0] and again.ref[1:] == (0, 0)
    assert sorted(p.name for p in folder.glob("cam0-*")) == [
        f"{again.ref[0]}.ring", f"{again.ref[0]}.wake"]  # the old ring's files are gone
    assert np.array_equal(held, _image(0))  # and what a stage holds is not overwritten
    decode(_frame(again).encode(), frames=frames)
    assert list(frames.rings) == [again.ref[0]]  # the readers drop the old ring
    assert stage.counters["shared_frames"] == LIVE_SLOTS + 1
    # a camera that came back larger: its frames go inside the messages
    assert not isinstance(stage._shared(_image(1, (72, 64, 3))), shared_frames.SharedImage)
    assert stage.counters["inline_frames"] == 1
    frames.close()
    stage.ring.close()


def test_a_file_source_waits_for_a_release_and_loses_nothing(folder):
    stage = _source(folder, live=False)
    first = stage._shared(_image(0))
    while stage.ring.in_flight < stage.ring.slots:
        stage._shared(_image(1))
    frames = SharedFrames(folder)
    decode(_frame(first).encode(), frames=frames)
    last = first.ref[2] + stage.ring.slots - 1
    threading.Timer(0.5, lambda: frames._ring(first.ref[0]).release(last)).start()
    start = time.monotonic()
    nxt = stage._shared(_image(2))  # waits (never a fresh ring for a file) until the release
    assert time.monotonic() - start >= 0.4 and nxt.ref[2] == last + 1
    assert "ring_renewals" not in stage.counters
    frames.close()
    stage.ring.close()


def test_a_hop_to_another_host_carries_the_frame_itself(folder):
    from gimefive.pipeline.transport import leaves_host

    ring = _ring(folder)
    image = _image(5)
    parts = _frame(ring.put(image)).encode(inline=True)
    assert len(parts) == 2 and b'"ring"' not in parts[0]
    assert np.array_equal(decode(parts).image, image)  # no frames folder needed there
    assert leaves_host("tcp://10.0.0.2:5601") and leaves_host("tcp://127.0.0.1:5601")
    assert not leaves_host("ipc:///tmp/g/detect.sock") and not leaves_host(None)
    ring.close()


def test_a_live_reorder_gives_a_lost_frame_up_after_a_wait_not_only_a_count():
    from gimefive.pipeline.reorder import InOrder

    order = InOrder(limit=32, live=True)
    msgs = [_frame(_image(0, (2, 2, 3)), index=i) for i in range(4)]
    for i, msg in enumerate(msgs):
        msg.seq = i
    assert order.add(msgs[1]) == [] and order.add(msgs[2]) == []  # 0 is lost
    assert order.expire(60.0) == []  # not yet
    assert order.expire(0.0) == msgs[1:3] and order.skipped == 1 and not order.waiting
    assert order.add(msgs[3]) == [msgs[3]]
    with pytest.raises(Exception, match="wait for frame"):
        file_order = InOrder(limit=32)
        file_order.add(msgs[1])
        file_order.expire(0.0)  # a file run never gives a frame up: an error
