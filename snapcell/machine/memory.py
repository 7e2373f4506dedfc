"""Guest memory: the host mappings of memory images.

A `MemoryImage` (image.py) is part of a guest's physical memory: pieces of memfds or snapshot
files. Sandboxes map it MAP_PRIVATE, so pages are shared until a guest (or the host on its
behalf) writes them: copy-on-write. A `GuestMapping` is one VM's memory: a system image below
GUEST_BASE and a guest image above it."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time

from ..kvm import libc
from .image import MemoryImage
from .layout import GUEST_BASE, PAGE
from .warmset import ResetStats, WarmSet, pages

__all__ = ["GuestMapping", "MemoryImage", "ResetStats"]

# /proc/self/pagemap entry top byte: bit 7 = present (63), bit 6 = swapped (62),
# bit 5 = file-page or shared-anon (61). Private data = (present or swapped) and not file.
_PRIVATE_PAGE = bytes(1 if (b & 0xC0) and not (b & 0x20) else 0 for b in range(256))
_pagemap: list[int] = []


def _pagemap_fd() -> int:
    if not _pagemap:
        _pagemap.append(os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC))
    return _pagemap[0]


def _forget_pagemap() -> None:
    """In a forked child: the inherited descriptor still reads the *parent's* page tables
    (/proc/self named the parent when it was opened), so a scan would miss this process's
    private pages and a reset would leave a previous tenant's data in place. Close it; the
    next scan opens this process's own."""
    if _pagemap:
        try:
            os.close(_pagemap.pop())
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_pagemap)


class _pm_scan_arg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class _page_region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


# PAGEMAP_SCAN (Linux 6.7, <linux/fs.h>): _IOWR('f', 16, struct pm_scan_arg)
_PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_pm_scan_arg) << 16) | (ord("f") << 8) | 16
_PAGE_IS_FILE, _PAGE_IS_PRESENT, _PAGE_IS_SWAPPED, _PAGE_IS_PFNZERO = 1 << 2, 1 << 3, 1 << 4, 1 << 5
# Private = present or swapped, not file-backed, and not the shared zero page (which an
# anonymous zero background of a layered image maps on a read: it holds zeros, the image's
# content there).
_NOT_PRIVATE = _PAGE_IS_FILE | _PAGE_IS_PFNZERO
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
                                category_inverted=_NOT_PRIVATE, category_mask=_NOT_PRIVATE,
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


