"""Memory slots registered on demand (machine/slots.py): which slots a machine asks KVM for, and
the page directory it keeps beside them (pure logic; the real guests run in tests/test_pool.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from snapcell.machine.layout import GUEST_BASE, MAX_MEMORY, PAGE
from snapcell.machine.paging import PD_ADDR, build_page_tables
from snapcell.machine.slots import SLOT_CHUNK, DemandSlots

HOST = 0x7F0000000000


class Kvm:
    """What KVM_SET_USER_MEMORY_REGION was asked: slot id → (gpa, size, host address)."""

    def __init__(self) -> None:
        self.slots: dict[int, tuple[int, int, int]] = {}

    def set(self, slot: int, gpa: int, size: int, addr: int) -> None:
        if size == 0:
            del self.slots[slot]
            return
        assert slot not in self.slots
        for a, n, _ in self.slots.values():          # KVM refuses overlaps (EEXIST)
            assert gpa + size <= a or a + n <= gpa
        self.slots[slot] = (gpa, size, addr)


def covered(kvm: Kvm, addr: int) -> bool:
    return any(a <= addr < a + n and h == HOST + a for a, n, h in kvm.slots.values())


sizes = st.integers(GUEST_BASE // PAGE + 1, MAX_MEMORY // PAGE).map(lambda n: n * PAGE)


@given(sizes, st.lists(st.integers(0, MAX_MEMORY + SLOT_CHUNK), max_size=40))
def test_slots_cover_exactly_what_was_touched(size: int, touches: list[int]) -> None:
    kvm = Kvm()
    slots = DemandSlots(kvm.set, HOST, size)
    assert covered(kvm, 0) and covered(kvm, GUEST_BASE - 1)        # the system part, always
    image_pd = build_page_tables([], size)[2][1]
    touched = {0}
    for addr in touches:
        first = 0 <= addr < size and not covered(kvm, addr)
        assert slots.fault_in(addr) == first
        if 0 <= addr < size:
            touched.add(addr // SLOT_CHUNK)
        assert not slots.fault_in(addr)                  # a second fault there is a real one
        assert covered(kvm, addr) == (0 <= addr < size)
    for k in range(slots.chunks):
        assert covered(kvm, k * SLOT_CHUNK) == (slots.whole or k in touched)
    # the page directory: the system image's entries of chunks with a slot, zero elsewhere
    pd = bytes(slots.pd)
    assert len(pd) == len(image_pd)
    for i in range(0, len(pd), 8):
        chunk = i // 8 * (512 * PAGE) // SLOT_CHUNK
        want = image_pd[i:i + 8] if slots.whole or chunk in touched else bytes(8)
        assert pd[i:i + 8] == want
    view = memoryview(bytearray(PD_ADDR + len(pd)))
    slots.write_pd(view)
    assert view[PD_ADDR:] == pd


def test_many_chunks_become_one_slot() -> None:
    """A machine whose guests touched most of a 1 GiB memory holds one slot over all of it,
    which costs KVM less than one per chunk."""
    kvm = Kvm()
    slots = DemandSlots(kvm.set, HOST, MAX_MEMORY)
    assert 2 <= slots.max_chunk_slots < slots.chunks
    for k in range(1, slots.chunks):
        assert slots.fault_in(k * SLOT_CHUNK + PAGE)
        if slots.whole:
            break
    assert slots.whole and kvm.slots == {slots.chunks: (0, MAX_MEMORY, HOST)}
    assert not slots.fault_in(MAX_MEMORY - PAGE)
