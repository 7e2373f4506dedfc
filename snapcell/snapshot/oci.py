"""Snapshots in OCI image layouts: atomic, idempotent saves and validated loads.

A layout directory holds `oci-layout`, `index.json` (one manifest descriptor per tag) and
`blobs/sha256/<hex>`. A snapshot is one image manifest whose config is the strict JSON of
`schema.py` and whose layers are its memory: format 2 (written now) a chain of extent layers
(`layers.py`), base first, shared with the parent snapshots; format 1 (still read) a single raw
memory blob (docs/snapshot-format.md).

Writers (`save`, `registry.pull`, `collect.rm/gc`) hold an exclusive flock on the layout
directory, write blobs to temporary names, fsync and rename them, and commit by replacing
index.json with a temporary file + rename: a writer killed at any point leaves every earlier tag
loadable, and a failed write removes what it added. Readers take no lock: index.json is only
ever replaced atomically and blobs are content-addressed and never rewritten in place."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from typing import Any

from ..errors import SnapshotFormatError, SnapshotStateError
from ..machine.layout import GUEST_BASE
from ..machine.memory import MemoryImage
from ..sandbox.snapshot import Snapshot
from . import content, layers, verified
from .content import Chain
from .files import Entry, Reader, Writer, feed_zeros, write_sparse
from .schema import (
    MAX_LAYERS,
    SnapshotConfig,
    check_xsave,
    encode_config,
    fail,
)
from .validate import (
    MT_CONFIG,
    MT_LAYER,
    MT_MANIFEST,
    READ_CHUNK,
    Descriptor,
    check_digest,
    check_ref,
    check_tag,
    host_gates,
    manifest_bytes,
    no_raw_os_errors,
    resolve,
    sha256_fd,
)

Progress = Callable[[int], None]
DEFAULT_MAX_DEPTH = 8                 # layers in a chain before `save` flattens


LOAD_MODES = ("copy", "map")


def _file_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of the first `size` bytes of a file (SEEK_DATA /
    SEEK_HOLE; a file system without holes reports one extent)."""
    out = []
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:          # no data after `off`
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end - start))
        off = end
    return out


def private_copy(fd: int, size: int, verify: bool, progress: Progress | None = None
                 ) -> tuple[MemoryImage, str | None]:
    """Copy the first `size` bytes of file `fd` into a new sealed memfd (sparse: holes and
    all-zero 64 KiB pieces stay holes) and, with `verify`, return the sha256 of exactly the bytes
    copied (holes hash as zeros): what is hashed is what the sandboxes will map, so a file
    changed after the check cannot reach them, and a file truncated later cannot fault them."""
    image = MemoryImage(size, "snapcell-loaded")
    try:
        h = hashlib.sha256() if verify else None
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        pos = 0
        for start, length in _file_extents(fd, size):
            if h is not None:
                feed_zeros(h, start - pos)
            if progress is not None:
                progress(start - pos)
            off, end = start, start + length
            while off < end:
                n = os.preadv(fd, [view[:min(READ_CHUNK, end - off)]], off)
                if n <= 0:
                    raise fail(f"memory blob ends at byte {off}; expected {size}")
                chunk = buf if n == len(buf) else buf[:n]
                if h is not None:
                    h.update(view[:n])
                write_sparse(image.fd, chunk, off)
                off += n
                if progress is not None:
                    progress(n)
            pos = end
        if h is not None:
            feed_zeros(h, size - pos)
        if progress is not None:
            progress(size - pos)
        image.seal()
    except BaseException:
        image.close()
        raise
    return image, ("sha256:" + h.hexdigest() if h is not None else None)


def _layer_what(i: int, n: int, desc: Descriptor) -> str:
    return f"memory layer {i + 1} of {n}"


