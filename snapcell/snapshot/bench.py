"""Persistence benchmarks for `snapcell bench`: save, load and checked_load of snapshots with
16 MiB and 256 MiB of guest memory, and cold start from a snapshot file versus from the guest ELF.
Medians in milliseconds; never used by tests to assert timings."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..guest.elf import GuestBinary
from ..machine.layout import GUEST_BASE, PAGE, page_down
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from ..sandbox.snapshot import Snapshot
from . import oci

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


def _size_bench(guest: GuestBinary, total: int, n: int, workdir: str) -> dict[str, float]:
    config = config_for_total(guest, total)
    with UninitializedSandbox(guest, config, HostFunctions()).evolve() as sb:
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
        load_ms = _median_ms(lambda: oci.load(d, "bench"), max(n, 5))
        checked_ms = _median_ms(lambda: oci.load(d, "bench", verify=True), n)
        for x in dirs:
            shutil.rmtree(x, ignore_errors=True)
    data = sum(length for _, length in snap.image.data_extents())
    return {"memory_size": snap.memory_size, "blob_bytes": total - GUEST_BASE,
            "data_bytes": data, "disk_bytes": info["memory_disk_bytes"], "save_ms": save_ms,
            "load_ms": load_ms, "checked_load_ms": checked_ms}


def _cold_start(guest: GuestBinary, n: int, workdir: str) -> dict[str, float]:
    config = SandboxConfiguration()
    with UninitializedSandbox(guest, config, HostFunctions()).evolve() as sb:
        d = os.path.join(workdir, "cold")
        oci.save(sb.snapshot(), d, "ready")

    def from_file() -> None:
        snap = oci.load(d, "ready")
        with MultiUseSandbox.from_snapshot(snap, HostFunctions()) as s:
            s.call("EchoI32", 1)

    def from_elf() -> None:
        with UninitializedSandbox(guest, config, HostFunctions()).evolve() as s:
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
    call (both through the warm VM pool)."""
    binary = GuestBinary.from_file(guest or str(GUEST))
    workdir = tempfile.mkdtemp(prefix="snapcell-bench-")
    try:
        out: dict[str, Any] = {}
        for label, total, n in (("16MiB", 16 * MIB, 5 if quick else 20),
                                ("256MiB", 256 * MIB, 3 if quick else 8)):
            out[label] = _size_bench(binary, total, n, workdir)
        out["cold_start"] = _cold_start(binary, 10 if quick else 50, workdir)
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
