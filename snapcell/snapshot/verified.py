"""The verified-content record: blobs whose sha256 was checked (at save, pull, checked_load or
`verify --full`) and that are unchanged since, so that `checked_load` does not hash them again —
the containerd model: verify at ingest, trust the content store after.

A record is kept per blob *file*: `<hex>-<st_dev>-<st_ino>` holding the size, mtime and ctime
(ns) the file had when its content was verified. A file is trusted again only if it is still the
same inode with the same size, mtime and ctime, is read-only (no write bit) and has a single link
(no other name it could be written through). Any write to a file changes its ctime, which no
unprivileged process can set back, and a replaced file is a new inode.

The records live outside the layout, in a directory of this user (mode 0700, owned by the
effective uid): whoever can write a layout must not be able to vouch for its blobs. Default
`$XDG_CACHE_HOME/snapcell/verified` (or `~/.cache/...`); `SNAPCELL_VERIFIED_DIR` overrides it and
`SNAPCELL_VERIFIED_DIR=""` disables the record (every checked_load hashes)."""

from __future__ import annotations

import os
import secrets
import stat

from ..paths import cache_root

ENV = "SNAPCELL_VERIFIED_DIR"


def _directory() -> str | None:
    configured = os.environ.get(ENV)
    if configured is not None:
        return configured or None
    return str(cache_root() / "verified")


def _open_dir(create: bool) -> int | None:
    """The record directory's descriptor, or None when it is unusable (missing, not ours,
    writable by others)."""
    path = _directory()
    if path is None:
        return None
    if create:
        try:
            os.makedirs(path, 0o700, exist_ok=True)
        except OSError:
            return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


def _identity(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def _name(digest: str, st: os.stat_result) -> str:
    return f"{digest.split(':', 1)[1]}-{st.st_dev}-{st.st_ino}"


def trustworthy(st: os.stat_result) -> bool:
    """A file the record may vouch for: regular, read-only, a single link."""
    return stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222 and st.st_nlink == 1


def is_verified(fd: int, digest: str) -> bool:
    """True when the file open at `fd` was verified to have `digest` and is unchanged since."""
    st = os.fstat(fd)
    if not trustworthy(st):
        return False
    d = _open_dir(create=False)
    if d is None:
        return False
    try:
        rfd = os.open(_name(digest, st), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
    except OSError:
        return False
    finally:
        os.close(d)
    try:
        return os.pread(rfd, 128, 0).decode("ascii", "replace") == _identity(st)
    finally:
        os.close(rfd)


def record(fd: int, digest: str) -> None:
    """Remember that the file open at `fd` has `digest` (its content was just hashed or written
    by us). Best effort: an unusable record directory only means hashing again later."""
    st = os.fstat(fd)
    if not trustworthy(st):
        return
    d = _open_dir(create=True)
    if d is None:
        return
    tmp = f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=d)
        try:
            os.write(wfd, _identity(st).encode("ascii"))
        finally:
            os.close(wfd)
        os.rename(tmp, _name(digest, st), src_dir_fd=d, dst_dir_fd=d)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=d)
        except OSError:
            pass
    finally:
        os.close(d)


def forget(fd: int, digest: str) -> None:
    """Drop the record of the file open at `fd` (e.g. before it is deleted)."""
    st = os.fstat(fd)
    d = _open_dir(create=False)
    if d is None:
        return
    try:
        os.unlink(_name(digest, st), dir_fd=d)
    except OSError:
        pass
    finally:
        os.close(d)
