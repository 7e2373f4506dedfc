"""`OciSnapshotStore`: the implementation of the in-memory snapshot's `SnapshotStore` interface
(`snapcell.sandbox.snapshot`) with OCI layouts (`oci`), registries (`registry`) and sessions
(`sessions`). The package root installs it with `Snapshot.use_store`. Registries and sessions are
imported when first used: loading a layout needs neither."""

from __future__ import annotations

import os
from typing import Any

from ..sandbox.snapshot import Snapshot
from . import oci


class OciSnapshotStore:
    """What `Snapshot.save/load/checked_load/push/pull` and `MultiUseSandbox.pause/resume`
    delegate to."""

    def save(self, snapshot: Snapshot, directory: str | os.PathLike[str], tag: str,
             **options: Any) -> str:
        """`Snapshot.save`: see `oci.save` for the options (max_depth, progress)."""
        return oci.save(snapshot, directory, tag, **options)

    def load(self, directory: str | os.PathLike[str], ref: str, verify: bool,
             mode: str = "copy") -> Snapshot:
        """`Snapshot.load` (verify=False) and `Snapshot.checked_load` (verify=True)."""
        return oci.load(directory, ref, verify, mode=mode)

    def push(self, source: "str | os.PathLike[str] | Snapshot", target: str, **options: Any) -> str:
        """`Snapshot.push`: see `registry.push` for the options."""
        from . import registry
        return registry.push(source, target, **options)

    def pull(self, source: str, directory: str | os.PathLike[str], **options: Any) -> str:
        """`Snapshot.pull`: see `registry.pull` for the options."""
        from . import registry
        return registry.pull(source, directory, **options)

    def pause(self, snapshot: Snapshot, target: str | os.PathLike[str], tag: str,
              **options: Any) -> str:
        """`MultiUseSandbox.pause`: see `sessions.pause`."""
        from . import sessions
        return sessions.pause(snapshot, target, tag, **options)

    def resume(self, source: str | os.PathLike[str], ref: str, **options: Any) -> Snapshot:
        """`MultiUseSandbox.resume`: see `sessions.resume`."""
        from . import sessions
        return sessions.resume(source, ref, **options)
