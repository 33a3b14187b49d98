"""Keeping credentials in URLs out of sight: redaction for display, files for hand-over.

Cameras are often addressed as ``rtsp://user:password@host/path``. Such a URL must
never reach a log, an error line, a status or JSON file, or another process's command
line (``ps`` and ``/proc/PID/cmdline`` show argv to every local user). Two tools:

* :func:`redact_url` (one URL) and :func:`redact_text` (any text that may contain
  URLs, such as an FFmpeg error message) replace the password with ``***``. The user
  name is kept: it tells an operator which account failed, and alone grants nothing.
  Query parameters whose name says secret (``password=``, ``token=``, ``key=``, ...)
  are masked the same way. Neither function ever raises: a value that cannot be
  parsed is shown as a placeholder rather than crash an error path.
* :func:`arg_file` writes a value to a file of its own (mode 0600) in the run's private
  0700 folder and returns ``@PATH``; :func:`from_arg_file` on the stage's side turns
  ``@PATH`` back into the value. A stage's argv then names a file, not the URL.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gimefive.errors import GimefiveError

MASK = "***"
#: scheme://userinfo@ : the userinfo runs to the last "@" before the path, so a
#: password holding an unencoded "@" is masked whole (FFmpeg splits the same way)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#\s'\"]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[a-z0-9_.-]*)(?:pass|pwd|secret|token|key|auth|sig|credential)"
    r"[a-z0-9_.-]*=)(?P<value>[^&#;\s'\"]*)", re.IGNORECASE)


def _mask_userinfo(match: re.Match) -> str:
    user, sep, _password = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}{sep}{MASK if sep else ''}@"


def redact_text(text: object) -> str:
    """``text`` with every URL's password (and secret query values) replaced by ``***``."""
    try:
        out = _USERINFO.sub(_mask_userinfo, str(text))
        return _SECRET_QUERY.sub(lambda m: m["key"] + (MASK if m["value"] else ""), out)
    except Exception:  # never let redaction break an error path
        return "<unprintable>"


def redact_url(url: object) -> str:
    """One URL (or path) fit to print: ``rtsp://u:p@h/x`` -> ``rtsp://u:***@h/x``.

    Paths and URLs without credentials come back unchanged.
    """
    return redact_text(url)


def arg_file(directory: str | os.PathLike, name: str, value: str) -> str:
    """Write ``value`` to ``directory/name`` readable by the owner only; return ``@PATH``.

    ``directory`` must be private (the run's 0700 folder): the file is what a child
    stage's argv names instead of a URL that may hold a password.
    """
    path = Path(directory) / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value)
    os.chmod(path, 0o600)  # an existing file keeps its mode under O_CREAT
    return f"@{path}"


def from_arg_file(value: str | None) -> str | None:
    """``@PATH`` -> the value stored in that file (see :func:`arg_file`); others unchanged.

    A real path that starts with ``@`` can be given as ``./@name``.
    """
    if not value or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise GimefiveError(f"cannot read the value file {path} ({reason})") from None
    text = text.rstrip("\r\n")
    if not text or "\n" in text:
        raise GimefiveError(f"value file {path}: expected one line, "
                            f"got {'nothing' if not text else 'several lines'}")
    return text


def url_arg(directory: str | os.PathLike, name: str, value: str) -> str:
    """What a child stage's argv carries for ``value``: ``@FILE`` for a URL (it may hold
    credentials), the value itself for a local path (readable in ``ps``, harmless)."""
    return arg_file(directory, name, value) if "://" in str(value) else str(value)


#: ``${NAME}`` in a source URL: replaced by the environment variable NAME at run time
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_names(url: str) -> list[str]:
    """The ``${NAME}`` variables ``url`` uses."""
    return _ENV_VAR.findall(str(url))


def check_env(url: str) -> None:
    """One line naming the first variable ``url`` uses that is not set (never a value):
    the monitor checks this up front, without expanding anything."""
    for name in env_names(url):
        if name not in os.environ:
            raise GimefiveError(f"environment variable {name} is not set "
                                f"(used in source {redact_url(url)})")


def expand_env(url: str) -> str:
    """``rtsp://${CAM_USER}:${CAM_PASS}@host/x`` with the variables' values, so that a
    password lives in the environment, not in a config file or on a command line.

    Called only where the URL is opened (the source stage, a probe): the expanded URL is
    never printed (what is shown is :func:`redact_url` of it, or the unexpanded form),
    stored or passed on. Only the braced form is expanded; ``$x`` stays as it is (it may
    be part of a real path). Values are used as they are (FFmpeg splits the user
    information at its last ``@``, so a password may hold ``@`` and ``:``).
    """
    url = str(url)
    check_env(url)
    return _ENV_VAR.sub(lambda m: os.environ[m[1]], url)
