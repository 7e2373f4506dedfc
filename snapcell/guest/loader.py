"""Building a guest's initial memory image: system area, page tables, ELF segments, the ABI
page and a Linux-style initial stack for musl's `_start`."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..machine import cpu
from ..machine.layout import PAGE, MemoryLayout, segment_regions, system_regions
from ..machine.memory import MemoryImage
from ..machine.paging import build_page_tables
from . import abi
from .elf import GuestBinary

# auxv keys (<elf.h>)
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_ENTRY = 0, 3, 4, 5, 6, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_SECURE, AT_RANDOM = 11, 12, 13, 14, 23, 25


@dataclass(frozen=True)
class InitialImage:
    """A built image and where the vCPU starts."""

    image: MemoryImage
    entry: int
    rsp: int


def abi_page(layout: MemoryLayout) -> bytes:
    """The ABI page contents (docs/guest-abi.md)."""
    page = bytearray(PAGE)
    base = abi.ABI_MAGIC_OFF
    for off, value in ((abi.ABI_MAGIC_OFF, abi.ABI_MAGIC), (abi.ABI_VERSION_OFF, abi.ABI_VERSION),
                       (abi.ABI_INPUT_ADDR, layout.input_addr), (abi.ABI_INPUT_SIZE, layout.input_size),
                       (abi.ABI_OUTPUT_ADDR, layout.output_addr),
                       (abi.ABI_OUTPUT_SIZE, layout.output_size),
                       (abi.ABI_HEAP_ADDR, layout.heap_addr), (abi.ABI_HEAP_SIZE, layout.heap_size),
                       (abi.ABI_STACK_TOP, layout.stack_top)):
        struct.pack_into("<Q", page, off - base, value)
    return bytes(page)


def initial_stack(guest: GuestBinary, layout: MemoryLayout, random16: bytes) -> tuple[int, bytes]:
    """(rsp, bytes at rsp): argc, argv, envp, auxv, then the strings and AT_RANDOM bytes."""
    top = layout.stack_top
    strings = b"guest\0"
    blob_addr = top - 64                       # argv[0] string and AT_RANDOM live at the top
    argv0 = blob_addr
    rnd = blob_addr + 16
    auxv = [(AT_PHDR, guest.phdr_addr), (AT_PHENT, guest.phentsize), (AT_PHNUM, guest.phnum),
            (AT_PAGESZ, PAGE), (AT_ENTRY, guest.entry), (AT_UID, 0), (AT_EUID, 0), (AT_GID, 0),
            (AT_EGID, 0), (AT_SECURE, 0), (AT_RANDOM, rnd), (AT_NULL, 0)]
    words = [1, argv0, 0, 0] + [x for kv in auxv for x in kv]
    vec = struct.pack(f"<{len(words)}Q", *words)
    rsp = (blob_addr - len(vec)) & ~0xF        # 16-byte aligned at _start, as the kernel does
    blob = bytearray(top - rsp)
    blob[:len(vec)] = vec
    s = blob_addr - rsp
    blob[s:s + len(strings)] = strings
    blob[s + 16:s + 32] = random16
    return rsp, bytes(blob)


def build_initial_image(guest: GuestBinary, layout: MemoryLayout) -> InitialImage:
    """Write everything a fresh guest needs into a new memfd image."""
    regions = system_regions(layout) + segment_regions(guest.machine_segments()) \
        + layout.user_regions()
    image = MemoryImage(layout.memory_size)
    try:
        chunks = cpu.system_chunks(abi.GUEST_PORTS)
        chunks += build_page_tables(regions, layout.memory_size)
        chunks += [(s.vaddr, s.data) for s in guest.segments if s.data]
        chunks.append((abi.ABI_MAGIC_OFF, abi_page(layout)))
        rsp, stack = initial_stack(guest, layout, os.urandom(16))
        chunks.append((rsp, stack))
        image.write_chunks(chunks)
    except BaseException:
        image.close()
        raise
    return InitialImage(image, guest.entry, rsp)
