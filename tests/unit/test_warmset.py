"""The warm-reset policy (machine/warmset.py) as pure logic: the run arithmetic against Python
sets of pages, and the policy's promises — every private page is copied or dropped, exactly
once; a large growth is dropped at once; a working set written by consecutive runs is kept;
what is kept beyond the floor decays and is trimmed; the base stays bounded by the floor."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.machine.layout import PAGE
from snapcell.machine.warmset import Runs, WarmSet, intersect, pages, subtract, union

PAGES = 64
page_sets = st.sets(st.integers(0, PAGES - 1), max_size=PAGES)


def runs_of(s: set[int]) -> Runs:
    """Sorted, disjoint, merged byte runs of a set of page numbers."""
    out: Runs = []
    for p in sorted(s):
        if out and out[-1][1] == p * PAGE:
            out[-1] = (out[-1][0], (p + 1) * PAGE)
        else:
            out.append((p * PAGE, (p + 1) * PAGE))
    return out


def set_of(runs: Runs) -> set[int]:
    """The page numbers `runs` cover (and a check that they are sorted and disjoint)."""
    out: set[int] = set()
    last = -1
    for a, b in runs:
        assert a % PAGE == 0 and b % PAGE == 0 and last <= a < b
        last = b
        out |= set(range(a // PAGE, b // PAGE))
    return out


@given(page_sets, page_sets)
def test_run_arithmetic_matches_sets(a: set[int], b: set[int]) -> None:
    ra, rb = runs_of(a), runs_of(b)
    assert set_of(subtract(ra, rb)) == a - b
    assert set_of(intersect(ra, rb)) == a & b
    assert set_of(union(ra, rb)) == a | b
    assert union(ra, rb) == runs_of(a | b)          # adjacent runs merged
    assert pages(ra) == len(a)


@settings(max_examples=300)
@given(st.lists(page_sets, min_size=1, max_size=12), st.integers(0, 8), st.integers(0, 16),
       st.integers(0, 4))
def test_every_private_page_is_copied_or_dropped_once(
        writes: list[set[int]], growth: int, floor: int, decay: int) -> None:
    """Simulate resets: the private set is what was kept plus what the run wrote; each plan
    splits it exactly; the kept base never exceeds the floor."""
    w = WarmSet(growth=growth, floor=floor, decay=decay)
    kept: set[int] = set()
    for written in writes:
        private = kept | written
        copy, drop, stats = w.plan(runs_of(private))
        c, d = set_of(copy), set_of(drop)
        assert c | d == private and not c & d
        assert (stats.private, stats.copied, stats.dropped) == (len(private), len(c), len(d))
        assert w.base_pages <= floor
        assert set_of(w.base) | set_of(w.extra) == c
        kept = c
        trimmed = set_of(w.trim()) if len(written) % 3 == 0 else set()
        kept -= trimmed
        assert set_of(w.base) | set_of(w.extra) == kept


def test_growth_is_dropped_unless_written_again_soon() -> None:
    w = WarmSet(growth=4, floor=8, decay=3, remember=2)
    small = runs_of({0, 1, 2})
    assert w.plan(small)[:2] == (small, [])             # warming up: kept
    assert w.plan(small)[:2] == (small, [])             # nothing new: hot path
    heavy = runs_of({0, 1, 2} | set(range(10, 40)))
    copy, drop, stats = w.plan(heavy)                   # one large run: dropped
    assert set_of(copy) == {0, 1, 2} and set_of(drop) == set(range(10, 40))
    assert (stats.private, stats.copied, stats.dropped) == (33, 3, 30)
    for _ in range(3):                                  # `remember` resets later: forgotten
        assert w.plan(small)[:2] == (small, [])
    copy, drop, _ = w.plan(heavy)                       # so dropped again ...
    assert set_of(drop) == set(range(10, 40))
    assert w.plan(small)[:2] == (small, [])
    copy, drop, _ = w.plan(heavy)                       # ... and written again soon: kept
    assert copy == heavy and drop == []
    assert w.base_pages <= 8 and w.extra_pages > 0
    # kept beyond the floor: copied by `decay` resets in all (the one that kept it counts),
    # then dropped
    for _ in range(2):
        assert w.plan(heavy)[:2] == (heavy, [])
    copy, drop, _ = w.plan(heavy)
    assert drop and set_of(drop) <= set(range(10, 40)) and w.extra == []
    assert set_of(copy) | set_of(drop) == set_of(heavy)
    copy, drop, _ = w.plan(heavy)                       # written again: kept again
    assert copy == heavy and drop == []


def test_trim_drops_only_the_extra() -> None:
    w = WarmSet(growth=2, floor=2, decay=100)
    w.plan(runs_of({0, 1}))
    big = runs_of({0, 1} | set(range(5, 15)))
    w.plan(big)
    w.plan(big)                                               # kept (written twice)
    assert set_of(w.extra) == set(range(5, 15))
    assert set_of(w.trim()) == set(range(5, 15))
    assert w.extra == [] and set_of(w.base) == {0, 1} and w.dropped == []
    # after a trim, the next growth counts as new again (not "written twice")
    copy, drop, _ = w.plan(big)
    assert set_of(drop) == set(range(5, 15))


def test_extra_is_dropped_once_its_copies_cost_a_fault() -> None:
    """Ski rental on the measured copy time: the extra goes once the resets have spent on
    copying it what faulting its pages in again would cost, long before `decay` resets."""
    w = WarmSet(growth=64, floor=4, decay=1000, fault_ns=1000)
    heavy = runs_of(set(range(20)))
    assert w.plan(heavy)[:2] == (heavy, [])            # kept, beyond the floor: extra
    assert w.extra_pages == 20
    resets = 0
    while w.extra:
        w.charge(2000, 20)                              # 100 ns a page: 2,000 ns of rent each
        copy, drop, _ = w.plan(heavy)
        resets += 1
        assert set_of(copy) | set_of(drop) == set(range(20))
    assert resets == 10 and set_of(drop) == set(range(20))    # 20 pages x 1,000 ns of rent
    assert w.plan(heavy)[1] == []                       # written again soon after: kept again
