"""Snapshot persistence — the file format and registries: snapshots as OCI image layouts on disk
and artifacts in OCI registries, diff layers, garbage collection and sessions.

This package depends on the in-memory `Snapshot` (`snapcell.sandbox.snapshot`), never the other
way round: `store.OciSnapshotStore` implements the `SnapshotStore` interface that `Snapshot`'s
convenience methods delegate to, and the package root installs it. The format is described in
docs/snapshot-format.md; `oci` loads and saves snapshots, `files` reads and writes layout
directories, `layers` the extent layers, `schema` the strict config, `validate` the OCI
structures and safe file access, `verified` the verified-content record, `content` this
process's chain records and image cache, `collect` rm and gc, `registry` push and pull,
`sessions` pause and resume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .collect import gc, rm
from .oci import entries, flatten, inspect, load, save, verify
from .store import OciSnapshotStore

if TYPE_CHECKING:
    from .registry import parse_reference, pull, push


def __getattr__(name: str) -> Any:
    """`parse_reference`, `pull` and `push` come from `registry`, imported on first use (loading
    a snapshot from disk needs no registry client)."""
    if name in ("parse_reference", "pull", "push"):
        from . import registry
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["OciSnapshotStore", "entries", "flatten", "gc", "inspect", "load", "parse_reference",
           "pull", "push", "rm", "save", "verify"]
