"""Where snapcell keeps its per-user caches, and the file digest every cache keys by (a leaf:
imports nothing of snapcell)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/snapcell``, else ``~/.cache/snapcell`` (each cache is a folder in it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "snapcell"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the file at `path`, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
