"""Prometheus metrics of a service's code contexts (`/metrics`, docs/serving.md): contexts
created, resumed from the store, checkpointed and paused; runs and their durations by
language and outcome; live contexts of this process; contexts and bytes of checkpoints on disk
per tenant (the shared store's, read at scrape time at most every `STORE_EVERY` seconds).
Tenants are the API keys' names (a bounded set); outcomes are ok, error, timeout, crash."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..code.contexts import ContextRecord
from ..code.result import RunResult

# seconds: a warm run (hundreds of µs) to a run cut by a long time limit
RUN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
               10.0, 30.0, 60.0)
RESUME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
STORE_EVERY = 15.0


def outcome(r: RunResult) -> str:
    """ok, error (the code raised), timeout or crash."""
    if r.error is None:
        return "ok"
    return {"TimeoutError": "timeout", "InternalError": "crash"}.get(r.error.type, "error")


class _Gauges(Collector):
    """Live contexts of this process and the store's usage per tenant, read at scrape time."""

    def __init__(self, live: Callable[[], int],
                 records: Callable[[], list[ContextRecord]]) -> None:
        self.live, self.records = live, records
        self._lock = threading.Lock()
        self._usage: dict[str, tuple[int, int]] = {}
        self._read = -STORE_EVERY

    def _store_usage(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            if time.monotonic() - self._read >= STORE_EVERY:
                usage: dict[str, tuple[int, int]] = {}
                for rec in self.records():
                    n, b = usage.get(rec.tenant, (0, 0))
                    usage[rec.tenant] = (n + 1, b + rec.bytes)
                self._usage, self._read = usage, time.monotonic()
            return self._usage

    def collect(self) -> Iterator[Metric]:
        live = GaugeMetricFamily("snapcell_contexts_live",
                                 "Contexts holding a micro-VM in this process")
        live.add_metric([], self.live())
        yield live
        count = GaugeMetricFamily("snapcell_contexts_stored",
                                  "Contexts in the store, per tenant", labels=["tenant"])
        size = GaugeMetricFamily("snapcell_contexts_stored_bytes",
                                 "Bytes of the tenant's checkpoints on disk", labels=["tenant"])
        for tenant, (n, b) in sorted(self._store_usage().items()):
            count.add_metric([tenant], n)
            size.add_metric([tenant], b)
        yield count
        yield size


class ContextMetrics:
    """The counters and histograms of a `ContextService`, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry, live: Callable[[], int],
                 records: Callable[[], list[ContextRecord]]) -> None:
        r = registry
        self.created = Counter("snapcell_contexts_created", "Contexts created (forks included)",
                               ["lang"], registry=r)
        self.resumed = Counter("snapcell_contexts_resumed",
                               "Micro-VMs started for a context (from its checkpoint)",
                               ["lang"], registry=r)
        self.resume_seconds = Histogram("snapcell_contexts_resume_seconds",
                                        "Time to resume a context from the store",
                                        buckets=RESUME_BUCKETS, registry=r)
        self.checkpoints = Counter("snapcell_contexts_checkpoints",
                                   "Checkpoints to the store, by outcome (ok, failed)",
                                   ["outcome"], registry=r)
        self.paused = Counter("snapcell_contexts_paused",
                              "Contexts paused (micro-VM released; idle, asked or shutdown)",
                              registry=r)
        self.runs = Histogram("snapcell_context_run_seconds",
                              "Duration of context runs, by language and outcome",
                              ["lang", "outcome"], buckets=RUN_BUCKETS, registry=r)
        r.register(_Gauges(live, records))

    def ran(self, lang: str, r: RunResult) -> None:
        """Count a finished run."""
        self.runs.labels(lang, outcome(r)).observe(r.duration)
