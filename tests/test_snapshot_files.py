"""Snapshot files on real KVM: save/load round trips (also in a fresh process), equality with
in-memory snapshots, blobs never written through, atomic and idempotent saves, checked_load,
crash safety under SIGKILL, golden layouts and the `snapcell snapshot` CLI.

The helpers and session fixtures here (a small snapshot saved once, copied per test) are shared
with test_snapshot_corpus.py and test_registry.py."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from snapcell import MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.errors import (
    ExecutionTimeout,
    SnapshotDigestMismatch,
    SnapshotError,
    SnapshotFormatError,
    SnapshotNotFound,
    SnapshotReferenceError,
    SnapshotStateError,
)
from snapcell.snapshot import oci

from .conftest import ROOT, make_host_functions, open_fds

# A small layout: ~1.5 MiB of guest memory above GUEST_BASE, mostly holes.
SMALL = SandboxConfiguration(input_size=16 << 10, output_size=16 << 10, heap_size=256 << 10,
                             stack_size=32 << 10)
GOLDENS = ROOT / "tests" / "goldens"
PYTHON = ROOT / ".venv" / "bin" / "python"


# ------------------------------------------------------------------------------ helpers
def small_sandbox(guest: str) -> MultiUseSandbox:
    """An evolved simpleguest with the SMALL layout and the standard host functions."""
    return UninitializedSandbox(guest, config=SMALL, host_functions=make_host_functions()).evolve()


def blob_path(layout: Path, digest: str) -> Path:
    """Path of a blob in a layout."""
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def read_json(p: Path) -> Any:
    """A JSON file."""
    return json.loads(p.read_bytes())


def canonical(obj: object) -> bytes:
    """The canonical JSON snapcell writes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    """Store bytes as a blob; (digest, size)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blob_path(layout, digest)
    if p.exists():
        p.chmod(0o644)
    p.write_bytes(data)
    return digest, len(data)


def index_entry(layout: Path, tag: str = "base") -> dict[str, Any]:
    """The index.json entry of `tag`."""
    for e in read_json(layout / "index.json")["manifests"]:
        if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return dict(e)
    raise KeyError(tag)


def manifest_of(layout: Path, tag: str = "base") -> dict[str, Any]:
    """The parsed manifest of `tag`."""
    return dict(read_json(blob_path(layout, index_entry(layout, tag)["digest"])))


def set_manifest(layout: Path, manifest: bytes | dict[str, Any], tag: str = "base") -> str:
    """Store a manifest (bytes or object) and point `tag` at it; returns its digest."""
    data = manifest if isinstance(manifest, bytes) else canonical(manifest)
    digest, size = put_blob(layout, data)
    index = read_json(layout / "index.json")
    for e in index["manifests"]:
        if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            e["digest"], e["size"] = digest, size
    (layout / "index.json").write_bytes(canonical(index))
    return digest


def config_of(layout: Path, tag: str = "base") -> dict[str, Any]:
    """The parsed config of `tag`."""
    return dict(read_json(blob_path(layout, manifest_of(layout, tag)["config"]["digest"])))


def set_config(layout: Path, config: bytes | dict[str, Any], tag: str = "base") -> None:
    """Store a config (bytes or object) and re-point manifest and index at it (all digests
    consistent: only the validator can object)."""
    data = config if isinstance(config, bytes) else canonical(config)
    digest, size = put_blob(layout, data)
    m = manifest_of(layout, tag)
    m["config"]["digest"], m["config"]["size"] = digest, size
    set_manifest(layout, m, tag)


def file_sha(p: Path) -> str:
    """sha256 of a file."""
    return hashlib.sha256(p.read_bytes()).hexdigest()


def mapped_paths() -> str:
    """/proc/self/maps."""
    return Path("/proc/self/maps").read_text()


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def small_snapshot(kvm_ok: None, simpleguest: str) -> Snapshot:
    """simpleguest after AddToStatic(11), SMALL layout."""
    with small_sandbox(simpleguest) as sb:
        assert sb.call("AddToStatic", 11) == 11
        return sb.snapshot()


@pytest.fixture(scope="session")
def template_layout(tmp_path_factory: pytest.TempPathFactory, small_snapshot: Snapshot) -> Path:
    """A layout holding `small_snapshot` under the tag "base" (never modified)."""
    d = tmp_path_factory.mktemp("template") / "layout"
    small_snapshot.save(str(d), "base")
    return d


@pytest.fixture
def layout(tmp_path: Path, template_layout: Path) -> Path:
    """A private copy of the template layout."""
    d = tmp_path / "layout"
    shutil.copytree(template_layout, d)
    return d


# ------------------------------------------------------------------------------ round trips
FRESH_PROCESS = """
import sys
from snapcell import MultiUseSandbox, Snapshot
from tests.conftest import make_host_functions
for loader in (Snapshot.load, Snapshot.checked_load):
    snap = loader(sys.argv[1], sys.argv[2])
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        print(snap.digest, sb.call("GetStatic"), sb.call("Add", 20, 22), sb.call("EchoI32", -7))
"""


def test_save_then_load_in_a_fresh_process(tmp_path: Path, simpleguest: str) -> None:
    with small_sandbox(simpleguest) as sb:
        sb.call("AddToStatic", 5)
        sb.call("AddToStatic", 6)
        digest = sb.snapshot().save(str(tmp_path / "l"), "v1")
    assert digest.startswith("sha256:") and len(digest) == 71
    out = subprocess.run([str(PYTHON), "-c", FRESH_PROCESS, str(tmp_path / "l"), "v1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [f"{digest} 11 42 -7"] * 2


def test_loaded_snapshot_equals_the_in_memory_one(layout: Path, small_snapshot: Snapshot) -> None:
    snap = Snapshot.load(str(layout), "base")
    assert snap.layout == small_snapshot.layout
    assert snap.segments == small_snapshot.segments
    assert snap.syscall_entry == small_snapshot.syscall_entry
    assert snap.functions == small_snapshot.functions
    assert snap.host_functions == small_snapshot.host_functions
    assert snap.generation == small_snapshot.generation and snap.initialised
    assert snap.guest_sha256 == small_snapshot.guest_sha256
    assert snap.cpu.regs[:-1] == small_snapshot.cpu.regs[:-1]          # RFLAGS is sanitised
    assert snap.cpu.rflags == (small_snapshot.cpu.rflags & 0xCD5) | 2
    assert snap.cpu.xsave == small_snapshot.cpu.xsave
    assert snap.digest == index_entry(layout)["digest"]
    assert snap.memory_size == small_snapshot.memory_size
    # the same content saved again gives the same digest
    assert snap.save(str(layout), "again") == snap.digest


def test_restore_across_loads_and_in_memory(layout: Path, small_snapshot: Snapshot,
                                            simpleguest: str) -> None:
    a = Snapshot.load(str(layout), "base")
    b = Snapshot.checked_load(str(layout), "base")
    with MultiUseSandbox.from_snapshot(a, host_functions=make_host_functions()) as sb:
        assert sb.call("AddToStatic", 1) == 12
        sb.restore(b)                                  # an independent load of the same layout
        assert sb.call("GetStatic") == 11
        sb.call("AddToStatic", 100)
        sb.restore(small_snapshot)                     # and the in-memory original
        assert sb.call("GetStatic") == 11
    with small_sandbox(simpleguest) as other:          # an evolved sandbox restores a loaded one
        other.restore(a)
        assert other.call("GetStatic") == 11
        assert other.call("Add", 2, 3) == 5


def test_sandbox_writes_never_reach_the_blob(layout: Path) -> None:
    snap = Snapshot.load(str(layout), "base")
    blob = blob_path(layout, manifest_of(layout)["layers"][0]["digest"])
    before, mtime = file_sha(blob), blob.stat().st_mtime_ns
    assert str(blob) not in mapped_paths()             # load maps nothing
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        sb.call("AddToStatic", 1000)
        sb.call("SetStatic")                           # 1 MiB of .bss written
        sb.call("AllocAndWritePattern", 100_000)
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb2:
            assert sb2.call("GetStatic") == 11
        sb.restore(snap)
        assert sb.call("GetStatic") == 11
    assert file_sha(blob) == before and blob.stat().st_mtime_ns == mtime


def test_timeouts_still_interrupt_a_loaded_snapshot(layout: Path) -> None:
    snap = Snapshot.load(str(layout), "base")
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions(),
                                       config=SMALL.replace(max_execution_time=0.2)) as sb:
        with pytest.raises(ExecutionTimeout):
            sb.call("Spin")
        sb.restore(snap)
        assert sb.call("GetStatic") == 11


# ------------------------------------------------------------------------------ saving
def test_save_is_idempotent_and_shares_blobs(tmp_path: Path, small_snapshot: Snapshot) -> None:
    d = tmp_path / "l"
    first = small_snapshot.save(str(d), "a")
    index = (d / "index.json").read_bytes()
    blobs = sorted(os.listdir(d / "blobs" / "sha256"))
    assert len(blobs) == 3
    assert small_snapshot.save(str(d), "a") == first
    assert (d / "index.json").read_bytes() == index
    assert small_snapshot.save(str(d), "b") == first
    assert sorted(os.listdir(d / "blobs" / "sha256")) == blobs
    assert oci.entries(str(d)) == [("a", first), ("b", first)]
    assert read_json(d / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    mem = blob_path(d, manifest_of(d, "a")["layers"][0]["digest"])
    data = sum(n for _, n in small_snapshot.image.data_extents())
    # an extent layer stores only the non-zero pages (no holes to hash), plus its table
    assert mem.stat().st_size <= data + 4096 and mem.stat().st_size < small_snapshot.image.size // 4
    assert mem.stat().st_mode & 0o777 == 0o444


def test_save_replaces_a_tag_in_place_and_keeps_the_rest(layout: Path, simpleguest: str) -> None:
    (layout / "README").write_text("not ours")
    (layout / "blobs" / "sha256" / "notes.txt").write_text("not ours either")
    with small_sandbox(simpleguest) as sb:
        sb.call("AddToStatic", 1)
        one = sb.snapshot().save(str(layout), "one")
        sb.call("AddToStatic", 1)
        two = sb.snapshot()
    base = index_entry(layout, "base")["digest"]
    new = two.save(str(layout), "base")
    assert new != base
    assert oci.entries(str(layout)) == [("base", new), ("one", one)]
    assert (layout / "README").read_text() == "not ours"
    assert (layout / "blobs" / "sha256" / "notes.txt").exists()
    assert blob_path(layout, base).exists()            # unreferenced blobs are left alone
    with MultiUseSandbox.from_snapshot(Snapshot.load(str(layout), "base"),
                                       host_functions=make_host_functions()) as sb2:
        assert sb2.call("GetStatic") == 2
    with MultiUseSandbox.from_snapshot(Snapshot.load(str(layout), one),
                                       host_functions=make_host_functions()) as sb2:
        assert sb2.call("GetStatic") == 1


def test_pre_init_snapshots_are_refused(tmp_path: Path, simpleguest: str) -> None:
    pre = UninitializedSandbox(simpleguest, config=SMALL).snapshot()
    with pytest.raises(SnapshotStateError):
        pre.save(str(tmp_path / "l"))
    assert not (tmp_path / "l").exists()


def test_save_refuses_bad_tags_and_foreign_directories(tmp_path: Path, small_snapshot: Snapshot) -> None:
    for tag in ("", ".hidden", "-x", "a/b", "a:b", "x" * 129, "sha256:" + "0" * 64):
        with pytest.raises(SnapshotReferenceError):
            small_snapshot.save(str(tmp_path / "l"), tag)
    assert not (tmp_path / "l").exists()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "file").write_text("x")
    with pytest.raises(SnapshotFormatError):
        small_snapshot.save(str(tmp_path / "home"), "t")
    assert os.listdir(tmp_path / "home") == ["file"]


def test_concurrent_saves_keep_every_tag(tmp_path: Path, small_snapshot: Snapshot) -> None:
    d = str(tmp_path / "l")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                small_snapshot.save(d, f"t{i}-{j}")
        except BaseException as e:      # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(str(t) for t, _ in oci.entries(d)) == sorted(f"t{i}-{j}" for i in range(4)
                                                              for j in range(5))


KILL_LOOP = """
import sys
from snapcell import SandboxConfiguration, UninitializedSandbox
from tests.conftest import make_host_functions, guest_path
cfg = SandboxConfiguration(input_size=16 << 10, output_size=16 << 10, heap_size=256 << 10,
                           stack_size=32 << 10)
