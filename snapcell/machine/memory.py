"""Guest memory: a memfd image and the host mappings of it.

A `MemoryImage` is a memfd holding a guest's physical memory. Sandboxes map it MAP_PRIVATE, so
pages are shared until a guest (or the host on its behalf) writes them: copy-on-write. A
`GuestMapping` is one such mapping plus typed accessors used by the host."""

from __future__ import annotations

import ctypes
import os
import struct

from ..kvm import libc
from .layout import PAGE

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

    @classmethod
    def from_fd(cls, fd: int, size: int) -> "MemoryImage":
        """Adopt an existing fd (ownership passes to the image)."""
        self = cls.__new__(cls)
        self.size, self.fd, self.sealed = size, fd, False
        return self

    def write_chunks(self, chunks: list[tuple[int, bytes]]) -> None:
        """Write (offset, bytes) chunks with pwrite (before sealing)."""
        for off, data in chunks:
            if off < 0 or off + len(data) > self.size:
                raise ValueError(f"chunk [{off:#x}, {off + len(data):#x}) outside the image")
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, off)
                view, off = view[n:], off + n

    def seal(self) -> None:
        """Make the image immutable (F_SEAL_WRITE|SHRINK|GROW|SEAL): snapshots share it safely."""
        if not self.sealed:
            import fcntl
            fcntl.fcntl(self.fd, libc.F_ADD_SEALS, libc.F_SEAL_WRITE | libc.F_SEAL_SHRINK
                        | libc.F_SEAL_GROW | libc.F_SEAL_SEAL)
            self.sealed = True

    def close(self) -> None:
        """Close the memfd (existing mappings stay valid)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class GuestMapping:
    """A private (copy-on-write) mapping of a `MemoryImage`, used as a VM's memory slot."""

    def __init__(self, image: MemoryImage) -> None:
        self.size = image.size
        self.addr = libc.mmap(self.size, libc.PROT_READ | libc.PROT_WRITE,
                              libc.MAP_PRIVATE | libc.MAP_NORESERVE, image.fd)
        self.view = memoryview((ctypes.c_ubyte * self.size).from_address(self.addr)).cast("B")

    def remap(self, image: MemoryImage) -> None:
        """Replace the contents with a fresh private view of `image` (MAP_FIXED at the same address:
        KVM sees the new pages without re-registering the slot)."""
        if image.size != self.size:
            raise ValueError("image size differs from the mapping")
        libc.mmap(self.size, libc.PROT_READ | libc.PROT_WRITE,
                  libc.MAP_PRIVATE | libc.MAP_NORESERVE | libc.MAP_FIXED, image.fd, 0, self.addr)

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
