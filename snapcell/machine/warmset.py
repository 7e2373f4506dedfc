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
  up). A larger growth is dropped at once — unless those pages were dropped by the previous
  reset too (two runs in a row wrote them: a working set), then they are kept.
- Kept pages form the *base* up to `floor` pages; beyond it they are *extra*, which is dropped
  after `decay` resets (a ski-rental bound: by then copying them has cost about what faulting
  them in once does) and whenever the machine goes back to the pool for another user (`trim`).

The set arithmetic is on *runs*: sorted, disjoint `(start, end)` byte ranges, page aligned."""

from __future__ import annotations

from dataclasses import dataclass

from .layout import PAGE

Runs = list[tuple[int, int]]

GROWTH_PAGES = 256        # newly private pages one reset keeps (1 MiB)
FLOOR_PAGES = 512         # kept pages that never decay (2 MiB): the worst lasting copy cost
DECAY_RESETS = 256        # resets after which pages kept beyond the floor are dropped


def pages(runs: Runs) -> int:
    """Number of pages in `runs`."""
    return sum(b - a for a, b in runs) // PAGE


def subtract(a: Runs, b: Runs) -> Runs:
    """The parts of `a` not in `b`."""
    out: Runs = []
    j, nb = 0, len(b)
    for start, end in a:
        while j < nb and b[j][1] <= start:
            j += 1
        k = j
        while start < end:
            if k >= nb or b[k][0] >= end:
                out.append((start, end))
                break
            bs, be = b[k]
            if bs > start:
                out.append((start, bs))
            start = max(start, be)
            k += 1
    return out


def intersect(a: Runs, b: Runs) -> Runs:
    """The parts of `a` also in `b`."""
    out: Runs = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
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
                 decay: int = DECAY_RESETS) -> None:
        self.growth, self.floor, self.decay = growth, floor, decay
        self.clear()

    def clear(self) -> None:
        """Forget everything (the image was mapped afresh: nothing is private)."""
        self.base: Runs = []
        self.extra: Runs = []
        self.base_pages = self.extra_pages = 0
        self.dropped: Runs = []           # what the previous reset dropped
        self.age = 0                      # resets since `extra` became non-empty

    def _keep(self, runs: Runs) -> None:
        n = pages(runs)
        if self.base_pages + n <= self.floor:
            self.base, self.base_pages = union(self.base, runs), self.base_pages + n
        else:
            if not self.extra:
                self.age = 0
            self.extra = union(self.extra, runs)
            self.extra_pages = pages(self.extra)

    def plan(self, private: Runs) -> tuple[Runs, Runs]:
        """(runs to copy back, runs to drop) for a reset that found `private`; together they
        are exactly `private`."""
        drop: Runs = []
        if pages(private) != self.base_pages + self.extra_pages or self.dropped:
            # something became private (kept pages stay private: they are copied, not dropped)
            self.base = intersect(self.base, private)
            self.extra = intersect(self.extra, private)
            self.base_pages, self.extra_pages = pages(self.base), pages(self.extra)
            new = subtract(subtract(private, self.base), self.extra)
            n = pages(new)
            if n <= self.growth:
                self._keep(new)
                self.dropped = []
            else:
                again = intersect(new, self.dropped)     # written by two runs in a row
                self._keep(again)
                drop = self.dropped = subtract(new, again)
        if self.extra:
            self.age += 1
            if self.age > self.decay:
                drop = union(drop, self.extra)
                self.dropped = union(self.dropped, self.extra)
                self.extra, self.extra_pages, self.age = [], 0, 0
        return (subtract(private, drop) if drop else private), drop

    def trim(self) -> Runs:
        """The extra runs, forgotten (to drop before another user gets the machine); the base
        stays warm."""
        extra = self.extra
        self.extra, self.extra_pages, self.age, self.dropped = [], 0, 0, []
        return extra
