"""A process that forks keeps its guarantees in the child: what the parent cached per process
(the pagemap handle every reset scans with, the warm VM pool, the timeout watchdog's thread)
is the parent's, so the child starts each of them over. Before that, a child's restore read
the *parent's* page tables, missed the child's dirty pages and left one tenant's writes in
place for the next; the child was handed the parent's pooled machines (KVM refuses them:
EIO); and timeouts never fired (the watchdog thread did not survive the fork)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

from snapcell import (
    ExecutionTimeout,
    MachineError,
    MultiUseSandbox,
    PoolClosed,
    SandboxPool,
    SandboxStatus,
    Snapshot,
)

from .conftest import Fingerprint, fingerprint, host_functions


def _in_child(check: Callable[[], str]) -> str:
    """Run `check` in a forked child; returns what it returned ("ok" or a problem), or the
    exception it raised, as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child: never returns
        os.close(r)
        signal.alarm(20)                             # a hang fails the test, not the suite
        try:
            out = check()
        except BaseException as e:  # noqa: BLE001  (reported to the parent)
            out = f"{type(e).__name__}: {e}"
        os.write(w, out.encode()[:4000])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (status, got)
    return got


def test_a_forked_child_resets_its_own_memory(attacker_snapshot: Snapshot,
                                              references: dict[int, Fingerprint]) -> None:
    ref = references[id(attacker_snapshot)]
    idle = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    idle.close()                                     # an idle machine in the parent's pool
    parent = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    parent.call("DirtyStackAndHeap", 7)
    parent.restore(attacker_snapshot)                # the parent has scanned its page tables
    # `parent` stays open across the fork, so the child's machines are mapped where the
    # parent has no guest memory: a scan of the parent's page tables would find nothing there

    def child() -> str:
        for pooled in (False, True):
            sb = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions(),
                                               pooled=pooled)
            for n in (1, 64, 300):
                sb.call("DirtyStackAndHeap", n)
                sb.restore(attacker_snapshot)
                if fingerprint(sb) != ref:
                    return (f"pooled={pooled}: after DirtyStackAndHeap({n}) and restore, "
                            "not the fresh-VM state")
            sb.close()
        again = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
        return "ok" if fingerprint(again) == ref else "the child's pooled reuse kept state"

    try:
        assert _in_child(child) == "ok"
    finally:
        parent.close()
    with MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions()) as sb:
        assert fingerprint(sb) == ref                # the parent is unaffected


def test_timeouts_fire_in_a_forked_child(attacker_snapshot: Snapshot) -> None:
    with MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions()) as sb:
        sb.call("Probe", timeout=5.0)                # the parent's watchdog thread runs

    def child() -> str:
        with MultiUseSandbox.from_snapshot(attacker_snapshot,
                                           host_functions=host_functions()) as c:
            t = time.monotonic()
            try:
                c.call("Spin", timeout=0.1)
            except ExecutionTimeout:
                return "ok" if time.monotonic() - t < 30 else "the timeout fired very late"
            return "Spin returned"

    assert _in_child(child) == "ok"


def test_a_parents_sandbox_in_the_child_fails_clearly_and_restore_moves_it(
        attacker_snapshot: Snapshot, references: dict[int, Fingerprint]) -> None:
    """KVM serves a VM only to the process that created it, and the vCPU's kvm_run page stays
    a mapping shared with the parent. In a child, a call on a sandbox the parent made is a
    clear MachineError (it poisons); restore() — after that call, or straight away — moves the
    sandbox to a VM of the child without writing the parent's kvm_run page, and it then
    computes exactly the fresh-VM state."""
    ref = references[id(attacker_snapshot)]
    sb = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    sb.call("DirtyStackAndHeap", 5)

    def call_first() -> str:
        try:
            sb.call("Probe")
            return "a call on the parent's VM succeeded"
        except MachineError as e:
            if "fork" not in str(e) or sb.status is not SandboxStatus.POISONED:
                return f"unclear: {e} ({sb.status})"
        sb.restore(attacker_snapshot)
        return "ok" if fingerprint(sb) == ref else "restored, but not the fresh-VM state"

    def restore_first() -> str:
        sb.restore(attacker_snapshot)
        return "ok" if fingerprint(sb) == ref else "restored, but not the fresh-VM state"

    try:
        machine = sb._core.machine                       # noqa: SLF001
        shared = bytes(machine.run_bytes)
        for child in (call_first, restore_first):
            assert _in_child(child) == "ok", child.__name__
            # the child never wrote the parent's kvm_run page: no registers queued for the
            # parent's next KVM_RUN, no kill flag cleared
            assert bytes(machine.run_bytes) == shared and int(machine.run_struct.kvm_dirty_regs) == 0
        sb.call("DirtyStackAndHeap", 1)                  # the parent's sandbox still works
        sb.restore(attacker_snapshot)
        assert fingerprint(sb) == ref
    finally:
        sb.close()


def test_a_parents_pool_refuses_work_in_the_child(attacker_snapshot: Snapshot) -> None:
    """A SandboxPool's workers are threads of the process that started it: in a forked child a
    call would wait forever for them, so the pool refuses it (PoolClosed) at once."""
    async def main() -> None:
        pool = SandboxPool(attacker_snapshot, size=1, host_functions=host_functions())
        await pool.start()
        try:
            assert await pool.call("Probe") is not None

            def child() -> str:
                async def use() -> str:
                    try:
                        await asyncio.wait_for(pool.call("Probe"), 10)
                    except PoolClosed as e:
                        return "ok" if "fork" in str(e) else f"unclear: {e}"
                    return "the call ran"
                return asyncio.run(use())

            assert _in_child(child) == "ok"
            assert await pool.call("Probe") is not None           # the parent's still works
        finally:
            await pool.close()

    asyncio.run(main())
