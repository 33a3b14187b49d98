"""``gimefive monitor --cameras FILE``: the cameras from a YAML file, changed while running.

The file is a list of cameras (or a mapping with a ``cameras:`` list)::

    - id: door
      url: rtsp://10.0.0.5/live
      max_reconnects: 20        # optional per-camera settings (see PER_CAMERA)
    - id: hall
      url: rtsp://10.0.0.6/live
      transport: udp

Each entry is checked with the typed config machinery (:func:`gimefive.config.from_dict`
on :class:`LiveOptions`), so a bad file is one line naming the camera and the key. On
SIGHUP, or when the file's mtime or size changes (polled at every status tick: no
file-watching dependency), :class:`CameraReloader` starts the added cameras, stops the
removed ones cleanly (SIGTERM: the source ends its stream, so its segments and ffconcat
list are finalised) and leaves the others running; a camera whose URL or settings
changed is removed and added again. A bad edited file keeps the current cameras.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from gimefive.pipeline.live_source import LiveOptions
from gimefive.pipeline.messages import check_stream_id

from gimefive.config import from_dict
from gimefive.errors import GimefiveError

if TYPE_CHECKING:
    from gimefive.pipeline.live_monitor import Monitor

log = logging.getLogger("gimefive.monitor")

#: the camera options that may differ per camera (the rest are the run's)
PER_CAMERA = ("transport", "open_timeout_s", "stall_timeout_s", "backoff_initial_s",
              "backoff_max_s", "max_reconnects", "queue_size")
MAX_CAMERAS = 256  # a bound on what one file may start


@dataclass(frozen=True)
class Camera:
    """One camera of the file: its id (the stream id), URL and own settings."""

    id: str
    url: str
    options: tuple[tuple[str, Any], ...] = ()

    def live_options(self) -> dict[str, Any]:
        return dict(self.options)


def parse_camera(entry: Any, index: int) -> Camera:
    """One list entry -> :class:`Camera`; :class:`GimefiveError` naming the camera and key."""
    if not isinstance(entry, dict):
        raise GimefiveError(f"camera #{index + 1}: expected a mapping with id and url, "
                            f"got {entry!r:.60}")
    label = f"camera {entry.get('id', f'#{index + 1}')!r:.70}"
    for key in ("id", "url"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise GimefiveError(f"{label}: key {key!r} is required (a string)")
    try:
        check_stream_id(entry["id"], "id")
    except GimefiveError as exc:
        raise GimefiveError(f"camera #{index + 1}: {exc}") from None
    options = {k: v for k, v in entry.items() if k not in ("id", "url")}
    unknown = sorted(set(options) - set(PER_CAMERA))
    if unknown:
        raise GimefiveError(f"{label}: unknown key(s) {unknown}; expected id, url and "
                            f"some of {list(PER_CAMERA)}")
    try:
        checked = from_dict(LiveOptions, options, source=label)
    except GimefiveError as exc:
        raise GimefiveError(f"{label}: {exc}") from None
    return Camera(entry["id"], entry["url"].strip(),
                  tuple(sorted((k, getattr(checked, k)) for k in options)))


def parse_cameras(data: Any) -> dict[str, Camera]:
    """The file's parsed YAML -> cameras by id, in the file's order."""
    if isinstance(data, dict) and set(data) == {"cameras"}:
        data = data["cameras"]
    if not isinstance(data, list):
        raise GimefiveError("expected a list of cameras (id, url, optional settings)")
    if not data:
        raise GimefiveError("no camera listed")
    if len(data) > MAX_CAMERAS:
        raise GimefiveError(f"{len(data)} cameras listed, over the limit of {MAX_CAMERAS}")
    cameras: dict[str, Camera] = {}
    for i, entry in enumerate(data):
        camera = parse_camera(entry, i)
        if camera.id in cameras:
            raise GimefiveError(f"camera {camera.id!r}: id given twice")
        cameras[camera.id] = camera
    return cameras


def load_cameras(path: str | Path) -> dict[str, Camera]:
    """Read and check the cameras file; one line naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise GimefiveError(f"cameras file {path}: cannot read it ({reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GimefiveError(f"cameras file {path}: not valid YAML "
                            f"({exc.__class__.__name__})") from None
    try:
        return parse_cameras(data)
    except GimefiveError as exc:
        raise GimefiveError(f"cameras file {path}: {exc}") from None


def diff_cameras(old: dict[str, Camera], new: dict[str, Camera]
                 ) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) ids; a changed camera (URL or settings) is restarted."""
    added = [c for c in new if c not in old]
    removed = [c for c in old if c not in new]
    changed = [c for c in new if c in old and new[c] != old[c]]
    return added, removed, changed


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size): what tells that the file changed; None if it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class CameraReloader:
    """Applies edits of the cameras file (or a SIGHUP) to a running :class:`Monitor`."""

    def __init__(self, monitor: Monitor, path: str | Path, cameras: dict[str, Camera]) -> None:
        self.monitor, self.path, self.cameras = monitor, Path(path), dict(cameras)
        self.stamp = file_stamp(self.path)
        self.hup = False
        self.previous_handler: Any = None
        self.reloads = 0

    def install(self) -> None:
        """SIGHUP asks for a reload (main thread only: called from the status tick)."""
        if self.previous_handler is None:
            self.previous_handler = signal.signal(signal.SIGHUP, self._on_hup)

    def close(self) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGHUP, self.previous_handler)
            self.previous_handler = None

    def _on_hup(self, signum, frame) -> None:
        self.hup = True

    def poll(self) -> None:
        """Reload when SIGHUP came or the file's mtime/size changed."""
        self.install()
        stamp = file_stamp(self.path)
        if not self.hup and stamp == self.stamp:
            return
        self.hup, self.stamp = False, stamp
        try:
            new = load_cameras(self.path)
        except GimefiveError as exc:
            log.error("%s; keeping the current %d camera(s)", exc, len(self.cameras))
            return
        self.apply(new)

    def apply(self, new: dict[str, Camera]) -> None:
        added, removed, changed = diff_cameras(self.cameras, new)
        if not (added or removed or changed):
            return
        self.reloads += 1
        log.info("cameras file %s: added %s, removed %s, changed %s", self.path,
                 added or "none", removed or "none", changed or "none")
        for sid in removed + changed:
            self.monitor.remove_camera(sid)
            del self.cameras[sid]
        for sid in changed + added:
            self.monitor.add_camera(sid, new[sid].url, new[sid].live_options())
            self.cameras[sid] = new[sid]
