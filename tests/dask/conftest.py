"""A real cluster for the scale-out tests: `dask scheduler` and two `dask worker --no-nanny`
processes on 127.0.0.1 (dashboards off), a plain-HTTP `docker-registry` on 127.0.0.1, and
simpleguest snapshots pushed to it by digest. Started once for the package, stopped by pid."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

import snapcell.dask as sd
from snapcell import SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.dask.cluster import LoopbackCluster

from ..test_registry import Registry, _start, _stop

STATIC = 1000        # the "static" snapshot's counter (AddToStatic adds to it)


@dataclass
class Snaps:
    """The snapshots the tests use: `fresh` (counter 0) and `static` (counter STATIC), both
    pushed; `layout` holds them locally (tags fresh, static)."""

    layout: Path
    fresh: str            # registry reference pinned by digest
    static: str
    fresh_digest: str
    static_digest: str


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry without auth on 127.0.0.1."""
    reg = _start(tmp_path_factory.mktemp("dask-registry"))
    yield reg
    _stop(reg)


@pytest.fixture(scope="package")
def snaps(registry: Registry, tmp_path_factory: pytest.TempPathFactory, simpleguest: str) -> Snaps:
    """Two simpleguest snapshots, saved and pushed."""
    layout = tmp_path_factory.mktemp("dask-layout")
    with UninitializedSandbox(simpleguest, config=SandboxConfiguration()).evolve() as sb:
        fresh = sb.snapshot().save(str(layout), "fresh")
        sb.call("AddToStatic", STATIC)
        static = sb.snapshot().save(str(layout), "static")
    Snapshot.push(str(layout), f"{registry.host}/dask/fn:fresh", ref="fresh", insecure=True)
    Snapshot.push(str(layout), f"{registry.host}/dask/fn:static", ref="static", insecure=True)
    return Snaps(layout, f"{registry.host}/dask/fn@{fresh}", f"{registry.host}/dask/fn@{static}",
                 fresh, static)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, kvm_ok: None) -> Iterator[LoopbackCluster]:
    """Scheduler + workers w0, w1 (2 threads each); worker caches under a temp directory."""
    base = tmp_path_factory.mktemp("dask-cluster")
    c = LoopbackCluster(2, 2, env={"SNAPCELL_DASK_CACHE": str(base / "cache")},
                        directory=str(base))
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="package")
def client(cluster: LoopbackCluster, snaps: Snaps) -> Iterator[Client]:
    """A client of the cluster with the snapcell plugin installed (warming `fresh`)."""
    with Client(cluster.address, timeout=30) as c:
        c.wait_for_workers(2, timeout=60)
        sd.install(c, insecure=True, warm=[snaps.fresh])
        wait_warm(c)
        yield c


def worker_named(client: Client, name: str, timeout: float = 60.0) -> str:
    """The address of the worker called `name` (waits for it to join)."""
    deadline = time.monotonic() + timeout
    while True:
        for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
            if info.get("name") == name:
                return str(addr)
        if time.monotonic() > deadline:
            raise AssertionError(f"worker {name} did not join")
        time.sleep(0.05)


def wait_warm(client: Client, workers: list[str] | None = None,
              timeout: float = 60.0) -> dict[str, Any]:
    """Every (named) worker's stats once its plugin has finished warming."""
    deadline = time.monotonic() + timeout
    while True:
        stats = client.run(sd.worker_stats, workers=workers)
        if stats and all(s.get("warmed") for s in stats.values()):
            return dict(stats)
        if time.monotonic() > deadline:
            raise AssertionError(f"workers did not warm: {stats}")
        time.sleep(0.05)