def _open_layers(r: "Reader", e: Entry) -> list[int]:
    """Open every memory layer of an entry; a missing one is a clear error naming the chain."""
    fds: list[int] = []
    n = len(e.manifest.layers)
    try:
        for i, desc in enumerate(e.manifest.layers):
            try:
                fds.append(r.open_blob(desc, _layer_what(i, n, desc)))
            except SnapshotFormatError as err:
                if n > 1 and "missing" in str(err):
                    raise SnapshotFormatError(
                        f"{err}: the layout lacks part of this snapshot's parent chain "
                        f"(parent {e.config.parent}); pull or save the parent here first") from None
                raise
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def check_lineage(r: "Reader", e: Entry) -> None:
    """When the parent snapshot a config names is in the layout, the chain must agree with it:
    the parent's layers are this snapshot's minus the last (a diff) or all of them (a child
    whose memory did not change), and its generation is lower. A one-layer snapshot may name
    any parent (it was flattened), and an absent parent is fine: the layers carry everything."""
    if e.config.parent is None:
        return
    if e.config.parent == e.digest:
        raise fail("the snapshot names itself as its parent")
    ie = next((x for x in r.entries if x.descriptor.digest == e.config.parent), None)
    if ie is None:
        return
    try:
        parent = r.entry(ie)
    except SnapshotFormatError as err:
        raise SnapshotFormatError(f"the parent snapshot {e.config.parent} this one names is in "
                                  f"the layout but invalid: {err}") from None
    ours = e.manifest.layers
    if len(ours) > 1 and parent.manifest.layers not in (ours[:-1], ours):
        raise fail(f"the parent chain is inconsistent: parent {e.config.parent} has layers that "
                   "are not this snapshot's minus its last one")
    if parent.config.generation >= e.config.generation:
        raise fail(f"generation {e.config.generation} is not above its parent's "
                   f"({parent.config.generation})")


def _compose(fds: list[int], e: Entry, verify: bool, progress: Progress | None,
             mode: str = "copy") -> tuple[MemoryImage, bool]:
    """The memory image of a format-2 chain: from the process image cache when this exact chain
    (same files, unchanged) is cached, else built from the longest cached prefix — copied layer
    by layer into a new sealed memfd (`mode="copy"`, hashing what is copied unless the
    verified-content record vouches for the file), or mapped copy-on-write from the layer files
    (`mode="map"`, `_map_layers`). A copy-mode load is only served private images; a map-mode
    load may be served a private or a mapped one. Returns (image, trusted)."""
    size = e.config.memory_size
    descs = e.manifest.layers
    n = len(descs)
    tables = [layers.read_table(fd, d.size, size, _layer_what(i, n, d))
              for i, (fd, d) in enumerate(zip(fds, descs))]
    mapped = mode == "map"
    if mapped:
        for i, (fd, d) in enumerate(zip(fds, descs)):
            if os.fstat(fd).st_nlink > 1:
                raise SnapshotFormatError(
                    f"{_layer_what(i, n, d)} ({d.digest}) has other hard links; mode='map' "
                    "refuses it (it could be modified through another name): use mode='copy'")
    key = tuple(content.identity(d.digest, fd) for fd, d in zip(fds, descs))
    vouched = [verified.is_verified(fd, d.digest) for fd, d in zip(fds, descs)]
    hit = content.cached(key, mapped=mapped, trusted_only=verify and not all(vouched))
    if hit is not None:
        if progress is not None:
            progress(size)
        return hit[0], hit[1] or all(vouched)
    prefix = content.longest_prefix(key, trusted_only=verify and not all(vouched), mapped=mapped)
    first = prefix[0] if prefix is not None else 0
    trusted = prefix is None or prefix[2] or all(vouched[:first])
    if mapped:
        image = _map_layers(fds, tables, e, verify, vouched, first,
                            prefix[1] if prefix is not None else None, progress)
        trusted = trusted and all(verify or v for v in vouched[first:])
        content.put(key, image, trusted, size)
        return image, trusted
    image = MemoryImage(size, "snapcell-loaded")
    try:
        if prefix is not None:
            image.copy_data_from(prefix[1])
        for i in range(first, n):
            fd, d = fds[i], descs[i]
            hash_it = verify and not vouched[i]
            got = layers.apply_layer(fd, tables[i], image, first=(i == 0), verify=hash_it,
                                     progress=progress)
            if got is not None:
                check_digest(got, d, _layer_what(i, n, d))
            if content.identity(d.digest, fd) != key[i]:
                raise fail(f"{_layer_what(i, n, d)} changed while being read")
            if got is not None:
                verified.record(fd, d.digest)
            trusted = trusted and (hash_it or vouched[i])
        image.seal()
    except BaseException:
        image.close()
        raise
    content.put(key, image, trusted, size)
    return image, trusted


