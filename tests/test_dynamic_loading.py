"""Loading a dynamic guest (snapcell/guest/elf.py): musl's dynamic linker comes from the host,
never from the guest, and the file system image from the host lands only in the guest's slot;
the W^X seal's segment arithmetic (snapcell/sandbox/wx_seal.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.errors import GuestLoadError
from snapcell.guest.elf import INTERP_ALIGN, INTERP_NAME, GuestBinary
from snapcell.machine.layout import PAGE, Perm, Segment
from snapcell.sandbox.wx_seal import RWX, bit_runs, sealed_segments

GUESTS = Path(__file__).resolve().parents[1] / "build" / "guests"
DYN, INTERP, IMAGE = GUESTS / "python-dyn.elf", GUESTS / "ld-musl-x86_64.so.1", GUESTS / "python-dyn.img"


@pytest.fixture(scope="module")
def parts() -> tuple[bytes, bytes, bytes]:
    for p in (DYN, INTERP, IMAGE):
        assert p.is_file(), f"{p} missing: run `make python-dyn`"
    return DYN.read_bytes(), INTERP.read_bytes(), IMAGE.read_bytes()


def test_interpreter_loaded_at_a_2mib_boundary(parts: tuple[bytes, bytes, bytes]) -> None:
    g = GuestBinary.from_file(str(DYN))
    assert g.interp_base and g.interp_base % INTERP_ALIGN == 0
    assert g.start == g.interp_entry != g.entry
    image = [s for s in g.segments if s.data[:8] == b"SCFSIMG1"]
    assert len(image) == 1 and image[0].perm == Perm.R
    assert any(s.perm & RWX == RWX for s in g.machine_segments())      # the library region


def test_interpreter_must_come_from_the_host(parts: tuple[bytes, bytes, bytes]) -> None:
    exe, _interp, image = parts
    with pytest.raises(GuestLoadError, match="must be given by the host"):
        GuestBinary.from_bytes(exe, None, image)


def test_only_musls_interpreter_name(parts: tuple[bytes, bytes, bytes]) -> None:
    exe, interp, image = parts
    evil = exe.replace(INTERP_NAME.encode(), b"/tmp/ld-evil-x86_64.so.1", 1)
    assert evil != exe
    with pytest.raises(GuestLoadError, match="only musl's"):
        GuestBinary.from_bytes(evil, interp, image)


def test_interpreter_must_be_a_shared_object(parts: tuple[bytes, bytes, bytes]) -> None:
    exe, _interp, image = parts
    with pytest.raises(GuestLoadError, match="shared object"):
        GuestBinary.from_bytes(exe, exe[:4 << 20], image)


def test_image_must_fit_and_be_given(parts: tuple[bytes, bytes, bytes]) -> None:
    exe, interp, _image = parts
    with pytest.raises(GuestLoadError, match="file system image"):
        GuestBinary.from_bytes(exe, interp, None)
    with pytest.raises(GuestLoadError, match="larger than"):
        GuestBinary.from_bytes(exe, interp, bytes(449 << 20))


def test_static_guest_ignores_interpreter() -> None:
    g = GuestBinary.from_bytes((GUESTS / "simpleguest.elf").read_bytes(), INTERP.read_bytes())
    assert g.interp_base == 0 and g.start == g.entry


_BASE, _SIZE = 0x1000000, 64 * PAGE


@given(st.lists(st.tuples(st.integers(0, 63), st.integers(1, 8)), max_size=12))
def test_seal_splits_the_region_without_writable_code(spans: list[tuple[int, int]]) -> None:
    code = sorted((_BASE + a * PAGE, _BASE + min(64, a + n) * PAGE) for a, n in spans)
    merged: list[tuple[int, int]] = []
    for a, z in code:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(z, merged[-1][1]))
        else:
            merged.append((a, z))
    other = Segment(0x400000, PAGE, Perm.R | Perm.X)
    out = sealed_segments((other, Segment(_BASE, _SIZE, RWX)), merged)
    assert out[0] == other
    pos = _BASE
    for s in out[1:]:
        assert s.vaddr == pos and s.memsz > 0 and s.perm & RWX != RWX
        in_code = any(a <= s.vaddr < z for a, z in merged)
        assert s.perm == (Perm.R | Perm.X if in_code else Perm.R | Perm.W)
        pos += s.memsz
    assert pos == _BASE + _SIZE


@given(st.lists(st.booleans(), max_size=300), st.integers(0, 320))
def test_bit_runs_match_the_bits(bits: list[bool], count: int) -> None:
    padded = bits + [False] * (-len(bits) % 64)
    raw = sum(1 << i for i, b in enumerate(padded) if b).to_bytes(len(padded) // 8, "little")
    runs = bit_runs(raw, count)
    marked = {i for a, z in runs for i in range(a, z)}
    assert marked == {i for i, b in enumerate(padded) if b and i < count}
    assert all(a < z for a, z in runs) and all(z < a for (_, z), (a, _) in zip(runs, runs[1:]))
