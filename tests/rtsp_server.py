"""A real RTSP server on loopback for the live tests (GStreamer's RTSP server).

Two halves in one file:

* run as a script by the *system* interpreter (``/usr/bin/python3`` with ``python3-gi`` and
  ``gir1.2-gst-rtsp-server-1.0``; PyGObject is not in the venv), it serves one endless live
  H.264 stream at ``rtsp://127.0.0.1:PORT/PATH`` over TCP and UDP, and prints ``READY`` once
  it listens. The stream is either GStreamer's moving test pattern or a still image (for
  example ``skimage.data.astronaut()``, so the detector has a real face) frozen into a live
  25 fps stream: both loop for ever, like a camera.
* imported by the tests, :class:`RtspServer` starts, stops, pauses (SIGSTOP) and resumes
  that process, always on the same port, so a reader sees a real outage and a real return.

:func:`server_unavailable_reason` says why the tests must skip (tools absent), or ``None``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- test side
def server_unavailable_reason() -> str | None:
    """``None`` when the GStreamer RTSP server can run here, else why not (for skip)."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found (GStreamer RTSP server runs on the system python)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c",
         "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "gi.require_version('Gst', '1.0'); from gi.repository import Gst, GstRtspServer; "
         "Gst.init(None); import sys; "
         "sys.exit(0 if all(Gst.ElementFactory.find(e) for e in "
         "('x264enc', 'rtph264pay', 'videotestsrc', 'imagefreeze', 'pngdec')) else 3)"],
        capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return ("GStreamer RTSP server not installed (apt-get install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad,ugly}; "
                "scripts/setup.sh does it as root)")
    return None


def skip_without_server() -> None:
    """Skip the calling test, with the reason, where the RTSP test server cannot run."""
    reason = server_unavailable_reason()
    if reason:
        import pytest

        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """One server process on a fixed loopback port; restartable and pausable."""

    def __init__(self, path: str = "cam", port: int | None = None, image: str | None = None,
                 width: int = 320, height: int = 240, fps: int = 25,
                 frames: int | None = None) -> None:
        self.port = port or free_port()
        self.frames = frames  # None: endless; else the stream ends after this many
        self.path = path.strip("/")
        self.image = image
        self.size = (width, height, fps)
        self.proc: subprocess.Popen | None = None
        self._stderr: list[str] = []

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{self.path}"

    def start(self, timeout: float = 30.0) -> RtspServer:
        width, height, fps = self.size
        cmd = [SYSTEM_PYTHON, str(HERE), "--port", str(self.port), "--path", self.path,
               "--size", f"{width}x{height}", "--fps", str(fps)]
        if self.image:
            cmd += ["--image", self.image]
        if self.frames:
            cmd += ["--frames", str(self.frames)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "GST_DEBUG": "0"})
        ready = threading.Event()

        def read_stdout(proc: subprocess.Popen) -> None:
            for line in proc.stdout:
                if line.startswith("READY"):
                    ready.set()

        def read_stderr(proc: subprocess.Popen) -> None:
            for line in proc.stderr:
                self._stderr.append(line.rstrip())

        threading.Thread(target=read_stdout, args=(self.proc,), daemon=True).start()
        threading.Thread(target=read_stderr, args=(self.proc,), daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {self._stderr[-5:]}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): sockets stay open, no data flows (a stalled camera)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RelayServer:
    """Debian's ``rtsp-server-perl``: publishers ANNOUNCE/RECORD to ``publish_url``, readers
    (UDP only) read the same path at ``read_url``. Used to test the RTSP push output."""

    def __init__(self, path: str = "out") -> None:
        self.client_port, self.source_port = free_port(), free_port()
        self.path = path
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def unavailable_reason() -> str | None:
        if shutil.which("rtsp-server-perl") is None:
            return "rtsp-server-perl not installed (apt-get install rtsp-server-perl)"
        return None

    @property
    def publish_url(self) -> str:
        return f"rtsp://127.0.0.1:{self.source_port}/{self.path}"

    @property
    def read_url(self) -> str:
        return f"rtsp://127.0.0.1:{self.client_port}/{self.path}"

    def start(self, timeout: float = 15.0) -> RelayServer:
        self.proc = subprocess.Popen(
            ["rtsp-server-perl", "--clientport", str(self.client_port), "--serverport",
             str(self.source_port), "--client_listen_address", "127.0.0.1",
             "--source_listen_address", "127.0.0.1", "--rtp_start_port", str(free_port())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from waiting import wait_until  # test side only (the server side runs elsewhere)

        def accepts() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.source_port), timeout=0.5):
                    return True
            except OSError:
                return False

        try:
            wait_until(accepts, timeout, "rtsp-server-perl to accept connections", 0.1)
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- server side
def _launch_line(image: str | None, width: int, height: int, fps: int,
                 frames: int | None = None) -> str:
    if image:
        decoder = "pngdec" if image.lower().endswith(".png") else "jpegdec"
        src = (f"filesrc location={image} ! {decoder} ! videoconvert ! videoscale ! "
               f"imagefreeze is-live=true ! video/x-raw,width={width},height={height},"
               f"framerate={fps}/1")
    else:
        count = f" num-buffers={frames}" if frames else ""  # then end of stream
        src = (f"videotestsrc is-live=true pattern=ball{count} ! "
               f"video/x-raw,width={width},height={height},framerate={fps}/1")
    return (f"( {src} ! videoconvert ! video/x-raw,format=I420 ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
            f"rtph264pay name=pay0 pt=96 config-interval=1 )")


def _serve(argv: list[str]) -> None:
    import argparse

    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="cam")
    parser.add_argument("--image", default=None)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--frames", type=int, default=None)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch_line(args.image, width, height, args.fps, args.frames))
    factory.set_shared(True)
    server.get_mount_points().add_factory("/" + args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}/{args.path}", flush=True)
    loop.run()


if __name__ == "__main__":
    if shutil.which("gst-launch-1.0") is None and not Path(SYSTEM_PYTHON).is_file():
        sys.exit("GStreamer is not installed")
    _serve(sys.argv[1:])
