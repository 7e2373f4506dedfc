"""The span a reset scans for private pages (snapcell/sandbox/core.py, `writable_span`): it
covers every guest-part page the guest may write and none of the read-only pages before the
first one (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from snapcell.machine.layout import GUEST_BASE, PAGE, AddressSpace, Perm, Region
from snapcell.sandbox.core import writable_span

SIZE = GUEST_BASE + 4096 * PAGE
PERMS = [Perm.R, Perm.R | Perm.X, Perm.R | Perm.W, Perm.R | Perm.W | Perm.X]


@st.composite
def spaces(draw: st.DrawFn) -> AddressSpace:
    regions, at = [], draw(st.integers(0, 64)) * PAGE
    for _ in range(draw(st.integers(0, 8))):
        size = draw(st.integers(1, 256)) * PAGE
        perm = draw(st.sampled_from(PERMS)) | (Perm.USER if draw(st.booleans()) else Perm.NONE)
        regions.append(Region("r", at, size, perm))
        at += size + draw(st.integers(0, 4)) * PAGE
    return AddressSpace(regions)


@given(spaces())
def test_the_span_covers_every_writable_guest_page(space: AddressSpace) -> None:
    span = writable_span(space, SIZE)
    writable = [p for p in range(GUEST_BASE, SIZE, PAGE) if space.user_range(p, PAGE, write=True)]
    if not writable:
        assert span == ()
        return
    ((lo, hi),) = span
    assert GUEST_BASE <= lo <= hi <= SIZE
    assert all(lo <= p < hi for p in writable)
    assert lo == writable[0] and hi == writable[-1] + PAGE


def test_nothing_below_the_guest_part() -> None:
    abi = Region("abi", GUEST_BASE - PAGE, PAGE, Perm.R | Perm.W | Perm.USER)
    code = Region("elf", GUEST_BASE, 8 * PAGE, Perm.R | Perm.X | Perm.USER)
    data = Region("elf", GUEST_BASE + 8 * PAGE, 2 * PAGE, Perm.R | Perm.W | Perm.USER)
    assert writable_span(AddressSpace([abi, code, data]), SIZE) == \
        ((GUEST_BASE + 8 * PAGE, GUEST_BASE + 10 * PAGE),)
