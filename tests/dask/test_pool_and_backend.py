"""The worker-side pieces with real sandboxes (in this process), and `DaskBackend` — the
asynchronous front for `snapcell serve --dask` — against the real cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from distributed import Client

import snapcell.dask as sd
from snapcell import MultiUseSandbox, SandboxStatus, Snapshot
from snapcell.dask.plugin import WorkerState
from snapcell.errors import (
    ArgumentError,
    ExecutionTimeout,
    InvalidOpcode,
    SnapshotNotFound,
    SnapshotReferenceError,
)

from .conftest import STATIC, Snaps


def test_pool_of_real_sandboxes_restores_poisoned_and_replaces_broken(snaps: Snaps) -> None:
    snap = Snapshot.checked_load(str(snaps.layout), "static")
    pool: sd.SandboxPool[MultiUseSandbox] = sd.SandboxPool(
        lambda: MultiUseSandbox.from_snapshot(snap), lambda sb: sb.restore(snap),
        lambda sb: sb.close(), 2)
    with pool.lease() as lease:
        sb = lease.sandbox
        assert sb.call("AddToStatic", 1) == STATIC + 1
        lease.reset()
        assert sb.call("AddToStatic", 1) == STATIC + 1          # fresh state again
        with pytest.raises(InvalidOpcode):
            sb.call("TriggerException")
        assert sb.status is SandboxStatus.POISONED
        lease.reset()                                            # restore clears the poison
        assert lease.sandbox is sb and sb.status is SandboxStatus.READY
        assert sb.call("GetStatic") == STATIC
        sb.close()                                               # a sandbox that cannot restore
        lease.reset()
        assert pool.replaced == 1 and lease.sandbox is not sb
        assert lease.sandbox.call("AddToStatic", 2) == STATIC + 2
    assert pool.count == 1 and pool.idle == 1
    pool.close()


def test_worker_state_verifies_once_and_refuses_for_good(snaps: Snaps, tmp_path: Path) -> None:
    state = WorkerState(str(tmp_path / "cache"), 2, insecure=True)
    a = state.call_pool(f"oci:{snaps.layout}:static")
    b = state.call_pool(f"oci:{snaps.layout}:static")
    assert a is b and state.cache.stats.verified == [f"{snaps.layout}@static"]
    pulled = state.call_pool(snaps.fresh)        # from the registry into the cache directory
    assert state.cache.stats.pulled == [snaps.fresh_digest]
    assert (tmp_path / "cache" / snaps.fresh_digest.replace(":", "-") / "index.json").is_file()
    with pulled.lease() as lease:
        assert lease.sandbox.call("AddToStatic", 3) == 3
    with pytest.raises(SnapshotNotFound):          # not refused for good: may appear later
        state.call_pool("oci:" + str(tmp_path / "missing"))
    assert state.cache.stats.refused == []
    with pytest.raises(SnapshotReferenceError):
        state.call_pool("127.0.0.1:1/x:latest")
    state.close()
    # warming: a snapshot that cannot be had is reported; the others still warm
    warm = WorkerState(str(tmp_path / "cache2"), 2)
    warm.warm([f"oci:{tmp_path / 'missing'}", f"oci:{snaps.layout}:fresh"])
    assert warm.warmed.is_set() and warm.warm_error is not None
    assert "SnapshotNotFound" in warm.warm_error
    (pool,) = warm.stats()["pools"].values()
    assert pool["size"] == pool["idle"] == 2
    warm.close()


def test_dask_backend_calls_and_runs_asynchronously(client: Client, snaps: Snaps) -> None:
    """DaskBackend on its own asynchronous client: concurrent calls, errors raised as their
    snapcell class, code runs, and it leaves the cluster's plugin (and warm pools) alone."""
    before = client.run(sd.worker_stats)

    async def main() -> None:
        async with sd.DaskBackend(client.scheduler.address) as backend:
            got = await asyncio.gather(*(backend.call(snaps.static, "AddToStatic", [i])
                                         for i in range(40)))
            assert got == [STATIC + i for i in range(40)]
            assert await backend.call(snaps.fresh, "Echo", ["hi"]) == "hi"
            with pytest.raises(ArgumentError):
                await backend.call(snaps.fresh, "EchoI32", ["x"])
            with pytest.raises(ExecutionTimeout):
                await backend.call(snaps.fresh, "Spin", timeout=0.05)
            r = await backend.run("js", "console.log('x'); 6 * 7", timeout=1.0)
            assert r.ok and r.value == 42 and r.stdout == "x\n"
            r = await backend.run("lua", "while true do end", timeout=0.1)
            assert r.error is not None and r.error.type == "TimeoutError"
            out = await backend.map_calls(snaps.static, "AddToStatic", range(500))
            assert out == [STATIC + i for i in range(500)]
            runs = await backend.map_runs("lua", [f"return {i}" for i in range(50)] + [3])
            assert [getattr(x, "value", None) for x in runs] == list(range(50)) + [None]

    asyncio.run(main())
    after = client.run(sd.worker_stats)
    for addr, s in after.items():    # same WorkerState: counters kept growing, cache kept
        if addr in before:
            assert s["items"] > before[addr]["items"]
            assert s["verified"][:len(before[addr]["verified"])] == before[addr]["verified"]
