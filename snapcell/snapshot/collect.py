"""Removing snapshots: `rm` drops tags (or untagged entries) from a layout's index, `gc` deletes
the blobs no manifest in the index references.

Both run as writers: they hold the layout's exclusive flock for their whole duration, exactly like
`save` and `pull`, so a concurrent save either committed its index (its blobs are then
reachable and kept) or has not started writing (it will find the blobs it needs missing and
write them again). Every manifest listed in the index must parse, or `gc` refuses to delete
anything: a blob is only removed when it is provably unreferenced."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import SnapshotFormatError, SnapshotNotFound
from . import verified
from .files import TMP_PREFIX, Reader, Writer
from .schema import MANIFEST_CAP
from .validate import (
    BLOB_NAME,
    check_ref,
    index_bytes,
    is_digest,
    no_raw_os_errors,
    open_regular,
    parse_manifest,
    read_fd,
)


@dataclass(frozen=True)
class Collected:
    """What `gc` did: blobs kept and removed, bytes (apparent size) freed."""

    kept: int
    removed: int
    freed_bytes: int


@no_raw_os_errors("removing snapshots")
def rm(path: str | os.PathLike[str], refs: list[str], *, collect: bool = False) -> Collected | None:
    """Remove each of `refs` (a tag, or the digest of an untagged entry or of a tagged one —
    every entry pointing at that manifest) from the layout's index, atomically; SnapshotNotFound
    (nothing changed) when one does not exist. With `collect`, run `gc` afterwards."""
    wanted = [check_ref(r) for r in refs]
    Reader(path).close()                     # an existing, valid layout (never created here)
    with Writer(path) as w:
        keep = list(w.index)
        for ref in wanted:
            if is_digest(ref):
                left = [e for e in keep if e.descriptor.digest != ref]
            else:
                left = [e for e in keep if e.tag != ref]
            if len(left) == len(keep):
                raise SnapshotNotFound(f"no snapshot {ref!r} in this layout")
            keep = left
        os.fsync(w.sha)
        w._put_small(w.root, "index.json", index_bytes([e.raw for e in keep]))
        w.index = keep
        w.committed = True
        return _collect(w) if collect else None


@no_raw_os_errors("collecting garbage")
def gc(path: str | os.PathLike[str]) -> Collected:
    """Delete every blob of the layout that no manifest listed in index.json references
    (manifests, configs, memory layers); temporary files of live writers are left alone."""
    Reader(path).close()
    with Writer(path) as w:
        return _collect(w)


def _collect(w: Writer) -> Collected:
    reachable: set[str] = set()
    for e in w.index:
        reachable.add(e.descriptor.hex)
        try:
            fd = open_regular(w.sha, e.descriptor.hex, "manifest")
        except SnapshotFormatError:
            raise SnapshotFormatError(
                f"manifest {e.descriptor.digest} listed in index.json is missing: gc refuses to "
                "delete anything in a damaged layout") from None
        try:
            data = read_fd(fd, MANIFEST_CAP, "manifest")
        finally:
            os.close(fd)
        try:
            m = parse_manifest(data)
        except SnapshotFormatError as err:
            raise SnapshotFormatError(f"manifest {e.descriptor.digest} cannot be read ({err}): "
                                      "gc refuses to delete anything") from None
        reachable.add(m.config.hex)
        reachable.update(x.hex for x in m.layers)
    removed = freed = kept = 0
    for name in sorted(os.listdir(w.sha)):
        if name.startswith(TMP_PREFIX) or not BLOB_NAME.fullmatch(name):
            continue
        if name in reachable:
            kept += 1
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=w.sha)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                freed += os.fstat(fd).st_size
                verified.forget(fd, "sha256:" + name)
            finally:
                os.close(fd)
        os.unlink(name, dir_fd=w.sha)
        removed += 1
    if removed:
        os.fsync(w.sha)
    return Collected(kept, removed, freed)
