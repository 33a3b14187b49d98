"""Where backends keep what they build (ONNX graphs, INT8 models, TensorRT engines).

``$GIMEFIVE_CACHE`` or ``~/.cache/gimefive``. Every artifact's name carries a key of
everything it depends on (weights hash, CAM layer, opset, precision, ...), so changed
weights never meet a stale graph and nothing has to be invalidated by hand.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from gimefive.checkpoint import DEFAULT_WEIGHTS
from gimefive.digest import file_sha256
from gimefive.errors import GimefiveError


def cache_dir(kind: str = "") -> Path:
    root = Path(os.environ.get("GIMEFIVE_CACHE") or Path.home() / ".cache" / "gimefive")
    path = root / kind if kind else root
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GimefiveError(f"cannot create cache folder {path} ({exc.strerror}); "
                            "set GIMEFIVE_CACHE to a writable folder") from None
    return path


@lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # size and mtime only key the memo


def weights_sha256(weights: str | Path | None) -> str:
    """Content hash of a weights file (None: the shipped weights); memoised per file state."""
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        return ""  # load_model will raise the clear error
    st = path.stat()
    return _sha256_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


def artifact_key(*parts: object) -> str:
    """A file-name-safe key: ``parts`` joined by '-', weights hashes shortened to 16 hex."""
    out = []
    for p in parts:
        s = str(p)
        out.append(s[:16] if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s)
    return "-".join(s.replace("/", "_").replace(" ", "_") for s in out if s != "")
