"""Guest memory images made of pieces of shared backings (copy-on-write layering).

A `MemoryImage` is `size` bytes of guest memory described as a list of non-overlapping,
page-aligned *pieces* `(image offset, length, backing, backing offset)` over a zero background.
A `Backing` is a descriptor — a memfd this process wrote and sealed, or a read-only snapshot
file — shared by reference between the images whose pieces use it, and closed when the last of
them is closed (so closing one image never breaks another that shares a backing).

The plain case is one memfd covering the whole image (`MemoryImage(size)`, one piece). Layered
images come from `MemoryImage.overlaid` (a snapshot: the parent's pieces, overlaid by the dirty
pages written into one new sparse memfd at their image offsets — O(dirty) instead of copying the
parent) and from `compose` (a copy-on-write load of a chain of snapshot layers, snapshot/oci.py).
Sandboxes map an image with one MAP_PRIVATE mmap per piece (`GuestMapping.map_guest`), so every
piece costs one VMA per sandbox: images are kept at most `MAX_PIECES` pieces (beyond it
`overlaid` flattens the image into one memfd), see docs/architecture.md.

The piece arithmetic (`overlay`, `coalesce`, `merge_runs`, `fill_gaps`) is generic over the
backing type so that it can be tested against a flat bytearray."""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import os
import threading
from collections.abc import Iterable, Sequence
from typing import TypeVar

from ..kvm import libc
from .layout import PAGE

MAX_PIECES = 64               # pieces (= VMAs per sandbox) of an image before it is flattened
MERGE_GAP = 64 << 10          # dirty runs this close are stored as one run (clean bytes copied)
SMALL_EXTENT = 64 << 10       # file extents below this are copied, not mapped (from_files)
# An image holding at most this much data is flattened by `overlaid` rather than layered: the
# copy costs at most a few ms once, while every piece costs each restore and pooled
# from_snapshot of the snapshot (one more VMA for PAGEMAP_SCAN to walk: ten pieces measured
# +2.9 µs per restore, ~15 %; docs/benchmarks.md, restore_16MiB).
FLATTEN_BELOW = 4 << 20

_view_lock = threading.Lock()          # creation of MemoryImage read views
# copy_file_range refuses copies between file systems (EXDEV) and some file types (EINVAL...).
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
_COPY_CHUNK = 1 << 20

B = TypeVar("B")
Piece = tuple[int, int, B, int]       # (image offset, length, backing, backing offset)


# ------------------------------------------------------------------ piece arithmetic
def coalesce(pieces: Iterable[tuple[int, int, B, int]]) -> list[tuple[int, int, B, int]]:
    """Merge neighbouring pieces (sorted, disjoint) that continue each other in the same
    backing."""
    out: list[tuple[int, int, B, int]] = []
    for p in pieces:
        if out:
            o, n, b, bo = out[-1]
            if o + n == p[0] and b is p[2] and bo + n == p[3]:
                out[-1] = (o, n + p[1], b, bo)
                continue
        out.append(p)
    return out


def overlay(base: Sequence[tuple[int, int, B, int]],
            top: Sequence[tuple[int, int, B, int]]) -> list[tuple[int, int, B, int]]:
    """`base` (sorted, disjoint pieces) with `top` (sorted, disjoint pieces) laid over it: where
    they overlap, `top` wins. The result is sorted, disjoint and coalesced."""
    starts = [t[0] for t in top]
    out: list[tuple[int, int, B, int]] = []
    for o, n, b, bo in base:
        end, cur = o + n, o
        i = max(0, bisect.bisect_right(starts, o) - 1)
        while i < len(top) and top[i][0] < end:
            t0, t1 = top[i][0], top[i][0] + top[i][1]
            i += 1
            if t1 <= cur:
                continue
            if t0 > cur:
                out.append((cur, t0 - cur, b, bo + cur - o))
            cur = t1
            if cur >= end:
                break
        if cur < end:
            out.append((cur, end - cur, b, bo + cur - o))
    out.extend(top)
    out.sort(key=lambda p: p[0])
    return coalesce(out)


