"""The ZeroMQ sockets that carry :mod:`messages` between stages, and their keys.

Data sockets are PUSH/PULL: a stage *binds* its input (``--in``) and *connects* its output
(``--out``), so several senders can fan in to one receiver. High-water marks are small
and sends block, which gives lossless back-pressure: a full downstream queue stops the
source (a live source that must drop does so before the first hop, see
``pipeline.stages.source``). ``ipc://`` endpoints live in a private directory (mode
0700, removed at shutdown, :func:`private_ipc_dir`); ``tcp://`` is for stages on
different hosts. Binding or connecting a non-loopback address (or an abstract
``ipc://@name``) requires CurveZMQ keys (:class:`CurveKeys`: encryption plus a ZAP check
of the client's key against an allowed folder) or an explicit ``insecure=True``.
ZeroMQ itself drops any part over :data:`~gimefive.pipeline.messages.MAX_FRAME_BYTES`
(``ZMQ_MAXMSGSIZE``), before it is buffered whole; :class:`Receiver` validates the rest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
from gimefive.pipeline.messages import (
    MAX_FRAME_BYTES,
    Message,
    StreamLedger,
    WireError,
    decode,
)

from gimefive.errors import GimefiveError

DEFAULT_HWM = 8


@dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ keys for TCP across hosts: encryption, and authentication of both ends.

    A keys folder (``gimefive keys DIR`` writes one) holds, for the side that binds, the
    server pair (``server.key``, ``server.key_secret``) and ``clients/`` with the public
    key (``*.key``) of every client allowed to connect; for the side that connects, the
    server's public ``server.key`` and its own client pair (``client.key``,
    ``client.key_secret``). A host with stages on both sides keeps all of them in one
    folder. Secret key files must be private (mode 0600).
    """

    server_public: bytes
    server_secret: bytes | None = None
    client_public: bytes | None = None
    client_secret: bytes | None = None
    clients: Path | None = None  # folder of the allowed client public keys (*.key)

    @classmethod
    def from_directory(cls, directory: str | Path) -> CurveKeys:
        directory = Path(directory)
        server = _load_keys(directory, "server")
        if server is None:
            raise GimefiveError(f"no CurveZMQ keys in {directory} (expected server.key and "
                                f"the rest written by `gimefive keys {directory}`)")
        client = _load_keys(directory, "client") or (None, None)
        clients = directory / "clients"
        return cls(*server, *client, clients if clients.is_dir() else None)


def _load_keys(directory: Path, name: str) -> tuple[bytes, bytes | None] | None:
    """NAME's (public, secret) keys, the secret only where a private secret file is."""
    import zmq.auth

    secret_file, public_file = directory / f"{name}.key_secret", directory / f"{name}.key"
    if secret_file.is_file():
        mode = stat.S_IMODE(secret_file.stat().st_mode)
        if mode & 0o077:
            raise GimefiveError(f"{secret_file} is readable by group or others (mode "
                                f"{mode:04o}); chmod 600 it")
        return zmq.auth.load_certificate(str(secret_file))
    if public_file.is_file():
        return zmq.auth.load_certificate(str(public_file))[0], None
    return None


def make_keys(directory: str | Path, name: str = "server") -> tuple[Path, Path]:
    """Write a CurveZMQ key pair NAME.key / NAME.key_secret (mode 0600) into ``directory``
    (and, for a server, an empty ``clients/``); never overwrites. Returns both paths."""
    import zmq.auth

    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise GimefiveError(f"{path} already exists; not overwriting a key pair")
    directory.mkdir(parents=True, exist_ok=True)
    previous = os.umask(0o077)  # the secret is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(str(directory), name)
        if name == "server":
            (directory / "clients").mkdir(exist_ok=True)
    finally:
        os.umask(previous)
    public.chmod(0o644)  # public keys are meant to be copied
    return public, secret


ZAP_DOMAIN = "gimefive"


class _AuthSocket(zmq.Socket):
    """A socket that owns the ZAP authenticator of its context, stopped when it closes
    (an authenticator left running would keep ``ctx.term()`` waiting for ever)."""

    authenticator = None

    def close(self, linger: int | None = None) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
        super().close(linger)


