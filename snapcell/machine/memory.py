"""Guest memory: a memfd image and the host mappings of it.

A `MemoryImage` is a memfd holding part of a guest's physical memory. Sandboxes map it
MAP_PRIVATE, so pages are shared until a guest (or the host on its behalf) writes them:
copy-on-write. A `GuestMapping` is one VM's memory: a system image below GUEST_BASE and a guest
image above it."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading

from ..kvm import libc
from .layout import GUEST_BASE, PAGE

# /proc/self/pagemap entry top byte: bit 7 = present (63), bit 6 = swapped (62),
# bit 5 = file-page or shared-anon (61). Private data = (present or swapped) and not file.
_PRIVATE_PAGE = bytes(1 if (b & 0xC0) and not (b & 0x20) else 0 for b in range(256))
_pagemap: list[int] = []
_view_lock = threading.Lock()          # creation of MemoryImage read views


def _pagemap_fd() -> int:
    if not _pagemap:
        _pagemap.append(os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC))
    return _pagemap[0]


class _pm_scan_arg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class _page_region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


# PAGEMAP_SCAN (Linux 6.7, <linux/fs.h>): _IOWR('f', 16, struct pm_scan_arg)
_PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_pm_scan_arg) << 16) | (ord("f") << 8) | 16
_PAGE_IS_FILE, _PAGE_IS_PRESENT, _PAGE_IS_SWAPPED = 1 << 2, 1 << 3, 1 << 4
_REGIONS = 512
_scan_supported: list[bool] = []
_ioctl = fcntl.ioctl


class _PagemapScan:
    """A reusable PAGEMAP_SCAN request for the private pages of one address range (the argument
    and result buffers are allocated once: the scan runs on every pooled restore)."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.regions = (_page_region * _REGIONS)()
        self.words = memoryview(self.regions).cast("B").cast("Q")   # start, end, categories
        self.arg = _pm_scan_arg(size=ctypes.sizeof(_pm_scan_arg), start=start, end=end,
                                vec=ctypes.addressof(self.regions), vec_len=_REGIONS,
                                category_inverted=_PAGE_IS_FILE, category_mask=_PAGE_IS_FILE,
                                category_anyof_mask=_PAGE_IS_PRESENT | _PAGE_IS_SWAPPED,
                                return_mask=_PAGE_IS_PRESENT | _PAGE_IS_SWAPPED | _PAGE_IS_FILE)

    def run(self) -> list[tuple[int, int]]:
        """Host address runs [a, b) of the private pages; OSError when the kernel lacks
        PAGEMAP_SCAN (Linux < 6.7)."""
        arg, end = self.arg, self.end
        arg.start = self.start
        runs: list[tuple[int, int]] = []
        while True:
            n = _ioctl(_pagemap_fd(), _PAGEMAP_SCAN, arg)
            words = self.words[:3 * n].tolist()
            for a, b in zip(words[0::3], words[1::3]):
                if runs and runs[-1][1] == a:
                    runs[-1] = (runs[-1][0], b)
                else:
                    runs.append((a, b))
            if n < _REGIONS or arg.walk_end >= end:
                return runs
            arg.start = arg.walk_end


def _scan_private(start: int, end: int, scan: _PagemapScan | None = None) -> list[tuple[int, int]]:
    """Host address runs [a, b) of private pages in [start, end): PAGEMAP_SCAN walks only
    populated page tables (cost ∝ pages present, not range size); older kernels fall back to
    reading pagemap entries. `scan` is a reusable request for exactly this range."""
    if not _scan_supported or _scan_supported[0]:
        try:
            runs = (scan if scan is not None else _PagemapScan(start, end)).run()
            if not _scan_supported:
                _scan_supported.append(True)
            return runs
        except OSError:
            if _scan_supported:
                raise
            _scan_supported.append(False)
    first, count = start // PAGE, (end - start) // PAGE
    flags = os.pread(_pagemap_fd(), count * 8, first * 8)[7::8].translate(_PRIVATE_PAGE)
    out: list[tuple[int, int]] = []
    i = flags.find(1)
    while i >= 0:
        j = flags.find(0, i)
        if j < 0:
            j = count
        out.append((start + i * PAGE, start + j * PAGE))
        i = flags.find(1, j)
    return out


# copy_file_range refuses copies between file systems (EXDEV) and some file types (EINVAL...).
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
_COPY_CHUNK = 1 << 20