def _map_layers(fds: list[int], tables: list[layers.LayerTable], e: Entry, verify: bool,
                vouched: list[bool], first: int, base: MemoryImage | None,
                progress: Progress | None) -> MemoryImage:
    """The copy-on-write image of layers `first`… of a chain over `base` (the cached image of
    the layers before, or None): each layer's large extents are mapped from its file (every
    extent starts page-aligned in the blob), small ones and whatever exceeds the piece cap are
    copied (`MemoryImage.from_files`). With `verify`, each layer file the verified-content
    record does not vouch for is hashed first; every file's identity must be unchanged after."""
    descs = e.manifest.layers
    n = len(descs)
    before = [content.identity(d.digest, fd) for fd, d in zip(fds, descs)]
    hashed = []
    for i in range(first, n):
        if verify and not vouched[i]:
            check_digest(sha256_fd(fds[i], descs[i].size, progress), descs[i],
                         _layer_what(i, n, descs[i]))
            hashed.append(i)
        elif progress is not None:
            progress(descs[i].size)
    spec = []
    for i in range(first, n):
        pos, extents = 0, []
        for off, length in tables[i].extents:
            extents.append((off, length, pos))
            pos += length
        spec.append((fds[i], extents))
    image = MemoryImage.from_files(e.config.memory_size, spec, base)
    try:
        for i in range(first, n):
            if content.identity(descs[i].digest, fds[i]) != before[i]:
                raise fail(f"{_layer_what(i, n, descs[i])} changed while being read")
    except BaseException:
        image.close()
        raise
    for i in hashed:
        verified.record(fds[i], descs[i].digest)
    return image


@no_raw_os_errors("loading the snapshot")
def load(path: str | os.PathLike[str], ref: str = "latest", verify: bool = False, *,
         mode: str = "copy", progress: Progress | None = None) -> Snapshot:
    """Load snapshot `ref` (a tag or a `sha256:` manifest digest) from the layout at `path`.

    Everything is validated before anything is kept: the layout files, the manifest and config
    (their sha256 digests are always checked: they are small), every config field's bounds, the
    host gates (ABI, architecture, hypervisor, CPU features, XCR0 — SnapshotIncompatibleHost),
    the lineage, and every memory layer (a regular file of exactly the right size, opened
    O_RDONLY|O_NOFOLLOW, a valid extent table). With `verify`, every memory layer's sha256 is
    also checked — except a layer file the verified-content record vouches for (verified before,
    unchanged since); without it, a modified memory layer is NOT detected.

    `mode="copy"` (the default) copies the layers' stored bytes into a private sealed memfd:
    what `verify` hashes is that copy, and nothing done to the files afterwards (rewrite,
    truncation) reaches the snapshot. Repeated loads of an unchanged chain reuse the process's
    cached image. `mode="map"` keeps the blob files themselves as the image (zero-copy:
    sandboxes map them MAP_PRIVATE; a format-1 blob is the image, a format-2 chain's extents
    are mapped copy-on-write, later layers over earlier ones, small extents copied): the files
    must then not be modified or truncated while the snapshot is in use — a truncation makes
    host accesses fault with SIGBUS — and a hard-linked blob (st_nlink > 1) is refused."""
    if mode not in LOAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(LOAD_MODES)}, not {mode!r}")
    ref = check_ref(ref)
    with Reader(path) as r:
        ie = resolve(r.entries, ref)
        e = r.entry(ie)
        host = host_gates(e.config)
        assert e.config.cpu.xsave is not None
        check_xsave(e.config.cpu.xsave, (host.xcr0,))
        check_lineage(r, e)
        where = content.layout_key(r.root)
        if e.manifest.version == 1:
            image = _load_v1(r, e, verify, mode, progress)
        else:
            fds = _open_layers(r, e)
            try:
                image, _ = _compose(fds, e, verify, progress, mode)
            finally:
                for fd in fds:
                    os.close(fd)
    snap = e.config.to_snapshot(image, e.digest)
    content.remember(snap, where, Chain(e.digest, e.manifest.layers, e.config.parent,
                                        e.manifest.version))
    return snap


