"""Fresh runs split (issue 27): restore + `run("1+1")` in a JS, Python and Lua code sandbox,
split into the restore, the KVM_RUNs, the guest's work (the KVM_RUNs minus one bare KVM_RUN
round trip per exit, measured in the same loop), the host's marshalling (the run's host time
outside KVM_RUN: the request written, the result read and decoded) and the host page faults
the restore and the run take (this thread's minor faults: KVM faulting guest pages in is
counted to the thread that runs the vCPU), and the pages the run dirtied (the private pages the
next restore finds: each costs it a copy, docs/benchmarks.md, "Fresh runs")."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from ..code import CodeSandbox
from ..kvm import ioctls
from ..machine import vmachine
from ..sandbox import core

PARTS = ("total", "restore", "run", "kvm_run", "guest_work", "marshalling")


def bench_fresh_runs(n: int, floor: Callable[[], Any], warmup: int = 50,
                     langs: tuple[str, ...] = ("js", "python", "lua")) -> dict[str, Any]:
    """Rows `fresh_run_{lang}_{part}` for PARTS (µs medians over n runs); the total's row notes
    the median host page faults and exits per run. `floor` is one bare KVM_RUN round trip
    (the driver's _python_floor), timed once beside every run. The KVM_RUN ioctl is wrapped
    for the measurement only (two timestamps per KVM_RUN) and put back after."""
    clock = time.perf_counter_ns
    real = vmachine._ioctl
    run_request = ioctls.KVM_RUN
    spans: list[int] = []

    def timed(fd: int, request: int, *arg: Any) -> Any:
        if request != run_request:
            return real(fd, request, *arg)
        t = clock()
        try:
            return real(fd, request, *arg)
        finally:
            spans.append(clock() - t)

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

    out: dict[str, Any] = {}
    boxes = {lang: CodeSandbox(lang) for lang in langs}
    vmachine._ioctl = core._ioctl = timed         # type: ignore[assignment]  # both KVM_RUN sites
    try:
        samples: dict[str, dict[str, list[int]]] = {
            lang: {p: [] for p in (*PARTS, "faults", "restore_faults", "exits", "dirty_pages")}
            for lang in langs}
        for i in range(warmup + n):
            for lang, box in boxes.items():
                box.run("1+1")                     # dirty it: the next run restores first
                f_restore = faults()
                t0 = clock()
                box.reset()
                t1 = clock()
                dirty = box._sb._core.last_reset.private       # noqa: SLF001  # what run 1 wrote
                spans.clear()
                f0 = faults()
                value = box.run("1+1").value
                t2 = clock()
                f1 = faults()
                if value != 2:
                    raise RuntimeError(f"{lang}: 1+1 gave {value!r}")
                kvm = sum(spans)
                exits = len(spans)
                spans.clear()
                t = clock()
                floor()
                bare = clock() - t
                spans.clear()
                if i < warmup:
                    continue
                s = samples[lang]
                for part, v in (("total", t2 - t0), ("restore", t1 - t0), ("run", t2 - t1),
                                ("kvm_run", kvm), ("guest_work", kvm - exits * bare),
                                ("marshalling", t2 - t1 - kvm), ("faults", f1 - f0),
                                ("restore_faults", f0 - f_restore),
                                ("exits", exits), ("dirty_pages", dirty)):
                    s[part].append(v)
    finally:
        vmachine._ioctl = core._ioctl = real
        for box in boxes.values():
            box.close()
    for lang, s in samples.items():
        for part in PARTS:
            got = sorted(s[part])
            out[f"fresh_run_{lang}_{part}"] = {
                "n": n, "median_us": statistics.median(got) / 1000,
                "p99_us": got[min(n - 1, int(n * 0.99))] / 1000, "min_us": got[0] / 1000}
        total = out[f"fresh_run_{lang}_total"]
        for key in ("faults", "restore_faults", "exits", "dirty_pages"):
            total[key] = statistics.median(s[key])
        total["note"] = (f"host page faults: {total['restore_faults']:.0f} in the restore, "
                         f"{total['faults']:.0f} in the run; {total['exits']:.0f} exits; "
                         f"{total['dirty_pages']:.0f} pages dirtied")
    return out
