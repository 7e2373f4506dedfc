"""The piece arithmetic of layered memory images (machine/image.py) against a flat bytearray:
overlaying pieces equals applying the writes; merged dirty runs cover what they merge; the piece
cap holds; and real images (memfds, files) read back exactly what was written, whatever other
image sharing their backings is closed."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.machine import image
from snapcell.machine.image import MemoryImage, coalesce, fill_gaps, merge_runs, overlay
from snapcell.machine.layout import PAGE


@pytest.fixture(scope="module", autouse=True)
def always_layer() -> object:
    """These images hold a few pages: without this, overlaid() would flatten them (see
    test_small_images_flatten)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image, "FLATTEN_BELOW", 0)
        yield


def test_small_images_flatten(monkeypatch: pytest.MonkeyPatch) -> None:
    base = MemoryImage(64 * PAGE)
    base.write_chunks([(0, b"\1" * PAGE)])
    base.seal()
    monkeypatch.setattr(image, "FLATTEN_BELOW", PAGE)          # one page of data: small
    child = base.overlaid([(8 * PAGE, b"\2" * PAGE)])
    assert len(child.pieces) == 1
    assert bytes(child.read_view()) == b"\1" * PAGE + bytes(7 * PAGE) + b"\2" * PAGE + bytes(55 * PAGE)
    monkeypatch.setattr(image, "FLATTEN_BELOW", 0)
    assert len(base.overlaid([(8 * PAGE, b"\2" * PAGE)]).pieces) > 1

PAGES = 48
SIZE = PAGES * PAGE

# A write: (first page, page count, fill seed). Writes become pieces of a "backing" that is a
# bytes object holding the written content at backing offset `seed` pages.
writes = st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(1, 12), st.integers(0, 7)),
                  min_size=0, max_size=12)


def content(seed: int, n: int) -> bytes:
    """Deterministic page contents for a backing."""
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n))


def materialise(pieces: list[tuple[int, int, bytes, int]]) -> bytearray:
    """The image the pieces describe (zeros where none is)."""
    out = bytearray(SIZE)
    for o, n, b, bo in pieces:
        out[o:o + n] = b[bo:bo + n]
    return out


def check_well_formed(pieces: list[tuple[int, int, bytes, int]]) -> None:
    pos = 0
    for o, n, _, _ in pieces:
        assert o >= pos and n > 0 and o + n <= SIZE
        pos = o + n
    for (o, n, b, bo), nxt in zip(pieces, pieces[1:]):        # coalesced
        assert not (o + n == nxt[0] and b is nxt[2] and bo + n == nxt[3])


@settings(max_examples=300, deadline=None)
@given(writes, writes)
def test_overlay_equals_applying_the_writes(first: list[tuple[int, int, int]],
                                            second: list[tuple[int, int, int]]) -> None:
    flat = bytearray(SIZE)
    pieces: list[tuple[int, int, bytes, int]] = []
    for batch, salt in ((first, 0), (second, 100)):
        # one batch = one new layer: its runs merged (a backing holds each byte once)
        runs = merge_runs(((p * PAGE, min(n, PAGES - p) * PAGE) for p, n, _ in batch), 0)
        for i, (off, n) in enumerate(runs):
            backing_off = (i % 3) * PAGE
            data = content(salt + i, n + backing_off)
            top = [(off, n, data, backing_off)]
            flat[off:off + n] = data[backing_off:backing_off + n]
            pieces = overlay(pieces, top)
            check_well_formed(pieces)
    assert materialise(pieces) == flat
    tiled = fill_gaps(pieces, SIZE, bytes(SIZE))
    assert materialise(tiled) == flat
    assert sum(n for _, n, _, _ in tiled) == SIZE and tiled[0][0] == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=20),
       st.integers(0, 30))
def test_merge_runs_covers_and_respects_the_gap(runs: list[tuple[int, int]], gap: int) -> None:
    merged = merge_runs(runs, gap)
    for a, n in runs:
        assert any(m <= a and a + n <= m + k for m, k in merged)
    for (a, n), (b, _) in zip(merged, merged[1:]):
        assert b - (a + n) > gap
    assert merged == sorted(merged)


def test_coalesce_needs_the_same_backing_and_contiguous_offsets() -> None:
    a, b = b"a" * 8, b"b" * 8
    assert coalesce([(0, 2, a, 0), (2, 2, a, 2)]) == [(0, 4, a, 0)]
    assert coalesce([(0, 2, a, 0), (2, 2, a, 3)]) == [(0, 2, a, 0), (2, 2, a, 3)]
    assert coalesce([(0, 2, a, 0), (2, 2, b, 2)]) == [(0, 2, a, 0), (2, 2, b, 2)]
    assert coalesce([(0, 2, a, 0), (3, 2, a, 3)]) == [(0, 2, a, 0), (3, 2, a, 3)]


# ------------------------------------------------------------------ real images
def plain(data: bytes | bytearray) -> MemoryImage:
    img = MemoryImage(len(data))
    img.write_chunks([(0, bytes(data))])
    img.seal()
    return img


