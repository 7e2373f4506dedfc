"""Package images in use: the sealed warm snapshot of `LAYOUT:TAG`, or of a registry reference
pinned by digest (`host[:port]/repository@sha256:...`, pulled once into a local cache), loaded
once per process (built by snapcell/code/images.py, docs/code-sandboxes.md "Packages and
images")."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..errors import ConfigurationError
from ..paths import cache_root
from ..sandbox import Snapshot
from ..snapshot import oci, registry

CACHE_ENV = "SNAPCELL_IMAGE_CACHE"        # where pulled images are kept


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


def image_cache() -> Path:
    """The directory pulled images are kept in ($SNAPCELL_IMAGE_CACHE, else
    $XDG_CACHE_HOME/snapcell/images or ~/.cache/snapcell/images)."""
    return Path(os.environ.get(CACHE_ENV) or cache_root() / "images")


def _pulled(ref: str, insecure: bool) -> tuple[Path, str]:
    """(layout, digest) of a registry image pinned by digest, pulled unless already cached."""
    src = registry.parse_reference(ref)
    assert src.digest is not None
    layout = image_cache() / hashlib.sha256(f"{src.host}/{src.repository}".encode()).hexdigest()[:24]
    if layout.is_dir() and any(d == src.digest for _tag, d in oci.entries(layout)):
        return layout, src.digest
    return layout, registry.pull(ref, layout, tag=None, insecure=insecure)


def image_snapshot(ref: str, *, insecure: bool = False) -> Snapshot:
    """The sealed warm snapshot of image `ref`, loaded once per process: `LAYOUT:TAG`, or a
    registry reference pinned by digest (pulled into `image_cache()` first; `insecure`: plain
    HTTP, for a local registry)."""
    if isinstance(ref, str) and "@sha256:" in ref:
        with _lock:
            snap = _loaded.get((ref, ""))
            if snap is None:
                layout, digest = _pulled(ref, insecure)
                snap = _loaded[(ref, "")] = oci.load(layout, digest, mode="map")
        return snap
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
