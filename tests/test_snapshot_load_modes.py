"""Issue 10 items 4 and 6 on real KVM: a sandbox made from a loaded snapshot can be snapshotted
and saved again (no raw OSError from any snapshot API), and the default load mode keeps a
private copy, so a blob truncated or rewritten while in use changes nothing, while the opt-in
zero-copy map mode (format-1 golden copies, and format-2 chains mapped copy-on-write) is shown
to die by SIGBUS (in a subprocess) and refuses hard-linked blobs."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from snapcell import MultiUseSandbox, Snapshot, UninitializedSandbox
from snapcell.errors import SnapshotFormatError, SnapshotIOError
from snapcell.snapshot import content, oci

from .conftest import ROOT, make_host_functions
from .test_snapshot_files import (
    GOLDENS,
    PYTHON,
    blob_path,
    layout,
    manifest_of,
    small_snapshot,
    template_layout,
)

_ = (layout, small_snapshot, template_layout)


@pytest.fixture
def v1_layout(tmp_path: Path) -> Path:
    """A private copy of the format-1 golden layout (tags static11 and pattern, raw blobs)."""
    d = tmp_path / "v1"
    shutil.copytree(GOLDENS / "simpleguest-v1", d)
    return d


def tagged(d: Path) -> str:
    """The tag whose state is GetStatic() == 11 in either layout."""
    return "static11" if d.name == "v1" else "base"


def memory_blobs(d: Path, tag: str = "base") -> list[Path]:
    """The memory layer files of `tag`."""
    return [blob_path(d, layer["digest"]) for layer in manifest_of(d, tag)["layers"]]


def clobber(blob: Path, how: str) -> None:
    """Truncate or rewrite a (read-only) blob in place, as a hostile writer could."""
    blob.chmod(0o644)
    if how == "truncate":
        os.truncate(blob, 0)
    else:
        size = blob.stat().st_size
        with open(blob, "r+b") as f:                 # same inode, every byte changed
            f.write(b"\xcc" * size)


@pytest.mark.parametrize("checked", [False, True], ids=["load", "checked_load"])
@pytest.mark.parametrize("mode", ["copy", "map", "copy-v1", "map-v2"])
def test_load_run_snapshot_save_works(layout: Path, v1_layout: Path, tmp_path: Path,
                                      checked: bool, mode: str) -> None:
    src = layout if mode in ("copy", "map-v2") else v1_layout
    loader = Snapshot.checked_load if checked else Snapshot.load
    snap = loader(str(src), tagged(src), mode=mode.split("-")[0])
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        assert sb.call("AddToStatic", 4) == 15
        child = sb.snapshot()                      # copied from the blob file: was EXDEV
        digest = child.save(str(tmp_path / "out"), "child")
        assert child.save(str(tmp_path / "out"), "child") == digest
        in_place = child.save(str(src), "child")   # a diff on its parent (format 2 only)
    for d, ref in ((tmp_path / "out", digest), (src, in_place)):
        again = Snapshot.checked_load(str(d), ref)
        assert again.generation == snap.generation + 1
        with MultiUseSandbox.from_snapshot(again, host_functions=make_host_functions()) as sb:
            assert sb.call("GetStatic") == 15
            assert sb.call("AddToStatic", 1) == 16
    assert oci.inspect(str(src), "child")["depth"] == (2 if src is layout else 1)


def test_map_mode_maps_a_format_2_layout(layout: Path) -> None:
    copied = Snapshot.load(str(layout), "base")
    content.clear()                   # (else the cached private copy serves the map load)
    mapped = Snapshot.load(str(layout), "base", mode="map")
    assert mapped.image is not copied.image
    assert bytes(mapped.image.read_view()) == bytes(copied.image.read_view())
    with MultiUseSandbox.from_snapshot(mapped, host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 11


@pytest.mark.parametrize("how", ["truncate", "rewrite"])
@pytest.mark.parametrize("checked", [False, True], ids=["load", "checked_load"])
def test_copy_mode_survives_a_clobbered_blob(layout: Path, tmp_path: Path, how: str,
                                             checked: bool) -> None:
    snap = (Snapshot.checked_load if checked else Snapshot.load)(str(layout), "base")
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        expect = [sb.call("AddToStatic", 1), sb.call("Add", 20, 22)]
        for blob in memory_blobs(layout):
            clobber(blob, how)
        sb.restore(snap)                           # re-reads the image: still the copy
        assert [sb.call("AddToStatic", 1), sb.call("Add", 20, 22)] == expect
        child = sb.snapshot()
        child.save(str(tmp_path / "out"), "child")
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as fresh:  # a new sandbox
        assert fresh.call("GetStatic") == 11
        sb2 = MultiUseSandbox.from_snapshot(Snapshot.checked_load(str(tmp_path / "out"), "child"),
                                            host_functions=make_host_functions())
        with sb2:
            assert sb2.call("GetStatic") == 12
    if how == "rewrite":
        with pytest.raises(SnapshotFormatError):    # the clobbered file itself is caught
            Snapshot.checked_load(str(layout), "base")


MAP_CRASH = """
import os, sys
from snapcell import MultiUseSandbox, Snapshot
from tests.conftest import make_host_functions
snap = Snapshot.load(sys.argv[1], "static11", mode="map")
sb = MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions())
print(sb.call("AddToStatic", 1), flush=True)
for blob in sys.argv[2:]:
    os.chmod(blob, 0o644)
    os.truncate(blob, 0)
