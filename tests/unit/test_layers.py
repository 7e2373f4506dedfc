"""Extent layers (snapcell.snapshot.layers) without KVM: a base layer stores exactly the non-zero
pages, a child exactly the pages that differ from its parent, and applying a chain of layers to
an empty image reproduces the image byte for byte; the table parser accepts what the writer
writes and the digest covers only stored bytes (property tests with hypothesis)."""

from __future__ import annotations

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.machine.memory import MemoryImage
from snapcell.snapshot import layers

PAGE = 4096
PAGES = 64


def image_with(pages: dict[int, bytes]) -> MemoryImage:
    """A sealed image of PAGES pages with the given page contents."""
    img = MemoryImage(PAGES * PAGE)
    img.write_chunks([(i * PAGE, data) for i, data in pages.items()])
    img.seal()
    return img


def read_all(img: MemoryImage) -> bytes:
    """An image's full contents."""
    return os.pread(img.fd, img.size, 0)


def write_blob(img: MemoryImage, extents: layers.Extents | None,
               parent: MemoryImage | None = None) -> tuple[bytes, str, layers.Extents]:
    """A layer blob of `img` as bytes, with its digest and stored extents."""
    fd = os.memfd_create("layer")
    try:
        digest, size, stored = layers.write_layer(img, extents, fd, parent=parent)
        return os.pread(fd, size, 0), digest, stored
    finally:
        os.close(fd)


def apply(blobs: list[bytes], size: int) -> bytes:
    """Apply layer blobs in order to an empty image; returns its contents."""
    img = MemoryImage(size)
    try:
        for i, blob in enumerate(blobs):
            fd = os.memfd_create("blob")
            try:
                os.write(fd, blob)
                table = layers.read_table(fd, len(blob), size, "layer")
                got = layers.apply_layer(fd, table, img, first=(i == 0), verify=True)
                assert got == "sha256:" + hashlib.sha256(blob).hexdigest()
            finally:
                os.close(fd)
        return read_all(img)
    finally:
        img.close()


# page index -> fill byte (0: an all-zero page); a page also gets its index and fill in its first
# bytes so that equal fills on different pages still differ
page_fills = st.dictionaries(st.integers(0, PAGES - 1), st.integers(0, 255), max_size=20)


def pages_of(fills: dict[int, int]) -> dict[int, bytes]:
    """Page contents for fills."""
    return {i: bytes(PAGE) if b == 0 else bytes([i, b]) + bytes([b]) * (PAGE - 2)
            for i, b in fills.items()}


@settings(max_examples=60, deadline=None)
@given(base_fills=page_fills, change_fills=page_fills)
def test_base_and_child_layers_reproduce_the_image(base_fills: dict[int, int],
                                                   change_fills: dict[int, int]) -> None:
    base, changes = pages_of(base_fills), pages_of(change_fills)
    parent = image_with(base)
    child = image_with({**base, **changes})
    try:
        blob0, digest0, stored0 = write_blob(parent, None)
        nonzero = sorted(i for i, b in base.items() if any(b))
        assert sum(n for _, n in stored0) == len(nonzero) * PAGE       # holes never stored
        assert digest0 == "sha256:" + hashlib.sha256(blob0).hexdigest()
        touched = tuple((i * PAGE, PAGE) for i in sorted(changes))
        blob1, _, stored1 = write_blob(child, layers.merge(touched, child.size), parent)
        differ = {i for i, b in changes.items() if b != base.get(i, bytes(PAGE))}
        assert sum(n for _, n in stored1) == len(differ) * PAGE        # only real changes
        assert apply([blob0], parent.size) == read_all(parent)
        assert apply([blob0, blob1], child.size) == read_all(child)
    finally:
        parent.close()
        child.close()


@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 16)), max_size=30))
def test_merge_is_sorted_aligned_disjoint_and_covers(extents: list[tuple[int, int]]) -> None:
    size = 1 << 20
    merged = layers.merge(extents, size)
    end = -1
    for off, n in merged:
        assert off % PAGE == 0 and n % PAGE == 0 and n > 0 and off > end and off + n <= size
        end = off + n
    for off, n in extents:
        for b in range(off, min(off + n, size)):
            if n:
                assert any(a <= b < a + m for a, m in merged)
                break
