"""The snapshots a service serves, by reference, each with its `SandboxPool`.

A reference in a URL is either a name given at start-up (`--snapshot NAME=LAYOUT_DIR[#TAG]`,
loaded with `Snapshot.checked_load`, or `--snapshot NAME=oci://REGISTRY_REF`, pulled on first
use) or a registry reference `host[:port]/repository[:tag][@sha256:digest]` under one of the
prefixes allowed with `--allow-registry`. Registry snapshots are pulled on first use into a
local cache (one OCI layout per repository), verified by digest and schema (`Snapshot.pull`),
loaded with `checked_load`, then served from memory: a tag is resolved once per service run.
Tenants can never name local paths."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SnapshotNotFound, SnapshotReferenceError
from ..sandbox import HostFunctions, SandboxConfiguration, Snapshot
from ..snapshot import parse_reference
from .metrics import PoolMetrics
from .pool import SandboxPool

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_REF = 512


@dataclass
class Served:
    """One served snapshot."""

    ref: str
    source: str
    snapshot: Snapshot
    digest: str | None
    pool: SandboxPool
    make_pool: Callable[[], SandboxPool]
    started: asyncio.Lock = field(default_factory=asyncio.Lock)
    cluster_ref: str | None = None      # the reference Dask workers load it by (serve --dask)

    async def ready_pool(self) -> SandboxPool:
        """The pool, started (its sandboxes created) on first use. A start that fails (e.g.
        host functions that do not cover the snapshot's) raises its error, and the next request
        tries again with a new pool."""
        if not self.pool.started:
            async with self.started:
                if not self.pool.started:
                    try:
                        await self.pool.start()
                    except BaseException:
                        self.pool = self.make_pool()
                        raise
        return self.pool

    def describe(self) -> dict[str, Any]:
        """JSON summary."""
        funcs = self.snapshot.functions or {}
        return {"ref": self.ref, "source": self.source, "digest": self.digest,
                "functions": {n: s.describe(n) for n, s in sorted(funcs.items())},
                "pool": {"size": self.pool.size, "started": self.pool.started,
                         "idle": self.pool.idle, "queued": self.pool.queued,
                         "max_queue": self.pool.max_queue}}


@dataclass(frozen=True)
class PoolSettings:
    """How the pools of served snapshots are made."""

    size: int = 2
    max_queue: int = 64
    timeout: float | None = None
    host_functions: HostFunctions | None = None
    config: SandboxConfiguration | None = None


class Catalog:
    """Served snapshots by reference."""

    def __init__(self, *, cache_dir: str | os.PathLike[str], metrics: PoolMetrics,
                 pools: PoolSettings = PoolSettings(), allow_registries: Sequence[str] = (),
                 insecure_registries: bool = False, registry_timeout: float = 30.0) -> None:
        self.cache_dir = os.fspath(cache_dir)
        self.metrics = metrics
        self.pools = pools
        self.allow = tuple(a.rstrip("/") + "/" for a in allow_registries)
        self.insecure = insecure_registries
        self.registry_timeout = registry_timeout
        self._served: dict[str, Served] = {}
        self._named_registry: dict[str, str] = {}      # name → registry reference
        self._pulling: dict[str, asyncio.Future[Served]] = {}

    def _make(self, ref: str, source: str, snap: Snapshot,
              cluster_ref: str | None = None) -> Served:
        p = self.pools

        def make() -> SandboxPool:
            return SandboxPool(snap, size=p.size, host_functions=p.host_functions,
                               max_queue=p.max_queue, config=p.config, timeout=p.timeout,
                               metrics=self.metrics, name=ref)
        return Served(ref, source, snap, snap.digest, make(), make, cluster_ref=cluster_ref)

    def add_layout(self, name: str, path: str | os.PathLike[str], tag: str = "latest") -> Served:
        """Serve the snapshot `tag` of a local OCI layout as `name` (loaded and verified now)."""
        name = self._check_name(name)
        snap = Snapshot.checked_load(os.fspath(path), tag)
        # the path stays private: listings (seen by tenants) name only the tag
        cluster_ref = f"oci:{os.path.abspath(path)}@{snap.digest}" if snap.digest else None
        served = self._served[name] = self._make(name, f"local layout, tag {tag}", snap,
                                                 cluster_ref)
        return served

    def add_registry(self, name: str, reference: str) -> None:
        """Serve a registry snapshot as `name` (pulled on first use)."""
        name = self._check_name(name)
        parse_reference(reference)
        self._named_registry[name] = reference

    def _check_name(self, name: str) -> str:
        if not NAME.fullmatch(name):
            raise SnapshotReferenceError(f"snapshot name {name[:80]!r} must match {NAME.pattern}")
        if name in self._served or name in self._named_registry:
            raise SnapshotReferenceError(f"snapshot name {name!r} given twice")
        return name

    def allowed(self, reference: str) -> bool:
        """Whether tenants may name this registry reference."""
        return any(reference.startswith(a) for a in self.allow)

    async def resolve(self, ref: str) -> Served:
        """The served snapshot `ref` names (pulling it if need be). SnapshotNotFound for a
        reference that is neither a served name nor an allowed registry reference."""
        got = self._served.get(ref)
        if got is not None:
            return got
        if len(ref) > MAX_REF:
            raise SnapshotReferenceError("snapshot reference too long")
        registry_ref = self._named_registry.get(ref)
        if registry_ref is None:
            if "/" not in ref or not self.allowed(ref):
                raise SnapshotNotFound(f"unknown snapshot {ref[:120]!r}: not served here")
            parse_reference(ref)
            registry_ref = ref
        pending = self._pulling.get(ref)
        if pending is None:
            pending = self._pulling[ref] = asyncio.ensure_future(self._pull(ref, registry_ref))
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done():
                self._pulling.pop(ref, None)

    async def _pull(self, ref: str, registry_ref: str) -> Served:
        parsed = parse_reference(registry_ref)
        store = os.path.join(self.cache_dir, re.sub(r"[^A-Za-z0-9._-]", "_", parsed.host),
                             *parsed.repository.split("/"))

        def pull() -> Snapshot:
            os.makedirs(store, exist_ok=True)
            digest = Snapshot.pull(registry_ref, store, insecure=self.insecure,
                                   timeout=self.registry_timeout)
            return Snapshot.checked_load(store, digest)
        snap = await asyncio.get_running_loop().run_in_executor(None, pull)
        served = self._served.get(ref)
        if served is None:
            pinned = (f"{parsed.host}/{parsed.repository}@{snap.digest}" if snap.digest else None)
            served = self._served[ref] = self._make(ref, f"registry {registry_ref}", snap, pinned)
        return served

    def listing(self) -> list[dict[str, Any]]:
        """Every served snapshot (pulled or not)."""
        out = [s.describe() for s in self._served.values()]
        for name, reference in self._named_registry.items():
            if name not in self._served:
                out.append({"ref": name, "source": f"registry {reference}", "digest": None,
                            "pulled": False})
        return sorted(out, key=lambda d: str(d["ref"]))

    def pools_status(self) -> dict[str, dict[str, int | bool]]:
        """Pool state by reference (for /healthz)."""
        return {r: {"started": s.pool.started, "idle": s.pool.idle, "queued": s.pool.queued,
                    "size": s.pool.size} for r, s in self._served.items()}

    async def close(self) -> None:
        """Close every pool."""
        for s in list(self._served.values()):
            await s.pool.close()
