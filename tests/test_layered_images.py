"""Layered (copy-on-write) memory images on real KVM (issue 15): `snapshot()` overlays the dirty
pages on the mapped image instead of copying it, and `load(..., mode="map")` maps a format-2
chain's extents from the layer files. Every layered image must behave exactly like a flat copy
of itself: byte for byte (the image, and the guest memory of a sandbox made from it), through
chains of in-memory snapshots, restores between them and pooled reuse across them; with the
piece cap and gap merging; with map-mode loads of chains of any depth (equal to copy-mode
loads), hard-linked blobs refused, tampered layers caught by verify, and images sharing
backings closed independently."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.errors import SnapshotDigestMismatch, SnapshotFormatError
from snapcell.machine import image as image_mod
from snapcell.machine.image import MAX_PIECES, MERGE_GAP, MemoryImage
from snapcell.machine.layout import GUEST_BASE, PAGE
from snapcell.sandbox.pool import default_pool
from snapcell.snapshot import content, oci

from .conftest import make_host_functions
from .test_snapshot_files import blob_path, manifest_of

CONFIG = SandboxConfiguration(heap_size=8 << 20)       # room for writes far apart


@pytest.fixture(scope="module", autouse=True)
def always_layer() -> Iterator[None]:
    """Images layer whatever their size in this module (its guests hold a few MiB: below
    FLATTEN_BELOW snapshot() would flatten them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image_mod, "FLATTEN_BELOW", 0)
        yield


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """An empty image cache and warm pool around each test."""
    content.clear()
    yield
    content.clear()
    default_pool().clear()


@pytest.fixture(scope="module")
def base_snapshot(kvm_ok: None, simpleguest: str) -> Snapshot:
    """simpleguest with an 8 MiB heap, a quarter of it written, flattened into a plain
    one-memfd image (the evolved sandbox's own snapshot is already layered: its pre-init
    image overlaid by what init and the call wrote)."""
    with UninitializedSandbox(simpleguest, config=CONFIG,
                              host_functions=make_host_functions()).evolve() as sb:
        sb.call("AllocAndWritePattern", 2 << 20)
        snap = sb.snapshot()
    assert len(snap.image.pieces) > 1
    snap = flat(snap)
    assert len(snap.image.pieces) == 1
    return snap


def flat(snap: Snapshot) -> Snapshot:
    """The same snapshot with its image flattened into one private memfd."""
    img = MemoryImage(snap.image.size, "flat")
    img.copy_data_from(snap.image)
    img.seal()
    return dataclasses.replace(snap, image=img, delta=None)


def image_bytes(snap: Snapshot) -> bytes:
    """The snapshot's guest memory, through its read-only view."""
    return bytes(snap.image.read_view())


def guest_bytes(sb: MultiUseSandbox) -> bytes:
    """What the sandbox's guest range holds right now."""
    memory = sb._core.machine.memory
    assert memory is not None
    return bytes(memory.view[GUEST_BASE:])


