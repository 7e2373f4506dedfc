"""The Dask worker plugin: on every worker (present and future) a `WorkerState` holding the
snapshot cache and the warm sandbox pools, keyed by snapshot digest."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import cloudpickle
from distributed import Worker, WorkerPlugin, get_worker

from ..code import CodeSandbox
from ..errors import ConfigurationError, SnapcellError
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, Snapshot
from ..sandbox.interrupt import install_signal
from .cache import SnapshotCache
from .pool import SandboxPool
from .refs import SnapshotRef, parse_snapshot_ref

PLUGIN_NAME = "snapcell"
CACHE_ENV = "SNAPCELL_DASK_CACHE"
DEFAULT_TOKEN = "default"
log = logging.getLogger("snapcell.dask")
Warm = str | tuple[str, HostFunctions]


def host_functions_token(host_functions: HostFunctions | None) -> str:
    """A short name for a host-function registry, equal for equal pickles: pools are per
    (snapshot, registry), and the registry travels with the tasks."""
    if host_functions is None:
        return DEFAULT_TOKEN
    return hashlib.sha256(cloudpickle.dumps(host_functions)).hexdigest()[:24]


def tools_token(tools: Mapping[str, Any] | None) -> str:
    """Like `host_functions_token`, for the tools of code sandboxes."""
    if not tools:
        return DEFAULT_TOKEN
    return hashlib.sha256(cloudpickle.dumps(dict(sorted(tools.items())))).hexdigest()[:24]


def _close_sandbox(sb: MultiUseSandbox | CodeSandbox) -> None:
    sb.close()


class WorkerState:
    """One worker's snapshot cache and pools. Pools are made on first use (or by `warm`), hold
    up to `pool_size` sandboxes each, and at most `max_pools` pools are kept (the least recently
    used idle pool is closed beyond that). Thread-safe: tasks run on the worker's threads."""

    def __init__(self, cache_dir: str, pool_size: int, max_pools: int = 16,
                 **registry: Any) -> None:
        self.cache = SnapshotCache(cache_dir, **registry)
        self.pool_size = pool_size
        self.max_pools = max_pools
        self._pools: OrderedDict[tuple[Any, ...], SandboxPool[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.items = 0              # items served by this worker (re-runs included)
        self.chunks = 0
        self._count_lock = threading.Lock()
        self.warm_error: str | None = None
        self.warmed = threading.Event()

    # ---------------------------------------------------------------- pools
    def _pool(self, key: tuple[Any, ...], make: Callable[[], SandboxPool[Any]]) -> SandboxPool[Any]:
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
        pool = make()           # outside the lock: may pull and verify a snapshot
        with self._lock:
            existing = self._pools.get(key)
            if existing is not None:
                pool.close()
                return existing
            self._pools[key] = pool
            evict = [k for k, p in self._pools.items() if k != key and p.idle == p.count]
            excess = len(self._pools) - self.max_pools
            doomed = [self._pools.pop(k) for k in evict[:max(0, excess)]]
        for p in doomed:
            p.close()
        return pool

    def snapshot(self, ref: str | SnapshotRef) -> Snapshot:
        """The verified snapshot `ref` names (pulled and verified on first use)."""
        return self.cache.get(ref if isinstance(ref, SnapshotRef) else parse_snapshot_ref(ref))

    def call_pool(self, ref: str | SnapshotRef, host_functions: HostFunctions | None = None,
                  token: str | None = None) -> SandboxPool[MultiUseSandbox]:
        """The pool of `MultiUseSandbox` of snapshot `ref` calling `host_functions`."""
        sref = ref if isinstance(ref, SnapshotRef) else parse_snapshot_ref(ref)
        token = token if token is not None else host_functions_token(host_functions)

        def make() -> SandboxPool[MultiUseSandbox]:
            snap = self.cache.get(sref)
            hf = host_functions if host_functions is not None else HostFunctions()
            return SandboxPool(lambda: MultiUseSandbox.from_snapshot(snap, host_functions=hf),
                               lambda sb: sb.restore(snap), _close_sandbox, self.pool_size)

        return self._pool(("call", sref.key, token), make)

    def code_pool(self, lang: str, tools: Mapping[str, Any] | None = None, token: str | None = None,
                  snapshot: str | SnapshotRef | None = None,
                  **limits: Any) -> SandboxPool[CodeSandbox]:
        """The pool of `CodeSandbox` of language `lang` with `tools` and the given limits
        (timeout, memory_limit, max_output), starting from `snapshot` when one is named."""
        sref = None if snapshot is None else (
            snapshot if isinstance(snapshot, SnapshotRef) else parse_snapshot_ref(snapshot))
        token = token if token is not None else tools_token(tools)
        key = ("code", lang, None if sref is None else sref.key, token,
               tuple(sorted(limits.items())))

        def make() -> SandboxPool[CodeSandbox]:
            base = None if sref is None else self.cache.get(sref)
            pool: SandboxPool[CodeSandbox] = SandboxPool(
                lambda: CodeSandbox(lang, tools, snapshot=base, **limits),
                lambda box: box.reset(), _close_sandbox, self.pool_size)
            pool.warm(1)                # bad options fail here, once, for the whole chunk
            return pool

        return self._pool(key, make)

    def served(self, items: int) -> None:
        """Count one chunk of `items` served."""
        with self._count_lock:
            self.items += items
            self.chunks += 1

    def warm(self, refs: Iterable[Warm]) -> None:
        """Pull, verify and fill the pools of `refs` (each a reference, or a (reference,
        HostFunctions) pair). Errors are logged and kept in `warm_error`; tasks using a
        snapshot that failed get the error as their items' result."""
        try:
            for item in refs:
                ref, hf = item if isinstance(item, tuple) else (item, None)
                try:
                    self.call_pool(ref, hf).warm()
                except SnapcellError as e:      # the others still warm
                    self.warm_error = f"{type(e).__name__}: {e}"
                    log.error("snapcell: warming %s failed: %s", ref, self.warm_error)
        finally:
            self.warmed.set()

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring and tests (items and chunks served, cache activity, pools)."""
        with self._lock:
            pools = {"/".join(str(p) for p in k[:3]): {"size": v.count, "idle": v.idle,
                                                        "created": v.created,
                                                        "replaced": v.replaced}
                     for k, v in self._pools.items()}
        c = self.cache.stats
        return {"items": self.items, "chunks": self.chunks, "pulled": list(c.pulled),
                "verified": list(c.verified), "refused": list(c.refused),
                "fetch_seconds": dict(c.seconds), "pools": pools,
                "warmed": self.warmed.is_set(), "warm_error": self.warm_error,
                "cache_dir": self.cache.directory, "pid": os.getpid()}

    def close(self) -> None:
        """Close every pool."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for p in pools:
            p.close()


def _cache_dir(base: str | None, worker: Worker) -> str:
    root = base or os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(),
                                                             "snapcell-dask-cache")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(worker.name if worker.name is not None
                                                 else worker.address))
    return os.path.join(root, f"{name}-{os.getpid()}")


