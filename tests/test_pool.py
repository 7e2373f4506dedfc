"""`SandboxPool` and sessions on real KVM guests, driven by asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snapcell import (
    ArgumentError,
    ExecutionTimeout,
    GuestError,
    InvalidOpcode,
    PoolClosed,
    PoolFull,
    SandboxPool,
    SessionNotFound,
    Snapshot,
    SnapshotHostFunctionMismatch,
    UninitializedSandbox,
)
from snapcell.errors import CodeSandboxUnavailable
from snapcell.serving.code import CodePool
from snapcell.serving.sessions import SessionManager
from snapcell.types import I32

from .conftest import make_host_functions


@pytest.fixture(scope="module")
def snap(simpleguest: str) -> Iterator[Snapshot]:
    """An initialised simpleguest snapshot whose static counter is 0."""
    with UninitializedSandbox(simpleguest, config=None, host_functions=make_host_functions()).evolve() as sb:
        yield sb.snapshot()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def until(cond: Any, seconds: float = 10) -> None:
    """Wait (polling) until cond() holds."""
    deadline = time.monotonic() + seconds
    await asyncio.sleep(0)              # let tasks just created run first
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def metric(p: SandboxPool, name: str, **labels: str) -> float:
    v = p.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_every_call_starts_from_the_snapshot(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> list[int]:
        async with SandboxPool(snap, size=2, host_functions=make_host_functions()) as pool:
            return [await pool.call("AddToStatic", 5) for _ in range(6)]
    assert run(main()) == [5] * 6


def test_concurrent_calls_use_every_sandbox(kvm_ok: None, snap: Snapshot) -> None:
    seen: set[int] = set()

    def host_add(a: I32, b: I32) -> I32:
        seen.add(threading.get_ident())
        time.sleep(0.02)
        return a + b
    funcs = make_host_functions().register("HostAdd", host_add)    # replaces the plain one

    async def main() -> list[int]:
        async with SandboxPool(snap, size=3, host_functions=funcs) as pool:
            assert pool.idle == 3
            return list(await asyncio.gather(*(pool.call("Add", i, i) for i in range(9))))
    assert run(main()) == [2 * i for i in range(9)]
    assert len(seen) == 3                   # three worker threads ran guest calls


def test_errors_do_not_leak_into_other_calls(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions()) as pool:
            with pytest.raises(InvalidOpcode):
                await pool.call("TriggerException")
            assert await pool.call("Echo", "fine") == "fine"       # restored, not poisoned
            with pytest.raises(GuestError):
                await pool.call("AddToStaticAndFail")
            assert await pool.call("GetStatic") == 0
            with pytest.raises(ArgumentError):
                await pool.call("EchoI32", "x")
            assert metric(pool, "snapcell_pool_errors_total", pool="pool", kind="InvalidOpcode") == 1
            assert metric(pool, "snapcell_pool_calls_total", pool="pool", function="Echo") == 1
    run(main())


def test_timeout_kills_the_call_and_the_sandbox_comes_back(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions(),
                               timeout=5) as pool:
            t0 = time.monotonic()
            with pytest.raises(ExecutionTimeout):
                await pool.call("Spin", timeout=0.05)
            assert time.monotonic() - t0 < 3
            assert await pool.call("AddToStatic", 1) == 1
    run(main())


def test_time_queued_counts_against_the_timeout(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions()) as pool:
            spin = asyncio.ensure_future(pool.call("Spin", timeout=2.0))
            await until(lambda: pool.idle == 0 and pool.queued == 0)
            with pytest.raises(ExecutionTimeout, match="waited"):
                await pool.call("Echo", "late", timeout=0.1)
            assert not spin.done()          # it failed at its own deadline, still queued
            with pytest.raises(ExecutionTimeout):
                await spin
            assert await pool.call("Echo", "next") == "next"    # the dropped job never ran
    run(main())


def test_cancellation_kills_the_guest_call(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions()) as pool:
            await pool.call("AddToStatic", 7)
            task = asyncio.ensure_future(pool.call("Spin"))        # no timeout at all
            await until(lambda: pool.idle == 0 and pool.queued == 0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the same (only) sandbox is free again, in the snapshot's state
            assert await asyncio.wait_for(pool.call("GetStatic"), 5) == 0
            assert metric(pool, "snapcell_pool_cancelled_total", pool="pool") == 1
            assert metric(pool, "snapcell_pool_errors_total", pool="pool",
                          kind="ExecutionCancelled") == 1
            # wait_for is a cancellation too
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(pool.call("Spin"), 0.05)
            assert await asyncio.wait_for(pool.call("Echo", "ok"), 5) == "ok"
    run(main())


def test_queued_call_cancelled_never_runs(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions()) as pool:
            spin = asyncio.ensure_future(pool.call("Spin", timeout=0.5))
            await until(lambda: pool.idle == 0 and pool.queued == 0)
            queued = asyncio.ensure_future(pool.call("TriggerException"))
            await asyncio.sleep(0.01)
            queued.cancel()
            with pytest.raises(ExecutionTimeout):
                await spin
            assert await pool.call("Echo", "x") == "x"
            assert metric(pool, "snapcell_pool_errors_total", pool="pool", kind="InvalidOpcode") == 0
    run(main())


def test_back_pressure(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions(),
                               max_queue=2) as pool:
            busy = [asyncio.ensure_future(pool.call("Spin", timeout=1.0)) for _ in range(3)]
            await until(lambda: pool.idle == 0 and pool.queued == 2)
            assert pool.queued == 2
            with pytest.raises(PoolFull, match="full"):
                await pool.call("Echo", "refused")
            assert metric(pool, "snapcell_pool_rejected_total", pool="pool") == 1
            depth = pool.metrics.registry.get_sample_value("snapcell_pool_queue_depth",
                                                           {"pool": "pool"})
            assert depth == 2
            results = await asyncio.gather(*busy, return_exceptions=True)
            assert all(isinstance(r, ExecutionTimeout) for r in results)
            assert pool.queued == 0             # expired jobs free their queue slots at once
            assert await pool.call("Echo", "accepted") == "accepted"
            assert metric(pool, "snapcell_pool_errors_total", pool="pool",
                          kind="ExecutionTimeout") == 3
    run(main())


def test_map_batches_over_the_pool(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=2, host_functions=make_host_functions()) as pool:
            out = await pool.map("Add", [[i, 1] for i in range(1001)])
            assert out == [i + 1 for i in range(1001)]
            # each chunk starts from the snapshot; state carries over within a chunk
            acc = await pool.map("AddToStatic", [[1]] * 6, chunk_size=3)
            assert acc == [1, 2, 3, 1, 2, 3]
            errs = await pool.map("AddToStaticAndFail", [[], []])
            assert all(isinstance(e, GuestError) for e in errs)
            assert await pool.map("Echo", []) == []
    run(main())


def test_start_fails_clearly_without_the_host_functions(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        pool = SandboxPool(snap, size=1)
        with pytest.raises(SnapshotHostFunctionMismatch, match="HostAdd"):
            await pool.start()
        with pytest.raises(PoolClosed):
            await pool.call("Echo", "x")
    run(main())


def test_bad_arguments_are_refused() -> None:
    fake: Any = object()
    with pytest.raises(TypeError):
        SandboxPool(fake)


def test_run_needs_a_code_backend(kvm_ok: None, snap: Snapshot) -> None:
    from snapcell.serving.code import CodeSandboxBackend, register_backend

    async def main() -> None:
        pool = SandboxPool(snap, size=1, host_functions=make_host_functions())
        register_backend(None)
        try:
            with pytest.raises(CodeSandboxUnavailable):
                await pool.run("1 + 1")
            with pytest.raises(CodeSandboxUnavailable):
                await CodePool().run("1 + 1", lang="js")
        finally:
            register_backend(CodeSandboxBackend())
        # the default backend: snapcell's own code sandboxes
        r = await CodePool().run("const a = [1, 2]; console.log('hi'); a.length + 1", lang="js")
        assert (r.value, r.stdout, r.error) == (3, "hi\n", None)
        r = await CodePool().run("error('boom')", lang="lua")
        assert isinstance(r.error, dict) and "boom" in r.error["message"]
    run(main())


def test_sessions_keep_state_pause_and_resume(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        pool = SandboxPool(snap, size=1, host_functions=make_host_functions())
        mgr = SessionManager(idle_seconds=0.05)
        try:
            s = await mgr.create(pool, "alice")
            assert s.state == "paused"                  # no VM until the first call
            assert await s.call("AddToStatic", 3) == 3
            assert await s.call("AddToStatic", 4) == 7
            assert s.state == "active"
            await asyncio.sleep(0.1)
            assert await mgr.sweep() == 1
            assert s.state == "paused"
            assert await s.call("AddToStatic", 1) == 8  # resumed from its paused snapshot
            # a poisoning error resets the session to its last checkpoint (the pause)
            with pytest.raises(ExecutionTimeout):
                await s.call("Spin", timeout=0.05)
            assert await s.call("GetStatic") == 7
            assert s.resets == 1
            assert await s.call_many("AddToStatic", [[1], [1]]) == [8, 9]
            with pytest.raises(SessionNotFound):
                mgr.get(s.id, "mallory")                # other tenants cannot see it
            await mgr.delete(s.id, "alice")
            with pytest.raises(SessionNotFound):
                mgr.get(s.id, "alice")
        finally:
            await mgr.close()
            await pool.close()
    run(main())


def test_session_cancellation_kills_and_keeps_the_session_usable(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        pool = SandboxPool(snap, size=1, host_functions=make_host_functions())
        mgr = SessionManager()
        try:
            s = await mgr.create(pool, "t")
            await s.call("AddToStatic", 2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(s.call("Spin"), 0.05)
            assert await asyncio.wait_for(s.call("GetStatic"), 5) == 0   # reset to its start
        finally:
            await mgr.close()
            await pool.close()
    run(main())


def test_session_limits(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        pool = SandboxPool(snap, size=1, host_functions=make_host_functions())
        mgr = SessionManager(max_sessions=3, max_per_tenant=2)
        try:
            await mgr.create(pool, "a")
            await mgr.create(pool, "a")
            with pytest.raises(PoolFull, match="tenant"):
                await mgr.create(pool, "a")
            await mgr.create(pool, "b")
            with pytest.raises(PoolFull, match="maximum of 3"):
                await mgr.create(pool, "c")
        finally:
            await mgr.close()
    run(main())



def test_session_of_a_loaded_snapshot_pauses(kvm_ok: None, snap: Snapshot, tmp_path: Any) -> None:
    """A sandbox made from a snapshot loaded from an OCI layout (its image is a file, not a
    memfd) can itself be snapshotted: pausing a session of a served snapshot needs that."""
    snap.save(str(tmp_path / "layout"), "v1")
    loaded = Snapshot.checked_load(str(tmp_path / "layout"), "v1")

    async def main() -> None:
        pool = SandboxPool(loaded, size=1, host_functions=make_host_functions())
        mgr = SessionManager()
        try:
            s = await mgr.create(pool, "t")
            assert await s.call("AddToStatic", 9) == 9
            assert await mgr.pause(s)
            assert await s.call("AddToStatic", 1) == 10
        finally:
            await mgr.close()
    run(main())


def test_the_event_loop_keeps_running_during_guest_calls(kvm_ok: None, snap: Snapshot) -> None:
    """KVM_RUN happens on worker threads: a ticker on the loop keeps ticking while both
    sandboxes spin in the guest."""
    async def main() -> int:
        async with SandboxPool(snap, size=2, host_functions=make_host_functions()) as pool:
            spins = [asyncio.ensure_future(pool.call("Spin", timeout=0.5)) for _ in range(2)]
            ticks = 0
            while not all(s.done() for s in spins):
                await asyncio.sleep(0.01)
                ticks += 1
            assert all(isinstance(s.exception(), ExecutionTimeout) for s in spins)
            return ticks
    assert run(main()) >= 10


def test_a_sandbox_that_cannot_be_restored_is_replaced(kvm_ok: None, snap: Snapshot,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from snapcell import MultiUseSandbox
    from snapcell.errors import SnapshotLayoutMismatch
    real_restore = MultiUseSandbox.restore
    failures = [1]

    def failing_restore(self: MultiUseSandbox, s: Snapshot) -> None:
        if failures:
            failures.pop()
            raise SnapshotLayoutMismatch("injected restore failure")
        real_restore(self, s)
    monkeypatch.setattr(MultiUseSandbox, "restore", failing_restore)

    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=make_host_functions()) as pool:
            assert await pool.call("AddToStatic", 4) == 4     # its restore fails: replaced
            assert await pool.call("AddToStatic", 4) == 4     # a new sandbox, snapshot state
            assert metric(pool, "snapcell_pool_sandboxes_replaced_total", pool="pool") == 1
    run(main())


def test_cancelling_a_map_kills_every_chunk(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        async with SandboxPool(snap, size=2, host_functions=make_host_functions()) as pool:
            task = asyncio.ensure_future(pool.map("Spin", [[]] * 4))
            await until(lambda: pool.idle == 0 and pool.queued == 0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # both guest calls were killed and both sandboxes come back
            await until(lambda: pool.idle == 2 and metric(
                pool, "snapcell_pool_errors_total", pool="pool", kind="ExecutionCancelled") == 2)
            assert await asyncio.wait_for(pool.map("Echo", [["a"], ["b"]]), 10) == ["a", "b"]
    run(main())


def test_session_calls_are_bounded(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        pool = SandboxPool(snap, size=1, host_functions=make_host_functions())
        mgr = SessionManager(workers=1, max_queue=1)
        try:
            a, b, c = [await mgr.create(pool, "t") for _ in range(3)]
            running = asyncio.ensure_future(a.call("Spin", timeout=1.0))
            waiting = asyncio.ensure_future(b.call("Echo", "b"))
            await until(lambda: mgr.pending == 2)
            with pytest.raises(PoolFull, match="session calls"):
                await c.call("Echo", "c")
            with pytest.raises(ExecutionTimeout):
                await running
            assert await waiting == "b"
            assert await c.call("Echo", "c") == "c"
        finally:
            await mgr.close()
    run(main())


def test_a_session_call_that_times_out_waiting_keeps_the_state(kvm_ok: None, snap: Snapshot) -> None:
    async def main() -> None:
        pool = SandboxPool(snap, size=1, host_functions=make_host_functions())
        mgr = SessionManager(workers=1)
        try:
            a, b = await mgr.create(pool, "t"), await mgr.create(pool, "t")
            assert await b.call("AddToStatic", 5) == 5
            running = asyncio.ensure_future(a.call("Spin", timeout=2.0))
            await until(lambda: mgr.pending == 1)
            with pytest.raises(ExecutionTimeout, match="waited"):
                await b.call("GetStatic", timeout=0.1)
            assert not running.done()
            with pytest.raises(ExecutionTimeout):
                await running
            assert await b.call("GetStatic") == 5 and b.resets == 0
            assert a.resets == 1
        finally:
            await mgr.close()
    run(main())
