"""Which private guest pages a warm reset keeps, and which it drops.

A warm reset (`GuestMapping.reset_guest_pages`) makes guest memory equal its image again. Every
*private* page (one the guest, or the host on its behalf, wrote since the image was mapped) is
either **copied back** from the image — it stays mapped and writable, so the next run writes it
without a fault — or **dropped** (MADV_DONTNEED: the mapping shows the image's page again, and
the next write to it is a copy-on-write fault).

Tracking which pages a run wrote would let a reset copy only those, but every mechanism for it
write-protects pages, and under PVM a guest write to a write-protected page costs ~60–100 µs
(uffd write-protect, KVM dirty logging and soft-dirty all measured so, docs/architecture.md),
against ~0.2–0.6 µs to copy a page back. So resets copy every page they keep, and this policy
bounds what they keep: a run cannot make every later reset slower by dirtying much memory once.

- A reset that finds at most `growth` pages newly private keeps them (the working set warming
  up). A larger growth is dropped at once — but pages dropped within the last `remember`
  resets that come back are kept (a run that wrote them before wrote them again: a working
  set, such as a module imported run after run with other runs in between).
- Kept pages form the *base* up to `floor` pages; beyond it they are *extra*, which is dropped
  once copying them has cost what faulting them in again once would (ski rental: `charge`
  adds each reset's measured copy time, the extra's share of it, against `fault_ns` per page),
  after `decay` resets at the latest, and whenever the machine goes back to the pool for
  another user (`trim`). Copying scattered pages costs 1–3 µs each on a loaded PVM host
  (measured: after a matplotlib run, 3,787 kept pages took 8–20 ms per reset), so the measured
  rent matters: a fixed count of resets would keep a heavy run's pages copied for seconds.

The set arithmetic is on *runs*: sorted, disjoint `(start, end)` byte ranges, page aligned."""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from .layout import PAGE

Runs = list[tuple[int, int]]
_START, _END = itemgetter(0), itemgetter(1)

GROWTH_PAGES = 256        # newly private pages one reset keeps (1 MiB)
FLOOR_PAGES = 512         # kept pages that never decay (2 MiB): the worst lasting copy cost
DECAY_RESETS = 256        # resets after which pages kept beyond the floor are dropped
FAULT_NS = 60_000         # a write fault on a dropped page under PVM (60-130 µs measured)
REMEMBER_RESETS = 16      # resets after which a drop is forgotten


def pages(runs: Runs) -> int:
    """Number of pages in `runs`."""
    n: int = sum(map(_END, runs)) - sum(map(_START, runs))
    return n // PAGE


def subtract(a: Runs, b: Runs) -> Runs:
    """The parts of `a` not in `b`."""
    out: Runs = []
    j, nb = 0, len(b)
    for start, end in a:
        while j < nb and b[j][1] <= start:
            j += 1
        k = j
        while k < nb:
            bs, be = b[k]
            if bs >= end:
                break
            if bs > start:
                out.append((start, bs))
            if be > start:
                start = be
            if start >= end:
                break
            k += 1
        if start < end:
            out.append((start, end))
    return out


def intersect(a: Runs, b: Runs) -> Runs:
    """The parts of `a` also in `b`."""
    out: Runs = []
    i = j = 0
    na, nb = len(a), len(b)
    while i < na and j < nb:
        a0, a1 = a[i]
        b0, b1 = b[j]
        start = a0 if a0 > b0 else b0
        if a1 <= b1:
            if start < a1:
                out.append((start, a1))
            i += 1
        else:
            if start < b1:
                out.append((start, b1))
            j += 1
    return out


def union(a: Runs, b: Runs) -> Runs:
    """`a` and `b` together, adjacent runs merged."""
    out: Runs = []
    for start, end in sorted(a + b):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


@dataclass
class ResetStats:
    """What one reset of a guest mapping did, in pages: `private` found by the scan, `copied`
    back from the image, `dropped` back onto it (MADV_DONTNEED) — or `remapped`: the image was
    mapped afresh (a cold reset: no scan, every private page gone)."""

    private: int = 0
    copied: int = 0
    dropped: int = 0
    remapped: bool = False


