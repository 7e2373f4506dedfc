"""The leaf page tables built region by region equal entries computed page by page (pure
logic: build_page_tables fills whole regions at once for speed)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from snapcell.machine.layout import PAGE, Perm, Region
from snapcell.machine.paging import PT_BASE, build_page_tables, pte_for

MEMORY = 1024 * PAGE
perms = st.sampled_from([Perm.NONE, Perm.R, Perm.R | Perm.W, Perm.R | Perm.X,
                         Perm.R | Perm.W | Perm.X, Perm.R | Perm.USER,
                         Perm.R | Perm.W | Perm.USER, Perm.R | Perm.X | Perm.USER])


@given(st.lists(st.tuples(st.integers(0, 1023), st.integers(1, 1024), perms), max_size=8))
def test_leaf_entries_match_page_by_page(spec: list[tuple[int, int, Perm]]) -> None:
    regions = [Region(f"r{i}", first * PAGE, min(MEMORY, (first + n) * PAGE) - first * PAGE, perm)
               for i, (first, n, perm) in enumerate(spec)]
    expected = [0] * (MEMORY // PAGE)
    for r in regions:                       # later regions win, as in build_page_tables
        if pte_for(0, r.perm):
            for page in range(r.start // PAGE, r.end // PAGE):
                expected[page] = pte_for(page * PAGE, r.perm)
    pts = dict(build_page_tables(regions, MEMORY))[PT_BASE]
    assert list(struct.unpack(f"<{MEMORY // PAGE}Q", pts)) == expected