def _curve_server(ctx: zmq.Context, sock: zmq.Socket, curve: CurveKeys) -> None:
    """Make ``sock`` a CurveZMQ server that admits only the keys in ``curve.clients``."""
    from zmq.auth.thread import ThreadAuthenticator

    allowed = sorted(curve.clients.glob("*.key")) if curve.clients else []
    if curve.server_secret is None or not allowed:
        raise GimefiveError("binding with CurveZMQ needs server.key_secret and "
                            "clients/*.key in the keys folder (no allowed client keys "
                            f"in {curve.clients or 'clients/'})")
    sock.authenticator = ThreadAuthenticator(ctx)
    sock.authenticator.start()
    sock.authenticator.configure_curve(domain=ZAP_DOMAIN, location=str(curve.clients))
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.curve_server = True
    sock.curve_secretkey = curve.server_secret
    sock.curve_publickey = curve.server_public


def _curve_client(sock: zmq.Socket, curve: CurveKeys) -> None:
    if curve.client_secret is None:
        raise GimefiveError("connecting with CurveZMQ needs this host's client key pair "
                            "(client.key_secret) in the keys folder: gimefive keys DIR "
                            "--client, then add client.key to the server's clients/")
    sock.curve_serverkey = curve.server_public
    sock.curve_publickey, sock.curve_secretkey = curve.client_public, curve.client_secret


def is_loopback_or_ipc(endpoint: str) -> bool:
    """Whether only this host's user can reach ``endpoint`` without keys: loopback TCP,
    inproc, and ipc socket files (ours live in a 0700 folder). Not ``ipc://@name``: an
    abstract socket has no file and no permissions, any local user may connect."""
    parts = urlsplit(endpoint)
    if parts.scheme == "ipc":
        return not endpoint[len("ipc://"):].startswith("@")
    if parts.scheme == "inproc":
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name


def check_endpoint(endpoint: str) -> str:
    scheme = urlsplit(endpoint).scheme
    if scheme not in ("ipc", "tcp", "inproc"):
        raise GimefiveError(f"endpoint {endpoint!r}: expected ipc://PATH or tcp://HOST:PORT")
    return endpoint