class WarmSet:
    """The reset policy of one guest mapping (see the module docstring): `plan` splits the
    private runs a reset found into the runs to copy back and the runs to drop."""

    def __init__(self, growth: int = GROWTH_PAGES, floor: int = FLOOR_PAGES,
                 decay: int = DECAY_RESETS, remember: int = REMEMBER_RESETS,
                 fault_ns: int = FAULT_NS) -> None:
        self.growth, self.floor, self.decay, self.remember = growth, floor, decay, remember
        self.fault_ns = fault_ns
        self.clear()

    def clear(self) -> None:
        """Forget everything (the image was mapped afresh: nothing is private)."""
        self.base: Runs = []
        self.extra: Runs = []
        self.kept: Runs = []              # base and extra together
        self.base_pages = self.extra_pages = 0
        self.dropped: Runs = []           # what the resets of the last `remember` dropped
        self.since_drop = 0               # resets since the last drop
        self.age = 0                      # resets since `extra` became non-empty
        self.rent = 0                     # ns spent copying `extra` back since then

    def _keep(self, runs: Runs) -> None:
        n = pages(runs)
        if self.base_pages + n <= self.floor:
            self.base, self.base_pages = union(self.base, runs), self.base_pages + n
        else:
            if not self.extra:
                self.age = self.rent = 0
            self.extra = union(self.extra, runs)
            self.extra_pages = pages(self.extra)

    def plan(self, private: Runs) -> tuple[Runs, Runs, ResetStats]:
        """(runs to copy back, runs to drop, what that is in pages) for a reset that found
        `private`; the runs to copy and to drop together are exactly `private`."""
        if self.dropped:
            self.since_drop += 1
            if self.since_drop > self.remember:
                self.dropped = []
        if private == self.kept and not self.extra:
            # the hot path: the kept pages are private (they are copied, not dropped), and
            # nothing else is
            n = self.base_pages
            return private, [], ResetStats(n, n, 0)
        drop: Runs = []
        total, kept = pages(private), self.base_pages + self.extra_pages
        if private == self.kept:
            pass
        elif 0 < total - kept <= self.growth and not self.extra and total <= self.floor:
            # warming up: everything private is the base (it holds the old base)
            self.base, self.base_pages = private, total
        else:
            new = subtract(private, self.base)
            if self.extra:
                new = subtract(new, self.extra)
            n = pages(new)
            if total - n != kept:      # a kept page is not private any more (not expected:
                self.base = intersect(self.base, private)    # swapped pages count as private)
                self.extra = intersect(self.extra, private)
                self.base_pages, self.extra_pages = pages(self.base), pages(self.extra)
            if n <= self.growth:
                self._keep(new)
            else:
                again = intersect(new, self.dropped)     # written again since dropped
                self._keep(again)
                drop = subtract(new, again)
        if self.extra:
            self.age += 1
            if self.age > self.decay or self.rent >= self.extra_pages * self.fault_ns:
                drop = union(drop, self.extra)
                self.extra, self.extra_pages, self.age, self.rent = [], 0, 0, 0
        if drop:
            self.dropped, self.since_drop = union(self.dropped, drop), 0
        self.kept = union(self.base, self.extra) if self.extra else self.base
        dropped = pages(drop)
        return (subtract(private, drop) if drop else private), drop, \
            ResetStats(total, total - dropped, dropped)

    def charge(self, copy_ns: int, copied: int) -> None:
        """A reset copied `copied` pages back in `copy_ns`: the extra's share of that is rent
        paid for keeping it (see the module docstring)."""
        if self.extra and copied > 0:
            self.rent += copy_ns * min(self.extra_pages, copied) // copied

    def trim(self) -> Runs:
        """The extra runs, forgotten (to drop before another user gets the machine); the base
        stays warm."""
        extra = self.extra
        self.extra, self.extra_pages, self.age, self.rent, self.dropped = [], 0, 0, 0, []
        self.kept = self.base
        return extra
