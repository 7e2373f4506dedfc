"""Diff snapshots on real KVM (issue 15): chains of depth 1-N saved, loaded, checked_loaded
(also in a fresh process), flattened at a maximum depth and on demand; broken chains (a missing
parent layer, a tampered layer, a repeated layer, an inconsistent parent) refused with a clear
error and nothing changed; the verified-content record and the image cache; rm and gc, also
against concurrent saves in another process; sessions (pause / resume, in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from snapcell import MultiUseSandbox, Snapshot
from snapcell.errors import (
    SnapshotDigestMismatch,
    SnapshotError,
    SnapshotFormatError,
    SnapshotNotFound,
)
from snapcell.snapshot import collect, content, layers, oci, verified

from .conftest import ROOT, make_host_functions, open_fds
from .test_snapshot_files import (
    PYTHON,
    blob_path,
    canonical,
    index_entry,
    layout,
    manifest_of,
    read_json,
    set_config,
    set_manifest,
    small_snapshot,
    template_layout,
)

_ = (layout, small_snapshot, template_layout)


def grow_chain(d: Path, n: int, start: str = "base", **save: Any) -> list[str]:
    """Tags g1..gn: each a sandbox from the checked_load of the previous tag plus
    AddToStatic(1), saved into the same layout (a diff on its parent)."""
    tags, prev = [], start
    for i in range(1, n + 1):
        snap = Snapshot.checked_load(str(d), prev)
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
            sb.call("AddToStatic", 1)
            sb.snapshot().save(str(d), f"g{i}", **save)
        tags.append(prev := f"g{i}")
    return tags


def blobs(d: Path) -> set[str]:
    """Blob file names of a layout."""
    return set(os.listdir(d / "blobs" / "sha256"))


def layer_blobs(d: Path, tag: str) -> list[Path]:
    """The memory layer files of `tag`, base first."""
    return [blob_path(d, x["digest"]) for x in manifest_of(d, tag)["layers"]]


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Each test starts without cached images (they are per process)."""
    content.clear()
    yield
    content.clear()


# ------------------------------------------------------------------------------ chains
def test_chains_share_layers_and_save_only_the_new_one(layout: Path) -> None:
    before = blobs(layout)
    base_layers = manifest_of(layout)["layers"]
    tags = grow_chain(layout, 5)
    for depth, tag in enumerate(tags, start=2):
        m = manifest_of(layout, tag)
        assert len(m["layers"]) == depth and m["layers"][0] == base_layers[0]
        info = oci.inspect(str(layout), tag)
        assert info["depth"] == depth and info["generation"] == depth
        parent = "base" if depth == 2 else tags[depth - 3]
        assert info["parent"] == index_entry(layout, parent)["digest"] and info["parent_present"]
        assert manifest_of(layout, parent)["layers"] == m["layers"][:-1]    # a strict prefix
        new = m["layers"][-1]
        assert new["size"] < 256 << 10 and new["size"] < base_layers[0]["size"] // 2
    # each save added exactly its layer, config and manifest
    assert len(blobs(layout) - before) == 3 * len(tags)
    for i, tag in enumerate(tags, start=1):
        for loader in (Snapshot.load, Snapshot.checked_load):
            content.clear()
            with MultiUseSandbox.from_snapshot(loader(str(layout), tag),
                                               host_functions=make_host_functions()) as sb:
                assert sb.call("GetStatic") == 11 + i
                assert sb.call("Add", 2, 3) == 5


FRESH = """
import sys
from snapcell import MultiUseSandbox, Snapshot
from tests.conftest import make_host_functions
for loader in (Snapshot.checked_load, Snapshot.load):
    with MultiUseSandbox.from_snapshot(loader(sys.argv[1], sys.argv[2]),
                                       host_functions=make_host_functions()) as sb:
        print(sb.call("GetStatic"), end=" ")
"""