def _copy_by_reads(src: int, dst: int, n: int, off: int) -> int:
    """Copy up to `n` bytes at `off` from `src` to `dst` with pread/pwrite; bytes copied."""
    data = os.pread(src, n, off)
    view = memoryview(data)
    pos = off
    while view:
        k = os.pwrite(dst, view, pos)
        view, pos = view[k:], pos + k
    return len(data)


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class MemoryImage:
    """A memfd-backed guest memory image of `size` bytes (sparse: untouched pages cost nothing)."""

    def __init__(self, size: int, name: str = "snapcell-guest") -> None:
        if size <= 0 or size % PAGE:
            raise ValueError(f"memory size must be a positive multiple of {PAGE}: {size}")
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.sealed = False
        self._view: memoryview | None = None
        self._view_addr = 0

    @classmethod
    def from_fd(cls, fd: int, size: int, immutable: bool = False) -> "MemoryImage":
        """Adopt an existing fd (ownership passes to the image). `immutable=True` declares that
        nobody writes the file any more (e.g. a read-only snapshot blob on disk): it then counts
        as sealed and may back snapshots. Only private mappings (and the read-only view below)
        are ever made of it."""
        self = cls.__new__(cls)
        self.size, self.fd, self.sealed = size, fd, immutable
        self._view, self._view_addr = None, 0
        return self

    def read_view(self) -> memoryview:
        """A read-only view of the whole image: a shared read-only mapping, made on first use
        and kept until `close` (resetting guest pages copies from it without a system call
        per run). Allowed on sealed memfds; pages are populated as they are read."""
        view = self._view
        if view is None:
            with _view_lock:
                view = self._view
                if view is None:
                    if self.fd < 0:
                        raise OSError(errno.EBADF, "the memory image is closed")
                    addr = libc.mmap(self.size, libc.PROT_READ, libc.MAP_SHARED, self.fd)
                    view = memoryview((ctypes.c_ubyte * self.size).from_address(addr)).cast("B")
                    self._view, self._view_addr = view.toreadonly(), addr
                    view = self._view
        return view

    def data_extents(self) -> list[tuple[int, int]]:
        """(offset, length) of the regions holding data (holes read as zeros)."""
        out = []
        off = 0
        while off < self.size:
            try:
                start = os.lseek(self.fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.size)
            out.append((start, end - start))
            off = end
        return out

    def write_chunks(self, chunks: list[tuple[int, bytes]]) -> None:
        """Write (offset, bytes) chunks with pwrite (before sealing)."""
        for off, data in chunks:
            if off < 0 or off + len(data) > self.size:
                raise ValueError(f"chunk [{off:#x}, {off + len(data):#x}) outside the image")
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, off)
                view, off = view[n:], off + n

    def copy_data_from(self, parent: "MemoryImage") -> None:
        """Copy the data extents of `parent` (same size) into this image, keeping holes as holes
        (SEEK_DATA/SEEK_HOLE; tmpfs supports both), so zero pages cost nothing."""
        if parent.size != self.size:
            raise ValueError("images differ in size")
        in_kernel = True
        for start, length in parent.data_extents():
            pos, end = start, start + length
            while pos < end:
                if in_kernel:
                    try:
                        n = os.copy_file_range(parent.fd, self.fd, end - pos, pos, pos)
                    except OSError as e:    # EXDEV: e.g. a snapshot blob on disk -> a memfd
                        if e.errno not in _NO_COPY_FILE_RANGE:
                            raise
                        in_kernel = False
                        continue
                else:
                    n = _copy_by_reads(parent.fd, self.fd, min(end - pos, _COPY_CHUNK), pos)
                if n <= 0:
                    raise OSError(errno.EIO, "the parent image ended early")
                pos += n

    def seal(self) -> None:
        """Make the image immutable (F_SEAL_WRITE|SHRINK|GROW|SEAL): snapshots share it safely."""
        if not self.sealed:
            import fcntl
            fcntl.fcntl(self.fd, libc.F_ADD_SEALS, libc.F_SEAL_WRITE | libc.F_SEAL_SHRINK
                        | libc.F_SEAL_GROW | libc.F_SEAL_SEAL)
            self.sealed = True

    def close(self) -> None:
        """Close the memfd and drop the read view (guests' private mappings stay valid)."""
        view = getattr(self, "_view", None)
        if view is not None:
            self._view = None
            view.release()
            libc.munmap(self._view_addr, self.size)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class GuestMapping:
    """Host view of one VM's guest-physical memory: a contiguous host range of `size` bytes whose
    low part [0, GUEST_BASE) privately maps the host-built *system image* and whose high part
    [GUEST_BASE, size) privately maps a *guest image* (copy-on-write, MAP_PRIVATE). KVM sees the
    whole range as one memory slot; re-mapping either part with MAP_FIXED swaps contents without
    re-registering the slot."""

    def __init__(self, size: int) -> None:
        if size <= GUEST_BASE or size % PAGE:
            raise ValueError(f"guest memory size {size:#x} too small or unaligned")
        self.size = size
        self.addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE,
                              libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE)
        self.view = memoryview((ctypes.c_ubyte * size).from_address(self.addr)).cast("B")
        self._scan = _PagemapScan(self.addr + GUEST_BASE, self.addr + size)

    def _map(self, gpa: int, length: int, fd: int) -> None:
        libc.mmap(length, libc.PROT_READ | libc.PROT_WRITE,
                  libc.MAP_PRIVATE | libc.MAP_NORESERVE | libc.MAP_FIXED, fd, 0, self.addr + gpa)

    def map_system(self, image: MemoryImage) -> None:
        """Privately map the system image at guest address 0."""
        if image.size != GUEST_BASE:
            raise ValueError("system image must cover exactly [0, GUEST_BASE)")
        self._map(0, GUEST_BASE, image.fd)

    def map_guest(self, image: MemoryImage) -> None:
        """Privately map a guest image at GUEST_BASE, discarding every private page there."""
        if image.size != self.size - GUEST_BASE:
            raise ValueError(f"guest image of {image.size:#x} bytes does not fit a "
                             f"{self.size - GUEST_BASE:#x}-byte guest range")
        self._map(GUEST_BASE, image.size, image.fd)

    def release(self) -> None:
        """Drop every mapping's pages and file references (anonymous zero memory again)."""
        libc.mmap(self.size, libc.PROT_READ | libc.PROT_WRITE,
                  libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE | libc.MAP_FIXED,
                  -1, 0, self.addr)

    def dirty_guest_pages(self) -> list[tuple[int, int]]:
        """Runs (guest address, length) of guest-range pages that hold private (copy-on-write)
        data: present or swapped, and not file-backed."""
        base = self.addr
        runs = _scan_private(base + GUEST_BASE, base + self.size, self._scan)
        return [(a - base, b - a) for a, b in runs]

    def reset_guest_pages(self, guest: MemoryImage) -> None:
        """Make the guest part equal `guest` (the image mapped there) again by copying its bytes
        over every private page: one PAGEMAP_SCAN and a copy per run. Unlike re-mapping this
        keeps the pages mapped, so the guest does not pay first-touch faults again (the hot
        path of every warm restore)."""
        base, view = self.addr, self.view
        runs = _scan_private(base + GUEST_BASE, base + self.size, self._scan)
        if runs:
            src, off = guest.read_view(), base + GUEST_BASE
            for a, b in runs:
                view[a - base:b - base] = src[a - off:b - off]

    def copy_from(self, image: MemoryImage, addr: int, n: int) -> None:
        """Copy [addr, addr + n) of the system part back from `image` (the mapped system
        image)."""
        if not (0 <= addr and addr + n <= GUEST_BASE == image.size):
            raise ValueError("range outside the system part")
        self.view[addr:addr + n] = image.read_view()[addr:addr + n]

    def read(self, addr: int, n: int) -> bytes:
        """Copy `n` bytes at guest address `addr` (caller bounds-checks untrusted addresses)."""
        return bytes(self.view[addr:addr + n])

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes at a guest address."""
        self.view[addr:addr + len(data)] = data

    def u32(self, addr: int) -> int:
        """Read a little-endian u32."""
        return int(_U32.unpack_from(self.view, addr)[0])

    def u64(self, addr: int) -> int:
        """Read a little-endian u64."""
        return int(_U64.unpack_from(self.view, addr)[0])

    def set_u32(self, addr: int, value: int) -> None:
        """Write a little-endian u32."""
        _U32.pack_into(self.view, addr, value)

    def set_u64(self, addr: int, value: int) -> None:
        """Write a little-endian u64."""
        _U64.pack_into(self.view, addr, value)

    def close(self) -> None:
        """Unmap."""
        if self.addr:
            self.view.release()
            libc.munmap(self.addr, self.size)
            self.addr = 0
