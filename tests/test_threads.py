"""One sandbox, several threads: a call, a restore, a snapshot and a close each hold the
sandbox while they run (Core.take), so none of them interleaves with another — the second is
refused with SandboxBusyError and changes nothing — and nothing runs on a sandbox another
thread has closed (its VM may already serve another sandbox)."""

from __future__ import annotations

import threading

import pytest

from snapcell import (
    SandboxBusyError,
    SandboxClosedError,
    SandboxStatus,
    UninitializedSandbox,
)

from .conftest import make_host_functions


def test_restore_snapshot_and_close_are_refused_while_another_thread_calls(
        kvm_ok: None, simpleguest: str) -> None:
    hf = make_host_functions()
    entered, release = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        assert release.wait(30)

    hf.register("Block", block)
    with UninitializedSandbox(simpleguest, host_functions=hf).evolve() as sb:
        snap = sb.snapshot()
        assert sb.call("AddToStatic", 3) == 3
        t = threading.Thread(target=sb.call, args=("CallHostByName", "Block"))
        t.start()
        try:
            assert entered.wait(30)                   # the call is inside its host function
            for attempt in (lambda: sb.restore(snap), sb.snapshot, sb.close,
                            lambda: sb.call("GetStatic")):
                with pytest.raises(SandboxBusyError, match="one thread at a time"):
                    attempt()
            assert sb.status is SandboxStatus.READY
        finally:
            release.set()
            t.join(30)
        assert sb.call("GetStatic") == 3              # nothing was restored meanwhile
        sb.restore(snap)
        assert sb.call("GetStatic") == 0


def test_a_held_sandbox_refuses_a_second_restore_and_a_closed_one_every_call(
        kvm_ok: None, simpleguest: str) -> None:
    with UninitializedSandbox(simpleguest, host_functions=make_host_functions()).evolve() as sb:
        snap = sb.snapshot()
        core = sb._core                               # noqa: SLF001
        core.take()                                   # as a restore in another thread does
        try:
            with pytest.raises(SandboxBusyError):
                sb.restore(snap)
            with pytest.raises(SandboxBusyError):
                sb.snapshot()
        finally:
            core.give()
        closer = threading.Thread(target=sb.close)
        closer.start()
        closer.join(30)
        with pytest.raises(SandboxClosedError):
            sb.call("NoOp")
        with pytest.raises(SandboxClosedError):
            sb.restore(snap)


def test_many_threads_on_one_sandbox_never_interleave(kvm_ok: None, simpleguest: str) -> None:
    """Threads restore, snapshot and call one sandbox at once: each operation runs whole or is
    refused, so every call sees a state some restore or call left (never a torn one)."""
    with UninitializedSandbox(simpleguest, host_functions=make_host_functions()).evolve() as sb:
        base = sb.snapshot()
        assert sb.call("AddToStatic", 100) == 100
        hundred = sb.snapshot()
        problems: list[str] = []
        stop = threading.Event()

        def worker(i: int) -> None:
            n = 0
            while not stop.is_set() and n < 300:
                n += 1
                try:
                    if i == 0:
                        sb.restore(base if n % 2 else hundred)
                    elif i == 1:
                        sb.snapshot()
                    else:
                        v = sb.call("GetStatic")
                        if v not in (0, 100):
                            problems.append(f"GetStatic() = {v}")
                except SandboxBusyError:
                    pass
                except Exception as e:  # noqa: BLE001  (reported below)
                    problems.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        assert problems == []
        sb.restore(hundred)
        assert sb.call("GetStatic") == 100
