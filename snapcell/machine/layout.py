"""The guest-physical (== guest-virtual) memory map: fixed system area, then the guest's ELF
segments, buffers, heap and stack. Pure arithmetic, no KVM. See docs/guest-abi.md."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

PAGE = 0x1000
MIB = 1 << 20

# --- fixed system area (supervisor only unless noted) ------------------------------------------
GDT_ADDR = 0x1000
IDT_ADDR = 0x2000
TSS_ADDR = 0x3000
STUBS_ADDR = 0x4000
ABI_PAGE_ADDR = 0x5000          # user RW: the only user page of the system area
KSTACK_BOTTOM, KSTACK_TOP = 0x10000, 0x14000   # TSS.RSP0; guard pages at 0xF000 and 0x14000
IST1_BOTTOM, IST1_TOP = 0x16000, 0x18000       # TSS.IST1 for #DF; guard at 0x15000 and 0x18000
PAGE_TABLES_ADDR = 0x100000     # PML4, PDPT, PD, then one PT per 2 MiB of guest memory
GUEST_BASE = 0x400000           # lowest address of the guest's PT_LOAD segments
MAX_MEMORY = 1 << 30            # one PD covers 1 GiB


class Perm(IntFlag):
    """Page permissions as the guest sees them at CPL3."""

    NONE = 0
    R = 1
    W = 2
    X = 4
    USER = 8


@dataclass(frozen=True)
class Region:
    """A page-aligned span of guest memory with one permission."""

    name: str
    start: int
    size: int
    perm: Perm

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.start + self.size


class LayoutError(ValueError):
    """A memory layout that cannot be built (sizes, alignment, overlap, too large)."""


def page_up(n: int) -> int:
    """Round up to a page multiple."""
    return (n + PAGE - 1) & ~(PAGE - 1)


def page_down(n: int) -> int:
    """Round down to a page multiple."""
    return n & ~(PAGE - 1)


@dataclass(frozen=True)
class Segment:
    """A loadable ELF segment: where it goes and what the guest may do with it."""

    vaddr: int
    memsz: int
    perm: Perm


@dataclass(frozen=True)
class MemoryLayout:
    """Addresses and sizes of every user region. Two sandboxes with equal layouts can share
    snapshots."""

    elf_end: int
    input_addr: int
    input_size: int
    output_addr: int
    output_size: int
    heap_addr: int
    heap_size: int
    stack_addr: int
    stack_size: int

    @property
    def memory_size(self) -> int:
        """Total guest memory (the top of the stack)."""
        return self.stack_addr + self.stack_size

    @property
    def stack_top(self) -> int:
        """Initial stack pointer bound (exclusive)."""
        return self.stack_addr + self.stack_size

    @property
    def stack_guard(self) -> int:
        """Address of the unmapped page below the stack."""
        return self.stack_addr - PAGE

    @property
    def page_table_count(self) -> int:
        """Number of 4 KiB page tables (one per 2 MiB)."""
        return (self.memory_size + (2 * MIB) - 1) // (2 * MIB)

    @classmethod
    def compute(cls, elf_end: int, input_size: int, output_size: int, heap_size: int,
                stack_size: int) -> "MemoryLayout":
        """Place buffers, heap and stack after the ELF, each preceded by a guard page."""
        for name, v in (("input_size", input_size), ("output_size", output_size),
                        ("heap_size", heap_size), ("stack_size", stack_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % PAGE:
                raise LayoutError(f"{name} must be a positive multiple of {PAGE} bytes, got {v!r}")
        if not GUEST_BASE < elf_end <= MAX_MEMORY or elf_end % PAGE:
            raise LayoutError(f"ELF end {elf_end:#x} outside [{GUEST_BASE:#x}, {MAX_MEMORY:#x})")
        a = elf_end + PAGE
        input_addr = a
        a += input_size + PAGE
        output_addr = a
        a += output_size + PAGE
        heap_addr = a
        a += heap_size + PAGE
        stack_addr = a
        layout = cls(elf_end, input_addr, input_size, output_addr, output_size, heap_addr,
                     heap_size, stack_addr, stack_size)
        if layout.memory_size > MAX_MEMORY:
            raise LayoutError(f"guest memory {layout.memory_size:#x} exceeds {MAX_MEMORY:#x} bytes")
        return layout

    def user_regions(self) -> list[Region]:
        """The buffers, heap and stack (the ELF's segments come from the guest image)."""
        rw = Perm.R | Perm.W | Perm.USER
        return [Region("input", self.input_addr, self.input_size, rw),
                Region("output", self.output_addr, self.output_size, rw),
                Region("heap", self.heap_addr, self.heap_size, rw),
                Region("stack", self.stack_addr, self.stack_size, rw)]


def system_regions(layout: MemoryLayout) -> list[Region]:
    """The host-owned system area for a layout (page tables grow with memory size)."""
    s = Perm.R | Perm.W
    pt_bytes = (3 + layout.page_table_count) * PAGE
    return [Region("gdt", GDT_ADDR, PAGE, s), Region("idt", IDT_ADDR, PAGE, Perm.R),
            Region("tss", TSS_ADDR, PAGE, s), Region("stubs", STUBS_ADDR, PAGE, Perm.R | Perm.X),
            Region("abi", ABI_PAGE_ADDR, PAGE, Perm.R | Perm.W | Perm.USER),
            Region("kstack", KSTACK_BOTTOM, KSTACK_TOP - KSTACK_BOTTOM, s),
            Region("ist1", IST1_BOTTOM, IST1_TOP - IST1_BOTTOM, s),
            Region("pagetables", PAGE_TABLES_ADDR, pt_bytes, s)]


def segment_regions(segments: list[Segment]) -> list[Region]:
    """Page-granular regions for ELF segments; a page shared by two segments gets the union
    of their permissions. Swept over the segments' page boundaries (a guest's few segments span
    thousands of pages)."""
    spans = [(page_down(s.vaddr), page_up(s.vaddr + s.memsz), int(s.perm | Perm.USER))
             for s in segments]
    cuts = sorted({b for lo, hi, _ in spans for b in (lo, hi)})
    regions: list[Region] = []
    for lo, hi in zip(cuts, cuts[1:]):
        perm = 0
        for a, b, p in spans:
            if a < hi and lo < b:
                perm |= p
        if not perm:
            continue
        last = regions[-1] if regions else None
        if last is not None and last.end == lo and last.perm == perm:   # coalesce equal runs
            regions[-1] = Region("elf", last.start, hi - last.start, last.perm)
        else:
            regions.append(Region("elf", lo, hi - lo, Perm(perm)))
    return regions


class AddressSpace:
    """Which guest addresses the guest itself may read or write at CPL3. The host uses it to
    check every pointer a guest hands it before touching guest memory on the guest's behalf."""

    def __init__(self, regions: list[Region]) -> None:
        spans: list[tuple[int, int, Perm]] = []
        for r in sorted((r for r in regions if r.perm & Perm.USER), key=lambda r: r.start):
            if spans and spans[-1][1] == r.start and spans[-1][2] == r.perm:
                spans[-1] = (spans[-1][0], r.end, r.perm)
            else:
                spans.append((r.start, r.end, r.perm))
        self.spans = spans

    def user_range(self, addr: int, size: int, write: bool = False) -> bool:
        """True when [addr, addr+size) is entirely user-readable (and writable if `write`)."""
        if size < 0 or addr < 0:
            return False
        if size == 0:
            return True
        end = addr + size
        need = Perm.W if write else Perm.R
        for start, stop, perm in self.spans:
            if stop <= addr:
                continue
            if start > addr or not perm & need:
                return False
            if end <= stop:
                return True
            addr = stop
        return False

    def executable(self, addr: int) -> bool:
        """True when the guest may execute at `addr`."""
        return any(s <= addr < e and p & Perm.X for s, e, p in self.spans)
