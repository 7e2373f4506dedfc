"""The code contexts of a service (`/v1/contexts`, the MCP tools): a stateful REPL per
conversation, kept in a `snapcell.code.contexts.ContextStore` shared by every replica
(docs/serving.md, "Code contexts"). The HTTP endpoints are in `contexts_api`.

Each context's requests run one at a time on a worker thread. After a successful run the
context is checkpointed to the store once it has been quiet for `checkpoint_delay` seconds (a
burst of runs costs one checkpoint); a context idle for `idle_seconds` is paused (its micro-VM
released); shutting down pauses every live context. Contexts unused for the store's idle
expiry are deleted."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from ..code.contexts import CodeContext, ContextBusy, ContextLimits, ContextNotFound, ContextStore
from ..code.result import RunResult
from ..errors import ArgumentError, ConfigurationError, PoolFull
from .contexts_metrics import ContextMetrics

log = logging.getLogger("snapcell.serving")
T = TypeVar("T")
MIB = 1 << 20


@dataclass(frozen=True)
class ContextOptions:
    """Settings of the service's code contexts (`snapcell serve --context-*`)."""

    store: str | None = None             # None: <cache dir>/contexts
    max_contexts: int = 32               # per tenant
    max_bytes: int = 256 * MIB           # per tenant, bytes of checkpoints on disk
    idle_expiry: float | None = 7 * 24 * 3600.0
    idle_seconds: float = 60.0           # pause (release the micro-VM) after this
    checkpoint_delay: float = 0.2        # checkpoint once a context is quiet this long
    workers: int = 4
    busy_wait: float = 10.0              # wait this long for another process to hand over
    images: tuple[tuple[str, str], ...] = ()    # (name, LAYOUT:TAG or pinned reference)


