"""Code contexts over HTTP (`/v1/contexts`): a stateful REPL per conversation, kept in a
`snapcell.code.contexts.ContextStore` shared by every replica (docs/serving.md, "Code
contexts").

Each context's requests run one at a time on a worker thread. After a successful run the
context is checkpointed to the store once it has been quiet for `checkpoint_delay` seconds (a
burst of runs costs one checkpoint); a context idle for `idle_seconds` is paused (its micro-VM
released); shutting down pauses every live context. Contexts unused for the store's idle
expiry are deleted."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..code.contexts import (
    CodeContext,
    ContextLimitExceeded,
    ContextLimits,
    ContextNotFound,
    ContextStore,
)
from ..errors import ArgumentError, ConfigurationError, PoolFull
from .code import CodeResult
from .errors import ApiError, BodyTooLarge

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


CONTEXT_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["lang"], "properties": {
        "lang": {"type": "string", "description": "python, js or lua"},
        "image": {"type": "string", "description": "reserved: the language's own interpreter"}},
    "additionalProperties": False}}}}
CONTEXT_RUN_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["code"], "properties": {
        "code": {"type": "string"},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
        "timeout": {"type": "number"}}, "additionalProperties": False}}}}


class _Live:
    """A context held by this process, with its lock and last use."""

    def __init__(self, ctx: CodeContext) -> None:
        self.ctx = ctx
        self.lock = asyncio.Lock()
        self.used = time.monotonic()
        self.runs = 0
        self.pending: asyncio.Task[Any] | None = None     # the scheduled checkpoint


class ContextService:
    """The contexts of one `snapcell serve` process."""

    def __init__(self, options: ContextOptions, cache_dir: str, max_queue: int = 64) -> None:
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

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._waiting >= self.max_queue:
            raise PoolFull("too many context requests waiting; retry later")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._waiting -= 1

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
        """The context, held for one request (its requests run one at a time)."""
        live = await self._get(cid, tenant)
        async with live.lock:
            if self._live.get(cid) is not live:     # deleted meanwhile
                raise ContextNotFound(f"no context {cid!r}")
            if live.pending is not None:
                live.pending.cancel()
                live.pending = None
            live.used = time.monotonic()
            try:
                yield live.ctx
            finally:
                live.used = time.monotonic()
                if live.ctx.dirty:
                    live.pending = asyncio.ensure_future(self._checkpoint_later(live))

    async def _checkpoint_later(self, live: _Live) -> None:
        await asyncio.sleep(self.options.checkpoint_delay)
        async with live.lock:
            live.pending = None
            try:
                await self._in_thread(live.ctx.checkpoint)
            except Exception as e:      # noqa: BLE001 (the next run retries; never lost silently)
                log.warning("checkpoint of context %s failed: %s", live.ctx.id, e)

    async def _pause(self, cid: str) -> None:
        live = self._live.get(cid)
        if live is None:
            return
        async with live.lock:
            if live.pending is not None:
                live.pending.cancel()
                live.pending = None
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, live.ctx.pause)
            except Exception as e:      # noqa: BLE001
                log.warning("pausing context %s failed: %s", cid, e)
            self._live.pop(cid, None)

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
    async def create(self, lang: str, tenant: str) -> CodeContext:
        """A new context."""
        ctx = await self._in_thread(self.store.create, lang, tenant)
        self._live[ctx.id] = _Live(ctx)
        return ctx

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


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    try:
        yield
    except ContextNotFound as e:
        raise ApiError(404, "unknown_context", str(e)) from None
    except ContextLimitExceeded as e:
        raise ApiError(409, "context_limit", str(e)) from None
    except ConfigurationError as e:          # unknown language, interpreter not built
        raise ApiError(400, "bad_request", str(e)) from None
    except FileNotFoundError as e:
        raise ApiError(404, "file_not_found", f"no file {str(e)[:200]!r} under /tmp") from None


def result_json(r: Any) -> dict[str, Any]:
    """A run's JSON response."""
    return CodeResult.of(r).to_json()


