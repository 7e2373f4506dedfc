"""Load test of `snapcell serve` under slowloris (issue 28), run by `make soak`, not by `make
test` (it asserts latencies): 64 good clients call `Add` over kept-alive connections on
loopback, first alone, then beside 1,000 slow connections that trickle a header line a second
and reconnect whenever the server closes them, then alone again. The good clients' p99 beside
the slow connections must stay within 2x of their p99 alone, and no response may be a 5xx.

The server runs with its default limits (`--header-timeout 10`, `--max-connections 2048`, the
open-file soft limit raised to fit); this process raises its own soft limit for its sockets."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import random
import re
import resource
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snapcell import UninitializedSandbox
from snapcell.bench.serving import stats

from .conftest import ROOT, make_host_functions
from .test_serve import ALICE, _start_server, stop_server

GOOD_CLIENTS, SLOW_CONNECTIONS = 64, 1000
PHASE_SECONDS = float(os.environ.get("SNAPCELL_SOAK_PHASE_SECONDS", "15"))
ROUNDS = 3
TRICKLE_SECONDS = 2.0


@pytest.fixture(scope="module")
def served(kvm_ok: None, simpleguest: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("soak")
    with UninitializedSandbox(simpleguest, config=None, host_functions=make_host_functions()).evolve() as sb:
        sb.snapshot().save(str(tmp / "layout"), "v1")
    keys = tmp / "keys"
    keys.write_text(f"alice sha256:{hashlib.sha256(ALICE.encode()).hexdigest()}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc, url = _start_server(
        ["--snapshot", f"simple={tmp / 'layout'}#v1", "--host-functions",
         "tests.conftest:make_host_functions", "--api-key-file", str(keys), "--pool-size", "2",
         "--max-queue", "256", "--cache-dir", str(tmp / "cache")], env)
    yield proc, url
    stop_server(proc)


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))


async def _good_clients(host: str, port: int, seconds: float) -> tuple[list[float], dict[int, int]]:
    """GOOD_CLIENTS closed-loop clients for `seconds`: latencies and the count per status."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds

    async def one(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = 0
        try:
            while time.monotonic() < end:
                body = f'{{"args": [{k}, {i}]}}'.encode()
                req = (b"POST /v1/snapshots/simple/call/Add HTTP/1.1\r\nHost: soak\r\n"
                       b"Authorization: Bearer " + ALICE.encode() + b"\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\n\r\n" + body)
                t = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(m.group(1)) if m else 0)
                latencies.append(time.perf_counter() - t)
                status = int(head[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                if re.search(rb"(?i)connection: *close", head):
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                i += 1
        finally:
            writer.close()
    await asyncio.gather(*(one(k) for k in range(GOOD_CLIENTS)))
    return latencies, statuses


def _slow_holder(host: str, port: int, opened: Any, closed_by_server: Any, stop: Any) -> None:
    """SLOW_CONNECTIONS connections on a partial request head, one more header line every
    TRICKLE_SECONDS each; a connection the server closes is opened again. Runs in a process
    of its own, with bare asyncio protocols (cheap: it shares the cores with the server)."""
    _raise_nofile(SLOW_CONNECTIONS + 256)

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            with opened.get_lock():
                opened.value += 1
            transport.write(b"POST /v1/snapshots/simple/call/Add HTTP/1.1\r\nHost: slow\r\n")
            self.timer = loop.call_later(TRICKLE_SECONDS * random.random(), self.trickle)

        def trickle(self) -> None:
            self.transport.write(b"X-Slow: a\r\n")
            self.timer = loop.call_later(TRICKLE_SECONDS, self.trickle)

        def connection_lost(self, exc: Exception | None) -> None:
            self.timer.cancel()
            with opened.get_lock():
                opened.value -= 1
            if not stop.is_set():
                with closed_by_server.get_lock():
                    closed_by_server.value += 1
                loop.create_task(connect())

    async def connect() -> None:
        while not stop.is_set():
            try:
                await loop.create_connection(Slow, host, port)
                return
            except OSError:
                await asyncio.sleep(0.1)

    async def main() -> None:
        await asyncio.gather(*(connect() for _ in range(SLOW_CONNECTIONS)))
        while not stop.is_set():
            await asyncio.sleep(0.1)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())


def _p99(samples: list[float]) -> float:
    return stats(samples)["p99_us"]


def _beside_slow(host: str, port: int, pid: int) -> tuple[list[float], dict[int, int], str]:
    """The good clients for PHASE_SECONDS beside SLOW_CONNECTIONS slow ones (established
    first); their latencies, statuses and a note on the slow connections and server fds."""
    ctx = multiprocessing.get_context("spawn")
    opened, closed, stop = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Event()
    holder = ctx.Process(target=_slow_holder, args=(host, port, opened, closed, stop))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while opened.value < SLOW_CONNECTIONS:
            assert holder.is_alive() and time.monotonic() < deadline, opened.value
            time.sleep(0.1)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        latencies, statuses = asyncio.run(_good_clients(host, port, PHASE_SECONDS))
        note = (f"{opened.value} slow open, {closed.value} closed by the server, server fds "
                f"{fds} -> {len(os.listdir(f'/proc/{pid}/fd'))}")
        assert closed.value >= SLOW_CONNECTIONS // 2, note   # the header deadline closed them
    finally:
        stop.set()
        holder.join(30)
        if holder.is_alive():
            holder.kill()
            holder.join()
    return latencies, statuses, note


def test_slowloris_beside_good_clients(served: Any) -> None:
    """Alternating phases (alone, beside the slow connections) ROUNDS times, so that drifting
    load from other processes on the machine hits both alike; p99 over each kind's phases."""
    proc, url = served
    host, port = url.removeprefix("http://").split(":")
    _raise_nofile(GOOD_CLIENTS + 256)
    asyncio.run(_good_clients(host, int(port), 2.0))                      # warm up
    alone: list[float] = []
    beside: list[float] = []
    statuses: list[dict[int, int]] = []
    notes = []
    for _ in range(ROUNDS):
        lat, st = asyncio.run(_good_clients(host, int(port), PHASE_SECONDS))
        alone += lat
        statuses.append(st)
        lat, st, note = _beside_slow(host, int(port), proc.pid)
        beside += lat
        statuses.append(st)
        notes.append(note)
    p99_alone, p99_beside = _p99(alone), _p99(beside)
    seconds = ROUNDS * PHASE_SECONDS
    print(f"\nsoak: {GOOD_CLIENTS} good clients alone: p99 {p99_alone / 1e3:.1f} ms, median "
          f"{stats(alone)['median_us'] / 1e3:.1f} ms, {len(alone) / seconds:.0f} req/s; beside "
          f"{SLOW_CONNECTIONS} slow connections: p99 {p99_beside / 1e3:.1f} ms, median "
          f"{stats(beside)['median_us'] / 1e3:.1f} ms, {len(beside) / seconds:.0f} req/s; "
          f"p99 ratio {p99_beside / p99_alone:.2f}\n  {'; '.join(notes)}\n  statuses {statuses}")
    assert not [s for st in statuses for s in st if s >= 500], statuses
    assert p99_beside <= 2 * p99_alone, (p99_beside, p99_alone)
