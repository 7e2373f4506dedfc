"""KVM memory slots registered on demand, as the guest first touches each chunk of its memory.

Under shadow paging (PVM) KVM allocates, at KVM_SET_USER_MEMORY_REGION, a reverse map of 8 bytes
and a write-tracking count of 2 bytes for every 4 KiB page of the slot, whether the guest ever
touches the page or not, plus ~16 KiB per slot (six vmalloc'd arrays of at least a page each):
2.5 MiB of host kernel memory for a 1 GiB guest that touches a few MiB of it. So a machine
registers the system part [0, SLOT_CHUNK) at creation and every other SLOT_CHUNK-aligned chunk
of guest-physical memory only when the guest first touches it:

- the page-directory entries of a chunk without a slot are not present in the machine's copy of
  the page tables (the PD page, supervisor-only, in the always-registered system part), so the
  guest's first access there is an ordinary #PF that reaches the host through the CPL0 stub;
- the host then registers the chunk, makes its page-directory entries present and resumes the
  guest at the stub's `iretq`, which executes the faulting instruction again. A not-present
  page-directory entry is never cached by the CPU nor shadowed by KVM, so nothing needs
  flushing; a fault in a chunk that has its slot is a real fault and is reported as before.

Slots only grow for the life of a machine (a pooled machine keeps its previous users' chunks,
like it keeps their shadow page tables warm). When a machine has registered so many chunks that
one slot over all of memory costs less kernel memory, it trades them for that one slot
(`MAX_CHUNK_SLOTS`)."""

from __future__ import annotations

from collections.abc import Callable

from .layout import GUEST_BASE, MIB, PAGE
from .paging import PD_ADDR, PT_BASE, PTE_A, PTE_P, PTE_RW, PTE_US

SLOT_CHUNK = 8 * MIB              # one slot's span (4 page-directory entries); holds GUEST_BASE
_PDE_SPAN = 512 * PAGE
_PDES_PER_CHUNK = SLOT_CHUNK // _PDE_SPAN
_UPPER = PTE_P | PTE_RW | PTE_US | PTE_A          # as paging.build_page_tables writes them
assert GUEST_BASE <= SLOT_CHUNK and SLOT_CHUNK % _PDE_SPAN == 0


def _slot_cost(size: int) -> int:
    """KVM's vmalloc'd bytes for one slot of `size` bytes under shadow paging (measured on PVM:
    rmaps for three page sizes, large-page info for two, write tracking; each array rounded
    up to whole pages)."""
    pages = size // PAGE

    def arr(n: int) -> int:
        return max(PAGE, (n + PAGE - 1) // PAGE * PAGE)
    return arr(pages * 8) + arr(pages * 2) + 4 * PAGE


class DemandSlots:
    """The memory slots of one machine of `size` bytes mapped at host address `host_addr`.
    `register(slot, gpa, size, host_addr)` is KVM_SET_USER_MEMORY_REGION (size 0 deletes)."""

    def __init__(self, register: Callable[[int, int, int, int], None], host_addr: int,
                 size: int) -> None:
        self._set = register
        self.host_addr, self.size = host_addr, size
        self.chunks = (size + SLOT_CHUNK - 1) // SLOT_CHUNK
        self.registered = bytearray(self.chunks)      # 1: chunk k has its slot (slot id k)
        self.count = 0
        self.whole = False                             # one slot over all memory instead
        # the page directory this machine's page tables must hold: entry i present when its
        # chunk has a slot (the system image's PD has all of them present)
        self._pdes = (size + _PDE_SPAN - 1) // _PDE_SPAN
        self.pd = bytearray(8 * self._pdes)
        whole_cost = _slot_cost(size)
        self.max_chunk_slots = max(2, next(
            (n for n in range(1, self.chunks + 1) if n * _slot_cost(SLOT_CHUNK) >= whole_cost),
            self.chunks))
        self._register(0)

    def _register(self, k: int) -> None:
        start = k * SLOT_CHUNK
        self._set(k, start, min(SLOT_CHUNK, self.size - start), self.host_addr + start)
        self.registered[k] = 1
        self.count += 1
        for i in range(k * _PDES_PER_CHUNK, min((k + 1) * _PDES_PER_CHUNK, self._pdes)):
            self.pd[8 * i:8 * i + 8] = ((PT_BASE + i * PAGE) | _UPPER).to_bytes(8, "little")

    def fault_in(self, addr: int) -> bool:
        """A #PF at guest address `addr`: True when it was the guest's first touch of a chunk
        without a slot (now registered: write `pd` into the page tables and resume the guest);
        False when it is a real fault."""
        if self.whole or not 0 <= addr < self.size:
            return False
        k = addr // SLOT_CHUNK
        if self.registered[k]:
            return False
        if self.count >= self.max_chunk_slots:
            self._consolidate()
        else:
            self._register(k)
        return True

    def _consolidate(self) -> None:
        """Replace the chunks' slots by one slot over all of memory (deleting a slot zaps KVM's
        shadow page tables: once in a machine's life, when its guests touched most chunks)."""
        for k in range(self.chunks):
            if self.registered[k]:
                self._set(k, k * SLOT_CHUNK, 0, self.host_addr + k * SLOT_CHUNK)
                self.registered[k] = 0
                self.count -= 1
        self._set(self.chunks, 0, self.size, self.host_addr)
        self.whole = True
        self.registered[:] = b"\1" * self.chunks
        for i in range(self._pdes):
            self.pd[8 * i:8 * i + 8] = ((PT_BASE + i * PAGE) | _UPPER).to_bytes(8, "little")

    def write_pd(self, view: memoryview) -> None:
        """Put this machine's page directory into its page tables (after the system image was
        mapped, or a chunk registered)."""
        view[PD_ADDR:PD_ADDR + len(self.pd)] = self.pd
