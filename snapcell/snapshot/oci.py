"""Snapshots in OCI image layouts: atomic, idempotent saves and validated loads.

A layout directory holds `oci-layout`, `index.json` (one manifest descriptor per tag) and
`blobs/sha256/<hex>`. A snapshot is one image manifest whose config is the strict JSON of
`schema.py` and whose single layer is the raw guest memory, written sparse (docs/snapshot-format.md).

Writers (`save`, `registry.pull`) hold an exclusive flock on the layout directory, write blobs to
temporary names, fsync and rename them, and commit by replacing index.json with a temporary file +
rename: a writer killed at any point leaves every earlier tag loadable, and a failed write removes
what it added. Readers take no lock: index.json is only ever replaced atomically and blobs are
content-addressed and never rewritten in place."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SnapshotError, SnapshotFormatError, SnapshotNotFound, SnapshotStateError
from ..machine.layout import GUEST_BASE
from ..machine.memory import MemoryImage
from ..sandbox.snapshot import Snapshot
from .schema import (
    CONFIG_CAP,
    INDEX_CAP,
    MANIFEST_CAP,
    OCI_LAYOUT_CAP,
    SnapshotConfig,
    check_xsave,
    decode_config,
    dumps_canonical,
    encode_config,
    fail,
)
from .validate import (
    ALGORITHM,
    BLOB_NAME,
    BLOBS_DIR,
    INDEX_FILE,
    MT_CONFIG,
    MT_MANIFEST,
    MT_MEMORY,
    OCI_LAYOUT_FILE,
    OCI_LAYOUT_VERSION,
    READ_CHUNK,
    Descriptor,
    IndexEntry,
    Manifest,
    check_consistent,
    check_digest,
    check_ref,
    check_tag,
    host_gates,
    index_bytes,
    index_entry,
    manifest_bytes,
    no_raw_os_errors,
    open_dir,
    open_regular,
    parse_index,
    parse_manifest,
    parse_oci_layout,
    read_fd,
    read_file,
    resolve,
    sha256_fd,
)

TMP_PREFIX = ".snapcell-tmp-"
BLOB_MODE = 0o444                     # blobs are immutable: read-only, like an installed binary
ZERO_PIECE = 64 << 10
_ZEROS = bytes(READ_CHUNK)
_ZERO_PIECE = bytes(ZERO_PIECE)
Progress = Callable[[int], None]

# Verified memory digests of images (saved by us or checked on load): a second save of the same
# snapshot skips hashing and, when the blob is present, writing.
_digests: "weakref.WeakKeyDictionary[MemoryImage, str]" = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------ reading
def _open_root(path: str | os.PathLike[str]) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SnapshotNotFound(f"no snapshot layout at {os.fspath(path)!r}") from None
    except OSError as e:
        raise SnapshotFormatError(f"{os.fspath(path)!r} is not a snapshot layout directory: "
                                  f"{e.strerror}") from None


@dataclass(frozen=True)
class Entry:
    """A resolved, validated snapshot of a layout (memory not opened)."""

    tag: str | None
    digest: str
    manifest: Manifest
    config: SnapshotConfig


class Reader:
    """Read access to a layout directory through descriptors (context manager)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.root = _open_root(path)
        self.sha: int | None = None
        try:
            parse_oci_layout(read_file(self.root, OCI_LAYOUT_FILE, OCI_LAYOUT_CAP, OCI_LAYOUT_FILE))
            self.entries = parse_index(read_file(self.root, INDEX_FILE, INDEX_CAP, INDEX_FILE))
        except BaseException:
            self.close()
            raise

    def _sha(self) -> int:
        if self.sha is None:
            blobs = open_dir(self.root, BLOBS_DIR, "blobs/")
            try:
                self.sha = open_dir(blobs, ALGORITHM, "blobs/sha256/")
            finally:
                os.close(blobs)
        return self.sha

    def open_blob(self, desc: Descriptor, what: str) -> int:
        """Open a blob (regular file, O_NOFOLLOW) whose size must be the descriptor's."""
        if not BLOB_NAME.fullmatch(desc.hex):
            raise fail(f"{what}: bad digest {desc.digest!r}")
        fd = open_regular(self._sha(), desc.hex, f"{what} blob {desc.digest}")
        try:
            size = os.fstat(fd).st_size
            if size != desc.size:
                raise fail(f"{what} blob {desc.digest} is {size} bytes; its descriptor says "
                           f"{desc.size}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_blob(self, desc: Descriptor, cap: int, what: str) -> bytes:
        """A small blob's bytes, size- and digest-checked."""
        fd = self.open_blob(desc, what)
        try:
            data = read_fd(fd, cap, f"{what} blob")
        finally:
            os.close(fd)
        if len(data) != desc.size:
            raise fail(f"{what} blob {desc.digest} changed size while being read")
        check_digest(data, desc, what)
        return data

    def entry(self, ie: IndexEntry, host_xcr0: int | None = None) -> Entry:
        """Validate the manifest and config of an index entry."""
        manifest = parse_manifest(self.read_blob(ie.descriptor, MANIFEST_CAP, "manifest"))
        config = decode_config(self.read_blob(manifest.config, CONFIG_CAP, "config"), host_xcr0)
        check_consistent(manifest, config)
        return Entry(ie.tag, ie.descriptor.digest, manifest, config)

    def close(self) -> None:
        """Close the directory descriptors."""
        for fd in (self.sha, self.root):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.sha, self.root = None, -1

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
                _feed_zeros(h, start - pos)
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
            _feed_zeros(h, size - pos)
        if progress is not None:
            progress(size - pos)
        image.seal()
    except BaseException:
        image.close()
        raise
    return image, ("sha256:" + h.hexdigest() if h is not None else None)


@no_raw_os_errors("loading the snapshot")
def load(path: str | os.PathLike[str], ref: str = "latest", verify: bool = False, *,
         mode: str = "copy", progress: Progress | None = None) -> Snapshot:
    """Load snapshot `ref` (a tag or a `sha256:` manifest digest) from the layout at `path`.

    Everything is validated before anything is kept: the layout files, the manifest and config
    (their sha256 digests are always checked: they are small), every config field's bounds, the
    host gates (ABI, architecture, hypervisor, CPU features, XCR0 — SnapshotIncompatibleHost),
    and the memory blob (a regular file of exactly the right size, opened O_RDONLY|O_NOFOLLOW).
    With `verify`, the memory blob's sha256 is also checked; without it, a modified memory blob
    is NOT detected.

    `mode="copy"` (the default) copies the blob's data into a private sealed memfd: what
    `verify` hashes is that copy, and nothing done to the file afterwards (rewrite, truncation)
    reaches the snapshot. `mode="map"` keeps the blob file itself as the image (zero-copy:
    sandboxes map it MAP_PRIVATE): the file must then not be modified or truncated while the
    snapshot is in use — a truncation makes host accesses fault with SIGBUS — and a hard-linked
    blob (st_nlink > 1, writable through another name) is refused."""
    if mode not in LOAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(LOAD_MODES)}, not {mode!r}")
    ref = check_ref(ref)
    with Reader(path) as r:
        ie = resolve(r.entries, ref)
        e = r.entry(ie)
        host = host_gates(e.config)
        assert e.config.cpu.xsave is not None
        check_xsave(e.config.cpu.xsave, (host.xcr0,))
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
                os.close(fd)
            else:
                if os.fstat(fd).st_nlink > 1:
                    raise SnapshotFormatError(
                        f"memory blob {e.manifest.layer.digest} has other hard links; mode='map' "
                        "refuses it (it could be modified through another name): use mode='copy'")
                if verify:
                    check_digest(sha256_fd(fd, size, progress), e.manifest.layer, "memory")
                    if os.fstat(fd).st_size != size:
                        raise fail("memory blob changed size while being verified")
                image = MemoryImage.from_fd(fd, size, immutable=True)
        except BaseException:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
    if verify:
        _digests[image] = e.manifest.layer.digest
    return e.config.to_snapshot(image, e.digest)


