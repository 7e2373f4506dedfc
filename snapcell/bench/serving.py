"""Serving measurements for `snapcell bench` (docs/benchmarks.md): pool call vs a direct call,
`call_many` vs separate calls, and HTTP calls through a real `snapcell serve` process at several
client concurrencies. Never used by tests to assert timings."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ..sandbox import HostFunctions, MultiUseSandbox, Snapshot
from ..serving.pool import SandboxPool
from ..types import I32
from .servers import start_serve as start_serve  # re-exported: contexts.py, tests
from .servers import stop_process as stop_process

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
        # the issue-27 target: pool call <= direct call + restore + 30 us (medians)
        out["pool_call_minus_call_and_restore"] = {"n": n, "p99_us": math.nan, "median_us": (
            out["pool_call_noop"]["median_us"] - out["direct_call_and_restore_same_run"]["median_us"])}
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


def bench_http(snap: Snapshot, seconds: int, concurrencies: Sequence[int] = (1, 16, 64),
               pool_size: int = 2) -> dict[str, Stats]:
    """HTTP `call` of `Add` through a `snapcell serve` process on 127.0.0.1 (pool of
    `pool_size`), `seconds` at each client concurrency from wrk; latency per request and
    requests/s."""
    why = wrk_available()
    if why is not None:
        return {f"http_call_add_{c}_clients": unavailable(why) for c in concurrencies}
    out: dict[str, Stats] = {}
    with tempfile.TemporaryDirectory(prefix="snapcell-bench-serve-") as tmp:
        snap.save(os.path.join(tmp, "layout"), "bench")
        proc, url = start_serve(
            ["--snapshot", f"bench={os.path.join(tmp, 'layout')}#bench", "--host-functions",
             "snapcell.bench.serving:host_functions", "--pool-size", str(pool_size),
             "--max-queue", "1024", "--cache-dir", os.path.join(tmp, "cache")])
        try:
            path, body = "/v1/snapshots/bench/call/Add", '{"args": [2, 3]}'
            wrk(url, path, clients=4, seconds=1, body=body)                 # warm-up
            for c in concurrencies:
                out[f"http_call_add_{c}_clients"] = wrk(url, path, clients=c, seconds=seconds,
                                                        body=body)
        finally:
            stop_process(proc)
    return out


WRK_SCRIPT = """
wrk.method = %(method)s
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"min_us": %%d, "errors": %%d, "non2xx": %%d}\\n', s.requests, s.duration,
    lat:percentile(50), lat:percentile(99), lat.min, e.connect + e.read + e.write + e.timeout,
    e.status))