_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def parse_images(specs: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`NAME=REF` options (`--context-image`) → (name, reference) pairs; REF is `LAYOUT:TAG`
    or a registry reference pinned by digest (checked when a context is created on it)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep or not _IMAGE_NAME.match(name) or not ref:
            raise ConfigurationError(f"--context-image {spec!r}: expected NAME=LAYOUT:TAG (a "
                                     "name of letters, digits, '.', '_', '-')")
        if name in out:
            raise ConfigurationError(f"--context-image: {name!r} is given twice")
        out[name] = ref
    return tuple(out.items())


class _Live:
    """A context held by this process, with its lock and last use."""

    def __init__(self, ctx: CodeContext) -> None:
        self.ctx = ctx
        self.lock = asyncio.Lock()
        self.used = time.monotonic()
        self.pending: asyncio.Task[Any] | None = None     # the scheduled checkpoint


class ContextService:
    """The contexts of one `snapcell serve` process."""

    def __init__(self, options: ContextOptions, cache_dir: str, max_queue: int = 64,
                 registry: CollectorRegistry | None = None) -> None:
        self.options = options
        directory = options.store or os.path.join(cache_dir, "contexts")
        self.store = ContextStore(directory, ContextLimits(
            max_contexts=options.max_contexts, max_bytes=options.max_bytes,
            idle_expiry=options.idle_expiry))
        self._live: dict[str, _Live] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(options.workers,
                                                           thread_name_prefix="snapcell-ctx")
        self._waiting = 0
        self.max_queue = max_queue
        self._sweeper: asyncio.Task[Any] | None = None
        self.metrics = ContextMetrics(registry if registry is not None else CollectorRegistry(),
                                      lambda: len(self._live), self.store.all_records)

    async def start(self) -> None:
        """Start the sweeper (idle pauses, expiry, garbage collection)."""
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def close(self) -> None:
        """Pause every live context (nothing is lost by a restart) and stop."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for cid in list(self._live):
            await self._pause(cid)
        self._pool.shutdown(wait=True)

    async def _queued(self, start: Callable[[], Awaitable[T]]) -> T:
        """Await what `start()` begins as one of at most `max_queue` waiters (beyond:
        PoolFull, and nothing is begun)."""
        if self._waiting >= self.max_queue:
            raise PoolFull("too many context requests waiting; retry later")
        self._waiting += 1
        try:
            return await start()
        finally:
            self._waiting -= 1

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await self._queued(lambda: loop.run_in_executor(self._pool, fn, *args))

    # ---------------------------------------------------------------- lookup
    async def _get(self, cid: str, tenant: str) -> _Live:
        live = self._live.get(cid)
        if live is not None:
            if live.ctx.rec.tenant != tenant:
                raise ContextNotFound(f"no context {cid!r}")
            return live
        ctx = await self._in_thread(self.store.open, cid, tenant)
        live = self._live.setdefault(cid, _Live(ctx))
        return live

    @contextlib.asynccontextmanager
    async def using(self, cid: str, tenant: str) -> AsyncIterator[CodeContext]:
        """The context, held for one request (its requests run one at a time; at most
        `max_queue` requests wait, beyond that `PoolFull`) and taken from any other process
        that holds it (`CodeContext.hold`: waiting up to `busy_wait` seconds for its
        checkpoint, beyond that `ContextBusy`)."""
        while True:
            live = await self._get(cid, tenant)
            await self._queued(live.lock.acquire)
            if self._live.get(cid) is live:
                break
            live.lock.release()         # paused or deleted meanwhile: look it up again
        try:
            if live.pending is not None:
                live.pending.cancel()
                live.pending = None
            await self._take(live.ctx)
            live.used = time.monotonic()
            try:
                yield live.ctx
            finally:
                live.used = time.monotonic()
                if live.ctx.dirty:
                    live.pending = asyncio.ensure_future(self._checkpoint_later(live))
                else:
                    live.ctx.hand_over()
        finally:
            live.lock.release()

    async def _take(self, ctx: CodeContext) -> None:
        """Hold `ctx` across processes, polling while another process has runs of it not yet
        checkpointed (its checkpoint hands it over)."""
        deadline = time.monotonic() + self.options.busy_wait
        while not ctx.try_hold():
            if time.monotonic() >= deadline:
                raise ContextBusy(f"context {ctx.id} is in use by another server process; "
                                  "retry later")
            await asyncio.sleep(0.01)

    async def _checkpoint_later(self, live: _Live) -> None:
        await asyncio.sleep(self.options.checkpoint_delay)
        async with live.lock:
            live.pending = None
            try:
                await self._in_thread(live.ctx.checkpoint)
                self.metrics.checkpoints.labels("ok").inc()
            except Exception as e:      # noqa: BLE001 (the next run retries; never lost silently)
                self.metrics.checkpoints.labels("failed").inc()
                log.warning("checkpoint of context %s failed: %s", live.ctx.id, e)

    async def _pause(self, cid: str) -> None:
        live = self._live.get(cid)
        if live is None:
            return
        async with live.lock:
            if live.pending is not None:
                live.pending.cancel()
                live.pending = None
            dirty = live.ctx.dirty
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, live.ctx.pause)
                if dirty:
                    self.metrics.checkpoints.labels("ok").inc()
            except Exception as e:      # noqa: BLE001
                self.metrics.checkpoints.labels("failed").inc()
                log.warning("pausing context %s failed: %s", cid, e)
            self._live.pop(cid, None)
            self.metrics.paused.inc()

    async def _sweep(self) -> None:
        period = max(0.05, min(self.options.idle_seconds / 4, 30.0))
        last_expiry = 0.0
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for cid, live in list(self._live.items()):
                if now - live.used > self.options.idle_seconds and not live.lock.locked():
                    await self._pause(cid)
            if now - last_expiry > 60.0:
                last_expiry = now
                try:
                    gone = await self._in_thread(self.store.expire)
                    for cid in gone:
                        self._live.pop(cid, None)
                    await self._in_thread(self.store.collect, 64)
                except Exception as e:      # noqa: BLE001
                    log.warning("context expiry failed: %s", e)

    # ---------------------------------------------------------------- operations
    def image_ref(self, name: str) -> str:
        """The reference of the package image this service offers as `name` (ArgumentError
        naming those it offers otherwise)."""
        for n, ref in self.options.images:
            if n == name:
                return ref
        offered = ", ".join(n for n, _ in self.options.images) or "none"
        raise ArgumentError(f"unknown image {name[:100]!r}; this server offers: {offered} "
                            "(or leave image out for the language's own interpreter)")

    async def create(self, lang: str, tenant: str, image: str | None = None) -> CodeContext:
        """A new context (on the package image this service offers as `image`, if given)."""
        ref = self.image_ref(image) if image is not None else None
        ctx = await self._in_thread(functools.partial(
            self.store.create, lang, tenant, image=ref, image_name=image))
        self._live[ctx.id] = _Live(ctx)
        self.metrics.created.labels(ctx.lang).inc()
        return ctx

    async def apply(self, cid: str, tenant: str, op: Callable[[CodeContext], T]) -> T:
        """`op(context)` on a worker thread, holding the context. Cancelling the caller (a
        client that went away) kills the run and waits for its end: the context goes back
        to its last checkpoint."""
        async with self.using(cid, tenant) as ctx:
            resumes = ctx.resumes
            fut = asyncio.get_running_loop().run_in_executor(self._pool, op, ctx)
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                ctx.kill()
                with contextlib.suppress(BaseException):
                    await fut
                raise
            finally:
                if ctx.resumes != resumes:
                    self.metrics.resumed.labels(ctx.lang).inc()
                    self.metrics.resume_seconds.observe(ctx.resume_seconds)

    async def run(self, cid: str, tenant: str, code: str, *,
                  files: Mapping[str, str | bytes] | None = None, timeout: float | None = None,
                  on_output: Callable[[str, str], None] | None = None) -> RunResult:
        """Run `code` in context `cid`."""
        def op(c: CodeContext) -> RunResult:
            r = c.run(code, files=files, timeout=timeout, on_output=on_output)
            self.metrics.ran(c.lang, r)
            return r
        return await self.apply(cid, tenant, op)

    def describe(self, cid: str, tenant: str) -> dict[str, Any]:
        """The JSON view of context `cid`."""
        live = self._live.get(cid)
        if live is not None and live.ctx.rec.tenant == tenant:
            return live.ctx.describe()
        return {**self.store.record(cid, tenant).describe(), "state": "paused"}

    async def delete(self, cid: str, tenant: str) -> None:
        """Delete a context."""
        live = self._live.get(cid)
        if live is not None and live.ctx.rec.tenant == tenant:
            async with live.lock:
                if live.pending is not None:
                    live.pending.cancel()
                self._live.pop(cid, None)
                await self._in_thread(live.ctx.close)
        await self._in_thread(self.store.delete, cid, tenant)

    async def pause(self, cid: str, tenant: str) -> dict[str, Any]:
        """Checkpoint and release the micro-VM now."""
        await self._get(cid, tenant)
        await self._pause(cid)
        return {**self.store.record(cid, tenant).describe(), "state": "paused"}

    def listing(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's contexts."""
        out = []
        for rec in self.store.of_tenant(tenant):
            live = self._live.get(rec.id)
            out.append({**rec.describe(),
                        "state": "live" if live is not None and live.ctx.live else "paused"})
        return out
