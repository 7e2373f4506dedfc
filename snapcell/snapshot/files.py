"""Access to OCI layout directories: `Reader` (validated, descriptor-relative, no lock) and
`Writer` (the exclusive writer: flock, temporary blobs renamed into place, the atomic index.json
swap, clean-up of everything a failed writer added). `oci` (load, save...), `registry` (pull)
and `collect` (rm, gc) are built on them."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SnapshotError, SnapshotFormatError, SnapshotNotFound
from . import content, verified
from .schema import (
    CONFIG_CAP,
    INDEX_CAP,
    MANIFEST_CAP,
    OCI_LAYOUT_CAP,
    SnapshotConfig,
    decode_config,
    dumps_canonical,
    fail,
)
from .validate import (
    ALGORITHM,
    BLOB_NAME,
    BLOBS_DIR,
    INDEX_FILE,
    OCI_LAYOUT_FILE,
    OCI_LAYOUT_VERSION,
    READ_CHUNK,
    Descriptor,
    IndexEntry,
    Manifest,
    check_consistent,
    check_digest,
    index_bytes,
    index_entry,
    open_dir,
    open_regular,
    parse_index,
    parse_manifest,
    parse_oci_layout,
    read_fd,
    read_file,
)

TMP_PREFIX = ".snapcell-tmp-"
BLOB_MODE = 0o444                     # blobs are immutable: read-only, like an installed binary
ZERO_PIECE = 64 << 10
_ZEROS = bytes(READ_CHUNK)
_ZERO_PIECE = bytes(ZERO_PIECE)
Progress = Callable[[int], None]


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


def write_all(fd: int, data: bytes | bytearray | memoryview, off: int) -> None:
    """pwrite all of `data` at `off`."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def feed_zeros(h: Any, n: int) -> None:
    """Feed `n` zero bytes to a hash."""
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
            write_all(out_fd, piece, off + p)


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
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dir_fd)
        self.temps.append((dir_fd, name))
        return fd, name

    def _put_small(self, dir_fd: int, name: str, data: bytes) -> None:
        fd, tmp = self._temp(dir_fd)
        try:
            write_all(fd, data, 0)
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

    def identity(self, desc: Descriptor) -> content.Identity:
        """The identity (content.identity) of a present blob file."""
        fd = open_regular(self.sha, desc.hex, "blob")
        try:
            return content.identity(desc.digest, fd)
        finally:
            os.close(fd)

    def new_temp_blob(self) -> tuple[int, str]:
        """A new temporary file in blobs/sha256/ (fd, name)."""
        return self._temp(self.sha)

    def commit_temp_blob(self, fd: int, name: str, desc: Descriptor, hashed: bool = False) -> None:
        """fsync the temporary blob and rename it to its digest (or drop it when that blob is
        already present). `hashed`: its content was hashed as it was written, so the
        verified-content record may vouch for it. Closes `fd`."""
        try:
            if not self.has_blob(desc):
                os.fchmod(fd, BLOB_MODE)
                os.fsync(fd)
                os.rename(name, desc.hex, src_dir_fd=self.sha, dst_dir_fd=self.sha)
                self.new_blobs.append(desc.hex)
                if hashed:
                    verified.record(fd, desc.digest)
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
                write_all(fd, data, 0)
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