def open_socket(ctx: zmq.Context, kind: int, endpoint: str, *, bind: bool,
                hwm: int = DEFAULT_HWM, curve: CurveKeys | None = None,
                insecure: bool = False,
                before_connect: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
    """A socket with linger 0 and bounded queues, bound or connected to ``endpoint``.

    ``before_connect`` runs on the socket just before it binds or connects (to attach a
    monitor that must see the first connection).
    """
    check_endpoint(endpoint)
    verb = "bind" if bind else "connect"
    if curve is not None and urlsplit(endpoint).scheme != "tcp":
        curve = None  # keys are for tcp://; our ipc sockets sit in a 0700 folder
    if not is_loopback_or_ipc(endpoint) and curve is None and not insecure:
        raise GimefiveError(f"refusing to {verb} {endpoint} without encryption: pass CurveZMQ "
                            f"keys (--curve-keys) or --insecure (or use a loopback/ipc "
                            f"endpoint)")
    sock = ctx.socket(kind, socket_class=_AuthSocket)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        # ZeroMQ drops (and disconnects) a peer whose part is bigger than any real one
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        if curve is not None:
            if bind:
                _curve_server(ctx, sock, curve)
            else:
                _curve_client(sock, curve)
        if before_connect is not None:
            before_connect(sock)
        (sock.bind if bind else sock.connect)(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise GimefiveError(f"cannot {verb} {endpoint}: {exc}") from None
    except BaseException:
        sock.close(0)
        raise
    return sock


class Receiver:
    """A PULL socket that yields validated messages; malformed ones are counted and dropped.

    ``streams`` > 0 (a run with that many streams) also refuses a forged end-of-stream
    (:class:`StreamLedger`).
    """

    def __init__(self, sock: zmq.Socket, expect: tuple[type[Message], ...] | None = None,
                 streams: int = 0) -> None:
        self.sock = sock
        self.expect = expect
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)
        self.malformed = 0
        self.last_error = ""
        self.ledger = StreamLedger(streams)
        self.frames = None  # SharedFrames: where frames in shared memory are read

    @property
    def streams(self) -> int:
        return self.ledger.limit

    @streams.setter
    def streams(self, value: int) -> None:
        self.ledger = StreamLedger(value)

    def recv(self, timeout_ms: float | None) -> Message | None:
        """The next valid message, or None when ``timeout_ms`` passed without one."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            wait = None if deadline is None else max(0, (deadline - time.monotonic()) * 1000)
            if not self.poller.poll(wait):
                return None
            parts = self.sock.recv_multipart(copy=False)
            try:
                msg = decode(parts, self.expect, self.frames)
                self.ledger.check(msg)
                return msg
            except WireError as exc:
                self.malformed += 1
                self.last_error = str(exc)
                if deadline is not None and time.monotonic() >= deadline:
                    return None


class Sender:
    """A PUSH socket; :meth:`send` blocks while the peer's queue is full (lossless).

    ``monitor`` (from :func:`peer_monitor`) lets :meth:`wait_for_peers_to_leave` hold the
    socket open after the end-of-stream until the receiving stage has gone.
    """

    def __init__(self, sock: zmq.Socket, monitor: zmq.Socket | None = None,
                 inline: bool = False) -> None:
        self.sock = sock
        self.monitor = monitor
        self.inline = inline  # frames inside the messages: a hop to another host
        self.peers = 0  # connections now up, from the monitor's events
        self.sent = 0
        self.blocked_s = 0.0

    def _read_events(self, timeout_ms: int) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor is not None and self.monitor.poll(timeout_ms):
            event = recv_monitor_message(self.monitor)["event"]
            self.peers += {zmq.EVENT_CONNECTED: 1, zmq.EVENT_DISCONNECTED: -1}.get(event, 0)
            timeout_ms = 0

    def wait_for_peers_to_leave(self, timeout_s: float) -> bool:
        """After the last message: wait until every peer has disconnected (it read all and
        closed), at most ``timeout_s``; True if they did.

        libzmq can drop the last messages of a PUSH socket that is closed while its peer's
        queue is full, linger or not (a lost end-of-stream hung whole runs, at random);
        a socket kept open until the peer leaves cannot lose them.
        """
        deadline = time.monotonic() + timeout_s
        self._read_events(0)
        while self.peers > 0 and time.monotonic() < deadline:
            self._read_events(int(min(200, max(1, (deadline - time.monotonic()) * 1000))))
        return self.peers <= 0

    def close_monitor(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.monitor = None

    def send(self, msg: Message) -> None:
        parts = msg.encode(self.inline)
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            start = time.perf_counter()
            self.sock.send_multipart(parts, copy=False)
            self.blocked_s += time.perf_counter() - start
        self.sent += 1


def leaves_host(endpoint: str | None) -> bool:
    """Whether a stage's output may reach another host (anything but ``ipc://``): frames
    in shared memory then travel inside the messages."""
    return bool(endpoint) and urlsplit(endpoint).scheme != "ipc"


def peer_monitor(sock: zmq.Socket) -> zmq.Socket:
    """A monitor of ``sock``'s connections (attach it before connecting: ``before_connect``)."""
    return sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)


@contextlib.contextmanager
def private_ipc_dir(prefix: str = "gimefive-",
                    parent: Path | None = None) -> Iterator[Path]:
    """A fresh directory (mode 0700) for ``ipc://`` sockets, removed on exit; the folders
    of earlier runs that died (SIGKILL) are removed first (see :mod:`private_dir`).
    ``parent``: where (default: the temporary folder)."""
    from gimefive.pipeline.private_dir import mark_owner, remove_stale

    remove_stale(prefix, parent)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o700)
    mark_owner(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ipc_endpoint(directory: Path, name: str) -> str:
    endpoint = f"ipc://{directory / name}.sock"
    if len(endpoint) > 100:  # sun_path is ~107 bytes on Linux
        raise GimefiveError(f"ipc path too long for a unix socket: {endpoint}")
    return endpoint