@no_raw_os_errors("listing the layout")
def entries(path: str | os.PathLike[str]) -> list[tuple[str | None, str]]:
    """(tag, manifest digest) of every manifest listed in the layout's index."""
    with Reader(path) as r:
        return [(ie.tag, ie.descriptor.digest) for ie in r.entries]


@no_raw_os_errors("inspecting the snapshot")
def inspect(path: str | os.PathLike[str], ref: str = "latest") -> dict[str, Any]:
    """A validated description of snapshot `ref` (no host gates, memory digest not checked):
    for `snapcell snapshot inspect` and `ls`."""
    ref = check_ref(ref)
    with Reader(path) as r:
        ie = resolve(r.entries, ref)
        e = r.entry(ie)
        fd = r.open_blob(e.manifest.layer, "memory")
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    d = e.config.describe()
    d.update(tag=e.tag, digest=e.digest, config_digest=e.manifest.config.digest,
             memory_digest=e.manifest.layer.digest, memory_disk_bytes=st.st_blocks * 512)
    return d


@no_raw_os_errors("verifying the snapshot")
def verify(path: str | os.PathLike[str], ref: str, progress: Progress | None = None) -> Entry:
    """Validate snapshot `ref` completely, including every blob's digest, without the host gates
    (SnapshotError when anything is wrong)."""
    ref = check_ref(ref)
    with Reader(path) as r:
        e = r.entry(resolve(r.entries, ref))
        fd = r.open_blob(e.manifest.layer, "memory")
        try:
            check_digest(sha256_fd(fd, e.manifest.layer.size, progress), e.manifest.layer, "memory")
        finally:
            os.close(fd)
    return e


