"""Snapshot references a cluster can resolve on every worker: an OCI registry reference pinned
by digest, or an OCI image layout directory on a file system every worker sees."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import SnapshotReferenceError
from ..snapshot import parse_reference

DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
LAYOUT_PREFIX = "oci:"


@dataclass(frozen=True)
class SnapshotRef:
    """Where a worker finds a snapshot. ``kind`` is ``"registry"`` (`location` is the reference
    ``host[:port]/repository[:tag]@sha256:...``, `ref` its digest) or ``"layout"`` (`location`
    is the layout directory, `ref` a tag or a ``sha256:`` digest in it)."""

    kind: str
    location: str
    ref: str

    @property
    def key(self) -> str:
        """A string naming the snapshot's content as far as the reference allows: the digest
        for a registry reference, ``layout-path@ref`` for a layout."""
        return self.ref if self.kind == "registry" else f"{self.location}@{self.ref}"

    def __str__(self) -> str:
        if self.kind == "registry":
            return self.location
        sep = "@" if self.ref.startswith("sha256:") else ":"
        return f"{LAYOUT_PREFIX}{self.location}{sep}{self.ref}"


def _layout(path: str, ref: str) -> SnapshotRef:
    if not path:
        raise SnapshotReferenceError("a layout reference needs a directory: oci:<dir>[:tag|@digest]")
    if not (DIGEST.match(ref) or TAG.match(ref)):
        raise SnapshotReferenceError(f"invalid tag or digest {ref!r} in the layout reference")
    return SnapshotRef("layout", os.path.abspath(path), ref)


def parse_snapshot_ref(ref: object) -> SnapshotRef:
    """Parse what `map_calls` accepts as a snapshot:

    - ``host[:port]/repository[:tag]@sha256:<hex>``: a registry reference. It must name the
      manifest digest, so that every worker runs the same bytes (`Snapshot.push` returns it);
    - ``oci:<dir>[:<tag>]`` or ``oci:<dir>@sha256:<hex>``: a layout directory (default tag
      ``latest``), e.g. on a shared file system;
    - a path (`os.PathLike`, or a string starting with ``/`` or ``.``) of a layout directory,
      tag ``latest``."""
    if isinstance(ref, os.PathLike):
        return _layout(os.fspath(ref), "latest")
    if not isinstance(ref, str):
        raise SnapshotReferenceError(f"a snapshot reference must be a string or a path, got "
                                     f"{type(ref).__name__}")
    if ref.startswith(LAYOUT_PREFIX):
        body = ref[len(LAYOUT_PREFIX):]
        if "@" in body:
            path, _, digest = body.rpartition("@")
            return _layout(path, digest)
        head, sep, tail = body.rpartition(":")
        if sep and "/" not in tail and TAG.match(tail):
            return _layout(head, tail)
        return _layout(body, "latest")
    if ref.startswith(("/", ".")):
        return _layout(ref, "latest")
    parsed = parse_reference(ref)
    if parsed.digest is None:
        raise SnapshotReferenceError(
            f"registry reference {ref!r} names no digest: a cluster runs snapshots pinned by "
            "digest (host/repo[:tag]@sha256:...; `Snapshot.push` returns the digest)")
    return SnapshotRef("registry", str(parsed), parsed.digest)