try:
    sb.restore(snap)              # resets guest pages from the (now truncated) file...
    sb.call("GetStatic")
except Exception as e:            # (a restore that re-maps instead fails in the guest)
    print(type(e).__name__, flush=True)
print(bytes(snap.image.read_view()[:4096])[:1], flush=True)   # ...any host read of it faults
"""


def test_map_mode_risk_is_real_and_shown_in_a_subprocess(v1_layout: Path) -> None:
    """The documented trade-off of mode='map': truncating the blob under it kills the process
    with SIGBUS. The same script in copy mode survives (test above)."""
    blobs = [str(b) for b in memory_blobs(v1_layout, "static11")]
    out = subprocess.run([str(PYTHON), "-c", MAP_CRASH, str(v1_layout), *blobs], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[0] == "12"
    assert out.returncode == -signal.SIGBUS, (out.returncode, out.stderr[-2000:])


MAP_CRASH_V2 = """
import os, sys
from snapcell import MultiUseSandbox, Snapshot
from tests.conftest import make_host_functions
snap = Snapshot.load(sys.argv[1], "big", mode="map")
print(snap.image.maps_files, flush=True)
sb = MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions())
print(sb.call("GetStatic"), flush=True)
for blob in sys.argv[2:]:
    os.chmod(blob, 0o644)
    os.truncate(blob, 0)
try:
    sb.restore(snap)
    sb.call("GetStatic")
except Exception as e:
    print(type(e).__name__, flush=True)
print(bytes(snap.image.read_view()[:snap.image.size])[:1], flush=True)
"""


def test_map_mode_risk_is_real_for_format_2_chains(kvm_ok: None, simpleguest: str,
                                                    tmp_path: Path) -> None:
    """The same trade-off for a format-2 snapshot whose extents are mapped copy-on-write from
    its layer files (SetStatic writes 1 MiB of .bss: one extent large enough to be mapped):
    truncating the layers under a running sandbox kills the process with SIGBUS."""
    d = tmp_path / "v2"
    with UninitializedSandbox(simpleguest, host_functions=make_host_functions()).evolve() as sb:
        sb.call("SetStatic")
        assert sb.call("AddToStatic", 5) == 5
        sb.snapshot().save(str(d), "big")
    blobs = [str(b) for b in memory_blobs(d, "big")]
    out = subprocess.run([str(PYTHON), "-c", MAP_CRASH_V2, str(d), *blobs], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.split("\n")
    assert lines[:2] == ["True", "5"], (out.stdout, out.stderr[-2000:])
    assert out.returncode == -signal.SIGBUS, (out.returncode, out.stderr[-2000:])


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_hard_linked_blobs_are_refused_by_map_mode_only(layout: Path, v1_layout: Path,
                                                        tmp_path: Path, fmt: str) -> None:
    d = v1_layout if fmt == "v1" else layout
    tag = tagged(d)
    for blob in memory_blobs(d, tag):
        os.link(blob, tmp_path / blob.name)             # writable through another name
    with pytest.raises(SnapshotFormatError, match="hard links"):
        Snapshot.load(str(d), tag, mode="map")
    snap = Snapshot.checked_load(str(d), tag)           # copy mode: the copy is private
    for blob in memory_blobs(d, tag):
        clobber(tmp_path / blob.name, "truncate")
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 11


def test_load_mode_is_checked(layout: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        Snapshot.load(str(layout), "base", mode="mmap")


def test_no_raw_os_error_escapes(layout: Path, tmp_path: Path, small_snapshot: Snapshot,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def full_disk(fd: int, data: object, off: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(SnapshotIOError, match="No space left") as info:
        small_snapshot.save(str(tmp_path / "full"), "t")
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(SnapshotIOError):
        Snapshot.load(str(layout), "base")              # the private copy cannot be written
    monkeypatch.setattr(os, "pwrite", real)
    assert not (tmp_path / "full").exists()             # the failed save left nothing
    assert Snapshot.checked_load(str(layout), "base").digest == oci.entries(str(layout))[0][1]
