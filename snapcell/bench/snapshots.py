"""Persistence benchmarks for `snapcell bench`: save, load and checked_load of snapshots with
16 MiB and 256 MiB of guest memory, cold start from a snapshot file versus from the guest ELF,
and diff snapshots: save / push / load / checked_load of a child of a 256 MiB snapshot (62 MiB of
data) that changed 1 MiB versus the full snapshot (cold loads in both modes: copied and mapped
copy-on-write), and pause -> resume of a session. Medians in
milliseconds; never used by tests to assert timings."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..guest.elf import GuestBinary
from ..machine.layout import GUEST_BASE, PAGE, page_down
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from ..sandbox.snapshot import Snapshot
from ..snapshot import content, oci, registry, verified

ROOT = Path(__file__).resolve().parent.parent.parent
GUEST = ROOT / "build" / "guests" / "simpleguest.elf"
MIB = 1 << 20


def _median_ms(fn: Callable[..., Any], n: int, before: Callable[[], Any] | None = None) -> float:
    """Median time of fn() — or fn(before()), with before() untimed — over n runs."""
    times = []
    for _ in range(n):
        args = (before(),) if before is not None else ()
        t = time.perf_counter_ns()
        fn(*args)
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1e6


def config_for_total(guest: GuestBinary, total: int) -> SandboxConfiguration:
    """A default configuration whose heap makes the guest memory `total` bytes."""
    base = SandboxConfiguration()
    fixed = guest.end + 4 * PAGE + base.input_size + base.output_size + base.stack_size
    return base.replace(heap_size=page_down(total - fixed))


@contextlib.contextmanager
def _no_record() -> Iterator[None]:
    """Disable the verified-content record (checked_load hashes every layer)."""
    saved = os.environ.get(verified.ENV)
    os.environ[verified.ENV] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ[verified.ENV]
        else:
            os.environ[verified.ENV] = saved


def _size_bench(guest: GuestBinary, total: int, n: int, workdir: str) -> dict[str, float]:
    config = config_for_total(guest, total)
    with UninitializedSandbox(guest, config=config, host_functions=HostFunctions()).evolve() as sb:
        sb.call("AllocAndWritePattern", config.heap_size // 4)   # a quarter of the heap is data
        dirs: list[str] = []

        def fresh() -> tuple[Snapshot, str]:
            sb.call("NoOp")                          # a new snapshot: nothing cached
            d = tempfile.mkdtemp(dir=workdir)
            dirs.append(d)
            return sb.snapshot(), d

        save_ms = _median_ms(lambda a: oci.save(a[0], a[1], "bench"), n, fresh)
        snap, d = fresh()
        oci.save(snap, d, "bench")
        info = oci.inspect(d, "bench")
        # cold: the process image cache emptied first; checked: every layer hashed (no
        # verified-content record) — the first checked_load of a layout from elsewhere
        load_ms = _median_ms(lambda _: oci.load(d, "bench"), max(n, 5), content.clear)
        with _no_record():
            checked_ms = _median_ms(lambda _: oci.load(d, "bench", verify=True), n,
                                    content.clear)
        for x in dirs:
            shutil.rmtree(x, ignore_errors=True)
    data = sum(length for _, length in snap.image.data_extents())
    return {"memory_size": snap.memory_size, "blob_bytes": total - GUEST_BASE,
            "data_bytes": data, "disk_bytes": info["memory_disk_bytes"], "save_ms": save_ms,
            "load_ms": load_ms, "checked_load_ms": checked_ms}


REGISTRY_BIN = "/usr/bin/docker-registry"


def start_registry(workdir: str) -> tuple[subprocess.Popen[bytes], str, str] | None:
    """A throw-away docker-registry on 127.0.0.1 (None when it is not installed)."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = os.path.join(workdir, "registry")
    cfg = os.path.join(workdir, "registry.yml")
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
                f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", cfg], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}", storage
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    return None


def _stored_bytes(storage: str) -> int:
    """Bytes of blob data a registry holds."""
    total = 0
    for dirpath, _, files in os.walk(storage):
        if "data" in files:
            total += os.path.getsize(os.path.join(dirpath, "data"))
    return total


