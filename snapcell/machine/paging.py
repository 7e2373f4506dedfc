"""4-level x86-64 page tables with 4 KiB pages, built by the host into guest memory."""

from __future__ import annotations

import struct
import sys
from array import array

from .layout import MAX_MEMORY, PAGE, PAGE_TABLES_ADDR, Perm, Region

# Page-table entry bits (Intel SDM Vol. 3A, 4.5): P, R/W, U/S, and XD (bit 63, needs EFER.NXE).
PTE_P, PTE_RW, PTE_US, PTE_NX = 1 << 0, 1 << 1, 1 << 2, 1 << 63
# Accessed (bit 5, every level) and Dirty (bit 6, leaves) are set up front (SDM 4.8): the CPU,
# or PVM's shadow MMU on its behalf, would otherwise write them into the page tables on first
# use, making those system pages private to the sandbox and a cost of every reset.
PTE_A, PTE_D = 1 << 5, 1 << 6

assert sys.byteorder == "little" and array("Q").itemsize == 8     # entries are written natively
LOW_FLAGS = PAGE - 1            # flag bits below the page address (all of them but XD)

PML4_ADDR = PAGE_TABLES_ADDR
PDPT_ADDR = PAGE_TABLES_ADDR + PAGE
PD_ADDR = PAGE_TABLES_ADDR + 2 * PAGE
PT_BASE = PAGE_TABLES_ADDR + 3 * PAGE


def pte_for(addr: int, perm: Perm) -> int:
    """The leaf entry for one page with the given permissions (not present when NONE)."""
    flags = pte_flags(perm)
    return addr | flags if flags else 0


def pte_flags(perm: Perm) -> int:
    """The flag bits of a leaf entry with the given permissions (0: not present)."""
    if not perm & (Perm.R | Perm.W | Perm.X):
        return 0
    e = PTE_P | PTE_A | PTE_D
    if perm & Perm.W:
        e |= PTE_RW
    if perm & Perm.USER:
        e |= PTE_US
    if not perm & Perm.X:
        e |= PTE_NX
    return e


def build_page_tables(regions: list[Region], memory_size: int) -> list[tuple[int, bytes]]:
    """Return (guest address, bytes) chunks to write: PML4, PDPT, PD and the PTs. Upper levels
    grant U/S and R/W to everything below (permissions AND across levels), leaves decide."""
    if memory_size > MAX_MEMORY:
        raise ValueError("memory too large for one page directory")
    n_pt = (memory_size + (512 * PAGE) - 1) // (512 * PAGE)
    upper = PTE_P | PTE_RW | PTE_US | PTE_A
    pml4 = struct.pack("<Q", PDPT_ADDR | upper)
    pdpt = struct.pack("<Q", PD_ADDR | upper)
    pd = b"".join(struct.pack("<Q", (PT_BASE + i * PAGE) | upper) for i in range(n_pt))
    pts = bytearray(n_pt * PAGE)
    for r in regions:
        if r.end > n_pt * 512 * PAGE and r.end > r.start:
            raise ValueError(f"region {r.name} beyond the mapped memory")
        flags = pte_flags(r.perm)
        if not flags:
            continue
        # one region's entries at once: `addr | flags` for each of its pages (no Perm
        # arithmetic per page: a 160 MiB guest has ~43,000 of them). The range runs over
        # small ints (addresses and the low flag bits); XD, bit 63, is then set in the top
        # byte of every entry (addresses stay below 2^56): ints of 64 bits would make this
        # several times slower, and it is on the path of every process's first sandbox.
        first, count = r.start // PAGE, (r.end - r.start + PAGE - 1) // PAGE
        start, end = first * 8, (first + count) * 8
        assert not flags & ~(LOW_FLAGS | PTE_NX)
        pts[start:end] = array("Q", range(first * PAGE | (flags & LOW_FLAGS),
                                          (first + count) * PAGE, PAGE))
        if flags & PTE_NX:
            pts[start + 7:end:8] = b"\x80" * count
    return [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt), (PD_ADDR, pd), (PT_BASE, bytes(pts))]
