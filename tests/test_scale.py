"""Many sandboxes from one snapshot, and create/close cycles without leaks."""

from __future__ import annotations

import resource

from snapcell import MultiUseSandbox, SandboxConfiguration, UninitializedSandbox

from .conftest import make_host_functions, open_fds
from .test_resources import rss_kib

MIB = 1 << 20


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def test_thousand_sandboxes_from_one_16mib_snapshot(kvm_ok: None, simpleguest: str) -> None:
    cfg = SandboxConfiguration(heap_size=9 * MIB + 512 * 1024, stack_size=1 * MIB)
    with UninitializedSandbox(simpleguest, config=cfg, host_functions=make_host_functions()).evolve() as base:
        base.call("AddToStatic", 7)
        snap = base.snapshot()
    assert 15 * MIB <= snap.memory_size <= 17 * MIB
    _raise_fd_limit(4 * 1000 + 256)
    hf = make_host_functions()
    sandboxes: list[MultiUseSandbox] = []
    try:
        for i in range(1000):
            sb = MultiUseSandbox.from_snapshot(snap, host_functions=hf)
            sandboxes.append(sb)
            assert sb.call("AddToStatic", i) == 7 + i
        assert all(sb.call("GetStatic") == 7 + i for i, sb in enumerate(sandboxes))
    finally:
        for sb in sandboxes:
            sb.close()


def test_create_close_cycles_no_growth(kvm_ok: None, simpleguest: str) -> None:
    with UninitializedSandbox(simpleguest, host_functions=make_host_functions()).evolve() as base:
        snap = base.snapshot()
    hf = make_host_functions()
    for _ in range(300):                               # warm the pool and the allocator
        with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as sb:
            sb.call("NoOp")
    fds, rss = open_fds(), rss_kib()
    for i in range(10_000):
        with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as sb:
            if i % 10 == 0:
                assert sb.call("EchoI32", i) == i
    assert open_fds() == fds
    assert rss_kib() - rss < 8 * 1024                  # KiB
