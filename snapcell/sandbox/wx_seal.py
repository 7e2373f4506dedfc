"""The W^X seal of a dynamic guest's warm snapshot (docs/security.md, "The W^X seal").

A dynamic guest (the dynamic Python guest) has a *library region*: a segment of its ELF that is
writable and executable while musl's dynamic linker loads shared objects into it during
initialisation. `seal` turns a snapshot of such a guest into one where no page is both: the
executable segments of every shared object found in the region become read + execute, the rest
of the region read + write. Sandboxes made from the sealed snapshot get those page tables, so
from then on executing data written at run time faults, writing library code faults, and
nothing new can be made executable (the guest's own SDK refuses executable mappings after
`sc_lib_seal()` with a clear error; the page tables enforce it whatever the guest does).

Which region pages are code comes from the guest SDK's record of the protections it was asked
for (`sc_lib_exec_map`: one bit per region page, set while the page is mapped with PROT_EXEC),
read by the host from the snapshot's memory. Whatever the guest wrote there can only choose
*which* region pages become read + execute instead of read + write: never both."""

from __future__ import annotations

import dataclasses
import struct

from ..machine.layout import GUEST_BASE, PAGE, Perm, Segment
from .snapshot import Snapshot

EXEC_MAP_SYMBOL = "sc_lib_exec_map"
RWX = Perm.R | Perm.W | Perm.X


def library_regions(segments: tuple[Segment, ...]) -> list[Segment]:
    """The segments that are writable and executable: a dynamic guest's library region (a
    sealed snapshot has none)."""
    return [s for s in segments if s.perm & RWX == RWX]


def code_spans(snapshot: Snapshot, exec_map: int) -> list[tuple[int, int]]:
    """[start, end) of the pages of the (first) library region that the guest's bitmap at
    `exec_map` marks executable, merged. A bitmap outside guest memory marks nothing."""
    regions = library_regions(snapshot.segments)
    if not regions:
        return []
    region = regions[0]
    pages = region.memsz // PAGE
    nbytes = (pages + 63) // 64 * 8
    off = exec_map - GUEST_BASE
    if exec_map % 8 or off < 0 or off + nbytes > snapshot.image.size:
        return []
    return [(region.vaddr + a * PAGE, region.vaddr + z * PAGE)
            for a, z in bit_runs(snapshot.image.read(off, nbytes), pages)]


def bit_runs(bitmap: bytes, count: int) -> list[tuple[int, int]]:
    """[first, end) of each run of set bits among the first `count` bits of a little-endian
    bitmap of 64-bit words."""
    words = struct.unpack(f"<{len(bitmap) // 8}Q", bitmap[:len(bitmap) // 8 * 8])
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for w, word in enumerate(words):
        if word == (0 if start is None else (1 << 64) - 1):
            continue                                 # nothing changes within this word
        for b in range(64):
            i = w * 64 + b
            if i >= count:
                break
            if (word >> b) & 1 and start is None:
                start = i
            elif not (word >> b) & 1 and start is not None:
                runs.append((start, i))
                start = None
    if start is not None:
        runs.append((start, min(count, len(words) * 64)))
    return runs


def sealed_segments(segments: tuple[Segment, ...], code: list[tuple[int, int]]
                    ) -> tuple[Segment, ...]:
    """`segments` with each writable + executable one split: `code` spans read + execute, the
    rest read + write."""
    out: list[Segment] = []
    for seg in segments:
        if seg.perm & RWX != RWX:
            out.append(seg)
            continue
        pos, end = seg.vaddr, seg.vaddr + seg.memsz
        for a, z in code:
            a, z = max(a, pos), min(z, end)
            if z <= a:
                continue
            if a > pos:
                out.append(Segment(pos, a - pos, Perm.R | Perm.W))
            out.append(Segment(a, z - a, Perm.R | Perm.X))
            pos = z
        if pos < end:
            out.append(Segment(pos, end - pos, Perm.R | Perm.W))
    return tuple(out)


def seal(snapshot: Snapshot, exec_map: int) -> Snapshot:
    """`snapshot` with its library region(s) sealed (W^X), the code pages read from the guest's
    bitmap at `exec_map` (the address of its EXEC_MAP_SYMBOL); the same snapshot when it has no
    region. The memory image is shared, not copied."""
    if not library_regions(snapshot.segments):
        return snapshot
    segments = sealed_segments(snapshot.segments, code_spans(snapshot, exec_map))
    return dataclasses.replace(snapshot, segments=segments, digest=None, delta=snapshot.delta)


def is_sealed(snapshot: Snapshot) -> bool:
    """Whether no segment of `snapshot` is both writable and executable."""
    return not library_regions(snapshot.segments)