def check_image(img: MemoryImage, flat: bytes | bytearray) -> None:
    assert img.read(0, img.size) == bytes(flat)
    assert bytes(img.read_view()) == bytes(flat)
    for o, n in ((PAGE, 3 * PAGE), (5 * PAGE + 17, 2 * PAGE), (0, 1)):
        assert img.read(o, n) == bytes(flat[o:o + n])
    copy = MemoryImage(img.size)
    copy.copy_data_from(img)
    assert copy.read(0, img.size) == bytes(flat)
    extents = img.data_extents()
    covered = bytearray(img.size)
    for o, n in extents:
        covered[o:o + n] = flat[o:o + n]
    assert covered == flat                    # every non-zero byte lies in a data extent
    copy.close()


chunk_lists = st.lists(st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(1, 6)),
                                max_size=6), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(chunk_lists, st.integers(3, 12), st.integers(0, 2**32))
def test_overlaid_images_equal_a_flat_copy(generations: list[list[tuple[int, int]]],
                                           max_pieces: int, seed: int) -> None:
    rng = random.Random(seed)
    flat = bytearray(rng.randbytes(SIZE // 2)) + bytearray(SIZE // 2)
    images = [plain(flat)]
    flats = [bytes(flat)]
    for runs in generations:
        merged = merge_runs(((p * PAGE, min(n, PAGES - p) * PAGE) for p, n in runs), 0)
        chunks = [(o, rng.randbytes(n)) for o, n in merged]
        for o, data in chunks:
            flat[o:o + len(data)] = data
        img = images[-1].overlaid(chunks, max_pieces=max_pieces)
        assert len(img.pieces) <= max_pieces
        images.append(img)
        flats.append(bytes(flat))
    # closing any image (here: every other one, oldest first) never breaks the others
    for i in range(0, len(images) - 1, 2):
        images[i].close()
        assert images[i].closed
    for img, f in zip(images, flats):
        if not img.closed:
            check_image(img, f)
    for img in images:
        img.close()


def test_piece_cap_flattens(monkeypatch: pytest.MonkeyPatch) -> None:
    base = plain(bytes(SIZE))
    monkeypatch.setattr(image, "MAX_PIECES", 5)
    img = base.overlaid([(0, b"\1" * PAGE), (4 * PAGE, b"\2" * PAGE)])
    assert len(img.pieces) == 4                                       # 0 | 1-3 | 4 | 5-
    flat = img.overlaid([(8 * PAGE, b"\3" * PAGE), (12 * PAGE, b"\4" * PAGE)])
    assert len(flat.pieces) == 1                                      # would be 8: flattened
    want = bytearray(SIZE)
    for p, v in ((0, 1), (4, 2), (8, 3), (12, 4)):
        want[p * PAGE:(p + 1) * PAGE] = bytes([v]) * PAGE
    check_image(flat, want)
    for x in (base, img, flat):
        x.close()


layer_lists = st.lists(st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(1, 10)),
                                min_size=0, max_size=6), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(layer_lists, st.sampled_from([PAGE, 2 * PAGE, 4 * PAGE]), st.integers(3, 20),
       st.integers(0, 2**32), st.booleans())
def test_from_files_equals_applying_the_layers(tmp_path_factory: pytest.TempPathFactory,
                                               layer_runs: list[list[tuple[int, int]]],
                                               small: int, max_pieces: int, seed: int,
                                               with_base: bool) -> None:
    rng = random.Random(seed)
    d: Path = tmp_path_factory.mktemp("files")
    flat = bytearray(SIZE)
    base = None
    if with_base:
        flat[:] = rng.randbytes(SIZE)
        base = plain(flat)
    spec, fds = [], []
    for i, runs in enumerate(layer_runs):
        merged = merge_runs(((p * PAGE, min(n, PAGES - p) * PAGE) for p, n in runs), 0)
        blob, extents = bytearray(), []
        for o, n in merged:
            data = rng.randbytes(n)
            extents.append((o, n, len(blob)))
            blob += data
            flat[o:o + n] = data
        path = d / f"layer{i}"
        path.write_bytes(bytes(blob) + b"table")
        fd = os.open(path, os.O_RDONLY)
        fds.append(fd)
        spec.append((fd, extents))
    img = MemoryImage.from_files(SIZE, spec, base, small=small, max_pieces=max_pieces)
    for fd in fds:
        os.close(fd)                      # the image holds its own descriptors
    if base is not None:
        base.close()                      # ... and its own references to the base's backings
    assert len(img.pieces) <= max_pieces and img.tiles and img.sealed
    check_image(img, flat)
    assert img.maps_files == any(p[2].file for p in img.pieces)
    img.close()


def test_backing_closes_with_its_last_image() -> None:
    base = plain(b"\7" * SIZE)
    backing = base.pieces[0][2]
    child = base.overlaid([(0, b"\1" * PAGE)])
    base.close()
    assert backing.fd >= 0                       # the child still uses it
    assert child.read(PAGE, 1) == b"\7"
    assert child.read_view()[2 * PAGE] == 7
    child.close()
    assert backing.fd == -1
    with pytest.raises(OSError):
        child.read(0, 1)


def test_layered_images_have_no_single_descriptor() -> None:
    base = plain(bytes(SIZE))
    child = base.overlaid([(PAGE, b"\1" * PAGE)])
    with pytest.raises(ValueError):
        _ = child.fd
    with pytest.raises(ValueError, match="sealed"):
        base.write_chunks([(0, b"x")])
    base.close()
    child.close()
    assert base.fd == -1 and child.closed
