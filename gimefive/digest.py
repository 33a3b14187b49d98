"""Content hashes of files: weights, exported engines and label CSVs are identified by them.

One reader for all of them, so a weights file, the report of the engine built from it and
the artifact cache key all agree on the same digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (memory stays flat for big files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