# ------------------------------------------------------------------------------ writing
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_temp(name: str) -> bool:
    """A temporary file left by a writer process that no longer exists."""
    if not name.startswith(TMP_PREFIX):
        return False
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


def _write_all(fd: int, data: bytes | bytearray | memoryview, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _feed_zeros(h: Any, n: int) -> None:
    while n > 0:
        k = min(n, len(_ZEROS))
        h.update(_ZEROS[:k] if k < len(_ZEROS) else _ZEROS)
        n -= k


def write_sparse(out_fd: int, chunk: bytes | bytearray, off: int) -> None:
    """Write `chunk` at `off`, skipping all-zero 64 KiB pieces (they stay holes). Pieces are
    compared as bytes (memcmp); comparing memoryviews would be 30 times slower."""
    for p in range(0, len(chunk), ZERO_PIECE):
        piece = chunk[p:p + ZERO_PIECE]
        if piece != (_ZERO_PIECE if len(piece) == ZERO_PIECE else bytes(len(piece))):
            _write_all(out_fd, piece, off + p)


def copy_image(image: MemoryImage, out_fd: int, progress: Progress | None = None) -> str:
    """Copy an image into `out_fd` sparsely (only its data extents, minus zero pieces) and
    return the sha256 digest of its full contents (holes hash as zeros)."""
    h = hashlib.sha256()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    pos = 0
    for start, length in image.data_extents():
        _feed_zeros(h, start - pos)
        if progress is not None:
            progress(start - pos)
        off, end = start, start + length
        while off < end:
            n = os.preadv(image.fd, [view[:min(READ_CHUNK, end - off)]], off)
            if n <= 0:
                raise OSError(errno.EIO, "memory image ended early")
            h.update(view[:n])
            write_sparse(out_fd, buf if n == len(buf) else buf[:n], off)
            off += n
            if progress is not None:
                progress(n)
        pos = end
    _feed_zeros(h, image.size - pos)
    if progress is not None:
        progress(image.size - pos)
    os.ftruncate(out_fd, image.size)
    return "sha256:" + h.hexdigest()


class Writer:
    """Exclusive write access to a layout directory (created if needed). Blobs go to temporary
    names and are renamed into place; `set_tag` commits by swapping index.json. Leaving the
    context with an exception removes every temporary file, every blob this writer added, and
    the directory skeleton if this writer created it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.created: list[tuple[int | None, str, bool]] = []   # (dir fd or None, name, is_dir)
        self.temps: list[tuple[int, str]] = []
        self.new_blobs: list[str] = []
        self.committed = False
        self.fds: list[int] = []
        missing: list[str] = []
        p = os.path.abspath(self.path)
        while not os.path.lexists(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):                 # like mkdir -p, remembering what it made
            try:
                os.mkdir(d, 0o755)
                self.created.append((None, d, True))
            except FileExistsError:
                pass
            except OSError as e:
                self._abort()
                raise SnapshotError(f"cannot create {d!r}: {e.strerror}") from None
        try:
            self.root = self._keep(_open_root(self.path))
            fcntl.flock(self.root, fcntl.LOCK_EX)
            self._skeleton()
        except BaseException:
            self._abort()
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def _skeleton(self) -> None:
        names = set(os.listdir(self.root))
        for n in names:
            if _stale_temp(n):
                os.unlink(n, dir_fd=self.root)
        names = {n for n in names if not n.startswith(TMP_PREFIX)}
        if OCI_LAYOUT_FILE in names:
            parse_oci_layout(read_file(self.root, OCI_LAYOUT_FILE, OCI_LAYOUT_CAP, OCI_LAYOUT_FILE))
        elif names:
            raise SnapshotFormatError(f"{self.path!r} is neither empty nor an OCI layout "
                                      f"(no {OCI_LAYOUT_FILE}); refusing to write into it")
        else:
            self._put_small(self.root, OCI_LAYOUT_FILE,
                            dumps_canonical({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
            self.created.append((self.root, OCI_LAYOUT_FILE, False))
        self.index: list[IndexEntry] = []
        if INDEX_FILE in names:
            self.index = parse_index(read_file(self.root, INDEX_FILE, INDEX_CAP, INDEX_FILE))
        blobs = self._mkdir(self.root, BLOBS_DIR, "blobs/")
        self.sha = self._mkdir(blobs, ALGORITHM, "blobs/sha256/")
        for n in os.listdir(self.sha):
            if _stale_temp(n):
                os.unlink(n, dir_fd=self.sha)

    def _mkdir(self, parent: int, name: str, what: str) -> int:
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
            self.created.append((parent, name, True))
        except FileExistsError:
            pass
        return self._keep(open_dir(parent, name, what))

    def _temp(self, dir_fd: int, suffix: str = "") -> tuple[int, str]:
        name = f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{suffix}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dir_fd)
        self.temps.append((dir_fd, name))
        return fd, name

    def _put_small(self, dir_fd: int, name: str, data: bytes) -> None:
        fd, tmp = self._temp(dir_fd)
        try:
            _write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        self.temps.remove((dir_fd, tmp))
        os.fsync(dir_fd)

    def has_blob(self, desc: Descriptor) -> bool:
        """True when blobs/sha256/<hex> is a regular file of the descriptor's size (its contents
        are trusted to match: blobs are content-addressed and never rewritten)."""
        try:
            fd = open_regular(self.sha, desc.hex, "blob")
        except SnapshotFormatError:
            return False
        try:
            return os.fstat(fd).st_size == desc.size
        finally:
            os.close(fd)

    def new_temp_blob(self) -> tuple[int, str]:
        """A new temporary file in blobs/sha256/ (fd, name)."""
        return self._temp(self.sha)

    def commit_temp_blob(self, fd: int, name: str, desc: Descriptor) -> None:
        """fsync the temporary blob and rename it to its digest (or drop it when that blob is
        already present). Closes `fd`."""
        try:
            if not self.has_blob(desc):
                os.fchmod(fd, BLOB_MODE)
                os.fsync(fd)
                os.rename(name, desc.hex, src_dir_fd=self.sha, dst_dir_fd=self.sha)
                self.new_blobs.append(desc.hex)
            else:
                os.unlink(name, dir_fd=self.sha)
            self.temps.remove((self.sha, name))
        finally:
            os.close(fd)

    def put_blob(self, data: bytes, media_type: str) -> Descriptor:
        """Store a small blob (skipped when present) and return its descriptor."""
        desc = Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        if not self.has_blob(desc):
            fd, name = self.new_temp_blob()
            try:
                _write_all(fd, data, 0)
            except BaseException:
                os.close(fd)
                raise
            self.commit_temp_blob(fd, name, desc)
        return desc

    def set_tag(self, manifest: Descriptor, tag: str | None) -> None:
        """Point `tag` (replacing it in place if present; None = an untagged entry) at the
        manifest and commit: fsync blobs/sha256, then replace index.json atomically."""
        raw = [e.raw for e in self.index]
        new = index_entry(manifest, tag)
        pos = next((i for i, e in enumerate(self.index)
                    if (e.tag == tag if tag is not None
                        else e.tag is None and e.descriptor.digest == manifest.digest)), None)
        if pos is None:
            updated = raw + [new]
        else:
            updated = raw[:pos] + [new] + raw[pos + 1:]
        os.fsync(self.sha)
        if updated != raw or not self._has_index():
            self._put_small(self.root, INDEX_FILE, index_bytes(updated))
        self.committed = True

    def _has_index(self) -> bool:
        try:
            os.stat(INDEX_FILE, dir_fd=self.root, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _abort(self) -> None:
        for dir_fd, name in self.temps:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
        self.temps = []
        if not self.committed:
            for hx in self.new_blobs:
                try:
                    os.unlink(hx, dir_fd=self.sha)
                except OSError:
                    pass
            for parent, name, is_dir in reversed(self.created):
                try:
                    if is_dir:
                        os.rmdir(name, dir_fd=parent)
                    else:
                        os.unlink(name, dir_fd=parent)
                except OSError:
                    pass
        self.new_blobs, self.created = [], []

    def close(self) -> None:
        """Release the lock and close every descriptor."""
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds = []

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is not None:
                self._abort()
        finally:
            self.close()


@no_raw_os_errors("saving the snapshot")
def save(snapshot: Snapshot, path: str | os.PathLike[str], tag: str = "latest", *,
         progress: Progress | None = None) -> str:
    """Save an initialised snapshot into the layout at `path` (created if missing) under `tag`
    and return its manifest digest. Atomic (a crash leaves the previous state), idempotent (equal
    content gives the same digest and shares blobs), replaces `tag` if present and keeps every
    other tag and file. `progress(n)` is called with byte counts of the memory as it is written.
    A pre-init snapshot raises SnapshotStateError."""
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"expected a Snapshot, got {type(snapshot).__name__}")
    check_tag(tag)
    config = encode_config(snapshot)            # SnapshotStateError for pre-init snapshots
    image = snapshot.image
    size = snapshot.layout.memory_size - GUEST_BASE
    if image.size != size or image.fd < 0:
        raise SnapshotStateError("the snapshot's memory image is closed or has the wrong size")
    with Writer(path) as w:
        known = _digests.get(image)
        if known is not None and w.has_blob(Descriptor(MT_MEMORY, known, size)):
            layer = Descriptor(MT_MEMORY, known, size)
            if progress is not None:
                progress(size)
        else:
            fd, name = w.new_temp_blob()
            try:
                digest = copy_image(image, fd, progress)
            except BaseException:
                os.close(fd)
                raise
            layer = Descriptor(MT_MEMORY, digest, size)
            w.commit_temp_blob(fd, name, layer)
            _digests[image] = digest
        cfg = w.put_blob(config, MT_CONFIG)
        man = w.put_blob(manifest_bytes(cfg, layer), MT_MANIFEST)
        w.set_tag(man, tag)
    return man.digest