def scribble(sb: MultiUseSandbox, rng: random.Random, writes: int) -> None:
    """Write random words at random heap pages (dirty runs far apart)."""
    lay = sb._core.layout
    pages = lay.heap_size // PAGE
    for _ in range(writes):
        addr = lay.heap_addr + rng.randrange(pages) * PAGE + 8 * rng.randrange(PAGE // 8)
        sb.call("WriteAddress", addr, rng.getrandbits(64))


def test_a_snapshot_is_the_parent_overlaid_not_a_copy(base_snapshot: Snapshot) -> None:
    with MultiUseSandbox.from_snapshot(base_snapshot, host_functions=make_host_functions()) as sb:
        sb.call("AddToStatic", 3)
        child = sb.snapshot()
        pieces = child.image.pieces
        parent_backing = base_snapshot.image.pieces[0][2]
        assert any(p[2] is parent_backing for p in pieces) and len(pieces) > 1
        # what the child stores itself: the dirty runs only
        own = sum(n for _, n, b, _ in pieces if b is not parent_backing)
        assert own < 1 << 20
        assert image_bytes(child) == guest_bytes(sb) == image_bytes(flat(child))


def test_layered_snapshots_equal_their_flat_copies(base_snapshot: Snapshot) -> None:
    """Chains of snapshot() → from_snapshot → snapshot() …: each image equals its flat copy,
    and sandboxes from either behave and hold memory the same."""
    rng = random.Random(1)
    snaps = [base_snapshot]
    for _ in range(6):
        with MultiUseSandbox.from_snapshot(snaps[-1], host_functions=make_host_functions()) as sb:
            sb.call("AddToStatic", 1)
            scribble(sb, rng, 5)
            snaps.append(sb.snapshot())
            assert image_bytes(snaps[-1]) == guest_bytes(sb)
    for i, snap in enumerate(snaps):
        f = flat(snap)
        assert image_bytes(snap) == image_bytes(f)
        assert snap.image.read(0, snap.image.size) == image_bytes(f)
        outs = []
        for s in (snap, f):
            with MultiUseSandbox.from_snapshot(s, host_functions=make_host_functions()) as sb:
                assert guest_bytes(sb) == image_bytes(f)
                heap = sb._core.layout.heap_addr
                outs.append((sb.call("GetStatic"),
                             [sb.call("ReadAddress", heap + k * 997 * 8) for k in range(8)]))
        assert outs[0] == outs[1] and outs[0][0] == i


def test_restore_and_pooled_reuse_across_a_chain(base_snapshot: Snapshot) -> None:
    """Restores between layered snapshots of one chain, in any order, and pooled machines
    reused across them: memory equals the snapshot's byte for byte every time."""
    rng = random.Random(2)
    snaps = [base_snapshot]
    with MultiUseSandbox.from_snapshot(base_snapshot, host_functions=make_host_functions()) as sb:
        for _ in range(5):
            sb.call("AddToStatic", 1)
            scribble(sb, rng, 3)
            snaps.append(sb.snapshot())
            sb.restore(snaps[-1])               # the next snapshot overlays this one
        expected = [image_bytes(s) for s in snaps]
        for _ in range(12):
            i = rng.randrange(len(snaps))
            sb.restore(snaps[i])
            assert guest_bytes(sb) == expected[i]
            assert sb.call("GetStatic") == i
            scribble(sb, rng, 2)                # dirty it before the next restore
            sb.restore(snaps[i])                # the warm path: same image, pages copied back
            assert guest_bytes(sb) == expected[i]
    default_pool().clear()
    for _ in range(10):                          # a pooled machine last ran another snapshot
        i = rng.randrange(len(snaps))
        with MultiUseSandbox.from_snapshot(snaps[i], host_functions=make_host_functions()) as sb:
            assert guest_bytes(sb) == expected[i]
            assert sb.call("GetStatic") == i
            scribble(sb, rng, 2)


def test_dirty_runs_close_together_are_one_piece(base_snapshot: Snapshot) -> None:
    with MultiUseSandbox.from_snapshot(base_snapshot, host_functions=make_host_functions()) as sb:
        heap = sb._core.layout.heap_addr + (4 << 20)     # beyond the written pattern
        sb.call("WriteAddress", heap, 1)
        sb.call("WriteAddress", heap + MERGE_GAP, 2)     # a gap of MERGE_GAP - 1 page: merged
        sb.call("WriteAddress", heap + 3 * MERGE_GAP, 3)  # a bigger gap: its own run
        child = sb.snapshot()
        assert image_bytes(child) == guest_bytes(sb)     # the gap's clean pages came along
    off = heap - GUEST_BASE
    own = [(o, n) for o, n, b, _ in child.image.pieces
           if b is not base_snapshot.image.pieces[0][2] and o <= off + 3 * MERGE_GAP < o + n
           or b is not base_snapshot.image.pieces[0][2] and o <= off < o + n]
    assert len(own) == 2
    first = next((o, n) for o, n in own if o <= off < o + n)
    assert first[0] + first[1] >= off + MERGE_GAP + PAGE           # the gap is inside
    assert image_bytes(child) == image_bytes(flat(child))


def test_the_piece_cap_flattens_and_stays_correct(base_snapshot: Snapshot,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    snap = base_snapshot
    counts: list[int] = []
    for i in range(8):
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
            sb.call("AddToStatic", 1)
            for k in range(3):                             # three far-apart runs each time
                addr = sb._core.layout.heap_addr + ((i * 3 + k) % 30 + 2) * 2 * MERGE_GAP
                sb.call("WriteAddress", addr, rng.getrandbits(64))
            snap = sb.snapshot()
            counts.append(len(snap.image.pieces))
            if i == 0:           # a cap a few generations above the first child's pieces
                cap = counts[0] + 8
                monkeypatch.setattr(image_mod, "MAX_PIECES", cap)
            assert counts[-1] <= cap
            assert image_bytes(snap) == guest_bytes(sb) == image_bytes(flat(snap))
    assert counts[1] > counts[0]                           # pieces grow along the chain...
    assert 1 in counts                                     # ...until the image is flattened
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 8
    assert MAX_PIECES == 64


def test_closing_one_image_never_breaks_another(base_snapshot: Snapshot) -> None:
    parent = flat(base_snapshot)                        # a private copy we may close
    with MultiUseSandbox.from_snapshot(parent, host_functions=make_host_functions()) as sb:
        sb.call("AddToStatic", 5)
        child = sb.snapshot()
    want = image_bytes(child)
    parent.image.close()
    assert parent.image.closed and not child.image.closed
    assert image_bytes(child) == want and child.image.read(0, child.image.size) == want
    with MultiUseSandbox.from_snapshot(child, host_functions=make_host_functions()) as sb:
        assert guest_bytes(sb) == want
        assert sb.call("GetStatic") == 5
        grandchild = sb.snapshot()
    child.image.close()
    with MultiUseSandbox.from_snapshot(grandchild, host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 5


# ------------------------------------------------------------------ map-mode loads of format 2
@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, base_snapshot: Snapshot) -> Path:
    """A layout with a chain base → c1 → … → c4 (each a diff with scattered changes)."""
    d = tmp_path_factory.mktemp("chain") / "layout"
    base_snapshot.save(str(d), "c0")
    rng = random.Random(4)
    for i in range(1, 5):
        snap = Snapshot.load(str(d), f"c{i - 1}")
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
            sb.call("AddToStatic", 1)
            scribble(sb, rng, 6)
            sb.snapshot().save(str(d), f"c{i}")
    assert oci.inspect(str(d), "c4")["depth"] == 5
    return d


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_map_mode_loads_equal_copy_mode_loads(chain: Path, depth: int) -> None:
    tag = f"c{depth - 1}"
    copied = Snapshot.load(str(chain), tag)
    content.clear()
    mapped = Snapshot.load(str(chain), tag, mode="map")
    assert mapped.image.maps_files and not copied.image.maps_files
    assert len(mapped.image.pieces) <= MAX_PIECES
    assert image_bytes(mapped) == image_bytes(copied)
    assert mapped.image.read(0, mapped.image.size) == image_bytes(copied)
    with MultiUseSandbox.from_snapshot(mapped, host_functions=make_host_functions()) as sb:
        assert guest_bytes(sb) == image_bytes(copied)
        assert sb.call("GetStatic") == depth - 1
        sb.call("AddToStatic", 1)
        child = sb.snapshot()                       # overlays the mapped pieces
        assert image_bytes(child) == guest_bytes(sb)
        child.save(str(chain), f"m{depth}")
    again = Snapshot.checked_load(str(chain), f"m{depth}")
    assert again.image.maps_files is False           # a copy-mode load is never served a map
    with MultiUseSandbox.from_snapshot(again, host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == depth


def test_map_mode_pieces_are_bounded(chain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copied = image_bytes(Snapshot.load(str(chain), "c4"))
    for cap, small in ((3, 0), (5, PAGE), (7, 1 << 30)):
        content.clear()
        monkeypatch.setattr(image_mod, "MAX_PIECES", cap)
        monkeypatch.setattr(image_mod, "SMALL_EXTENT", small)
        mapped = Snapshot.load(str(chain), "c4", mode="map")
        assert len(mapped.image.pieces) <= cap
        assert image_bytes(mapped) == copied
        if small > 1 << 20:
            assert not mapped.image.maps_files     # everything copied


def test_the_cache_keeps_mapped_and_private_images_apart(chain: Path) -> None:
    mapped = Snapshot.load(str(chain), "c2", mode="map")
    assert Snapshot.load(str(chain), "c2", mode="map").image is mapped.image    # cached
    copied = Snapshot.load(str(chain), "c2")
    assert copied.image is not mapped.image and not copied.image.maps_files
    assert Snapshot.load(str(chain), "c2", mode="map").image is copied.image    # private wins
    content.clear()
    copied = Snapshot.load(str(chain), "c3")
    assert Snapshot.load(str(chain), "c3", mode="map").image is copied.image


def test_map_mode_refuses_hard_linked_layers(chain: Path, tmp_path: Path) -> None:
    layer = blob_path(chain, manifest_of(chain, "c2")["layers"][1]["digest"])
    os.link(layer, tmp_path / "other-name")
    try:
        with pytest.raises(SnapshotFormatError, match="hard links"):
            Snapshot.load(str(chain), "c2", mode="map")
        assert Snapshot.load(str(chain), "c2").generation > 0          # copy mode: fine
    finally:
        os.unlink(tmp_path / "other-name")


@pytest.mark.parametrize("which", [0, -1])
def test_verify_catches_a_tampered_layer_in_map_mode(chain: Path, tmp_path: Path,
                                                     which: int) -> None:
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(chain, d)
    layer = blob_path(d, manifest_of(d, "c3")["layers"][which]["digest"])
    layer.chmod(0o644)
    with open(layer, "r+b") as f:                 # same inode and size, one byte changed
        f.seek(PAGE + 7)
        b = f.read(1)
        f.seek(PAGE + 7)
        f.write(bytes([b[0] ^ 0xFF]))
    layer.chmod(0o444)
    with pytest.raises(SnapshotDigestMismatch):
        Snapshot.checked_load(str(d), "c3", mode="map")
    plain = Snapshot.load(str(d), "c3", mode="map")   # unchecked: loads, shows the change
    assert plain.image.maps_files


def test_closing_a_mapped_image_leaves_the_others(chain: Path) -> None:
    content.set_cache_limits(0, 0)                 # two independent loads
    try:
        a = Snapshot.load(str(chain), "c4", mode="map")
        b = Snapshot.load(str(chain), "c4", mode="map")
        want = image_bytes(b)
        with MultiUseSandbox.from_snapshot(a, host_functions=make_host_functions()) as sb:
            sb.call("AddToStatic", 1)
            child = sb.snapshot()
        a.image.close()
        assert image_bytes(b) == want
        with MultiUseSandbox.from_snapshot(child, host_functions=make_host_functions()) as sb:
            assert sb.call("GetStatic") == 5
    finally:
        content.set_cache_limits(content._env_int("SNAPCELL_IMAGE_CACHE_ENTRIES", 8),
                                 content._env_int("SNAPCELL_IMAGE_CACHE_BYTES", 1 << 30))


def test_map_mode_risk_a_file_changed_after_load_reaches_sandboxes(chain: Path,
                                                                   tmp_path: Path) -> None:
    """The documented trade-off of mode='map' (why "copy" is the default): rewriting a mapped
    layer file in place shows in sandboxes made afterwards; a copy-mode load is unaffected."""
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(chain, d)
    from snapcell.snapshot import layers
    desc = manifest_of(d, "c0")["layers"][0]
    layer = blob_path(d, desc["digest"])
    fd = os.open(layer, os.O_RDONLY)
    try:
        table = layers.read_table(fd, desc["size"], Snapshot.load(str(d), "c0").image.size, "l")
    finally:
        os.close(fd)
    lengths = [m for _, m in table.extents]
    big = lengths.index(max(lengths))                   # the biggest extent: mapped
    off, n = table.extents[big]
    pos = sum(lengths[:big])
    assert n >= image_mod.SMALL_EXTENT
    copied = Snapshot.load(str(d), "c0")
    content.clear()
    mapped = Snapshot.load(str(d), "c0", mode="map")
    addr = GUEST_BASE + off + n // 2
    with MultiUseSandbox.from_snapshot(copied, host_functions=make_host_functions()) as sb:
        before = sb.call("ReadAddress", addr)
    layer.chmod(0o644)
    with open(layer, "r+b") as f:
        f.seek(pos + n // 2)
        f.write((before ^ 0x5A5A).to_bytes(8, "little"))
    default_pool().clear()
    with MultiUseSandbox.from_snapshot(mapped, host_functions=make_host_functions()) as sb:
        assert sb.call("ReadAddress", addr) == before ^ 0x5A5A     # the change reached it
    with MultiUseSandbox.from_snapshot(copied, host_functions=make_host_functions()) as sb:
        assert sb.call("ReadAddress", addr) == before              # the private copy did not


def test_small_images_are_flattened_not_layered(monkeypatch: pytest.MonkeyPatch,
                                                simpleguest: str) -> None:
    """Below FLATTEN_BELOW bytes of data a snapshot is one memfd (one VMA per sandbox: the
    restore path's PAGEMAP_SCAN walks one mapping); above it, the dirty runs are overlaid."""
    with UninitializedSandbox(simpleguest, config=CONFIG,
                              host_functions=make_host_functions()).evolve() as sb:
        sb.call("AllocAndWritePattern", 2 << 20)
        data = sum(n for _, n in sb._snapshot.image.data_extents())
        monkeypatch.setattr(image_mod, "FLATTEN_BELOW", data)
        small = sb.snapshot()
        assert len(small.image.pieces) == 1
        sb.call("AddToStatic", 1)
        monkeypatch.setattr(image_mod, "FLATTEN_BELOW", 0)
        layered = sb.snapshot()
        assert len(layered.image.pieces) > 1
        assert image_bytes(flat(layered)) == image_bytes(layered)
        sb.restore(small)
        assert guest_bytes(sb) == image_bytes(small)
        assert sb.call("GetStatic") == 0
