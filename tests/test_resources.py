"""No growth in host memory or file descriptors across many calls and sandboxes."""

from __future__ import annotations

import gc
import resource

from snapcell import MultiUseSandbox, UninitializedSandbox

from .conftest import open_fds


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_thousand_calls_no_growth(sandbox: MultiUseSandbox) -> None:
    for _ in range(200):                      # warm up caches and the guest heap
        sandbox.call("Echo", "warm")
        sandbox.call("Add", 1, 2)
    fds, rss = open_fds(), rss_kib()
    for i in range(1000):
        assert sandbox.call("Echo", f"call {i}") == f"call {i}"
        assert sandbox.call("Add", i, 1) == i + 1
        sandbox.call("MallocAndFree", 4096)
    assert open_fds() == fds
    assert rss_kib() - rss < 2048             # KiB; tolerance for allocator noise


def test_sandboxes_release_fds(kvm_ok: None, simpleguest: str) -> None:
    with UninitializedSandbox(simpleguest).evolve() as sb:
        sb.call("NoOp")
    gc.collect()      # garbage of earlier tests (cycles holding snapshots) must not close fds mid-test
    fds = open_fds()
    for _ in range(30):
        with UninitializedSandbox(simpleguest).evolve() as sb:
            sb.call("NoOp")
    assert open_fds() == fds
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0
