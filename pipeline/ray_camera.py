"""The node side of ``gimefive monitor --ray``: one Ray actor runs the monitor for its cameras.

:class:`CameraGroup` is made a Ray actor by :mod:`gimefive.pipeline.ray_monitor` (with
``max_restarts``, so Ray starts it again on another node when its node dies). On its
node it runs the ordinary single-machine monitor (``gimefive monitor``, every stage a
process) as a child process that dies with the actor (``PR_SET_PDEATHSIG``), so the
pipeline, its reconnects and its stage restarts are the ones tested on one machine.

What the monitor writes is kept off the node's disk, which a run of days would fill: its
JSON lines, status records and events go into named pipes (FIFOs) in a private 0700
folder, and its stderr into a pipe; a thread per pipe reads them into a
:class:`LineBuffer` in memory. The driver fetches what is new with :meth:`CameraGroup.poll`
by cursor (bytes it already has), so a reply lost on the way is simply sent again; what
the driver has confirmed is freed, and what it has not fetched beyond ``BUFFER_CAP`` is
dropped (oldest lines first) and reported as lost. Camera URLs reach the monitor in a
0600 config file, never in argv.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

#: bytes of unfetched lines kept per pipe (the driver polls about twice a second)
BUFFER_CAP = 64 * 2**20
#: most bytes of one pipe returned by one poll (the driver asks again at once for more)
POLL_LIMIT = 8 * 2**20
#: the pipes of a camera group: what the monitor writes there
PIPES = ("json", "status", "events")


class LineBuffer:
    """Bytes read from a pipe, addressed by their offset since the start.

    ``read(cursor)`` returns whole lines from ``cursor`` on and frees what came before it
    (the reader has it). Beyond ``cap`` unfetched bytes, the oldest whole lines are
    dropped: the next read starts after ``cursor``, and the difference is what was lost.
    """

    def __init__(self, cap: int = BUFFER_CAP) -> None:
        self.data = bytearray()
        self.base = 0  # offset of data[0]
        self.cap = cap
        self.lock = threading.Lock()

    def feed(self, chunk: bytes) -> None:
        with self.lock:
            self.data += chunk
            if len(self.data) > self.cap:
                cut = self.data.find(b"\n", len(self.data) - self.cap)
                cut = len(self.data) if cut < 0 else cut + 1
                del self.data[:cut]
                self.base += cut

    def read(self, cursor: int, limit: int = POLL_LIMIT) -> dict[str, Any]:
        """``{"start", "end", "data"}``: whole lines from ``start`` (> ``cursor`` when
        some were dropped) to ``end``, the next cursor."""
        with self.lock:
            done = min(max(0, cursor - self.base), len(self.data))
            del self.data[:done]
            self.base += done
            chunk = bytes(self.data[:limit])
        end = chunk.rfind(b"\n") + 1
        return {"start": self.base, "end": self.base + end, "data": chunk[:end]}


class PipeReader:
    """A thread that copies one file descriptor into a :class:`LineBuffer`; it ends at
    end of file, or when stopped."""

    def __init__(self, fd: int, buffer: LineBuffer) -> None:
        self.fd, self.buffer = fd, buffer
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return  # end of file: the writer closed (stderr of an ended monitor)
            self.buffer.feed(chunk)

    def idle(self) -> bool:
        """Nothing waiting to be read now (or the writer is gone and all was read)."""
        return not self.thread.is_alive() or not select.select([self.fd], [], [], 0)[0]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        os.close(self.fd)


def _write_private(path: Path, data: dict[str, Any]) -> Path:
    """A YAML file readable by the owner only (it may hold camera URLs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


class CameraGroup:
    """Runs ``gimefive monitor`` for ``sources`` on this node; see the module docstring.

    ``monitor``/``stage``: the run's resolved configs as dicts (the driver's flags
    already applied); their outputs are replaced by this group's ``pipes`` (some of
    :data:`PIPES`), ``out`` by this group's own video target (or None).
    """

    def __init__(self, run_id: str, group: str, sources: dict[str, str],
                 monitor: dict[str, Any], stage: dict[str, Any], out: str | None,
                 pipes: list[str]) -> None:
        import ray

        self.incarnation = uuid.uuid4().hex[:12]  # new each time Ray starts the actor
        context = ray.get_runtime_context()
        self.node, self.ip = context.get_node_id(), ray.util.get_node_ip_address()
        self.directory = Path(tempfile.gettempdir()) / f"gimefive-ray-{run_id}-{group}"
        shutil.rmtree(self.directory, ignore_errors=True)  # a restart on the same node
        self.directory.mkdir(mode=0o700)
        wanted = {name: name in pipes for name in PIPES}
        self.buffers: dict[str, LineBuffer] = {}
        self.readers: list[PipeReader] = []
        for name in (p for p in PIPES if wanted[p]):
            os.mkfifo(self.directory / f"{name}.jsonl", 0o600)
            # read and write: no end of file between two writers (a restarted stage)
            fd = os.open(self.directory / f"{name}.jsonl", os.O_RDWR | os.O_NONBLOCK)
            self._read(name, fd)
        self.proc = self._start(sources, monitor, stage, out, wanted)
        self._read("log", os.dup(self.proc.stderr.fileno()))
        self.proc.stderr.close()  # the reader thread has its own copy

    def _read(self, name: str, fd: int) -> None:
        self.buffers[name] = LineBuffer()
        self.readers.append(PipeReader(fd, self.buffers[name]))

    def _start(self, sources, monitor, stage, out, wanted) -> subprocess.Popen:
        from gimefive.pipeline.supervisor import die_with_parent

        d = self.directory
        config = {**monitor, "sources": [f"{sid}={url}" for sid, url in sources.items()],
                  "out": out, "cameras": None, "metrics_port": 0, "mqtt": None,
                  "duration_s": 0.0, "annotate_config": str(_write_private(d / "stage.yaml",
                                                                           stage)),
                  **{key: str(d / f"{name}.jsonl") if wanted[name] else None
                     for key, name in (("json", "json"), ("status_json", "status"),
                                       ("events", "events"))}}
        _write_private(d / "monitor.yaml", config)
        argv = [sys.executable, "-c", "from gimefive.cli import main; main()", "monitor",
                "--config", str(d / "monitor.yaml"), "--log-dir", str(d / "logs"), "-q"]
        die = die_with_parent()

        def preexec() -> None:
            # a Ray worker blocks SIGINT, and a child inherits that mask: the monitor
            # could then not be stopped as Ctrl-C stops it
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            die()

        return subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=preexec)

    def poll(self, incarnation: str | None, cursors: dict[str, int]) -> dict[str, Any]:
        """What is new since ``cursors`` (pipe -> bytes the driver has), and who sent it.

        Cursors of an earlier ``incarnation`` (the actor before Ray restarted it) count
        as nothing fetched yet: this one's pipes start again from 0."""
        if incarnation != self.incarnation:
            cursors = {}
        if cursors.get("status", 0) > 0:  # the monitor runs: it read its config long ago
            (self.directory / "monitor.yaml").unlink(missing_ok=True)  # the URLs in it
        return {"incarnation": self.incarnation, "node": self.node, "ip": self.ip,
                "exit": self.proc.poll(),
                "pipes": {name: buf.read(cursors.get(name, 0))
                          for name, buf in self.buffers.items()}}

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """Stop the monitor as Ctrl-C does (its final status record is written), and wait
        until what it wrote has been read; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not all(r.idle() for r in self.readers):
            time.sleep(0.05)  # the pipes' last bytes, moved to memory by the reader threads
        return self.proc.returncode

    def close(self) -> None:
        """Stop the monitor if it still runs, free the pipes and the private folder, and
        end this actor for good (Ray does not restart an actor that exits itself)."""
        import ray

        self.stop(timeout_s=10.0)
        for reader in self.readers:
            reader.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        ray.actor.exit_actor()
