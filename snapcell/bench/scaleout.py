"""Benchmark rows for `snapcell bench` (docs/benchmarks.md, docs/scale-out.md): trivial calls
mapped over a 2-worker loopback cluster, with and without chunking, against a local loop over
one pool doing the same per-item work (call + restore); and how long a new worker takes to
serve its first item (registry pull + verify + pool warm-up)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

from distributed import Client

from ..dask.cluster import LoopbackCluster
from ..dask.maps import install, map_calls
from ..dask.plugin import worker_stats
from ..dask.pool import SandboxPool
from ..sandbox import MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from .snapshots import start_registry

Stats = dict[str, float]


def _row(per_item_s: list[float], n: int) -> Stats:
    med = statistics.median(per_item_s)
    return {"n": n, "median_us": med * 1e6, "p99_us": max(per_item_s) * 1e6,
            "min_us": min(per_item_s) * 1e6, "items_per_s": 1 / med}


def _registry(tmp: str) -> tuple[subprocess.Popen[bytes], str] | None:
    """A docker-registry on 127.0.0.1 (None when it is not installed)."""
    started = start_registry(tmp)
    return None if started is None else (started[0], started[1])


def _local_loop(snap: Snapshot, n: int, reps: int) -> Stats:
    pool: SandboxPool[MultiUseSandbox] = SandboxPool(
        lambda: MultiUseSandbox.from_snapshot(snap), lambda sb: sb.restore(snap),
        lambda sb: sb.close(), 1)
    samples = []
    try:
        for rep in range(reps + 1):
            t = time.perf_counter()
            with pool.lease() as lease:
                for i in range(n):
                    lease.sandbox.call("EchoI32", i)
                    lease.reset()
            if rep:                                   # the first pass warms up
                samples.append((time.perf_counter() - t) / n)
    finally:
        pool.close()
    return _row(samples, n)


def _mapped(client: Client, ref: str, n: int, reps: int, chunk_size: int | None) -> Stats:
    samples = []
    want = list(range(n))
    for rep in range(reps + 1):
        t = time.perf_counter()
        out = map_calls(client, ref, "EchoI32", want, chunk_size=chunk_size)
        elapsed = time.perf_counter() - t
        if out != want:
            raise RuntimeError("map_calls returned wrong results in the benchmark")
        if rep:
            samples.append(elapsed / n)
    return _row(samples, n)


def bench_dask(quick: bool = False, guest: str = "") -> dict[str, Any]:
    """The scale-out rows (see the module docstring)."""
    n = 4000 if quick else 20000
    n_unchunked = 300 if quick else 1500
    reps = 3 if quick else 5
    r: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="snapcell-bench-dask-")
    registry = None
    try:
        with UninitializedSandbox(guest, config=SandboxConfiguration()).evolve() as sb:
            snap = sb.snapshot()
        layout = os.path.join(tmp, "layout")
        digest = snap.save(layout, "bench")
        registry = _registry(tmp)
        if registry is not None:
            ref = f"{registry[1]}/bench/fn@{digest}"
            Snapshot.push(layout, f"{registry[1]}/bench/fn:bench", ref="bench", insecure=True)
        else:
            ref = f"oci:{layout}@{digest}"
        r["local_pool_loop_call_restore"] = _local_loop(snap, n // 4, reps)
        cluster = LoopbackCluster(2, 1, env={"SNAPCELL_DASK_CACHE": os.path.join(tmp, "cache")},
                                  directory=os.path.join(tmp, "cluster"))
        os.makedirs(cluster.directory)
        with cluster, Client(cluster.address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            install(client, insecure=True, warm=[ref])
            _wait_warm(client, None)
            r["dask_map_calls_2_workers_chunked"] = _mapped(client, ref, n, reps, None)
            r["dask_map_calls_2_workers_unchunked"] = _mapped(client, ref, n_unchunked, reps, 1)
            firsts, fetches = [], []
            for k in range(2 if quick else 3):
                name = f"new{k}"
                t = time.perf_counter()
                cluster.add_worker(name, env={"SNAPCELL_DASK_CACHE":
                                              os.path.join(tmp, f"cache-{name}")})
                addr = _worker(client, name)
                out = map_calls(client, ref, "EchoI32", [1], workers=addr)
                firsts.append(time.perf_counter() - t)
                if out != [1]:
                    raise RuntimeError(f"the new worker returned {out}")
                st = _wait_warm(client, [addr])[addr]
                fetches.append(sum(st["fetch_seconds"].values()))
                cluster.kill_worker(name)
            r["dask_new_worker_first_item"] = _row(firsts, len(firsts))
            r["dask_new_worker_pull_and_verify"] = _row(fetches, len(fetches))
            del r["dask_new_worker_first_item"]["items_per_s"]
            del r["dask_new_worker_pull_and_verify"]["items_per_s"]
            r["dask_new_worker_first_item"]["registry"] = registry is not None
    finally:
        if registry is not None:
            registry[0].terminate()
            registry[0].wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return r


def _worker(client: Client, name: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
            if info.get("name") == name:
                return str(addr)
        time.sleep(0.005)
    raise RuntimeError(f"worker {name} did not join")


def _wait_warm(client: Client, workers: list[str] | None, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = client.run(worker_stats, workers=workers)
        if stats and all(s.get("warmed") for s in stats.values()):
            return dict(stats)
        time.sleep(0.01)
    raise RuntimeError("the workers did not warm")
