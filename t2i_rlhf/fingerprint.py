"""Fingerprints of what a cached result was computed from (weights, data files).

Small files are hashed by content, so a re-rendered but identical data set or a fresh clone of
the same weights still hits the cache; files past CONTENT_HASH_MAX_BYTES (SD-size weights, large
shards) are keyed by size and modification time, which costs nothing to read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CONTENT_HASH_MAX_BYTES = 64 * 2**20


def file_digest(path: Path) -> bytes:
    st = path.stat()
    if st.st_size > CONTENT_HASH_MAX_BYTES:
        return f"{st.st_size}:{st.st_mtime_ns}".encode()
    h = hashlib.sha256(str(st.st_size).encode())
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.digest()


def files_fingerprint(files: Iterable[tuple[str, Path]]) -> str:
    """Hex digest over (name, file) pairs, in the order given."""
    h = hashlib.sha256()
    for name, path in files:
        h.update(name.encode() + b"\0" + file_digest(path))
    return h.hexdigest()


def tree_fingerprint(root: str | Path) -> str:
    """Every file under `root`, by its path relative to it."""
    root = Path(root)
    return files_fingerprint((str(f.relative_to(root)), f) for f in sorted(root.rglob("*")) if f.is_file())
