"""Sessions: pause a sandbox into a snapshot (a diff on the snapshot it was resumed from) and
resume it later, in this process or on any host that can read the layout or pull the chain.

A target or source is a layout directory, or a registry reference (`host[:port]/repo[:tag]`)
when it is not an existing local path and parses as one. For a registry, the chain is kept in a
local session layout (`directory=`, default `$XDG_CACHE_HOME/snapcell/sessions/<host>/<repo>`):
`pause` saves there and pushes only the blobs the registry lacks; `resume` pulls only the blobs
the local layout lacks, then loads (checked: every layer is verified, or vouched for by the
verified-content record)."""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import SnapshotReferenceError
from ..paths import cache_root
from ..sandbox.snapshot import Snapshot
from . import oci, registry

DEFAULT_TAG = "session"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def is_registry_target(target: str | os.PathLike[str]) -> bool:
    """A registry reference rather than a layout directory: a string that is not an existing
    path and parses as host[:port]/repository[:tag][@digest]."""
    if not isinstance(target, str) or os.path.lexists(target):
        return False
    try:
        registry.parse_reference(target)
    except SnapshotReferenceError:
        return False
    return True


def session_directory(reference: str) -> str:
    """The default local layout that caches a registry session's chain."""
    ref = registry.parse_reference(reference)
    return os.path.join(cache_root(), "sessions", _SAFE.sub("_", ref.host),
                        *(_SAFE.sub("_", p) for p in ref.repository.split("/")))


def _registry_options(options: dict[str, Any]) -> dict[str, Any]:
    keys = ("insecure", "username", "password", "ca_file", "timeout", "progress", "mount_from")
    return {k: options[k] for k in keys if k in options}


def pause(snapshot: Snapshot, target: str | os.PathLike[str], tag: str = DEFAULT_TAG, *,
          directory: str | os.PathLike[str] | None = None, max_depth: int = oci.DEFAULT_MAX_DEPTH,
          **options: Any) -> str:
    """Save `snapshot` (a diff on the snapshot its sandbox was resumed from, when that is in the
    layout) under `tag` in the layout `target`, or — `target` a registry reference — in the local
    session layout and then push it (only missing blobs) to `target` (its tag defaults to
    `tag`). Returns the manifest digest."""
    if not is_registry_target(target):
        return oci.save(snapshot, target, tag, max_depth=max_depth)
    assert isinstance(target, str)
    ref = registry.parse_reference(target)
    local = directory if directory is not None else session_directory(target)
    local_tag = ref.tag or tag
    oci.save(snapshot, local, local_tag, max_depth=max_depth)
    dest = target if ref.tag else f"{target}:{tag}"
    return registry.push(local, dest, ref=local_tag, **_registry_options(options))


def resume(source: str | os.PathLike[str], ref: str = DEFAULT_TAG, *,
           directory: str | os.PathLike[str] | None = None, checked: bool = True,
           **options: Any) -> Snapshot:
    """The snapshot a session was paused to: from the layout `source` (tag or digest `ref`), or
    pulled from the registry reference `source` (only the blobs the local session layout
    lacks). `checked` (default) verifies every layer not vouched for by the verified-content
    record."""
    if not is_registry_target(source):
        return oci.load(source, ref, verify=checked)
    assert isinstance(source, str)
    reg = registry.parse_reference(source)
    local = directory if directory is not None else session_directory(source)
    name = source if (reg.tag or reg.digest) else f"{source}:{ref}"
    local_tag = reg.tag or (None if reg.digest else ref)
    digest = registry.pull(name, local, tag=local_tag, **_registry_options(options))
    return oci.load(local, digest, verify=checked)
