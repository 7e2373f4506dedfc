"""`Service`: what one `snapcell serve` process holds — the catalogue of served snapshots with
their pools, the sessions, the code pool, API keys, limits and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from ..code.egress import NetworkPolicy
from ..errors import ArgumentError, ConfigurationError
from ..sandbox import HostFunctions
from .auth import ApiKeys
from .catalog import Catalog, PoolSettings
from .code import CodePool
from .contexts import ContextOptions
from .egress import Egress
from .metrics import PoolMetrics
from .pool import check_timeout
from .sessions import SessionManager, session_prefix

KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    """Settings of a service (the `snapcell serve` flags)."""

    layouts: tuple[tuple[str, str, str], ...] = ()      # (name, layout dir, tag)
    registry_names: tuple[tuple[str, str], ...] = ()    # (name, registry reference)
    allow_registries: tuple[str, ...] = ()
    insecure_registries: bool = False
    registry_timeout: float = 30.0
    cache_dir: str = field(default_factory=lambda: os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "snapcell", "serve"))
    api_key_file: str | None = None
    host_functions: HostFunctions | None = None
    pool_size: int = 2
    max_queue: int = 64
    call_timeout: float = 10.0          # default per-call limit (seconds)
    max_timeout: float = 60.0           # the most a request may ask for
    max_body: int = 1 * MIB
    max_batch: int = 10_000
    idle_seconds: float = 60.0
    max_sessions: int = 256
    max_sessions_per_tenant: int = 32
    session_workers: int = 4
    code_concurrency: int = 2
    dask: str | None = None             # scheduler address: calls and runs go to that cluster
    contexts: ContextOptions = field(default_factory=ContextOptions)
    egress_cap: NetworkPolicy | None = None     # what tenants' code may reach; None: nothing
    # set in each process of `serve --workers N` (workers.py): which worker this is, how many
    # there are, and the private directory of their Unix sockets and shared metrics
    worker: int = 0
    workers: int = 1
    runtime_dir: str | None = None


class Service:
    """The state behind the HTTP app (`app.create_app`)."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.metrics = PoolMetrics()
        self.api_keys = ApiKeys.from_file(options.api_key_file) if options.api_key_file else None
        self.catalog = Catalog(
            cache_dir=options.cache_dir, metrics=self.metrics,
            pools=PoolSettings(size=options.pool_size, max_queue=options.max_queue,
                               timeout=options.call_timeout, host_functions=options.host_functions),
            allow_registries=options.allow_registries,
            insecure_registries=options.insecure_registries,
            registry_timeout=options.registry_timeout)
        for name, path, tag in options.layouts:
            self.catalog.add_layout(name, path, tag)
        for name, ref in options.registry_names:
            self.catalog.add_registry(name, ref)
        self.sessions = SessionManager(metrics=self.metrics, idle_seconds=options.idle_seconds,
                                       max_sessions=options.max_sessions,
                                       max_per_tenant=options.max_sessions_per_tenant,
                                       workers=options.session_workers,
                                       max_queue=options.max_queue,
                                       id_prefix=session_prefix(options.worker)
                                       if options.workers > 1 else "")
        self.code = CodePool(concurrency=options.code_concurrency, max_queue=options.max_queue)
        self.cluster: Any = None         # a snapcell.dask.DaskBackend with --dask
        self.egress = Egress(options.egress_cap, self.metrics.registry)
        self._sweeper: asyncio.Task[Any] | None = None
        self._refresher: asyncio.Task[Any] | None = None

    def timeout(self, requested: Any) -> float:
        """The time limit of a request: its own (capped at max_timeout) or the default."""
        if requested is None:
            return self.options.call_timeout
        t = check_timeout(requested)
        assert t is not None
        if t > self.options.max_timeout:
            raise ArgumentError(f"timeout {t} exceeds this service's maximum of "
                                f"{self.options.max_timeout} seconds")
        return t

    async def start(self) -> None:
        """Start the pools of local snapshots (or, with `dask`, connect to the cluster) and the
        idle-session sweeper."""
        if self.options.dask is not None:
            try:
                from ..dask import DaskBackend
            except ImportError as e:
                raise ConfigurationError("--dask needs the 'dask' extra "
                                         f"(pip install 'snapcell[dask]'): {e}") from None
            self.cluster = await DaskBackend(
                self.options.dask, plugin={"insecure": self.options.insecure_registries}).start()
        local = [s["ref"] for s in self.catalog.listing() if s.get("source", "").startswith("local")]
        for ref in local if self.cluster is None else ():
            served = await self.catalog.resolve(ref)
            await served.ready_pool()
        self._sweeper = asyncio.ensure_future(self.sessions.run_sweeper())
        self._refresher = asyncio.ensure_future(self.metrics.run_refresher())

    async def close(self) -> None:
        """Stop everything."""
        for task in (self._sweeper, self._refresher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.sessions.close()
        await self.catalog.close()
        if self.cluster is not None:
            await self.cluster.close()
