"""Prometheus metrics of sandbox pools and the service (prometheus-client).

Every `PoolMetrics` owns its own `CollectorRegistry` unless one is given, so several pools (or
several test processes' pools) never collide in the process-wide default registry. The service
shares one `PoolMetrics` between all its pools; series carry a `pool` label (the snapshot
reference) and, for calls, the guest `function` (bounded: a guest publishes at most a fixed
number of functions, and unknown names are refused before they are counted).

Under `snapcell serve --workers N` every worker process writes its values to files in one
directory (prometheus-client's multiprocess mode, `use_multiprocess`), and a scrape of any
worker sums them: counters and histograms over all workers, the sessions gauge over the live
ones. Queue depth and idle sandboxes are then gauges each worker refreshes every
`QUEUE_REFRESH` seconds (and before its own scrapes), not read at scrape time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

QUEUE_REFRESH = 1.0     # seconds between a worker's queue-gauge updates in multiprocess mode
_multiprocess_dir: str | None = None


def use_multiprocess(directory: str) -> None:
    """Keep this process's metric values in files under `directory`, shared with the other
    workers (call in each worker, before any metric is made)."""
    global _multiprocess_dir
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _multiprocess_dir = directory


def multiprocess_dir() -> str | None:
    """The shared metrics directory of this worker, or None when it is the only process."""
    return _multiprocess_dir


# seconds: from tens of microseconds (a warm call) to a long guest computation
LATENCY_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
                   0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _QueueCollector(Collector):
    """Queue depth and idle sandboxes of every registered pool, read at scrape time (nothing on
    the call path)."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[Callable[[], int], Callable[[], int]]] = {}

    def collect(self):  # type: ignore[no-untyped-def]
        depth = GaugeMetricFamily("snapcell_pool_queue_depth", "Calls waiting for a sandbox",
                                  labels=["pool"])
        idle = GaugeMetricFamily("snapcell_pool_idle_sandboxes", "Sandboxes ready and not in a call",
                                 labels=["pool"])
        for name, (queued, ready) in list(self.sources.items()):
            depth.add_metric([name], queued())
            idle.add_metric([name], ready())
        yield depth
        yield idle


class PoolMetrics:
    """Calls, errors (by kind), rejections, cancellations, latency and queue depth."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.calls = Counter("snapcell_pool_calls", "Calls finished (any outcome)",
                             ["pool", "function"], registry=r)
        self.errors = Counter("snapcell_pool_errors", "Calls that failed, by error class",
                              ["pool", "kind"], registry=r)
        self.rejected = Counter("snapcell_pool_rejected", "Calls refused because the queue was full",
                                ["pool"], registry=r)
        self.cancelled = Counter("snapcell_pool_cancelled",
                                 "Calls cancelled by their caller (asyncio cancellation)",
                                 ["pool"], registry=r)
        self.replaced = Counter("snapcell_pool_sandboxes_replaced",
                                "Sandboxes closed and re-created because a restore failed",
                                ["pool"], registry=r)
        self.latency = Histogram("snapcell_pool_call_seconds",
                                 "Call latency from submission to result (queueing included)",
                                 ["pool"], buckets=LATENCY_BUCKETS, registry=r)
        self.sessions = Gauge("snapcell_sessions", "Open sessions", ["state"], registry=r,
                              multiprocess_mode="livesum")
        self._queues = _QueueCollector()
        self._shared = multiprocess_dir()
        if self._shared is None:
            r.register(self._queues)
        else:               # the same series as gauges in the shared files
            self._depth = Gauge("snapcell_pool_queue_depth", "Calls waiting for a sandbox",
                                ["pool"], registry=r, multiprocess_mode="livesum")
            self._idle = Gauge("snapcell_pool_idle_sandboxes", "Sandboxes ready and not in a call",
                               ["pool"], registry=r, multiprocess_mode="livesum")

    def watch_pool(self, name: str, queued: Callable[[], int], ready: Callable[[], int]) -> None:
        """Report a pool's queue depth and idle sandboxes under `name`."""
        self._queues.sources[name] = (queued, ready)

    def unwatch_pool(self, name: str) -> None:
        """Stop reporting a closed pool."""
        self._queues.sources.pop(name, None)
        if self._shared is not None:
            self._depth.labels(name).set(0)
            self._idle.labels(name).set(0)

    def refresh_queues(self) -> None:
        """Write the watched pools' queue gauges to the shared files (multiprocess mode)."""
        if self._shared is None:
            return
        for name, (queued, ready) in list(self._queues.sources.items()):
            self._depth.labels(name).set(queued())
            self._idle.labels(name).set(ready())

    async def run_refresher(self) -> None:
        """`refresh_queues` every QUEUE_REFRESH seconds (multiprocess mode; cancel to stop)."""
        while self._shared is not None:
            self.refresh_queues()
            await asyncio.sleep(QUEUE_REFRESH)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (of every worker, in multiprocess
        mode)."""
        if self._shared is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector
        self.refresh_queues()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._shared)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