def _load_v1(r: "Reader", e: Entry, verify: bool, mode: str,
             progress: Progress | None) -> MemoryImage:
    """The image of a format-1 snapshot (one raw memory blob) in either load mode."""
    size = e.manifest.layer.size
    fd = r.open_blob(e.manifest.layer, "memory")
    try:
        if mode == "copy":
            image, digest = private_copy(fd, size, verify, progress)
            try:
                if digest is not None:
                    check_digest(digest, e.manifest.layer, "memory")
            except BaseException:
                image.close()
                raise
            return image
        if os.fstat(fd).st_nlink > 1:
            raise SnapshotFormatError(
                f"memory blob {e.manifest.layer.digest} has other hard links; mode='map' "
                "refuses it (it could be modified through another name): use mode='copy'")
        if verify:
            check_digest(sha256_fd(fd, size, progress), e.manifest.layer, "memory")
            if os.fstat(fd).st_size != size:
                raise fail("memory blob changed size while being verified")
        image = MemoryImage.from_fd(fd, size, immutable=True)
        fd = -1                                       # owned by the image now
        return image
    finally:
        if fd >= 0:
            os.close(fd)


@no_raw_os_errors("listing the layout")
def entries(path: str | os.PathLike[str]) -> list[tuple[str | None, str]]:
    """(tag, manifest digest) of every manifest listed in the layout's index."""
    with Reader(path) as r:
        return [(ie.tag, ie.descriptor.digest) for ie in r.entries]


@no_raw_os_errors("inspecting the snapshot")
def inspect(path: str | os.PathLike[str], ref: str = "latest") -> dict[str, Any]:
    """A validated description of snapshot `ref` (no host gates, memory digests not checked):
    its config summary plus the lineage (format, parent, depth) and every memory layer (digest,
    blob size, bytes of memory stored, extents, disk use). For `snapcell snapshot inspect`/`ls`."""
    ref = check_ref(ref)
    with Reader(path) as r:
        ie = resolve(r.entries, ref)
        e = r.entry(ie)
        check_lineage(r, e)
        rows = []
        n = len(e.manifest.layers)
        for i, desc in enumerate(e.manifest.layers):
            what = _layer_what(i, n, desc) if e.manifest.version == 2 else "memory"
            fd = r.open_blob(desc, what)
            try:
                st = os.fstat(fd)
                row: dict[str, Any] = {"digest": desc.digest, "size": desc.size,
                                       "disk_bytes": st.st_blocks * 512}
                if e.manifest.version == 2:
                    t = layers.read_table(fd, desc.size, e.config.memory_size, what)
                    row.update(stored_bytes=t.data_bytes, extents=len(t.extents))
                rows.append(row)
            finally:
                os.close(fd)
        parent_present = any(x.descriptor.digest == e.config.parent for x in r.entries)
    d = e.config.describe()
    d.update(tag=e.tag, digest=e.digest, config_digest=e.manifest.config.digest,
             memory_digest=e.manifest.layer.digest,
             memory_disk_bytes=sum(x["disk_bytes"] for x in rows), depth=len(rows),
             layers=rows, parent_present=parent_present, host=_host_fit(e.config))
    return d


