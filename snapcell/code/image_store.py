"""Package images in use: the sealed warm snapshot of `LAYOUT:TAG`, loaded once per process
(built by snapcell/code/images.py, docs/code-sandboxes.md "Packages and images")."""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import ConfigurationError
from ..sandbox import Snapshot
from ..snapshot import oci


def parse_image_ref(ref: str) -> tuple[Path, str]:
    """`LAYOUT:TAG` (or `LAYOUT`, tag "latest") → (layout directory, tag)."""
    if not isinstance(ref, str) or not ref:
        raise ConfigurationError("an image reference is LAYOUT:TAG, e.g. build/images/data:latest")
    layout, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not tag:
        layout, tag = ref, "latest"
    return Path(layout), tag


_lock = threading.Lock()
_loaded: dict[tuple[str, str], Snapshot] = {}


def image_snapshot(ref: str) -> Snapshot:
    """The sealed warm snapshot of image `ref` (LAYOUT:TAG), loaded once per process."""
    layout, tag = parse_image_ref(ref)
    key = (str(layout.resolve()), tag)
    with _lock:
        snap = _loaded.get(key)
        if snap is None:
            if not layout.is_dir():
                raise ConfigurationError(f"image {ref!r}: no OCI layout at {layout}; build it with "
                                         "`snapcell image build python -r requirements.txt "
                                         f"-o {ref}`")
            snap = _loaded[key] = oci.load(layout, tag, mode="map")
    return snap