end
"""


def wrk_available() -> str | None:
    """Why the HTTP rows cannot be measured here (no `wrk`), or None."""
    return None if shutil.which("wrk") else "no wrk (scripts/bootstrap.sh installs Debian's)"


def wrk(url: str, path: str, *, clients: int, seconds: int,
        body: str | None = None) -> Stats:
    """`clients` keep-alive connections sending requests one after another for `seconds`,
    from wrk (Debian's, a C program on one thread: at these rates it costs the server's cores
    a few per cent, where a Python client cost as much CPU per request as the server): latency
    per request (median, p99, min, µs) and requests/s. A GET when `body` is None, else a POST
    of it as JSON. Responses other than 2xx/3xx count as failures."""
    import json
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="snapcell-wrk-") as f:
        f.write(WRK_SCRIPT % {"method": '"GET"' if body is None else '"POST"',
                              "body": "nil" if body is None else _lua_string(body)})
        f.flush()
        done = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s",
                               "-s", f.name, url + path], capture_output=True, text=True,
                              check=False, timeout=seconds + 60)
    line = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    if not line or not line[0].startswith("{"):
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    r = json.loads(line[0])
    return {"n": r["requests"], "median_us": float(r["p50_us"]), "p99_us": float(r["p99_us"]),
            "min_us": float(r["min_us"]), "per_s": r["requests"] / (r["duration_us"] / 1e6),
            "failures": float(r["errors"] + r["non2xx"]), "clients": float(clients)}


def _lua_string(s: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in " {}:,+-_." else f"\\{ord(c):03d}"
                         for c in s) + '"'


def unavailable(why: str) -> dict[str, Any]:
    """A row that could not be measured here (`why` says why)."""
    return {"n": 0, "median_us": math.nan, "p99_us": math.nan, "min_us": math.nan,
            "unavailable": why}


RUN_BODY = '{"lang": "js", "code": "1+1"}'


def bench_http_paths(seconds: int, rounds: int = 5, install: bool = True) -> dict[str, Stats]:
    """Issue 27's one-client rows, interleaved in rounds, each HTTP row `seconds` of wrk on one
    keep-alive connection: `GET /healthz` and `POST /v1/run` `1+1` (JS) of a `snapcell serve`;
    workerd's static trivial worker (`GET /`, the peer; installed on demand like the other
    peers, snapcell/bench/peers.py); and the sandbox step of that run in this process: a warm
    `CodeSandbox("js")`'s `run("1+1")` (restore included: what the service does per run) and
    a new box + run + close. Each row is the median of its rounds' medians; the ratios and
    the margin are medians of per-round values (load drifts less within a round)."""
    from ..code import CodeSandbox
    from .peers import workerd
    from .peers_install import PeerUnavailable, npm_modules
    why = wrk_available()
    names = ("http_workerd_static_trivial_worker", "http_healthz", "http_run_js_1plus1",
             "inprocess_warm_run_js_1plus1", "inprocess_new_box_run_js_1plus1")
    if why is not None:
        return {name: unavailable(why) for name in names}
    rows: dict[str, list[float]] = {name: [] for name in names}
    peer_missing = "not measured"
    with contextlib.ExitStack() as stack:
        urls: dict[str, tuple[str, str, str | None]] = {}
        try:
            ports = stack.enter_context(workerd(npm_modules(install)))
            urls[names[0]] = (f"http://127.0.0.1:{ports['trivial']}", "/", None)
        except PeerUnavailable as e:
            peer_missing = str(e)
        serve, url = start_serve([])
        stack.callback(stop_process, serve)
        urls[names[1]] = (url, "/healthz", None)
        urls[names[2]] = (url, "/v1/run", RUN_BODY)
        warm = stack.enter_context(CodeSandbox("js", timeout=0.002))
        for u, path, body in urls.values():
            wrk(u, path, clients=1, seconds=1, body=body)                   # warm-up
        for _ in range(rounds):
            for name, (u, path, body) in urls.items():
                rows[name].append(wrk(u, path, clients=1, seconds=seconds, body=body)["median_us"])
            rows[names[3]].append(_median_us(lambda: warm.run("1+1"), 300))
            rows[names[4]].append(_median_us(lambda: _new_box_run(CodeSandbox), 300))
    out: dict[str, Stats] = {name: stats([v / 1e6 for v in got], rounds=float(rounds))
                             for name, got in rows.items() if got}
    if not rows[names[0]]:
        out[names[0]] = unavailable(peer_missing)
    else:   # the issue-27 target: healthz <= workerd's static trivial worker
        out["http_healthz_over_workerd"] = _derived(
            [h / w for h, w in zip(rows[names[1]], rows[names[0]])], "ratio")
    # the issue-27 target: run <= healthz + in-process run + 150 us (per round, then median)
    for step, label in ((names[4], "new_box"), (names[3], "warm")):
        out[f"http_run_js_minus_healthz_and_inprocess_{label}"] = _derived(
            [r - h - i for r, h, i in zip(rows[names[2]], rows[names[1]], rows[step])], "us")
    return out


def _new_box_run(box_class: Any) -> None:
    with box_class("js") as box:
        box.run("1+1")


def _median_us(fn: Any, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def _derived(values: list[float], unit: str) -> dict[str, Any]:
    """A row computed from other rows round by round: the median and range of `values`
    (`unit` "us": µs in median_us; "ratio": in `ratio`)."""
    if unit == "us":
        return {"n": len(values), "median_us": statistics.median(values),
                "p99_us": max(values), "min_us": min(values)}
    ratio = statistics.median(values)
    return {"n": len(values), "median_us": math.nan, "p99_us": math.nan, "min_us": math.nan,
            "ratio": ratio, "ratio_min": min(values), "ratio_max": max(values),
            "note": f"ratio {ratio:.2f}, rounds {min(values):.2f}-{max(values):.2f}"}


def bench_workers(seconds: int, clients: int = 64, workers: Sequence[int] = (1, 2),
                  rounds: int = 3) -> dict[str, Stats]:
    """`POST /v1/run` `1+1` (JS) from `clients` keep-alive connections (wrk, one thread: a
    few per cent of a core at these rates) against `snapcell serve --workers N` for each N,
    alternated for `rounds`, `seconds` each: requests/s of the best and the median round, and
    the median of the per-round ratios of the last N to the first."""
    why = wrk_available()
    if why is not None:
        return {f"http_run_js_{clients}_clients_{n}_workers": unavailable(why) for n in workers}
    rows: dict[int, list[Stats]] = {n: [] for n in workers}
    with contextlib.ExitStack() as stack:
        urls = {}
        for n in workers:
            proc, urls[n] = start_serve(["--workers", str(n)])
            stack.callback(stop_process, proc)
        for url in urls.values():       # every worker's warm snapshot made, connections spread
            wrk(url, "/v1/run", clients=clients, seconds=2, body=RUN_BODY)
        for _ in range(rounds):
            for n, url in urls.items():
                rows[n].append(wrk(url, "/v1/run", clients=clients, seconds=seconds,
                                   body=RUN_BODY))
    out: dict[str, Stats] = {}
    for n, got in rows.items():
        best = max(got, key=lambda s: s["per_s"])
        out[f"http_run_js_{clients}_clients_{n}_workers"] = dict(
            best, per_s_median=statistics.median(s["per_s"] for s in got), rounds=float(rounds))
    first, last = workers[0], workers[-1]
    # the issue-27 target: two workers >= 1.8x one worker's requests/s
    out[f"http_run_js_{clients}_clients_workers_{last}_over_{first}"] = _derived(
        [b["per_s"] / a["per_s"] for a, b in zip(rows[first], rows[last])], "ratio")
    return out