def _host_fit(config: SnapshotConfig) -> dict[str, Any]:
    """Whether this host offers the snapshot's CPU baseline: what it lacks, in words (None
    when /dev/kvm cannot be opened: inspect works without KVM)."""
    from ..machine.baselines import best_level, host_cpu
    from ..sandbox.pool import kvm
    try:
        host = host_cpu(kvm())
    except OSError:
        return {"lacks": None, "best_level": None}
    return {"lacks": config.cpu_baseline.missing_on(host), "best_level": best_level(host)}


@no_raw_os_errors("verifying the snapshot")
def verify(path: str | os.PathLike[str], ref: str, progress: Progress | None = None, *,
           full: bool = True) -> Entry:
    """Validate snapshot `ref` completely, including every blob's digest, without the host gates
    (SnapshotError when anything is wrong). `full=False` skips hashing a layer file the
    verified-content record vouches for; `full=True` hashes everything (and refreshes the
    record)."""
    ref = check_ref(ref)
    with Reader(path) as r:
        e = r.entry(resolve(r.entries, ref))
        check_lineage(r, e)
        n = len(e.manifest.layers)
        fds = _open_layers(r, e) if e.manifest.version == 2 else [r.open_blob(e.manifest.layer,
                                                                             "memory")]
        try:
            for i, (desc, fd) in enumerate(zip(e.manifest.layers, fds)):
                what = _layer_what(i, n, desc) if e.manifest.version == 2 else "memory"
                if e.manifest.version == 2:
                    layers.read_table(fd, desc.size, e.config.memory_size, what)
                if full or not verified.is_verified(fd, desc.digest):
                    before = content.identity(desc.digest, fd)
                    check_digest(sha256_fd(fd, desc.size, progress), desc, what)
                    if content.identity(desc.digest, fd) == before:
                        verified.record(fd, desc.digest)
                elif progress is not None:
                    progress(desc.size)
        finally:
            for fd in fds:
                os.close(fd)
    return e


