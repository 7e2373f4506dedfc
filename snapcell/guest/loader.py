"""Building a guest's memory: the host-owned *system image* (GDT, IDT, TSS, trap stubs, ABI page,
page tables — below GUEST_BASE) and the *guest image* (ELF segments and a Linux-style initial
stack for musl's `_start` — from GUEST_BASE up)."""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..machine import cpu
from ..machine.layout import GUEST_BASE, PAGE, MemoryLayout, Segment, segment_regions, system_regions
from ..machine.memory import MemoryImage
from ..machine.paging import build_page_tables
from . import abi
from .elf import GuestBinary

# auxv keys (<elf.h>)
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_ENTRY = 0, 3, 4, 5, 6, 7, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_SECURE, AT_RANDOM = 11, 12, 13, 14, 23, 25

ABI_HEADER_SIZE = 0x48


def abi_header(layout: MemoryLayout) -> bytes:
    """The host-written fields of the ABI page (docs/guest-abi.md)."""
    return struct.pack("<9Q", abi.ABI_MAGIC, abi.ABI_VERSION, layout.input_addr, layout.input_size,
                       layout.output_addr, layout.output_size, layout.heap_addr, layout.heap_size,
                       layout.stack_top)


def build_system_image(layout: MemoryLayout, segments: tuple[Segment, ...]) -> MemoryImage:
    """A sealed image of [0, GUEST_BASE): privileged structures, the ABI page and page tables
    for this layout and these segment permissions. Never derived from untrusted bytes."""
    regions = system_regions(layout) + segment_regions(list(segments)) + layout.user_regions()
    image = MemoryImage(GUEST_BASE, "snapcell-system")
    try:
        chunks = cpu.system_chunks(abi.GUEST_PORTS)
        chunks += build_page_tables(regions, layout.memory_size)
        chunks.append((abi.ABI_MAGIC_OFF, abi_header(layout)))
        image.write_chunks(chunks)
        image.seal()
    except BaseException:
        image.close()
        raise
    return image


class _SystemImageCache:
    """System images are identical for equal (layout, segments): build each once per process."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[MemoryLayout, tuple[Segment, ...]], MemoryImage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, layout: MemoryLayout, segments: tuple[Segment, ...]) -> MemoryImage:
        key = (layout, segments)
        with self._lock:
            img = self._items.get(key)
            if img is not None:
                self._items.move_to_end(key)
                return img
        img = build_system_image(layout, segments)
        with self._lock:
            self._items[key] = img
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)   # mappings keep their file alive
        return img

    def clear(self) -> None:
        """Forget every cached image (mapped ones stay alive until unmapped)."""
        with self._lock:
            self._items.clear()


system_images = _SystemImageCache()


@dataclass(frozen=True)
class GuestImage:
    """A fresh guest image and the initial entry state."""

    image: MemoryImage
    entry: int
    rsp: int


def initial_stack(guest: GuestBinary, layout: MemoryLayout, random16: bytes) -> tuple[int, bytes]:
    """(rsp, bytes at rsp): argc, argv, envp, auxv, then the argv[0] string and AT_RANDOM bytes."""
    top = layout.stack_top
    blob_addr = top - 64                       # argv[0] string and AT_RANDOM live at the top
    argv0, rnd = blob_addr, blob_addr + 16
    auxv = [(AT_PHDR, guest.phdr_addr), (AT_PHENT, guest.phentsize), (AT_PHNUM, guest.phnum),
            (AT_PAGESZ, PAGE), (AT_ENTRY, guest.entry), (AT_UID, 0), (AT_EUID, 0), (AT_GID, 0),
            (AT_EGID, 0), (AT_SECURE, 0), (AT_RANDOM, rnd)]
    if guest.interp_base:                      # a dynamic guest: where its interpreter is
        auxv.append((AT_BASE, guest.interp_base))
    auxv.append((AT_NULL, 0))
    words = [1, argv0, 0, 0] + [x for kv in auxv for x in kv]
    vec = struct.pack(f"<{len(words)}Q", *words)
    rsp = (blob_addr - len(vec)) & ~0xF        # 16-byte aligned at _start, as the kernel does
    blob = bytearray(top - rsp)
    blob[:len(vec)] = vec
    s = blob_addr - rsp
    blob[s:s + 6] = b"guest\0"
    blob[s + 16:s + 32] = random16
    return rsp, bytes(blob)


def build_guest_image(guest: GuestBinary, layout: MemoryLayout) -> GuestImage:
    """A sealed image of [GUEST_BASE, memory_size) with the ELF loaded and the initial stack."""
    image = MemoryImage(layout.memory_size - GUEST_BASE)
    try:
        chunks = [(s.vaddr - GUEST_BASE, s.data) for s in guest.segments if s.data]
        rsp, stack = initial_stack(guest, layout, os.urandom(16))
        chunks.append((rsp - GUEST_BASE, stack))
        image.write_chunks(chunks)
        image.seal()
    except BaseException:
        image.close()
        raise
    return GuestImage(image, guest.start, rsp)