def contexts_router(service: Any, contexts: ContextService,
                    tenant_of: Callable[[Request], str]) -> APIRouter:
    """The `/v1/contexts` endpoints."""
    from .app import _json_object
    router = APIRouter(prefix="/v1/contexts", tags=["contexts"])

    @router.post("", status_code=201, openapi_extra={"requestBody": CONTEXT_BODY})
    async def create(request: Request) -> dict[str, Any]:
        """A new code context (a REPL whose state persists across runs and restarts)."""
        tenant = tenant_of(request)
        body = await _json_object(request, {"lang", "image"})
        lang, image = body.get("lang"), body.get("image")
        if not isinstance(lang, str):
            raise ArgumentError("lang must be a string (python, js or lua)")
        if image is not None and image != lang:
            raise ArgumentError("image: only the language's own interpreter image is served")
        with _api_errors():
            ctx = await contexts.create(lang, tenant)
        return ctx.describe()

    @router.get("")
    async def listing(request: Request) -> dict[str, Any]:
        """The caller's contexts."""
        return {"contexts": contexts.listing(tenant_of(request))}

    @router.get("/{cid}")
    async def get(cid: str, request: Request) -> dict[str, Any]:
        """One context."""
        tenant = tenant_of(request)
        with _api_errors():
            live = contexts._live.get(cid)                      # noqa: SLF001
            if live is not None and live.ctx.rec.tenant == tenant:
                return live.ctx.describe()
            return {**contexts.store.record(cid, tenant).describe(), "state": "paused"}

    @router.delete("/{cid}", status_code=204, response_class=Response)
    async def delete(cid: str, request: Request) -> Response:
        """Delete a context."""
        with _api_errors():
            await contexts.delete(cid, tenant_of(request))
        return Response(status_code=204)

    @router.post("/{cid}/run", openapi_extra={"requestBody": CONTEXT_RUN_BODY})
    async def run(cid: str, request: Request) -> JSONResponse:
        """Run code in the context's state → value, stdout, stderr, error, files, display,
        duration_ms."""
        tenant = tenant_of(request)
        body = await _json_object(request, {"code", "files", "timeout"})
        code, files = body.get("code"), body.get("files")
        if not isinstance(code, str):
            raise ArgumentError("code must be a string")
        if files is not None and not (isinstance(files, dict)
                                      and all(isinstance(v, str) for v in files.values())):
            raise ArgumentError("files must be an object of file name → text")
        timeout = service.timeout(body.get("timeout"))
        with _api_errors():
            async with contexts.using(cid, tenant) as ctx:
                r = await contexts._in_thread(                  # noqa: SLF001
                    lambda: ctx.run(code, files=files, timeout=timeout))
        return JSONResponse(result_json(r))

    async def simple(cid: str, request: Request, op: Callable[[CodeContext], T]) -> T:
        with _api_errors():
            async with contexts.using(cid, tenant_of(request)) as ctx:
                return await contexts._in_thread(op, ctx)        # noqa: SLF001

    @router.post("/{cid}/reset")
    async def reset(cid: str, request: Request) -> dict[str, Any]:
        """Back to a fresh interpreter."""
        def op(c: CodeContext) -> dict[str, Any]:
            c.reset()
            return c.describe()
        return await simple(cid, request, op)

    @router.post("/{cid}/fork", status_code=201)
    async def fork(cid: str, request: Request) -> dict[str, Any]:
        """A new context with this one's state."""
        child = await simple(cid, request, CodeContext.fork)
        return {**child.describe(), "state": "paused"}

    @router.post("/{cid}/pause")
    async def pause(cid: str, request: Request) -> dict[str, Any]:
        """Checkpoint to the store and release the micro-VM now."""
        with _api_errors():
            return await contexts.pause(cid, tenant_of(request))

    @router.put("/{cid}/files/{path:path}", status_code=204, response_class=Response)
    async def put_file(cid: str, path: str, request: Request) -> Response:
        """Write the body as the file `path` under /tmp (Python contexts)."""
        try:
            data = await request.body()
        except BodyTooLarge as e:
            raise ApiError(413, "body_too_large", str(e)) from None
        await simple(cid, request, lambda c: c.write_file(path, data))
        return Response(status_code=204)

    @router.get("/{cid}/files/{path:path}", response_class=Response)
    async def get_file(cid: str, path: str, request: Request) -> Response:
        """The file `path` under /tmp (Python contexts)."""
        data = await simple(cid, request, lambda c: c.read_file(path))
        return Response(data, media_type="application/octet-stream")

    return router
