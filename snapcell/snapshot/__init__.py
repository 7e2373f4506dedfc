"""Snapshot persistence: snapshots as OCI image layouts on disk and artifacts in OCI registries.

Importing this package plugs it into `Snapshot` (`Snapshot.save/load/checked_load/push/pull`).
The format is described in docs/snapshot-format.md; `oci` reads and writes layouts, `schema` is
the strict config, `validate` the OCI structures and safe file access, `registry` push and pull."""

from __future__ import annotations

import os
from typing import Any

from ..sandbox.snapshot import Snapshot
from . import oci, registry
from .oci import entries, inspect, load, save, verify
from .registry import parse_reference, pull, push


class Persistence:
    """The object `Snapshot._persistence` delegates to."""

    def save(self, snapshot: Snapshot, directory: str | os.PathLike[str], tag: str) -> str:
        """`Snapshot.save`: save into a layout, return the manifest digest."""
        return oci.save(snapshot, directory, tag)

    def load(self, directory: str | os.PathLike[str], ref: str, verify: bool,
             mode: str = "copy") -> Snapshot:
        """`Snapshot.load` (verify=False) and `Snapshot.checked_load` (verify=True)."""
        return oci.load(directory, ref, verify, mode=mode)

    def push(self, source: "str | os.PathLike[str] | Snapshot", target: str, **options: Any) -> str:
        """`Snapshot.push`: see `registry.push` for the options."""
        return registry.push(source, target, **options)

    def pull(self, source: str, directory: str | os.PathLike[str], **options: Any) -> str:
        """`Snapshot.pull`: see `registry.pull` for the options."""
        return registry.pull(source, directory, **options)


Snapshot._persistence = Persistence()

__all__ = ["Persistence", "entries", "inspect", "load", "parse_reference", "pull", "push", "save",
           "verify"]
