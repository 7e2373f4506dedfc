"""Serving measurements for `snapcell bench` (docs/benchmarks.md): pool call vs a direct call,
`call_many` vs separate calls, and HTTP calls through a real `snapcell serve` process at several
client concurrencies. Never used by tests to assert timings."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from ..sandbox import HostFunctions, MultiUseSandbox, Snapshot
from ..serving.pool import SandboxPool
from ..types import I32

Stats = dict[str, float]


def host_functions() -> HostFunctions:
    """The host functions of the benchmark guest (`--host-functions` of the served process)."""
    def host_add(a: I32, b: I32) -> I32:
        return a + b

    return HostFunctions().register("HostAdd", host_add)


def stats(samples_s: Sequence[float], **extra: float) -> Stats:
    """Median / p99 / min in µs of samples in seconds."""
    s = sorted(samples_s)
    return {"n": len(s), "median_us": statistics.median(s) * 1e6,
            "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6, "min_us": s[0] * 1e6, **extra}


def bench_pool(snap: Snapshot, hf: HostFunctions, n: int) -> dict[str, Stats]:
    """`await pool.call("NoOp")` one at a time on a one-sandbox pool (restore after each call
    included) vs `sb.call("NoOp")` and `sb.call + sb.restore` on a sandbox of the same snapshot,
    measured alternately in one run."""
    out: dict[str, Stats] = {}

    async def main() -> None:
        async with SandboxPool(snap, size=1, host_functions=hf, max_queue=4) as pool:
            with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as sb:
                direct, restored, pooled = [], [], []
                for _ in range(200):
                    await pool.call("NoOp")
                    sb.call("NoOp")
                for _ in range(n):
                    t = time.perf_counter()
                    sb.call("NoOp")
                    direct.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    sb.call("NoOp")
                    sb.restore(snap)
                    restored.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    await pool.call("NoOp")
                    pooled.append(time.perf_counter() - t)
        out["pool_call_noop"] = stats(pooled)
        out["direct_call_noop_same_run"] = stats(direct)
        out["direct_call_and_restore_same_run"] = stats(restored)
    asyncio.run(main())
    return out


def bench_call_many(snap: Snapshot, hf: HostFunctions, calls: int = 10_000,
                    rounds: int = 5) -> dict[str, Stats]:
    """`calls` trivial calls (NoOp, EchoI32) separately and as one `call_many`, per call."""
    out: dict[str, Stats] = {}
    with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as sb:
        for fn, args in (("NoOp", []), ("EchoI32", [7])):
            items = [args] * calls
            sb.call_many(fn, items[:100])
            sep, many = [], []
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(calls):
                    sb.call(fn, *args)
                sep.append((time.perf_counter() - t) / calls)
                t = time.perf_counter()
                sb.call_many(fn, items)
                many.append((time.perf_counter() - t) / calls)
            key = fn.lower()
            out[f"separate_calls_{key}_x{calls}_per_call"] = stats(
                sep, per_s=calls / (statistics.median(sep) * calls))
            out[f"call_many_{key}_x{calls}_per_call"] = stats(
                many, per_s=calls / (statistics.median(many) * calls))
    return out


def bench_http(snap: Snapshot, requests: int, concurrencies: Sequence[int] = (1, 16, 64),
               pool_size: int = 2) -> dict[str, Stats]:
    """HTTP `call` of `Add` through a `snapcell serve` process on 127.0.0.1 (pool of
    `pool_size`), `requests` requests at each client concurrency; latency per request and
    requests/s. The load generator (httpx, asyncio) runs in this process: both share the
    machine's cores."""
    out: dict[str, Stats] = {}
    with tempfile.TemporaryDirectory(prefix="snapcell-bench-serve-") as tmp:
        snap.save(os.path.join(tmp, "layout"), "bench")
        proc, url = start_serve(
            ["--snapshot", f"bench={os.path.join(tmp, 'layout')}#bench", "--host-functions",
             "snapcell.bench.serving:host_functions", "--pool-size", str(pool_size),
             "--max-queue", "1024", "--cache-dir", os.path.join(tmp, "cache")])
        try:
            for c in concurrencies:
                out[f"http_call_add_{c}_clients"] = asyncio.run(_load(url, c, requests))
        finally:
            stop_process(proc)
    return out


def start_serve(args: Sequence[str]) -> "tuple[subprocess.Popen[str], str]":
    """A `snapcell serve --port 0 ARGS` process on 127.0.0.1, healthy, and its URL (stop it
    with `stop_process`)."""
    import httpx
    proc = subprocess.Popen([sys.executable, "-m", "snapcell", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
        if m is None:
            raise RuntimeError("snapcell serve did not start")
        url = m.group(0)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("snapcell serve did not become healthy")
            time.sleep(0.05)
    except BaseException:
        stop_process(proc)
        raise


def stop_process(proc: "subprocess.Popen[str]", grace: float = 10) -> None:
    """Stop a process this program started (a `snapcell serve`): SIGTERM, then SIGKILL after
    `grace` seconds; waits for it either way."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _load(url: str, clients: int, requests: int) -> Stats:
    """`clients` keep-alive connections, each sending requests one after another. The client
    is a minimal HTTP/1.1 writer/reader on asyncio streams (a full client library would cost
    more CPU per request than the server, on the same cores)."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures = 0
    per_client = max(1, requests // clients)

    async def one(k: int, n: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in range(n):
                body = f'{{"args": [{k}, {i}]}}'.encode()
                req = (b"POST /v1/snapshots/bench/call/Add HTTP/1.1\r\nHost: bench\r\n"
                       b"Content-Type: application/json\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\n\r\n" + body)
                t = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(m.group(1)) if m else 0)
                latencies.append(time.perf_counter() - t)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
        finally:
            writer.close()
    await asyncio.gather(*(one(k, 20) for k in range(min(clients, 4))))       # warm up
    latencies.clear()
    failures = 0
    t0 = time.perf_counter()
    await asyncio.gather(*(one(k, per_client) for k in range(clients)))
    wall = time.perf_counter() - t0
    return stats(latencies, per_s=len(latencies) / wall, failures=float(failures),
                 clients=float(clients))