sb = UninitializedSandbox(guest_path("simpleguest"),
                          config=cfg, host_functions=make_host_functions()).evolve()
start = int(sys.argv[2])
print("ready", flush=True)
for i in range(start, start + 10_000):
    sb.call("AddToStatic", 1)
    sb.snapshot().save(sys.argv[1], f"n{i}")
    print(f"saved n{i} {sb.call('GetStatic')}", flush=True)
"""


def test_saves_killed_at_random_points_leave_earlier_tags_loadable(tmp_path: Path,
                                                                   kvm_ok: None) -> None:
    d = tmp_path / "l"
    rng = random.Random(1234)
    saved: dict[str, int] = {}
    for round_ in range(10):
        proc = subprocess.Popen([str(PYTHON), "-c", KILL_LOOP, str(d), str(round_ * 10_000)],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
        for line in rest.splitlines():
            if line.startswith("saved "):
                _, tag, value = line.split()
                saved[tag] = int(value)          # GetStatic in that process
        listed = dict(oci.entries(str(d))) if (d / "index.json").exists() else {}
        assert set(saved) <= set(listed)
        for listed_tag in listed:                      # every committed tag is whole
            Snapshot.checked_load(str(d), str(listed_tag))
    assert saved, "no save finished in any round"
    for saved_tag, value in list(saved.items())[-5:]:
        with MultiUseSandbox.from_snapshot(Snapshot.checked_load(str(d), saved_tag),
                                           host_functions=make_host_functions()) as sb:
            assert sb.call("GetStatic") == value
    # the next save removes what killed writers left behind
    Snapshot.load(str(d), next(iter(saved))).save(str(d), "final")
    leftovers = [n for n in os.listdir(d) + os.listdir(d / "blobs" / "sha256")
                 if n.startswith(".snapcell-tmp-")]
    assert leftovers == []


# ------------------------------------------------------------------------------ loading
def test_load_by_digest_and_missing_refs(layout: Path, tmp_path: Path) -> None:
    digest = index_entry(layout)["digest"]
    assert Snapshot.load(str(layout), digest).digest == digest
    with pytest.raises(SnapshotNotFound):
        Snapshot.load(str(layout), "nope")
    with pytest.raises(SnapshotNotFound):
        Snapshot.load(str(layout), "sha256:" + "0" * 64)
    with pytest.raises(SnapshotNotFound):
        Snapshot.load(str(tmp_path / "does-not-exist"))
    with pytest.raises(SnapshotReferenceError):
        Snapshot.load(str(layout), "sha256:abc")
    with pytest.raises(SnapshotReferenceError):
        Snapshot.load(str(layout), "../base")


@pytest.mark.parametrize("which", ["manifest", "config", "memory"])
def test_checked_load_rejects_a_one_byte_change_in_any_blob(layout: Path, which: str) -> None:
    m = manifest_of(layout)
    digest = {"manifest": index_entry(layout)["digest"], "config": m["config"]["digest"],
              "memory": m["layers"][0]["digest"]}[which]
    p = blob_path(layout, digest)
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    # a byte the JSON parser still accepts (a digit or letter of a digest) or a code byte
    pos = {"manifest": data.find(b"sha256:") + 10, "config": data.find(b"guest_sha256") + 20,
           "memory": 0x1000 + 123}[which]
    data[pos] = ord("0") if data[pos] != ord("0") else ord("1")
    p.write_bytes(bytes(data))
    fds = open_fds()
    with pytest.raises(SnapshotDigestMismatch):
        Snapshot.checked_load(str(layout), "base")
    assert open_fds() == fds
    if which == "memory":
        # documented: plain load does not hash the memory blob, so the change goes unnoticed
        assert Snapshot.load(str(layout), "base").digest == index_entry(layout)["digest"]
    else:
        # the small JSON blobs are always digest-checked
        with pytest.raises(SnapshotDigestMismatch):
            Snapshot.load(str(layout), "base")


def test_verify_and_inspect(layout: Path) -> None:
    e = oci.verify(str(layout), "base")
    assert e.digest == index_entry(layout)["digest"] and e.tag == "base"
    info = oci.inspect(str(layout), "base")
    assert info["generation"] == 1 and info["tag"] == "base" and "GetStatic" in info["functions"]


# ------------------------------------------------------------------------------ goldens
GOLDEN_CASES = {
    "static11": lambda sb: sb.call("GetStatic") == 11 and sb.call("AddToStatic", 1) == 12,
    "pattern": lambda sb: (sb.call("GetStatic") == 11 and sb.call("ReadPattern")
                           == bytes((i * 7 + 3) & 0xFF for i in range(5000))),
}


def golden_dirs() -> list[Path]:
    """Every golden layout under tests/goldens."""
    return sorted(p for p in GOLDENS.iterdir() if (p / "oci-layout").exists())


@pytest.mark.parametrize("tag", sorted(GOLDEN_CASES))
def test_golden_snapshots_still_load(kvm_ok: None, tag: str) -> None:
    dirs = golden_dirs()
    assert dirs, "no goldens: run `make goldens`"
    check: Callable[[MultiUseSandbox], bool] = GOLDEN_CASES[tag]
    from snapcell.errors import SnapshotIncompatibleHost
    from snapcell.kvm import shared_kvm
    from snapcell.machine.features import host_features
    host_vendor = host_features(shared_kvm()).vendor
    for d in dirs:
        if oci.inspect(str(d), tag)["cpu_vendor"] not in ("any", host_vendor):
            # goldens record the CPU they were made on; another vendor must be refused cleanly
            with pytest.raises(SnapshotIncompatibleHost, match="vendor"):
                Snapshot.checked_load(str(d), tag)
            continue
        snap = Snapshot.checked_load(str(d), tag)
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
            assert check(sb)
            assert sb.call("Add", 40, 2) == 42 and sb.call("Echo", "golden") == "golden"
            sb.restore(snap)
            assert check(sb)


def test_goldens_of_every_format_are_present() -> None:
    """Format 1 (one raw memory blob per tag), format 2 ("pattern" a diff on "static11") and
    format 3 (the same, under the portable CPU baseline)."""
    found = {}
    for d in golden_dirs():
        found[oci.inspect(str(d), "static11")["format_version"]] = d
    assert set(found) >= {1, 2, 3}
    assert oci.inspect(str(found[1]), "pattern")["depth"] == 1
    for v in (found[2], found[3]):
        info = oci.inspect(str(v), "pattern")
        assert info["depth"] == 2 and info["parent"] == oci.inspect(str(v), "static11")["digest"]
        assert manifest_of(v, "pattern")["layers"][0] == manifest_of(v, "static11")["layers"][0]
    assert oci.inspect(str(found[3]), "static11")["cpu_baseline"]["name"] == "x86-64-v3"


def test_goldens_are_small() -> None:
    total = sum(p.stat().st_size for p in GOLDENS.rglob("*") if p.is_file())
    assert 0 < total < 8 << 20


# ------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli() -> Iterator[Callable[..., Any]]:
    """Invoke `snapcell snapshot ...` in-process."""
    from snapcell.cli.snapshot import snapshot_group
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        r = runner.invoke(snapshot_group, list(args), catch_exceptions=False)
        assert r.exit_code == code, r.output
        return r

    yield run


def test_cli_save_ls_inspect_verify_load(cli: Callable[..., Any], tmp_path: Path,
                                          simpleguest: str) -> None:
    d = str(tmp_path / "l")
    r = cli("save", simpleguest, d, "--tag", "cli", "--call", "AddToStatic 7",
            "--heap-size", str(256 << 10), "--stack-size", str(32 << 10))
    digest = r.output.split()[-1]
    assert digest.startswith("sha256:")
    assert "cli" in cli("ls", d).output
    rows = json.loads(cli("ls", d, "--json").output)
    assert rows[0]["tag"] == "cli" and rows[0]["digest"] == digest and rows[0]["error"] is None
    info = json.loads(cli("inspect", d, "cli").output)
    assert info["digest"] == digest and info["layout"]["heap_size"] == 256 << 10
    assert "ok" in cli("verify", d).output
    out = cli("load", d, "cli", "--checked", "--call", "GetStatic", "--call", "Echo 'a b'").output
    assert "GetStatic() = 7" in out and "'a b'" in out
    blob = Path(d) / "blobs" / "sha256" / digest.split(":")[1]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes() + b" ")           # the manifest: now the wrong size
    assert "FAIL" in cli("verify", d, code=1).output
    assert "Snapshot" in cli("load", d, "cli", code=1).output


def test_every_snapshot_error_is_a_snapshot_error() -> None:
    for cls in (SnapshotDigestMismatch, SnapshotFormatError, SnapshotNotFound,
                SnapshotReferenceError, SnapshotStateError):
        assert issubclass(cls, SnapshotError)
    assert sys.modules["snapcell.snapshot"] is not None


def test_cli_load_with_host_functions(cli: Callable[..., Any], tmp_path: Path, simpleguest: str) -> None:
    """A snapshot recorded with host functions loads from the CLI when they are supplied."""
    d = str(tmp_path / "hf")
    with UninitializedSandbox(simpleguest, host_functions=make_host_functions()).evolve() as sb:
        sb.snapshot().save(d, "hf")
    out = cli("load", d, "hf", "--host-functions", "tests.conftest:make_host_functions",
              "--call", "Add 40 2").output
    assert "Add(40, 2) = 42" in out
    r = cli("load", d, "hf", "--call", "Add 1 2", code=1)          # HostAdd missing
    assert "HostAdd" in r.output