def merge_runs(runs: Iterable[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Sorted (offset, length) runs, merged where they touch or are at most `gap` bytes apart
    (the bytes in between then belong to the run)."""
    out: list[tuple[int, int]] = []
    for a, n in sorted(runs):
        if n <= 0:
            continue
        if out and a - (out[-1][0] + out[-1][1]) <= gap:
            pa, pn = out[-1]
            out[-1] = (pa, max(pa + pn, a + n) - pa)
        else:
            out.append((a, n))
    return out


def fill_gaps(pieces: Sequence[tuple[int, int, B, int]], size: int,
              backing: B) -> list[tuple[int, int, B, int]]:
    """`pieces` with every uncovered part of [0, size) taken from `backing` at the same offset
    (a sparse backing that is zero there), coalesced: the result tiles the image."""
    out: list[tuple[int, int, B, int]] = []
    pos = 0
    for p in pieces:
        if p[0] > pos:
            out.append((pos, p[0] - pos, backing, pos))
        out.append(p)
        pos = p[0] + p[1]
    if pos < size:
        out.append((pos, size - pos, backing, pos))
    return coalesce(out)


def _tiles(pieces: Sequence[tuple[int, int, object, int]], size: int) -> bool:
    pos = 0
    for o, n, _, _ in pieces:
        if o != pos:
            return False
        pos = o + n
    return pos == size


# ------------------------------------------------------------------ backings
class Backing:
    """A file descriptor shared by the images whose pieces use it (reference-counted: the last
    `release` closes it). `file` marks a snapshot file on disk (as opposed to a memfd of this
    process); `immutable` that nobody writes it any more (a sealed memfd, a read-only blob)."""

    def __init__(self, fd: int, *, file: bool = False, immutable: bool = False) -> None:
        self.fd, self.file, self.immutable = fd, file, immutable
        self._refs = 1                  # the creator's reference
        self._lock = threading.Lock()

    def acquire(self) -> "Backing":
        """Take one more reference (EBADF when it is already closed)."""
        with self._lock:
            if self._refs <= 0:
                raise OSError(errno.EBADF, "the memory image's backing is closed")
            self._refs += 1
        return self

    def release(self) -> None:
        """Drop one reference; the last one closes the descriptor."""
        with self._lock:
            self._refs -= 1
            if self._refs > 0 or self.fd < 0:
                return
            fd, self.fd = self.fd, -1
        os.close(fd)

    def __del__(self) -> None:
        try:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        except Exception:
            pass


def _copy_range(src: int, dst: int, n: int, src_off: int, dst_off: int, in_kernel: bool) -> bool:
    """Copy `n` bytes between descriptors (copy_file_range, else pread/pwrite); returns whether
    copy_file_range still works for this pair."""
    end = src_off + n
    while src_off < end:
        if in_kernel:
            try:
                k = os.copy_file_range(src, dst, end - src_off, src_off, dst_off)
            except OSError as e:    # EXDEV: e.g. a snapshot blob on disk -> a memfd
                if e.errno not in _NO_COPY_FILE_RANGE:
                    raise
                in_kernel = False
                continue
        else:
            data = os.pread(src, min(end - src_off, _COPY_CHUNK), src_off)
            view, pos = memoryview(data), dst_off
            while view:
                w = os.pwrite(dst, view, pos)
                view, pos = view[w:], pos + w
            k = len(data)
        if k <= 0:
            raise OSError(errno.EIO, "the source image ended early")
        src_off, dst_off = src_off + k, dst_off + k
    return in_kernel


def _fd_data(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """[a, b) data regions of file `fd` within [start, end) (SEEK_DATA / SEEK_HOLE; a file
    system without holes reports everything as data)."""
    out = []
    off = start
    while off < end:
        try:
            a = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        if a >= end:
            break
        b = min(os.lseek(fd, a, os.SEEK_HOLE), end)
        out.append((a, b))
        off = b
    return out


# ------------------------------------------------------------------ images
class MemoryImage:
    """Guest memory of `size` bytes: pieces of shared backings over a zero background (see the
    module docstring). `MemoryImage(size)` is a new, writable, sparse memfd (one piece); `seal`
    makes it immutable. Layered images are built sealed (`overlaid`, `compose`)."""

    def __init__(self, size: int, name: str = "snapcell-guest") -> None:
        if size <= 0 or size % PAGE:
            raise ValueError(f"memory size must be a positive multiple of {PAGE}: {size}")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._init(size, ((0, size, Backing(fd), 0),), sealed=False)

    def _init(self, size: int, pieces: tuple[Piece[Backing], ...], sealed: bool) -> None:
        self.size = size
        self._pieces = pieces
        self.sealed = sealed
        self.tiles = _tiles(pieces, size)
        self._closed = False
        self._view: memoryview | None = None
        self._view_addr = 0

    @classmethod
    def from_fd(cls, fd: int, size: int, immutable: bool = False) -> "MemoryImage":
        """Adopt an existing fd of a file (ownership passes to the image). `immutable=True`
        declares that nobody writes the file any more (e.g. a read-only snapshot blob on disk):
        it then counts as sealed and may back snapshots. Only private mappings (and the
        read-only view below) are ever made of it."""
        self = cls.__new__(cls)
        self._init(size, ((0, size, Backing(fd, file=True, immutable=immutable), 0),),
                   sealed=immutable)
        return self

    @classmethod
    def compose(cls, size: int, pieces: Sequence[Piece[Backing]]) -> "MemoryImage":
        """A sealed image made of `pieces` (sorted, disjoint, page-aligned, inside the image,
        of immutable backings); takes a reference on each backing used (the caller keeps its
        own)."""
        if size <= 0 or size % PAGE:
            raise ValueError(f"memory size must be a positive multiple of {PAGE}: {size}")
        pos = 0
        for o, n, b, bo in pieces:
            if o < pos or n <= 0 or (o | n | bo) % PAGE or o + n > size or bo < 0:
                raise ValueError(f"piece ({o:#x}, {n:#x}) is unaligned, empty, overlapping or "
                                 "outside the image")
            if not b.immutable:
                raise ValueError("an image's pieces must have immutable backings")
            pos = o + n
        got: list[Backing] = []
        try:
            for b in {id(p[2]): p[2] for p in pieces}.values():
                got.append(b.acquire())
        except BaseException:
            for b in got:
                b.release()
            raise
        self = cls.__new__(cls)
        self._init(size, tuple(coalesce(pieces)), sealed=True)
        return self

    # -------------------------------------------------------------- properties
    @property
    def pieces(self) -> tuple[Piece[Backing], ...]:
        """The image's pieces (sorted, disjoint; EBADF once closed)."""
        if self._closed:
            raise OSError(errno.EBADF, "the memory image is closed")
        return self._pieces

    @property
    def closed(self) -> bool:
        """Whether `close` was called (its pieces are then gone)."""
        return self._closed

    @property
    def maps_files(self) -> bool:
        """Whether a piece is a snapshot file on disk (a copy-on-write load) rather than memory
        of this process."""
        return any(p[2].file for p in self._pieces)

    @property
    def fd(self) -> int:
        """The descriptor of a plain image (one backing covering the whole image at offset 0;
        -1 once closed). A layered image has no single descriptor (ValueError)."""
        if self._closed:
            return -1
        if len(self._pieces) != 1 or not self.tiles or self._pieces[0][3] != 0:
            raise ValueError("a layered memory image has no single descriptor")
        return self._pieces[0][2].fd

    # -------------------------------------------------------------- reading
    def read(self, off: int, n: int) -> bytes:
        """`n` bytes at image offset `off` (zeros where no piece is)."""
        if off < 0 or n < 0 or off + n > self.size:
            raise ValueError(f"range [{off:#x}, {off + n:#x}) outside the image")
        pieces = self.pieces
        if len(pieces) == 1 and self.tiles:
            p = pieces[0]
            data = os.pread(p[2].fd, n, p[3] + off)
            if len(data) != n:
                raise OSError(errno.EIO, "the memory image ended early")
            return data
        parts: list[bytes] = []
        pos, end = off, off + n
        i = max(0, bisect.bisect_right([p[0] for p in pieces], off) - 1)
        for o, ln, b, bo in pieces[i:]:
            if o >= end:
                break
            a, z = max(o, pos), min(o + ln, end)
            if z <= a:
                continue
            if a > pos:
                parts.append(bytes(a - pos))
            data = os.pread(b.fd, z - a, bo + a - o)
            if len(data) != z - a:
                raise OSError(errno.EIO, "the memory image ended early")
            parts.append(data)
            pos = z
        if pos < end:
            parts.append(bytes(end - pos))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_view(self) -> memoryview:
        """A read-only view of the whole image: shared read-only mappings of the pieces over an
        anonymous zero background, made on first use and kept until `close` (resetting guest
        pages copies from it without a system call per run). Allowed on sealed memfds; pages
        are populated as they are read."""
        view = self._view
        if view is None:
            with _view_lock:
                view = self._view
                if view is None:
                    pieces = self.pieces
                    if len(pieces) == 1 and self.tiles:
                        addr = libc.mmap(self.size, libc.PROT_READ, libc.MAP_SHARED,
                                         pieces[0][2].fd, pieces[0][3])
                    else:
                        addr = libc.mmap(self.size, libc.PROT_READ, libc.MAP_PRIVATE
                                         | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE)
                        try:
                            for o, n, b, bo in pieces:
                                libc.mmap(n, libc.PROT_READ, libc.MAP_SHARED | libc.MAP_FIXED,
                                          b.fd, bo, addr + o)
                        except BaseException:
                            libc.munmap(addr, self.size)
                            raise
                    view = memoryview((ctypes.c_ubyte * self.size).from_address(addr)).cast("B")
                    self._view, self._view_addr = view.toreadonly(), addr
                    view = self._view
        return view

    def data_extents(self) -> list[tuple[int, int]]:
        """(offset, length) of the regions holding data (holes read as zeros): the data regions
        of each piece's backing within the piece."""
        out: list[tuple[int, int]] = []
        for o, n, b, bo in self.pieces:
            for a, z in _fd_data(b.fd, bo, bo + n):
                start = o + a - bo
                if out and out[-1][0] + out[-1][1] == start:
                    out[-1] = (out[-1][0], out[-1][1] + z - a)
                else:
                    out.append((start, z - a))
        return out

    # -------------------------------------------------------------- writing (plain images)
    def _writable_fd(self) -> int:
        if self.sealed:
            raise ValueError("the memory image is sealed")
        return self.fd

    def write_chunks(self, chunks: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> None:
        """Write (offset, bytes) chunks with pwrite (a plain image, before sealing)."""
        fd = self._writable_fd()
        for off, data in chunks:
            if off < 0 or off + len(data) > self.size:
                raise ValueError(f"chunk [{off:#x}, {off + len(data):#x}) outside the image")
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, off)
                view, off = view[n:], off + n

    def copy_data_from(self, parent: "MemoryImage") -> None:
        """Copy the data of `parent` (same size, plain or layered) into this plain image,
        keeping holes as holes (SEEK_DATA/SEEK_HOLE), so zero pages cost nothing."""
        if parent.size != self.size:
            raise ValueError("images differ in size")
        fd = self._writable_fd()
        in_kernel = True
        for o, n, b, bo in parent.pieces:
            for a, z in _fd_data(b.fd, bo, bo + n):
                in_kernel = _copy_range(b.fd, fd, z - a, a, o + a - bo, in_kernel)

    def seal(self) -> None:
        """Make a plain image immutable (F_SEAL_WRITE|SHRINK|GROW|SEAL): snapshots share it
        safely."""
        if not self.sealed:
            fcntl.fcntl(self.fd, libc.F_ADD_SEALS, libc.F_SEAL_WRITE | libc.F_SEAL_SHRINK
                        | libc.F_SEAL_GROW | libc.F_SEAL_SEAL)
            self._pieces[0][2].immutable = True
            self.sealed = True

    # -------------------------------------------------------------- layering
    def overlaid(self, chunks: Sequence[tuple[int, bytes | bytearray | memoryview]],
                 name: str = "snapcell-snapshot", max_pieces: int | None = None) -> "MemoryImage":
        """A new sealed image equal to this (sealed) one with `chunks` (sorted, disjoint,
        page-aligned (offset, bytes)) written over it. The chunks go into one new sparse memfd
        at their image offsets and the result is this image's pieces overlaid by them: the cost
        is the chunks', not the image's. When that would take more than `max_pieces` pieces, or
        this image holds at most FLATTEN_BELOW bytes of data, the result is flattened into one
        memfd (a copy of this image's data plus the chunks); `max_pieces` defaults to
        MAX_PIECES."""
        if not self.sealed:
            raise ValueError("only a sealed image can be overlaid")
        cap = MAX_PIECES if max_pieces is None else max_pieces
        small = sum(n for _, n in self.data_extents()) <= FLATTEN_BELOW
        layer = None if small else MemoryImage(self.size, name)     # small: flattened below
        try:
            if layer is not None:
                layer.write_chunks(chunks)
                layer.seal()
                backing = layer._pieces[0][2]
                pieces = overlay(self.pieces, [(off, len(d), backing, off) for off, d in chunks])
                if len(pieces) <= cap:
                    return MemoryImage.compose(self.size, pieces)
        finally:
            if layer is not None:
                layer.close()
        flat = MemoryImage(self.size, name)
        try:
            flat.copy_data_from(self)
            flat.write_chunks(chunks)
            flat.seal()
        except BaseException:
            flat.close()
            raise
        return flat

    @classmethod
    def from_files(cls, size: int, layers: Sequence[tuple[int, Sequence[tuple[int, int, int]]]],
                   base: "MemoryImage | None" = None, *, small: int | None = None,
                   max_pieces: int | None = None) -> "MemoryImage":
        """A sealed copy-on-write image of layers of file data applied in order over `base`
        (or zeros): each layer is `(fd, [(image offset, length, file offset), ...])` (sorted,
        disjoint, page-aligned; the caller keeps `fd`, the image holds a duplicate). Extents of
        at least `small` bytes become pieces mapped from the file; smaller ones are copied into
        one overlay memfd, which also fills every hole, so the image tiles its range. When that
        takes more than `max_pieces` pieces, all but the (max_pieces - 1) // 2 largest file
        pieces are copied into the overlay as well. Defaults: SMALL_EXTENT, MAX_PIECES."""
        small = SMALL_EXTENT if small is None else small
        max_pieces = MAX_PIECES if max_pieces is None else max_pieces
        if max_pieces < 3:
            raise ValueError("max_pieces must be at least 3")
        ovl = MemoryImage(size, "snapcell-mapped")
        ob = ovl._pieces[0][2]
        files: list[Backing] = []
        try:
            pieces: list[Piece[Backing]] = list(base.pieces) if base is not None else []
            in_kernel = True
            for fd, extents in layers:
                fb = Backing(os.dup(fd), file=True, immutable=True)
                files.append(fb)
                top: list[Piece[Backing]] = []
                for off, n, foff in extents:
                    if n < small:
                        in_kernel = _copy_range(fd, ob.fd, n, foff, off, in_kernel)
                        top.append((off, n, ob, off))
                    else:
                        top.append((off, n, fb, foff))
                pieces = overlay(pieces, top)
            tiled = fill_gaps(pieces, size, ob)
            if len(tiled) > max_pieces:
                others = sorted((i for i, p in enumerate(pieces) if p[2] is not ob),
                                key=lambda i: -pieces[i][1])
                for i in others[(max_pieces - 1) // 2:]:
                    o, n, b, bo = pieces[i]
                    in_kernel = _copy_range(b.fd, ob.fd, n, bo, o, in_kernel)
                    pieces[i] = (o, n, ob, o)
                tiled = fill_gaps(coalesce(pieces), size, ob)
            ovl.seal()
            return MemoryImage.compose(size, tiled)
        finally:
            ovl.close()
            for fb in files:
                fb.release()

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Drop the read view and this image's references to its backings (a backing closes
        when no image uses it; guests' private mappings stay valid)."""
        with _view_lock:
            if self._closed:
                return
            self._closed = True
            view, self._view = self._view, None
        if view is not None:
            view.release()
            libc.munmap(self._view_addr, self.size)
        for b in {id(p[2]): p[2] for p in self._pieces}.values():
            b.release()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass
