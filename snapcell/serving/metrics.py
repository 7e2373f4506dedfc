"""Prometheus metrics of sandbox pools and the service (prometheus-client).

Every `PoolMetrics` owns its own `CollectorRegistry` unless one is given, so several pools (or
several test processes' pools) never collide in the process-wide default registry. The service
shares one `PoolMetrics` between all its pools; series carry a `pool` label (the snapshot
reference) and, for calls, the guest `function` (bounded: a guest publishes at most a fixed
number of functions, and unknown names are refused before they are counted)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
        self.sessions = Gauge("snapcell_sessions", "Open sessions", ["state"], registry=r)
        self._queues = _QueueCollector()
        r.register(self._queues)

    def watch_pool(self, name: str, queued: Callable[[], int], ready: Callable[[], int]) -> None:
        """Report a pool's queue depth and idle sandboxes under `name`."""
        self._queues.sources[name] = (queued, ready)

    def unwatch_pool(self, name: str) -> None:
        """Stop reporting a closed pool."""
        self._queues.sources.pop(name, None)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
