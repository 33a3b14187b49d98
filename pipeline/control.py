"""The control channel: each stage's reports to its supervisor (ready, progress, stats,
error), one JSON part per message on a PUSH socket to the supervisor's PULL socket.

Unlike the data hops (:mod:`messages`) a report carries no arrays, so it is plain JSON
checked by :func:`parse_control`; it shares the data's :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import json
from typing import Any

import zmq
from gimefive.pipeline.messages import SCHEMA_VERSION, WireError


def control_message(stage: str, event: str, **data: Any) -> bytes:
    """Stage -> supervisor report (one JSON part): ready, progress, stats, error."""
    return json.dumps({"schema": SCHEMA_VERSION, "kind": "control", "stage": stage,
                       "event": event, "data": data}).encode()


def report_stage_error(control: str | None, stage: str, message: str) -> None:
    """Send a stage's fatal error to its supervisor, so the run's one line can name it.

    Uses a fresh context because it runs after the stage's own sockets are gone.
    """
    if not control:
        return
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(control)
        sock.send(control_message(stage, "error", message=message))
        sock.close()
    finally:
        ctx.term()


def parse_control(raw: bytes) -> dict:
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("control message is not JSON") from None
    if not isinstance(msg, dict) or msg.get("kind") != "control" or \
            msg.get("schema") != SCHEMA_VERSION:
        raise WireError(f"control message expected kind 'control' schema {SCHEMA_VERSION}, "
                        f"got {str(msg)[:60]}")
    for key, typ in (("stage", str), ("event", str), ("data", dict)):
        if not isinstance(msg.get(key), typ):
            raise WireError(f"control message: {key!r} expected {typ.__name__}")
    return msg
