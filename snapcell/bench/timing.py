"""How `snapcell bench` times its rows: samples in ns summarised as median / p99 / min in µs,
and rows measured in alternating blocks so that machine noise falls on all of them alike
(docs/benchmarks.md, "Method"), and the child processes that time rows themselves."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from typing import IO, Any, Self

Stats = dict[str, Any]


def stats(samples_ns: list[int], **extra: Any) -> Stats:
    """n, median, p99 and min (µs) of samples in ns, plus `extra` fields (a note, a version)."""
    s = sorted(samples_ns)
    return {"n": len(s), "median_us": statistics.median(s) / 1000,
            "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000, "min_us": s[0] / 1000, **extra}


def timed(fn: Callable[[], Any], n: int, warmup: int = 0,
          before: Callable[[], Any] | None = None) -> Stats:
    """`n` timed runs of `fn` after `warmup` untimed ones; `before` runs untimed before each."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    out = []
    for _ in range(n):
        if before is not None:
            before()
        t = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t)
    return stats(out)


BLOCK_WARMUP = 5        # untimed runs at the start of every block, for every row alike
# This machine kind switches speed every fraction of a second (the C floor at ≈ 25, ≈ 29 or
# 33–36 µs: the host's other tenants). A block of an interleaved step whose floor level is
# within FASTEST_BAND of the step's fastest blocks (their 5th percentile) ran in the fastest
# period; rows are also reported over those blocks alone (`*_fastest_period`).
FASTEST_BAND = 1.06


def interleaved(fns: dict[str, Callable[[], Any]], n: int, block: int = 100,
                      warmup: int = 200,
                      batches: dict[str, Callable[[int], list[int]]] | None = None,
                      before: dict[str, Callable[[], Any]] | None = None,
                      fastest: tuple[str, ...] = ()) -> dict[str, Stats]:
    """Time several functions in alternating blocks of `block` samples, so that machine noise
    (another process, frequency changes) falls on all of them alike; `n` samples each.
    `batches` are rows measured elsewhere (the C floor process): `batch(k)` returns k samples
    in ns, taken when called, so they alternate with the Python rows block by block. Every
    block of every row starts with BLOCK_WARMUP untimed runs (the caches the other rows left).
    `before[row]`, when given, runs untimed before each run of that row.

    With batches, the rows named in `fastest` (and the first batch row) are also given as
    `<row>_fastest_period`: their blocks that ran in the machine's fastest period. A short
    probe of the first batch row (PROBE samples) follows every block of those rows, so each
    block lies between two floor measurements; its level is the slower of the two (the first
    one is the round's floor block for the round's first row). See fastest_period."""
    before = before or {}
    for k, fn in fns.items():
        pre = before.get(k)
        for _ in range(warmup):
            if pre is not None:
                pre()
            fn()
    batches = batches or {}
    samples: dict[str, list[int]] = {k: [] for k in (*batches, *fns)}
    levels: list[tuple[str, float, list[int]]] = []        # (row, floor level, block samples)
    floor = next(iter(batches), None)
    clock = time.perf_counter_ns
    while min(len(v) for v in samples.values()) < n:
        level = 0.0
        for k, batch in batches.items():
            got = batch(block + BLOCK_WARMUP)[BLOCK_WARMUP:]
            samples[k].extend(got)
            if k == floor:
                level = statistics.median(got)
                if fastest:
                    levels.append((k, level, got))
        for k, fn in fns.items():
            out, pre = samples[k], before.get(k)
            for _ in range(BLOCK_WARMUP):
                if pre is not None:
                    pre()
                fn()
            mark = len(out)
            for _ in range(block):
                if pre is not None:
                    pre()
                t = clock()
                fn()
                out.append(clock() - t)
            if floor is not None and k in fastest:
                after = statistics.median(batches[floor](PROBE + BLOCK_WARMUP)[BLOCK_WARMUP:])
                levels.append((k, max(level, after), out[mark:]))
                level = after
    r = {k: stats(v[:n]) for k, v in samples.items()}
    if levels:
        r.update(fastest_period(levels))
    return r


PROBE = 10      # samples of the floor probe after each block of a row with a fastest period


def fastest_period(levels: list[tuple[str, float, list[int]]]) -> dict[str, Stats]:
    """`<row>_fastest_period` for every row in `levels` ((row, floor level, samples) per
    block): the samples of the blocks whose floor level is within FASTEST_BAND of the 5th
    percentile of all blocks' levels (see interleaved)."""
    ordered = sorted(level for _, level, _ in levels)
    limit = ordered[len(ordered) // 20] * FASTEST_BAND
    fast: dict[str, list[int]] = {}
    for row, level, got in levels:
        kept = fast.setdefault(row, [])
        if level <= limit:
            kept.extend(got)
    return {f"{k}_fastest_period": stats(v) for k, v in fast.items() if v}


def batch_of(fn: Callable[[], Any],
             clock: Callable[[], int] = time.perf_counter_ns) -> Callable[[int], list[int]]:
    """A batch function for `interleaved`: `k` calls of `fn` now, each timed with `clock`
    (wall time by default; `time.thread_time_ns` for CPU time), in ns."""
    def batch(k: int) -> list[int]:
        out = []
        for _ in range(k):
            t = clock()
            fn()
            out.append(clock() - t)
        return out
    return batch


class BatchProcess:
    """A child process that times runs itself and answers each request line with one line (the
    C floor, the native interpreters, the peers' drivers); it ends when its stdin closes. A
    context manager."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None,
                 stderr: IO[bytes] | None = None) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, text=True, bufsize=1, env=env)

    def readline(self) -> str:
        """The process's next line, stripped ('' when it has ended)."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, request: str) -> str:
        """Send one request line and return the answer line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self.readline()

    def ints(self, request: str) -> list[int]:
        """The answer to `request` as integers (empty when it is not a line of them)."""
        line = self.ask(request)
        try:
            return [int(x) for x in line.split()]
        except ValueError:
            return []

    def close(self, timeout: float = 10.0) -> None:
        """Close its stdin and wait for it to end (killed after `timeout` seconds)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