_clock = time.perf_counter_ns
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMapping:
    """Host view of one VM's guest-physical memory: a contiguous host range of `size` bytes whose
    low part [0, GUEST_BASE) privately maps the host-built *system image* and whose high part
    [GUEST_BASE, size) privately maps a *guest image* (copy-on-write, MAP_PRIVATE). KVM sees the
    range through memory slots (slots.py); re-mapping either part with MAP_FIXED swaps contents
    without re-registering them."""

    def __init__(self, size: int) -> None:
        if size <= GUEST_BASE or size % PAGE:
            raise ValueError(f"guest memory size {size:#x} too small or unaligned")
        self.size = size
        self.addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE,
                              libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE)
        self.view = memoryview((ctypes.c_ubyte * size).from_address(self.addr)).cast("B")
        self._scan = _PagemapScan(self.addr + GUEST_BASE, self.addr + size)
        self._writable: tuple[tuple[int, int], ...] | None = None
        self._scans: list[_PagemapScan] = []       # one per writable range, when restricted
        self.written_anywhere = False
        self.warm = WarmSet()             # which private pages warm resets keep (warmset.py)
        self.last_reset = ResetStats()    # what the last warm reset did

    def _map(self, gpa: int, length: int, fd: int, offset: int = 0) -> None:
        libc.mmap(length, libc.PROT_READ | libc.PROT_WRITE,
                  libc.MAP_PRIVATE | libc.MAP_NORESERVE | libc.MAP_FIXED, fd, offset,
                  self.addr + gpa)

    def map_system(self, image: MemoryImage) -> None:
        """Privately map the system image at guest address 0."""
        if image.size != GUEST_BASE:
            raise ValueError("system image must cover exactly [0, GUEST_BASE)")
        self._map(0, GUEST_BASE, image.fd)

    def map_guest(self, image: MemoryImage) -> None:
        """Privately map a guest image at GUEST_BASE, discarding every private page there: an
        anonymous zero background when the pieces leave holes, then one MAP_FIXED|MAP_PRIVATE
        mmap per piece at its backing offset."""
        if image.size != self.size - GUEST_BASE:
            raise ValueError(f"guest image of {image.size:#x} bytes does not fit a "
                             f"{self.size - GUEST_BASE:#x}-byte guest range")
        pieces = image.pieces
        if not image.tiles:
            libc.mmap(image.size, libc.PROT_READ | libc.PROT_WRITE,
                      libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE | libc.MAP_FIXED,
                      -1, 0, self.addr + GUEST_BASE)
        for off, n, backing, boff in pieces:
            self._map(GUEST_BASE + off, n, backing.fd, boff)
        self.warm.clear()
        self.last_reset = ResetStats(remapped=True)

    def release(self) -> None:
        """Drop every mapping's pages and file references (anonymous zero memory again)."""
        libc.mmap(self.size, libc.PROT_READ | libc.PROT_WRITE,
                  libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE | libc.MAP_FIXED,
                  -1, 0, self.addr)
        self.warm.clear()

    def dirty_guest_pages(self) -> list[tuple[int, int]]:
        """Runs (guest address, length) of guest-range pages that hold private (copy-on-write)
        data: present or swapped, and not file-backed."""
        base = self.addr
        runs = _scan_private(base + GUEST_BASE, base + self.size, self._scan)
        return [(a - base, b - a) for a, b in runs]

    def restrict_scan(self, writable: tuple[tuple[int, int], ...] | None) -> None:
        """Let resets look for private pages only in `writable` (sorted, disjoint guest-address
        ranges in the guest part): the ranges the guest's page tables let it write, where the
        host also writes on its behalf. Nothing else can hold a private page, and the scan
        costs ~40 ns per page present, read-only code and data included (thousands of pages
        for an interpreter). None: the whole guest part. Once `mark_written_anywhere` was
        called (a debugger may write code pages), always the whole part."""
        if writable == self._writable:
            return
        self._writable = writable
        base = self.addr
        self._scans = [] if writable is None else [
            _PagemapScan(base + a, base + b) for a, b in writable]

    def mark_written_anywhere(self) -> None:
        """The host may write anywhere in guest memory from now on (a debugger): every later
        reset of this mapping scans the whole guest part, whatever `restrict_scan` says."""
        self.written_anywhere = True

    def _private_runs(self) -> list[tuple[int, int]]:
        base = self.addr
        if self._writable is None or self.written_anywhere:
            return _scan_private(base + GUEST_BASE, base + self.size, self._scan)
        runs: list[tuple[int, int]] = []
        for scan in self._scans:
            runs += _scan_private(scan.start, scan.end, scan)
        return runs

    def reset_guest_pages(self, guest: MemoryImage) -> ResetStats:
        """Make the guest part equal `guest` (the image mapped there) again: one PAGEMAP_SCAN
        for the private pages, then per run either a copy of the image's bytes over it (the
        page stays mapped, so the guest does not pay a fault for it again: the hot path of
        every warm restore) or, for pages the reset policy does not keep warm
        (machine/warmset.py), MADV_DONTNEED, which maps the image's page there again. What the
        reset did is in the returned `ResetStats` (also `last_reset`)."""
        base, view = self.addr, self.view
        copy, drop, stats = self.warm.plan(self._private_runs())
        if copy:
            src, off = guest.read_view(), base + GUEST_BASE
            t = _clock()
            for a, b in copy:
                view[a - base:b - base] = src[a - off:b - off]
            self.warm.charge(_clock() - t, stats.copied)
        self._drop(drop)
        self.last_reset = stats
        return stats

    def trim_guest_pages(self) -> int:
        """Drop the private pages kept warm beyond the reset policy's floor (before the machine
        serves another user, whose working set is not the last one's); the number of pages
        dropped."""
        drop = self.warm.trim()
        self._drop(drop)
        return pages(drop)

    @staticmethod
    def _drop(runs: list[tuple[int, int]]) -> None:
        # MAP_PRIVATE: drops the private copies; a file/memfd piece shows the backing's page
        # again and the anonymous background (the image's zero holes) zeros
        for a, b in runs:
            libc.madvise(a, b - a, libc.MADV_DONTNEED)

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