class SnapcellPlugin(WorkerPlugin):
    """Install snapcell on every worker of a cluster::

        client.register_plugin(SnapcellPlugin(warm=["127.0.0.1:5000/fn@sha256:..."],
                                              insecure=True))

    On each worker (also those that join later) it makes a `WorkerState`: a cache directory
    (``cache_dir``, default ``$SNAPCELL_DASK_CACHE`` or the temp dir, one subdirectory per
    worker process), pools of ``pool_size`` sandboxes (default: the worker's thread count),
    and pulls + verifies + fills the pools of the `warm` snapshots in the background. The
    registry options (`insecure`, `ca_file`, `username`, `password`, `timeout`) are those of
    `Snapshot.pull`."""

    name = PLUGIN_NAME

    def __init__(self, *, warm: Iterable[Warm] = (), cache_dir: str | None = None,
                 pool_size: int | None = None, max_pools: int = 16, idempotent: bool = False,
                 **registry: Any) -> None:
        if pool_size is not None and (isinstance(pool_size, bool) or not isinstance(pool_size, int)
                                      or pool_size < 1):
            raise ConfigurationError(f"pool_size must be a positive int, got {pool_size!r}")
        unknown = set(registry) - {"insecure", "ca_file", "username", "password", "timeout"}
        if unknown:
            raise ConfigurationError(f"unknown SnapcellPlugin option(s): {sorted(unknown)}")
        self.warm = list(warm)
        for item in self.warm:
            parse_snapshot_ref(item[0] if isinstance(item, tuple) else item)
        self.cache_dir = cache_dir
        self.pool_size = pool_size
        self.max_pools = max_pools
        self.idempotent = idempotent
        self.registry = registry
        self.state: WorkerState | None = None

    def setup(self, worker: Worker) -> None:
        """Runs on the worker's main thread: installs the vCPU interrupt signal handler (worker
        threads cannot), makes the state and starts warming."""
        install_signal(SandboxConfiguration().interrupt_signal)
        size = self.pool_size or max(1, int(worker.state.nthreads))
        self.state = WorkerState(_cache_dir(self.cache_dir, worker), size, self.max_pools,
                                 **self.registry)
        threading.Thread(target=self.state.warm, args=(self.warm,), daemon=True,
                         name="snapcell-warm").start()

    def teardown(self, worker: Worker) -> None:
        """Close the pools."""
        if self.state is not None:
            self.state.close()


class PluginMissing(SnapcellError):
    """A task ran on a worker without the snapcell plugin."""


def current_state() -> WorkerState:
    """The WorkerState of the worker running this task."""
    plugin = get_worker().plugins.get(PLUGIN_NAME)
    state = getattr(plugin, "state", None)
    if not isinstance(state, WorkerState):
        raise PluginMissing("this worker has no snapcell plugin: call "
                            "snapcell.dask.install(client) (or register SnapcellPlugin) first")
    return state


def worker_stats(dask_worker: Worker | None = None) -> dict[str, Any]:
    """`WorkerState.stats()` of a worker, for ``client.run(worker_stats)`` (Dask passes the
    worker); {} without the plugin."""
    worker = dask_worker if dask_worker is not None else get_worker()
    state = getattr(worker.plugins.get(PLUGIN_NAME), "state", None)
    return state.stats() if isinstance(state, WorkerState) else {}
