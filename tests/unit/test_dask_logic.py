"""Pure logic of the Dask layer: snapshot references, chunking, per-item errors, and the
sandbox pool's bounds and replacement rules (with stand-in sandboxes; tests/dask/ runs the
same pool with real ones)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.dask.items import (
    MAX_CHUNK,
    ItemError,
    as_args,
    auto_chunk_size,
    check_chunk_size,
    chunks,
)
from snapcell.dask.pool import SandboxPool
from snapcell.dask.refs import parse_snapshot_ref
from snapcell.errors import (
    ConfigurationError,
    ExecutionTimeout,
    SandboxStateError,
    SnapcellError,
    SnapshotDigestMismatch,
    SnapshotReferenceError,
)

D = "sha256:" + "ab" * 32


def test_registry_refs_must_be_pinned_by_digest() -> None:
    r = parse_snapshot_ref(f"127.0.0.1:5000/fn/a:v1@{D}")
    assert (r.kind, r.ref, r.key, str(r)) == ("registry", D, D, f"127.0.0.1:5000/fn/a:v1@{D}")
    with pytest.raises(SnapshotReferenceError, match="names no digest"):
        parse_snapshot_ref("127.0.0.1:5000/fn:v1")
    for bad in ["fn@" + D, "", "127.0.0.1:5000/Fn@" + D, 5, None, f"127.0.0.1/fn@sha256:{'0' * 63}"]:
        with pytest.raises(SnapshotReferenceError):
            parse_snapshot_ref(bad)


def test_layout_refs() -> None:
    a = parse_snapshot_ref("oci:/srv/snaps:v2")
    assert (a.kind, a.location, a.ref, str(a)) == ("layout", "/srv/snaps", "v2", "oci:/srv/snaps:v2")
    b = parse_snapshot_ref(f"oci:/srv/snaps@{D}")
    assert (b.ref, b.key, str(b)) == (D, f"/srv/snaps@{D}", f"oci:/srv/snaps@{D}")
    assert parse_snapshot_ref("oci:/srv/snaps").ref == "latest"
    assert parse_snapshot_ref("/srv/snaps").ref == "latest"
    from pathlib import Path
    assert parse_snapshot_ref(Path("/srv/x")).location == "/srv/x"
    for bad in ["oci:", "oci:/x@sha256:zz", "oci:@" + D]:
        with pytest.raises(SnapshotReferenceError):
            parse_snapshot_ref(bad)


@given(st.text(alphabet="abc/._-:0123456789", max_size=30))
def test_layout_ref_round_trips(path: str) -> None:
    try:
        r = parse_snapshot_ref("oci:/" + path)
    except SnapshotReferenceError:
        return
    assert parse_snapshot_ref(str(r)) == r


@given(st.lists(st.integers(), max_size=300), st.integers(1, 50))
def test_chunks_cover_the_items_in_order(items: list[int], size: int) -> None:
    parts = chunks(items, size)
    assert [x for p in parts for x in p] == items
    assert all(1 <= len(p) <= size for p in parts)
    assert all(len(p) == size for p in parts[:-1])


@given(st.integers(0, 10**7), st.integers(0, 512))
def test_auto_chunk_size(items: int, threads: int) -> None:
    size = auto_chunk_size(items, threads)
    assert 1 <= size <= MAX_CHUNK
    if items and size < MAX_CHUNK:   # about 4 tasks per thread, never fewer tasks than needed
        assert len(range(0, items, size)) <= max(1, threads) * 4


def test_check_chunk_size_and_args() -> None:
    assert check_chunk_size(None) is None and check_chunk_size(7) == 7
    for bad in [0, -1, MAX_CHUNK + 1, True, 2.0, "3"]:
        with pytest.raises(ConfigurationError):
            check_chunk_size(bad)
    assert as_args((1, 2)) == (1, 2) and as_args(5) == (5,) and as_args([1]) == ([1],)


def test_item_error_is_plain_data_and_rebuilds_the_exception() -> None:
    e = ItemError.of(ExecutionTimeout("too slow"))
    assert (e.type, e.message, e.ok, str(e)) == ("ExecutionTimeout", "too slow", False,
                                                 "ExecutionTimeout: too slow")
    assert isinstance(e.exception(), ExecutionTimeout)
    assert isinstance(ItemError("SnapshotDigestMismatch", "m").exception(), SnapshotDigestMismatch)
    other = ItemError.of(ZeroDivisionError("x")).exception()
    assert type(other) is SnapcellError and "ZeroDivisionError: x" in str(other)
    import pickle
    assert pickle.loads(pickle.dumps(e)) == e


class Fake:
    """A stand-in sandbox: counts resets, can be told to fail its next reset."""

    made = 0

    def __init__(self) -> None:
        Fake.made += 1
        self.id = Fake.made
        self.resets = 0
        self.broken = False
        self.closed = False

    def reset(self) -> None:
        if self.broken:
            raise SnapcellError("cannot restore")
        self.resets += 1


def fake_pool(size: int) -> SandboxPool[Fake]:
    def close(f: Fake) -> None:
        f.closed = True
    return SandboxPool(Fake, Fake.reset, close, size)


def test_pool_reuses_resets_and_replaces() -> None:
    pool = fake_pool(2)
    with pool.lease() as lease:
        first = lease.sandbox
        lease.reset()
        assert lease.sandbox is first and first.resets == 1
        first.broken = True
        lease.reset()                          # failed reset: closed, replaced on next use
        assert first.closed and pool.replaced == 1
        second = lease.sandbox
        assert second is not first
    assert pool.idle == 1 and pool.count == 1
    with pytest.raises(RuntimeError):
        with pool.lease() as lease:
            assert lease.sandbox is second
            raise RuntimeError("task failed")  # state unknown: discarded
    assert second.closed and pool.count == 0
    assert pool.warm() == 2 and pool.count == 2
    pool.close()
    assert pool.idle == 0
    with pytest.raises(SandboxStateError, match="closed"):
        pool.acquire()


def test_pool_is_bounded_across_threads() -> None:
    pool = fake_pool(3)
    active, peak = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal active, peak
        for _ in range(20):
            with pool.lease() as lease:
                with lock:
                    active += 1
                    peak = max(peak, active)
                time.sleep(0.0005)
                lease.reset()
                with lock:
                    active -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3 and pool.count == 3 and pool.created == 3 and pool.leases == 160
    with pytest.raises(SandboxStateError, match="no sandbox became free"):
        held = [pool.acquire() for _ in range(3)]
        pool.acquire(timeout=0.05)
    for h in held:
        pool.release(h)
    with pytest.raises(ConfigurationError):
        SandboxPool(Fake, Fake.reset, lambda f: None, 0)


def test_pool_creation_failure_frees_the_slot() -> None:
    calls: list[Any] = []

    def create() -> Fake:
        calls.append(1)
        if len(calls) == 1:
            raise SnapcellError("no memory")
        return Fake()

    pool: SandboxPool[Fake] = SandboxPool(create, Fake.reset, lambda f: None, 1)
    with pytest.raises(SnapcellError):
        pool.acquire()
    assert pool.count == 0
    assert isinstance(pool.acquire(timeout=1), Fake)
