"""Memory layout, page tables, descriptors and the address-space checks (pure logic)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.machine import cpu
from snapcell.machine.layout import (
    GUEST_BASE,
    MAX_MEMORY,
    PAGE,
    AddressSpace,
    LayoutError,
    MemoryLayout,
    Perm,
    Region,
    Segment,
    segment_regions,
    system_regions,
)
from snapcell.machine.paging import PT_BASE, PTE_NX, PTE_P, PTE_RW, PTE_US, build_page_tables

pages = st.integers(1, 512).map(lambda n: n * PAGE)


@given(pages, pages, pages, pages, st.integers(1, 256).map(lambda n: GUEST_BASE + n * PAGE))
def test_layout_regions_disjoint_and_guarded(i: int, o: int, h: int, s: int, elf_end: int) -> None:
    lay = MemoryLayout.compute(elf_end, i, o, h, s)
    regs = sorted(lay.user_regions(), key=lambda r: r.start)
    prev = elf_end
    for r in regs:
        assert r.start >= prev + PAGE          # a guard page before every region
        assert r.start % PAGE == 0 and r.size % PAGE == 0
        prev = r.end
    assert lay.memory_size == lay.stack_top == regs[-1].end
    assert lay.stack_guard == lay.stack_addr - PAGE


def test_layout_rejects() -> None:
    with pytest.raises(LayoutError):
        MemoryLayout.compute(GUEST_BASE + PAGE, 100, PAGE, PAGE, PAGE)
    with pytest.raises(LayoutError):
        MemoryLayout.compute(GUEST_BASE + PAGE, 0, PAGE, PAGE, PAGE)
    with pytest.raises(LayoutError):
        MemoryLayout.compute(GUEST_BASE + PAGE, PAGE, PAGE, MAX_MEMORY, PAGE)
    with pytest.raises(LayoutError):
        MemoryLayout.compute(GUEST_BASE - PAGE, PAGE, PAGE, PAGE, PAGE)


def _regions_page_by_page(segments: list[Segment]) -> list[tuple[int, int, int]]:
    """The reference: every page's union of permissions, coalesced."""
    from snapcell.machine.layout import page_down, page_up
    perms: dict[int, int] = {}
    for seg in segments:
        for p in range(page_down(seg.vaddr), page_up(seg.vaddr + seg.memsz), PAGE):
            perms[p] = perms.get(p, 0) | int(seg.perm | Perm.USER)
    out: list[tuple[int, int, int]] = []
    for p, perm in sorted(perms.items()):
        if out and out[-1][0] + out[-1][1] == p and out[-1][2] == perm:
            out[-1] = (out[-1][0], out[-1][1] + PAGE, perm)
        else:
            out.append((p, PAGE, perm))
    return out


perm_st = st.sampled_from([Perm.R, Perm.R | Perm.W, Perm.R | Perm.X, Perm.R | Perm.W | Perm.X])


@given(st.lists(st.tuples(st.integers(0, 40 * PAGE), st.integers(0, 12 * PAGE), perm_st),
                max_size=6))
def test_segment_regions_match_page_by_page(segs: list[tuple[int, int, Perm]]) -> None:
    segments = [Segment(GUEST_BASE + v, n, p) for v, n, p in segs]
    got = [(r.start, r.size, int(r.perm)) for r in segment_regions(segments)]
    assert got == _regions_page_by_page(segments)


def test_page_tables_permissions() -> None:
    lay = MemoryLayout.compute(GUEST_BASE + 4 * PAGE, PAGE, PAGE, 4 * PAGE, 4 * PAGE)
    segs = segment_regions([Segment(GUEST_BASE, PAGE, Perm.R | Perm.X),
                            Segment(GUEST_BASE + PAGE, 100, Perm.R),
                            Segment(GUEST_BASE + 2 * PAGE, PAGE, Perm.R | Perm.W)])
    chunks = dict(build_page_tables(system_regions(lay) + segs + lay.user_regions(), lay.memory_size))
    pts = chunks[PT_BASE]

    def pte(addr: int) -> int:
        return int(struct.unpack_from("<Q", pts, (addr // PAGE) * 8)[0])

    assert pte(0) == 0                                              # null page unmapped
    assert pte(GUEST_BASE) & (PTE_P | PTE_US | PTE_RW | PTE_NX) == PTE_P | PTE_US
    assert pte(GUEST_BASE + PAGE) & PTE_NX and not pte(GUEST_BASE + PAGE) & PTE_RW
    assert pte(GUEST_BASE + 2 * PAGE) & PTE_RW
    assert not pte(cpu.IDT_ADDR) & PTE_US                           # privileged pages
    assert not pte(PT_BASE) & PTE_US
    assert pte(lay.stack_guard) == 0 and pte(lay.input_addr - PAGE) == 0
    assert pte(lay.stack_addr) & PTE_US and pte(lay.stack_addr) & PTE_NX


def test_address_space() -> None:
    space = AddressSpace([Region("a", 0x1000, 0x2000, Perm.R | Perm.W | Perm.USER),
                          Region("b", 0x3000, 0x1000, Perm.R | Perm.USER),
                          Region("k", 0x5000, 0x1000, Perm.R | Perm.W)])
    assert space.user_range(0x1000, 0x3000)
    assert not space.user_range(0x1000, 0x3000, write=True)
    assert space.user_range(0x1000, 0x2000, write=True)
    assert not space.user_range(0x5000, 1)
    assert not space.user_range(0xFFF, 2)
    assert not space.user_range(0x3FFF, 2)
    assert space.user_range(0x9000, 0)
    assert not space.user_range(-1, 1)


def test_tss_bitmap_grants_only_ports() -> None:
    tss = cpu.tss_bytes((0x10, 0x13))
    bitmap = tss[cpu.TSS_IOMAP_OFFSET:]
    granted = [p for p in range(256) if not bitmap[p // 8] >> (p % 8) & 1]
    assert granted == [0x10, 0x13]
    assert bitmap[-1] == 0xFF
    with pytest.raises(ValueError):
        cpu.tss_bytes((0x45,))


def test_idt_and_stubs() -> None:
    idt = cpu.idt_bytes()
    for v in range(32):
        lo, hi = struct.unpack_from("<QQ", idt, 16 * v)
        handler = (lo & 0xFFFF) | ((lo >> 48) << 16) | (hi << 32)
        assert handler == cpu.stub_address(v)
        assert (lo >> 47) & 1 == 1                                  # present
        assert (lo >> 45) & 3 == (3 if v == 3 else 0)               # DPL
        assert (lo >> 32) & 7 == (1 if v == 8 else 0)               # IST
    stubs = cpu.stubs_bytes()
    assert stubs[16 * 14:16 * 14 + 2] == bytes([0xE6, 0x4E])
    assert stubs[16 * 14 + 2:16 * 14 + 6] == bytes([0x48, 0x83, 0xC4, 0x08])