@no_raw_os_errors("saving the snapshot")
def save(snapshot: Snapshot, path: str | os.PathLike[str], tag: str | None = "latest", *,
         max_depth: int = DEFAULT_MAX_DEPTH, progress: Progress | None = None) -> str:
    """Save an initialised snapshot into the layout at `path` (created if missing) under `tag`
    (None: an untagged entry) and return its manifest digest. Atomic (a crash leaves the
    previous state), idempotent (equal content gives the same digest and shares blobs), replaces
    `tag` if present and keeps every other tag and file. A pre-init snapshot raises
    SnapshotStateError.

    A snapshot whose memory descends from a snapshot saved in (or loaded from) this layout by
    this process — a sandbox made from a loaded snapshot, then changed — is saved as a *diff*:
    its manifest lists the parent's layers plus one new layer holding only the pages that may
    have changed, and only that layer is written and hashed. A chain would exceed `max_depth`
    layers (1 to MAX_LAYERS) → the snapshot is saved flattened (one base layer; the lineage is
    kept in `parent`). Saving a snapshot that is already in this layout rewrites nothing.
    `progress(n)` is called with byte counts of the memory as it is processed."""
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"expected a Snapshot, got {type(snapshot).__name__}")
    if tag is not None:
        check_tag(tag)
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) \
            or not 1 <= max_depth <= MAX_LAYERS:
        raise ValueError(f"max_depth must be an integer in [1, {MAX_LAYERS}], not {max_depth!r}")
    encode_config(snapshot)                     # SnapshotStateError for pre-init snapshots
    image = snapshot.image
    size = snapshot.layout.memory_size - GUEST_BASE
    if image.size != size or image.closed:
        raise SnapshotStateError("the snapshot's memory image is closed or has the wrong size")
    with Writer(path) as w:
        where = content.layout_key(w.root)
        own = content.chain_of(snapshot, where)
        base = snapshot.delta.base() if snapshot.delta is not None else None
        parent_chain = content.chain_of(base, where)
        new_layer: Descriptor | None | bool = None
        trusted: bool | None = None           # how to cache the image (None: leave the cache)
        if own is not None and own.version == 2 and len(own.layers) <= max_depth \
                and all(w.has_blob(x) for x in own.layers):
            chain, parent = own.layers, own.parent            # already here: nothing to write
            if progress is not None:
                progress(size)
        elif parent_chain is not None and parent_chain.version == 2 \
                and len(parent_chain.layers) < max_depth \
                and all(w.has_blob(x) for x in parent_chain.layers) \
                and snapshot.delta is not None \
                and (child := _write_layer(w, image, layers.merge(snapshot.delta.extents, size),
                                           progress, base, parent_chain.layers)) is not False:
            # child None: nothing differs from the parent, whose layers are the whole chain
            chain = parent_chain.layers + ((child,) if isinstance(child, Descriptor) else ())
            parent = parent_chain.digest
            # the new image is the parent chain's content only if the base image is
            parent_key = tuple(w.identity(x) for x in parent_chain.layers)
            trusted = base is not None and content.holds_trusted(parent_key, base.image)
        else:
            new_layer = _write_layer(w, image, None, progress)
            assert isinstance(new_layer, Descriptor)
            chain, trusted = (new_layer,), True        # hashed from this very image
            parent = own.parent if own is not None else (
                parent_chain.digest if parent_chain is not None else None)
        cfg = w.put_blob(encode_config(snapshot, parent, tuple(x.digest for x in chain)),
                         MT_CONFIG)
        man = w.put_blob(manifest_bytes(cfg, chain), MT_MANIFEST)
        w.set_tag(man, tag)
        key = tuple(w.identity(x) for x in chain)
    content.remember(snapshot, where, Chain(man.digest, chain, parent, 2))
    if trusted is not None:                  # a resume of this chain needs no copy
        content.put(key, image, trusted, size)
    return man.digest


def _write_layer(w: Writer, image: MemoryImage, extents: layers.Extents | None,
                 progress: Progress | None, base: Snapshot | None = None,
                 chain: tuple[Descriptor, ...] = ()) -> Descriptor | None | bool:
    """Write a base layer (`extents` None) or a child layer of the pages in `extents` that differ
    from `base`'s image. A child layer comes back None when no page differs (nothing is
    written) and False when it equals a layer already in `chain` (a chain never repeats a
    layer: the caller saves the snapshot flattened instead)."""
    fd, name = w.new_temp_blob()
    try:
        digest, blob_size, stored = layers.write_layer(
            image, extents, fd, progress, base.image if base is not None else None)
    except BaseException:
        os.close(fd)
        raise
    desc = Descriptor(MT_LAYER, digest, blob_size)
    if extents is not None and (not stored or desc in chain):
        os.close(fd)
        os.unlink(name, dir_fd=w.sha)
        w.temps.remove((w.sha, name))
        return None if not stored else False
    w.commit_temp_blob(fd, name, desc, hashed=True)
    return desc


@no_raw_os_errors("flattening the snapshot")
def flatten(path: str | os.PathLike[str], ref: str, tag: str | None = None) -> str:
    """Rewrite snapshot `ref` of the layout at `path` as a single base layer (its chain's
    content, verified) under `tag` (default: `ref`'s own tag; untagged for an untagged `ref`).
    Returns the new manifest digest; lineage (parent, generation) is kept. The old layers stay
    until `gc` finds them unreferenced."""
    ref = check_ref(ref)
    if tag is None:
        with Reader(path) as r:
            tag = resolve(r.entries, ref).tag
    snap = load(path, ref, verify=True)
    return save(snap, path, tag, max_depth=1)
