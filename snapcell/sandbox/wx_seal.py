"""The W^X seal of a dynamic guest's warm snapshot (docs/security.md, "The W^X seal").

A dynamic guest (the dynamic Python guest) has a *library region*: a segment of its ELF that is
writable and executable while musl's dynamic linker loads shared objects into it during
initialisation. `seal` turns a snapshot of such a guest into one where no page is both: the
executable segments of every shared object found in the region become read + execute, the rest
of the region read + write. Sandboxes made from the sealed snapshot get those page tables, so
from then on executing data written at run time faults, writing library code faults, and
nothing new can be made executable (the guest's own SDK refuses executable mappings after
`sc_lib_seal()` with a clear error; the page tables enforce it whatever the guest does).

The shared objects are found by the host in the snapshot's memory: a page of the region that
starts with an ELF header (musl maps a library's file from offset 0, so its header is the first
page of its span) with program headers inside the region. What the guest wrote there can only
choose *which* region pages become read + execute instead of read + write: never both."""

from __future__ import annotations

import dataclasses
import struct

from ..machine.layout import GUEST_BASE, PAGE, Perm, Segment, page_down, page_up
from .snapshot import Snapshot

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_ET_DYN, _EM_X86_64, _PT_LOAD, _PF_X = 3, 62, 1, 1
_MAX_PHNUM = 64
RWX = Perm.R | Perm.W | Perm.X


def library_regions(segments: tuple[Segment, ...]) -> list[Segment]:
    """The segments that are writable and executable: a dynamic guest's library region (a
    sealed snapshot has none)."""
    return [s for s in segments if s.perm & RWX == RWX]


def _library_code(read: "_Reader", lo: int, hi: int, page: int) -> list[tuple[int, int]]:
    """The executable spans of the shared object whose ELF header is at `page`, if it is one
    that lies inside [lo, hi)."""
    head = read(page, _EHDR.size)
    ident, etype, machine, _v, _entry, phoff, _sh, _fl, _eh, phentsize, phnum = \
        _EHDR.unpack(head)[:11]
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or etype != _ET_DYN or machine != _EM_X86_64 \
            or phentsize != _PHDR.size or not 0 < phnum <= _MAX_PHNUM \
            or page + phoff + phnum * phentsize > hi:
        return []
    table = read(page + phoff, phnum * phentsize)
    loads = [ph for ph in _PHDR.iter_unpack(table) if ph[0] == _PT_LOAD]
    if not loads or page_down(loads[0][2]) != 0:
        return []        # not mapped from file offset 0: the header is not the span's start
    base = page - page_down(min(ph[3] for ph in loads))
    out = []
    for _t, flags, _off, vaddr, _pa, _fs, memsz, _al in loads:
        if not flags & _PF_X or memsz == 0:
            continue
        a, z = base + page_down(vaddr), base + page_up(vaddr + memsz)
        if lo <= a < z <= hi:
            out.append((a, z))
    return out


class _Reader:
    def __init__(self, snapshot: Snapshot) -> None:
        self.image = snapshot.image

    def __call__(self, addr: int, n: int) -> bytes:
        return self.image.read(addr - GUEST_BASE, n)


def code_spans(snapshot: Snapshot) -> list[tuple[int, int]]:
    """[start, end) of the code of every shared object loaded into the library region(s),
    sorted and merged."""
    read = _Reader(snapshot)
    spans: list[tuple[int, int]] = []
    for seg in library_regions(snapshot.segments):
        lo, hi = seg.vaddr, seg.vaddr + seg.memsz
        for off, n in snapshot.image.data_extents():
            a, z = max(lo, page_up(off + GUEST_BASE)), min(hi, off + GUEST_BASE + n)
            for page in range(a, z, PAGE):
                if read(page, 4) == b"\x7fELF":
                    spans += _library_code(read, lo, hi, page)
    merged: list[tuple[int, int]] = []
    for a, z in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(z, merged[-1][1]))
        else:
            merged.append((a, z))
    return merged


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


def seal(snapshot: Snapshot) -> Snapshot:
    """`snapshot` with its library region sealed (W^X); the same snapshot when it has none.
    The memory image is shared, not copied."""
    if not library_regions(snapshot.segments):
        return snapshot
    segments = sealed_segments(snapshot.segments, code_spans(snapshot))
    return dataclasses.replace(snapshot, segments=segments, digest=None, delta=snapshot.delta)


def is_sealed(snapshot: Snapshot) -> bool:
    """Whether no segment of `snapshot` is both writable and executable."""
    return not library_regions(snapshot.segments)