def test_a_deep_chain_loads_in_a_fresh_process(layout: Path) -> None:
    grow_chain(layout, 4)
    out = subprocess.run([str(PYTHON), "-c", FRESH, str(layout), "g4"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["15", "15"]


def test_max_depth_flattens_and_keeps_the_lineage(layout: Path) -> None:
    tags = grow_chain(layout, 4, max_depth=3)
    depths = [oci.inspect(str(layout), t)["depth"] for t in tags]
    assert depths == [2, 3, 1, 2]                 # g3 would have been 4 deep: flattened
    g3 = oci.inspect(str(layout), "g3")
    assert g3["parent"] == index_entry(layout, "g2")["digest"] and g3["generation"] == 4
    with MultiUseSandbox.from_snapshot(Snapshot.checked_load(str(layout), "g4"),
                                       host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 15
    with pytest.raises(ValueError, match="max_depth"):
        Snapshot.load(str(layout), "g1").save(str(layout), "x", max_depth=0)


def test_flatten_on_demand(layout: Path) -> None:
    grow_chain(layout, 3)
    old = oci.inspect(str(layout), "g3")
    digest = oci.flatten(str(layout), "g3")
    new = oci.inspect(str(layout), "g3")
    assert digest == new["digest"] != old["digest"]
    assert new["depth"] == 1 and new["parent"] == old["parent"]
    assert new["generation"] == old["generation"]
    assert oci.flatten(str(layout), "g3") == digest         # idempotent
    with MultiUseSandbox.from_snapshot(Snapshot.checked_load(str(layout), "g3"),
                                       host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 14
    # children of the flattened snapshot build on the new single layer
    grow_chain(layout, 1, start="g3")
    assert oci.inspect(str(layout), "g1")["depth"] == 2


def test_a_child_saved_elsewhere_is_saved_full(layout: Path, tmp_path: Path) -> None:
    snap = Snapshot.load(str(layout), "base")
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        sb.call("AddToStatic", 2)
        child = sb.snapshot()
    child.save(str(tmp_path / "other"), "c")
    info = oci.inspect(str(tmp_path / "other"), "c")
    assert info["depth"] == 1 and info["parent"] is None
    assert Snapshot.checked_load(str(tmp_path / "other"), "c").generation == 2


# ------------------------------------------------------------------------------ broken chains
def expect_refused(d: Path, tag: str, error: type[BaseException], match: str,
                   loaders: tuple[Callable[..., Snapshot], ...] = (Snapshot.load,
                                                                  Snapshot.checked_load)) -> None:
    """Each loader raises `error`; no descriptor leaks; the layout is unchanged."""
    files = {p: p.stat().st_mtime_ns for p in d.rglob("*")}
    content.clear()
    fds = open_fds()
    for loader in loaders:
        with pytest.raises(error, match=match):
            loader(str(d), tag)
    assert open_fds() == fds
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*")} == files


def test_missing_parent_layer_is_a_clear_error(layout: Path) -> None:
    grow_chain(layout, 2)
    layer_blobs(layout, "g2")[0].unlink()                  # the base's memory layer
    expect_refused(layout, "g2", SnapshotFormatError, "parent chain")
    with pytest.raises(SnapshotFormatError, match="parent chain"):
        oci.verify(str(layout), "g2")


@pytest.mark.parametrize("which", [0, 1, 2])
def test_corruption_of_any_layer_is_caught_by_checked_load(layout: Path, which: int) -> None:
    grow_chain(layout, 2)
    Snapshot.checked_load(str(layout), "g2")               # vouched for by the record now
    p = layer_blobs(layout, "g2")[which]
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    data[100] ^= 0x40                                      # in the data, before the table
    p.write_bytes(bytes(data))
    p.chmod(0o444)                                         # read-only again: the ctime moved
    expect_refused(layout, "g2", SnapshotDigestMismatch, "modified or corrupted",
                   (Snapshot.checked_load,))
    with pytest.raises(SnapshotDigestMismatch):
        oci.verify(str(layout), "g2", full=False)


def test_a_repeated_layer_is_a_cycle_and_refused(layout: Path) -> None:
    grow_chain(layout, 2)
    m = manifest_of(layout, "g2")
    m["layers"] = [m["layers"][0], m["layers"][1], m["layers"][0]]
    set_manifest(layout, m, "g2")
    expect_refused(layout, "g2", SnapshotFormatError, "cycle")


@pytest.mark.parametrize("lie", ["parent", "generation"])
def test_a_chain_that_disagrees_with_its_parent_is_refused(layout: Path, lie: str) -> None:
    grow_chain(layout, 2)
    cfg = read_json(blob_path(layout, manifest_of(layout, "g2")["config"]["digest"]))
    if lie == "parent":       # base's layers are not g2's minus its last one
        cfg["parent"] = index_entry(layout, "base")["digest"]
    else:                     # the right parent, but not an older generation
        cfg["generation"] = 1
    set_config(layout, canonical(cfg), "g2")
    expect_refused(layout, "g2", SnapshotFormatError,
                   "inconsistent" if lie == "parent" else "generation")


def test_a_newer_format_is_refused_clearly(layout: Path) -> None:
    m = manifest_of(layout)
    m["artifactType"] = "application/vnd.snapcell.snapshot.v3"
    set_manifest(layout, m)
    expect_refused(layout, "base", SnapshotFormatError, "newer snapcell")


# ------------------------------------------------------------------------------ record, cache
def test_second_checked_load_trusts_the_record_until_the_file_changes(
        layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grow_chain(layout, 1)
    hashed: list[bool] = []
    real = layers.apply_layer

    def spy(*args: Any, **kw: Any) -> str | None:
        hashed.append(kw["verify"])
        return real(*args, **kw)

    monkeypatch.setattr(layers, "apply_layer", spy)
    p = layer_blobs(layout, "base")[0]
    Snapshot.checked_load(str(layout), "base")           # saved by this process: recorded
    content.clear()
    Snapshot.checked_load(str(layout), "g1")
    assert hashed == [False, False]                      # both layers vouched for
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns))   # same times, new ctime
    content.clear()
    hashed.clear()
    Snapshot.checked_load(str(layout), "g1")
    assert hashed == [True, False]                       # the touched file is hashed again
    content.clear()
    hashed.clear()
    Snapshot.checked_load(str(layout), "g1")
    assert hashed == [False, False]
    # `verify --full` re-hashes everything, `verify` trusts the record
    calls: list[int] = []
    real_sha = oci.sha256_fd
    monkeypatch.setattr(oci, "sha256_fd", lambda fd, n, prog=None: calls.append(n) or real_sha(fd, n, prog))
    oci.verify(str(layout), "g1", full=False)
    assert calls == []
    oci.verify(str(layout), "g1", full=True)
    assert len(calls) == 2


def test_the_record_lives_outside_the_layout_and_needs_a_read_only_single_link(
        layout: Path, tmp_path: Path) -> None:
    record_dir = Path(os.environ[verified.ENV])
    assert not str(record_dir).startswith(str(layout))
    p = layer_blobs(layout, "base")[0]
    fd = os.open(p, os.O_RDONLY)
    try:
        digest = manifest_of(layout)["layers"][0]["digest"]
        verified.record(fd, digest)
        assert verified.is_verified(fd, digest)
        os.link(p, tmp_path / "second-name")
        assert not verified.is_verified(fd, digest)       # another name could write it
        os.unlink(tmp_path / "second-name")
        p.chmod(0o644)
        assert not verified.is_verified(fd, digest)       # writable
    finally:
        os.close(fd)


def test_the_image_cache_serves_unchanged_chains_only(layout: Path) -> None:
    a = Snapshot.checked_load(str(layout), "base")
    b = Snapshot.load(str(layout), "base")
    assert b.image is a.image                            # the process's content store
    p = layer_blobs(layout, "base")[0]
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    data[200] ^= 1
    p.write_bytes(bytes(data))
    c = Snapshot.load(str(layout), "base")               # not detected, but not the cache
    assert c.image is not a.image
    with pytest.raises(SnapshotDigestMismatch):
        Snapshot.checked_load(str(layout), "base")


# ------------------------------------------------------------------------------ rm, gc
def test_rm_and_gc_remove_only_unreachable_blobs(layout: Path) -> None:
    grow_chain(layout, 3)
    everything = blobs(layout)
    assert collect.gc(str(layout)).removed == 0 and blobs(layout) == everything
    collect.rm(str(layout), ["g2"])                       # g3 still needs g2's layer
    done = collect.gc(str(layout))
    assert done.removed == 2                              # g2's manifest and config only
    for tag in ("base", "g1", "g3"):
        Snapshot.checked_load(str(layout), tag)
    done = collect.rm(str(layout), ["g3"], collect=True)
    assert done is not None and done.removed == 4         # its 3 blobs and g2's layer
    assert [t for t, _ in oci.entries(str(layout))] == ["base", "g1"]
    with pytest.raises(SnapshotNotFound):
        collect.rm(str(layout), ["nope"])
    with pytest.raises(SnapshotNotFound):
        collect.gc(str(layout.parent / "no-such-layout"))
    assert not (layout.parent / "no-such-layout").exists()


def test_gc_refuses_a_layout_with_an_unreadable_manifest(layout: Path) -> None:
    grow_chain(layout, 1)
    stray = blob_path(layout, "sha256:" + "0" * 64)
    stray.write_bytes(b"garbage")
    p = blob_path(layout, index_entry(layout, "g1")["digest"])
    p.chmod(0o644)
    p.write_bytes(b"{")
    with pytest.raises(SnapshotFormatError, match="gc refuses"):
        collect.gc(str(layout))
    assert stray.exists()


SAVER = """
import sys
from snapcell import MultiUseSandbox, Snapshot
from tests.conftest import make_host_functions
d, n = sys.argv[1], int(sys.argv[2])
base = Snapshot.load(d, "base")
with MultiUseSandbox.from_snapshot(base, host_functions=make_host_functions()) as sb:
    for i in range(n):
        sb.call("AddToStatic", 1)
        sb.snapshot().save(d, f"c{i}")
        sb.restore(base)
print("saved", n)
"""


def test_gc_during_concurrent_saves_never_removes_a_reachable_blob(layout: Path) -> None:
    # garbage for gc to find: a tag removed, its blobs unreferenced
    grow_chain(layout, 1)
    collect.rm(str(layout), ["g1"])
    n = 25
    saver = subprocess.Popen([str(PYTHON), "-c", SAVER, str(layout), str(n)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = removed = 0
    try:
        while saver.poll() is None:
            removed += collect.gc(str(layout)).removed
            runs += 1
            for tag, _ in oci.entries(str(layout)):       # every committed tag stays whole
                oci.verify(str(layout), tag)
    finally:
        out, err = saver.communicate(timeout=120)
    assert saver.returncode == 0, err
    assert out.strip() == f"saved {n}" and runs > 1 and removed >= 3
    collect.gc(str(layout))
    for i in range(n):
        with MultiUseSandbox.from_snapshot(Snapshot.checked_load(str(layout), f"c{i}"),
                                           host_functions=make_host_functions()) as sb:
            assert sb.call("GetStatic") == 12


# ------------------------------------------------------------------------------ sessions
def test_pause_and_resume_in_this_process(layout: Path) -> None:
    sb = MultiUseSandbox.resume(str(layout), make_host_functions(), ref="base")
    for i in range(1, 4):
        assert sb.call("AddToStatic", 10) == 11 + 10 * i
        sb.pause(str(layout), "session")
        assert sb.status.value == "closed"
        info = oci.inspect(str(layout), "session")
        assert info["depth"] == 1 + i                       # each pause adds one layer
        t = time.perf_counter()
        sb = MultiUseSandbox.resume(str(layout), make_host_functions())
        assert time.perf_counter() - t < 30                  # (a sanity bound, not a target)
    assert sb.call("GetStatic") == 41
    sb.close()


RESUME = """
import sys
from snapcell import MultiUseSandbox
from tests.conftest import make_host_functions
sb = MultiUseSandbox.resume(sys.argv[1], make_host_functions())
print(sb.call("GetStatic"), sb.call("AddToStatic", 1))
sb.pause(sys.argv[1])
"""


def test_resume_in_a_fresh_process(layout: Path) -> None:
    sb = MultiUseSandbox.resume(str(layout), make_host_functions(), ref="base")
    sb.call("AddToStatic", 5)
    sb.pause(str(layout))
    for expect in ("16 17", "17 18"):
        out = subprocess.run([str(PYTHON), "-c", RESUME, str(layout)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expect
    assert oci.inspect(str(layout), "session")["depth"] == 4


# ------------------------------------------------------------------------------ CLI
def test_cli_tree_flatten_rm_gc(layout: Path, tmp_path: Path, simpleguest: str) -> None:
    from snapcell.cli.snapshot import snapshot_group
    grow_chain(layout, 2)
    runner = CliRunner()

    def cli(*args: str, code: int = 0) -> str:
        r = runner.invoke(snapshot_group, list(args), catch_exceptions=False)
        assert r.exit_code == code, r.output
        return str(r.output)

    tree = cli("ls", str(layout), "--tree")
    lines = [x for x in tree.splitlines() if "gen" in x]
    assert [x.split()[1] for x in lines] == ["base", "g1", "g2"]
    indents = [len(x) - len(x.lstrip(" │├└─")) for x in lines]
    assert indents[0] < indents[1] < indents[2]             # each under its parent
    info = json.loads(cli("inspect", str(layout), "g2"))
    assert info["depth"] == 3 and info["parent"] == index_entry(layout, "g1")["digest"]
    assert "ok" in cli("verify", str(layout), "g2") and "ok" in cli("verify", "--full", str(layout))
    cli("flatten", str(layout), "g2")
    assert json.loads(cli("inspect", str(layout), "g2"))["depth"] == 1
    assert "removed" in cli("rm", str(layout), "g1", "--gc")
    assert "kept" in cli("gc", str(layout))
    assert "SnapshotNotFound" in cli("rm", str(layout), "g1", code=1)
    # a diff from the command line: save from the ELF, then load, call, save
    d = str(tmp_path / "cli")
    cli("save", simpleguest, d, "--tag", "b", "--call", "AddToStatic 11")
    out = cli("load", d, "b", "--call", "AddToStatic 5", "--save", "child")
    assert "AddToStatic(5) = 16" in out and "(2 layer(s))" in out
    assert oci.inspect(d, "child")["parent"] == dict(oci.entries(d))["b"]
    assert sys.modules["snapcell.snapshot.collect"] is collect
    assert issubclass(SnapshotNotFound, SnapshotError)


def test_the_image_cache_is_bounded_and_can_be_disabled(layout: Path) -> None:
    grow_chain(layout, 2)
    try:
        content.set_cache_limits(0, 0)
        a, b = Snapshot.load(str(layout), "g2"), Snapshot.load(str(layout), "g2")
        assert a.image is not b.image
        content.set_cache_limits(1, 1 << 30)
        c, d = Snapshot.load(str(layout), "g1"), Snapshot.load(str(layout), "g1")
        assert c.image is d.image
        e = Snapshot.load(str(layout), "g2")           # evicts g1 (one entry)
        assert Snapshot.load(str(layout), "g2").image is e.image
        assert Snapshot.load(str(layout), "g1").image is not c.image
    finally:
        content.set_cache_limits(8, 1 << 30)