def _diff_bench(guest: GuestBinary, n: int, workdir: str) -> dict[str, float]:
    """A 256 MiB snapshot P with a quarter of its heap written (62 MiB of data), and children of
    P that changed 1 MiB (SetStatic writes 1 MiB of .bss): save, push, load, checked_load of a
    child versus the full snapshot, and pause -> resume."""
    config = config_for_total(guest, 256 * MIB)
    d = os.path.join(workdir, "diff")
    with UninitializedSandbox(guest, config=config, host_functions=HostFunctions()).evolve() as sb:
        sb.call("AllocAndWritePattern", config.heap_size // 4)
        oci.save(sb.snapshot(), d, "parent")
    parent = oci.load(d, "parent", verify=True)
    out: dict[str, float] = {}
    with MultiUseSandbox.from_snapshot(parent, host_functions=HostFunctions()) as sb:
        def child() -> Snapshot:
            content.clear()               # free the previous children's images, untimed
            gc.collect()
            sb.restore(parent)
            sb.call("SetStatic")
            return sb.snapshot()
        tags = iter(range(10**6))
        out["child_save_ms"] = _median_ms(lambda c: oci.save(c, d, f"child{next(tags)}"), n, child)
        oci.save(child(), d, "child")
    info_child, info_parent = oci.inspect(d, "child"), oci.inspect(d, "parent")
    out["child_layer_bytes"] = info_child["layers"][-1]["size"]
    out["parent_layer_bytes"] = info_parent["layers"][0]["size"]
    out["data_bytes"] = info_parent["layers"][0]["stored_bytes"]

    def cold(ref: str, verify: bool, mode: str = "copy") -> Callable[..., Any]:
        def run(*_: Any) -> Any:
            return oci.load(d, ref, verify=verify, mode=mode)
        return run

    out["child_load_cold_ms"] = _median_ms(cold("child", False), n, content.clear)
    out["full_load_cold_ms"] = _median_ms(cold("parent", False), n, content.clear)
    # copy-on-write loads: the layers' extents mapped from the files (issue 15)
    out["child_load_cold_map_ms"] = _median_ms(cold("child", False, "map"), n, content.clear)
    out["full_load_cold_map_ms"] = _median_ms(cold("parent", False, "map"), n, content.clear)
    content.clear()
    out["child_map_pieces"] = len(oci.load(d, "child", mode="map").image.pieces)
    out["full_map_pieces"] = len(oci.load(d, "parent", mode="map").image.pieces)
    out["child_load_cached_ms"] = _median_ms(cold("child", False), max(n, 5))
    # checked_load: the layers are recorded as verified (saved by us): no hashing again
    out["child_checked_load_cold_ms"] = _median_ms(cold("child", True), n, content.clear)
    out["child_checked_load_second_ms"] = _median_ms(cold("child", True), max(n, 5))
    with _no_record():                                   # every layer is hashed
        out["child_checked_load_hashing_ms"] = _median_ms(cold("child", True), n, content.clear)
        out["full_checked_load_hashing_ms"] = _median_ms(cold("parent", True), n, content.clear)
    # pause -> resume on the same box
    sb2 = MultiUseSandbox.resume(d, HostFunctions(), ref="parent")
    times, pieces = [], 0
    for _ in range(max(n, 5)):
        sb2.call("SetStatic")
        t = time.perf_counter_ns()
        sb2.pause(d, "session")
        sb2 = MultiUseSandbox.resume(d, HostFunctions())
        times.append(time.perf_counter_ns() - t)
        pieces = max(pieces, len(sb2._snapshot.image.pieces))   # noqa: SLF001
    sb2.close()
    out["pause_resume_ms"] = statistics.median(times) / 1e6
    out["session_max_pieces"] = pieces
    out["session_depth"] = oci.inspect(d, "session")["depth"]
    # the same with the default configuration (a small guest)
    small = os.path.join(workdir, "session-small")
    with UninitializedSandbox(guest,
                              config=SandboxConfiguration(), host_functions=HostFunctions()).evolve() as sb:
        oci.save(sb.snapshot(), small, "base")
    sb3 = MultiUseSandbox.resume(small, HostFunctions(), ref="base")
    times = []
    for _ in range(max(n, 5)):
        sb3.call("AddToStatic", 1)
        t = time.perf_counter_ns()
        sb3.pause(small, "session")
        sb3 = MultiUseSandbox.resume(small, HostFunctions())
        times.append(time.perf_counter_ns() - t)
    out["pause_resume_default_ms"] = statistics.median(times) / 1e6
    out["default_memory_size"] = sb3.config.memory_size if hasattr(sb3.config, "memory_size") \
        else float(oci.inspect(small, "session")["memory_size"])
    sb3.close()
    reg = start_registry(workdir)
    if reg is not None:
        proc, host, storage = reg
        try:
            def push(tag: str, stats: dict[str, int]) -> Callable[[str], Any]:
                return lambda repo: registry.push(d, f"{host}/{repo}:{tag}", ref=tag,
                                                  insecure=True, stats=stats)
            repos = iter(range(10**6))
            full: dict[str, int] = {}
            out["full_push_ms"] = _median_ms(push("parent", full), n,
                                             lambda: f"bench/p{next(repos)}")
            out["full_push_bytes"] = full["bytes_sent"] / n
            registry.push(d, f"{host}/bench/c:parent", ref="parent", insecure=True)
            kid: dict[str, int] = {}
            t = time.perf_counter_ns()
            registry.push(d, f"{host}/bench/c:child", ref="child", insecure=True, stats=kid)
            out["child_push_ms"] = (time.perf_counter_ns() - t) / 1e6
            out["child_push_bytes"] = kid["bytes_sent"]
            out["registry_stored_bytes"] = _stored_bytes(storage)
        finally:
            proc.terminate()
            proc.wait()
    return out


def _cold_start(guest: GuestBinary, n: int, workdir: str) -> dict[str, float]:
    config = SandboxConfiguration()
    with UninitializedSandbox(guest, config=config, host_functions=HostFunctions()).evolve() as sb:
        d = os.path.join(workdir, "cold")
        oci.save(sb.snapshot(), d, "ready")

    def from_file() -> None:
        snap = oci.load(d, "ready")
        with MultiUseSandbox.from_snapshot(snap, host_functions=HostFunctions()) as s:
            s.call("EchoI32", 1)

    def from_elf() -> None:
        with UninitializedSandbox(guest, config=config, host_functions=HostFunctions()).evolve() as s:
            s.call("EchoI32", 1)

    from_file()
    from_elf()                                       # warm the VM pool and caches for both
    file_ms, elf_ms = _median_ms(from_file, n), _median_ms(from_elf, n)
    return {"from_snapshot_file_ms": file_ms, "from_elf_ms": elf_ms,
            "speedup": elf_ms / file_ms if file_ms else 0.0}


def bench_persistence(quick: bool = False, guest: str | None = None) -> dict[str, Any]:
    """Measure snapshot persistence on this machine. `quick` takes fewer samples.

    Returns {"16MiB": {...}, "256MiB": {...}, "cold_start": {...}} with medians in ms: save
    (a fresh snapshot each time, into a new layout, fsyncs included), load, checked_load
    (memory hashed), and load + from_snapshot + first call versus evolve from the ELF + first
    call (both through the warm VM pool), and "diff": a child of a 256 MiB snapshot that changed
    1 MiB versus the full snapshot (see `_diff_bench`)."""
    binary = GuestBinary.from_file(guest or str(GUEST))
    workdir = tempfile.mkdtemp(prefix="snapcell-bench-")
    try:
        out: dict[str, Any] = {}
        for label, total, n in (("16MiB", 16 * MIB, 5 if quick else 20),
                                ("256MiB", 256 * MIB, 3 if quick else 8)):
            out[label] = _size_bench(binary, total, n, workdir)
        out["cold_start"] = _cold_start(binary, 10 if quick else 50, workdir)
        out["diff"] = _diff_bench(binary, 3 if quick else 10, workdir)
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
