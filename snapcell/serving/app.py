"""The HTTP API of `snapcell serve` (FastAPI): see docs/serving.md.

Every error is JSON `{"error": {"type": ..., "message": ..., "status": ...}}` with its HTTP
status (`errors.py` of this package maps snapcell errors to them). Bodies are read and parsed
here, not by FastAPI's validation, so that limits and messages are ours; the request schemas
are still published in the OpenAPI document (`/openapi.json`, `/docs`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import ArgumentError, SnapcellError, UnknownFunctionError
from ..guest.functions import Signature
from .auth import key_from_headers
from .contexts import ContextService
from .contexts_api import contexts_router
from .errors import ApiError, BodyTooLarge, error_body
from .fastpath import INTERNAL, FastRoutes
from .jsonvalues import args_from_json, dumps_safe, parse_body, render, result_to_json
from .limits import BodyLimit, read_body
from .loops import running_loop
from .service import Service
from .streaming import event_stream, wants_stream

T = TypeVar("T")
WATCH_AFTER = 0.002     # seconds into a call from which a client disconnect cancels it


class SafeJSONResponse(JSONResponse):
    """The service's JSON responses: rendering never fails (non-finite floats as "NaN",
    "Infinity", "-Infinity"; text that is not valid Unicode as JSON escapes)."""

    def render(self, content: Any) -> bytes:
        """The body of `content`."""
        fast = render(content)
        if fast is not None:
            return fast
        try:
            return super().render(content)
        except (ValueError, UnicodeEncodeError):
            return dumps_safe(content)

CALL_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {
        "args": {"type": "array", "description": "Arguments, converted by the function's signature"},
        "timeout": {"type": "number", "description": "Seconds (queueing included), capped by the service"}},
    "additionalProperties": False}}}}
MAP_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "items": {"type": "array"}},
        "timeout": {"type": "number"},
        "network": {"type": ["object", "array"]}}, "additionalProperties": False}}}}
SESSION_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["snapshot"], "properties": {"snapshot": {"type": "string"}},
    "additionalProperties": False}}}}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "object", "properties": {
        "type": {"type": "string"}, "status": {"type": "integer"}, "message": {"type": "string"},
        "class": {"type": "string"}, "code": {"type": "integer"}}}}}}}}
CALL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the result", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"result": {}, "duration_ms": {"type": "number"}}}}}},
    **{code: _ERROR for code in (400, 401, 404, 409, 413, 422, 429, 502, 504)}}
RUN_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["lang", "code"], "properties": {
        "lang": {"type": "string"}, "code": {"type": "string"},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
        "timeout": {"type": "number"}}, "additionalProperties": False}}}}


def create_app(service: Service) -> FastAPI:
    """The ASGI application of `service` (limits applied by the BodyLimit middleware)."""

    contexts = ContextService(service.options.contexts, service.options.cache_dir,
                              service.options.max_queue, service.metrics.registry)

    mcp_running: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        await contexts.start()
        try:
            async with mcp_running:
                yield
        finally:
            await contexts.close()
            await service.close()

    app = FastAPI(title="snapcell", version=__version__, lifespan=lifespan,
                  description="Hypervisor-isolated micro-VM sandboxes started from snapshots.",
                  default_response_class=SafeJSONResponse)
    app.add_middleware(BodyLimit, max_body=service.options.max_body)

    @app.exception_handler(SnapcellError)
    async def snapcell_error(request: Request, exc: SnapcellError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(ApiError(exc.status_code, kind, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug: Starlette re-raises it after this reply, and uvicorn logs it with its traceback
        return _error(INTERNAL)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(ApiError(400, "bad_request", str(exc.errors())[:500]))

    def tenant_of(request: Request) -> str:
        keys = service.api_keys
        if keys is None:
            return "default"
        key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
        tenant = keys.tenant(key)
        if tenant is None:
            raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: "
                           "Bearer <key> or X-API-Key)" if key is None else "invalid API key")
        return tenant

    app.include_router(contexts_router(service, contexts, tenant_of, _json_object))
    with contextlib.suppress(ImportError):      # /mcp needs the `mcp` extra
        from .mcp import mount
        mcp_running = mount(app, service, contexts)

    # ---------------------------------------------------------------- open endpoints
    pid = os.getpid()       # (the app is made in the process that serves it)

    alive = render({"status": "ok", "worker": service.options.worker, "pid": pid}) or b""

    @app.get("/healthz", tags=["service"], response_class=Response)
    async def healthz(request: Request) -> Response:
        """Liveness of the worker process that answered (no API key needed): a fixed body,
        `{"status": "ok", "worker": i, "pid": p}`, answered before any routing."""
        return Response(alive, media_type="application/json")

    @app.get("/status", tags=["service"])
    async def status(request: Request) -> dict[str, Any]:
        """The state of the worker process that answered: its pools and sessions (no API key
        needed)."""
        return {"status": "ok", "version": __version__, "pools": service.catalog.pools_status(),
                "sessions": len(service.sessions), "worker": service.options.worker,
                "pid": pid}

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format (no API key needed)."""
        return Response(service.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---------------------------------------------------------------- snapshots
    @app.get("/v1/snapshots", tags=["snapshots"])
    async def snapshots(request: Request) -> dict[str, Any]:
        """The snapshots this service serves."""
        tenant_of(request)
        return {"snapshots": service.catalog.listing(),
                "allowed_registries": list(service.catalog.allow)}

    @app.post("/v1/snapshots/{ref:path}/call/{function}", tags=["snapshots"],
              openapi_extra={"requestBody": CALL_BODY}, responses=CALL_RESPONSES)
    async def call(ref: str, function: str, request: Request) -> JSONResponse:
        """Call `function` of snapshot `ref` on a fresh sandbox (the snapshot's state)."""
        tenant_of(request)
        body = await _json_object(request, {"args", "timeout"})
        served = await service.catalog.resolve(ref)
        sig = _signature(served.snapshot.functions, function)
        args = args_from_json(function, sig, body.get("args", []))
        timeout = service.timeout(body.get("timeout"))
        t0 = time.perf_counter()
        if service.cluster is not None:      # serve --dask: the cluster's warm pools
            value = await _until_disconnect(request, service.cluster.call(
                _cluster_ref(served), function, list(args), timeout=timeout))
        else:
            pool = await served.ready_pool()
            value = await _until_disconnect(request, pool.call(function, *args, timeout=timeout))
        return SafeJSONResponse({"result": result_to_json(sig.ret, value),
                                 "duration_ms": round((time.perf_counter() - t0) * 1000, 3)})

    @app.post("/v1/snapshots/{ref:path}/map/{function}", tags=["snapshots"],
              openapi_extra={"requestBody": MAP_BODY})
    async def map_(ref: str, function: str, request: Request) -> JSONResponse:
        """Call `function` once per item (batched: many calls per VM entry); per-item guest
        errors are returned in place."""
        tenant_of(request)
        body = await _json_object(request, {"items", "timeout"})
        served = await service.catalog.resolve(ref)
        sig = _signature(served.snapshot.functions, function)
        items = body.get("items")
        if not isinstance(items, list):
            raise ArgumentError("items must be an array of argument arrays")
        if len(items) > service.options.max_batch:
            raise ApiError(413, "too_many_items", f"at most {service.options.max_batch} items a request")
        batch = [args_from_json(function, sig, a, f"items[{i}]") for i, a in enumerate(items)]
        timeout = service.timeout(body.get("timeout"))
        if service.cluster is not None:
            raw = await _until_disconnect(request, service.cluster.map_calls(
                _cluster_ref(served), function, batch, timeout=timeout))
            results = [r.exception() if hasattr(r, "exception") else r for r in raw]
        else:
            pool = await served.ready_pool()
            results = await _until_disconnect(request, pool.map(function, batch, timeout=timeout))
        return SafeJSONResponse({"results": [_item(sig, r) for r in results]})

    # ---------------------------------------------------------------- sessions
    @app.post("/v1/sessions", tags=["sessions"], status_code=201,
              openapi_extra={"requestBody": SESSION_BODY})
    async def create_session(request: Request) -> dict[str, Any]:
        """A stateful session of a snapshot: its state persists across its calls; idle
        sessions are paused to in-memory snapshots and resumed on the next call."""
        tenant = tenant_of(request)
        body = await _json_object(request, {"snapshot"})
        ref = body.get("snapshot")
        if not isinstance(ref, str):
            raise ArgumentError("snapshot must be a string reference")
        served = await service.catalog.resolve(ref)
        s = await service.sessions.create(served.pool, tenant)
        return s.describe()

    @app.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(request: Request) -> dict[str, Any]:
        """The caller's sessions."""
        tenant = tenant_of(request)
        return {"sessions": [s.describe() for s in service.sessions.of_tenant(tenant)]}

    @app.get("/v1/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: str, request: Request) -> dict[str, Any]:
        """One session."""
        return service.sessions.get(session_id, tenant_of(request)).describe()

    @app.post("/v1/sessions/{session_id}/call/{function}", tags=["sessions"],
              openapi_extra={"requestBody": CALL_BODY})
    async def session_call(session_id: str, function: str, request: Request) -> JSONResponse:
        """Call `function` in the session's state."""
        s = service.sessions.get(session_id, tenant_of(request))
        body = await _json_object(request, {"args", "timeout"})
        sig = _signature(s.pool.snapshot.functions, function)
        args = args_from_json(function, sig, body.get("args", []))
        timeout = service.timeout(body.get("timeout"))
        value = await _until_disconnect(request, s.call(function, *args, timeout=timeout))
        return SafeJSONResponse({"result": result_to_json(sig.ret, value), "session": s.describe()})

    @app.post("/v1/sessions/{session_id}/pause", tags=["sessions"])
    async def pause_session(session_id: str, request: Request) -> dict[str, Any]:
        """Pause now: the state becomes an in-memory snapshot and the VM is released."""
        s = service.sessions.get(session_id, tenant_of(request))
        await service.sessions.pause(s)
        return s.describe()

    @app.delete("/v1/sessions/{session_id}", tags=["sessions"], status_code=204,
                response_class=Response)
    async def delete_session(session_id: str, request: Request) -> Response:
        """Close a session."""
        await service.sessions.delete(session_id, tenant_of(request))
        return Response(status_code=204)

    # ---------------------------------------------------------------- code
    @app.post("/v1/run", tags=["code"], openapi_extra={"requestBody": RUN_BODY})
    async def run(request: Request) -> dict[str, Any]:
        """Run code in a fresh code sandbox ({"lang", "code", "files", "timeout"} → value,
        stdout, stderr, error). 501 until a code-sandbox backend is installed."""
        tenant = tenant_of(request)
        body = await _json_object(request, {"lang", "code", "files", "timeout", "network"})
        if service.cluster is None and service.code.backend is None:
            from .code import unavailable
            raise unavailable()
        lang, code, files = body.get("lang"), body.get("code"), body.get("files")
        if not isinstance(lang, str) or not isinstance(code, str):
            raise ArgumentError("lang and code must be strings")
        if files is not None and not (isinstance(files, dict)
                                      and all(isinstance(v, str) for v in files.values())):
            raise ArgumentError("files must be an object of file name → text")
        timeout = service.timeout(body.get("timeout"))
        network = service.egress.for_run(tenant, body.get("network"))     # serving/egress.py
        if network is not None and service.cluster is not None:
            raise ArgumentError("network is not available with --dask")
        if service.cluster is not None and not files:
            from .code import CodeResult
            r = CodeResult.of(await _until_disconnect(request, service.cluster.run(
                lang, code, timeout=timeout)))
        elif wants_stream(request):         # server-sent events: output while it runs
            return event_stream(lambda on_output: service.code.run(  # type: ignore[return-value]
                code, lang=lang, files=files, timeout=timeout, on_output=on_output,
                network=network),
                lambda r: r.to_json())
        else:
            r = await _until_disconnect(request, service.code.run(code, lang=lang, files=files,
                                                                   timeout=timeout,
                                                                   network=network))
        return r.to_json()

    app.state.static_routes = {"/healthz": alive}
    app.state.fast_routes = [
        ("POST", "/v1/run", run),
        ("POST", r"/v1/snapshots/(?P<ref>.*)/call/(?P<function>[^/]+)", call)]
    return app


def asgi_app(service: Service) -> FastRoutes:
    """What `snapcell serve` serves: the app of `create_app` behind `FastRoutes`, which takes
    the hot routes past FastAPI's routing and middleware (fastpath.py)."""
    app = create_app(service)
    return FastRoutes(app, max_body=service.options.max_body, render=SafeJSONResponse,
                      on_error=_error, routes=app.state.fast_routes,
                      static=app.state.static_routes)


def _error(exc: Exception) -> JSONResponse:
    status, body = error_body(exc)
    headers = {"Retry-After": "1"} if status == 429 else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return SafeJSONResponse(body, status_code=status, headers=headers)


def _cluster_ref(served: Any) -> str:
    ref = served.cluster_ref
    if ref is None:
        raise ApiError(409, "not_on_cluster", f"snapshot {served.ref!r} has no digest the cluster "
                       "could load it by")
    return ref  # type: ignore[no-any-return]


def _signature(functions: Any, function: str) -> Signature:
    sig = (functions or {}).get(function)
    if sig is None:
        raise UnknownFunctionError(f"the snapshot exports no function {function[:200]!r}")
    return sig  # type: ignore[no-any-return]


def _item(sig: Signature, r: Any) -> dict[str, Any]:
    if isinstance(r, SnapcellError):
        _, body = error_body(r)
        return body
    return {"result": result_to_json(sig.ret, r)}


async def _json_object(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The body parsed as JSON (whatever its Content-Type, so `curl -d` works) and required to
    be an object with only `allowed` fields (an empty body is {}); 400 for anything else, 413
    (from the BodyLimit middleware) when it is too large."""
    try:
        raw = await read_body(request.receive)
    except BodyTooLarge as e:
        raise ApiError(413, "body_too_large", str(e)) from None
    if raw is None:                 # gone, or cut off by the body deadline (protocol.py)
        raise ApiError(408, "request_timeout", "the request body did not arrive")
    if not raw.strip():
        return {}
    obj = parse_body(raw)
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    extra = set(obj) - allowed
    if extra:
        raise ApiError(400, "bad_request", "unknown field(s): " + ", ".join(sorted(extra))[:200])
    return obj


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelling it if the client disconnects first (the pool then
    kills the guest call and puts the sandbox back clean). The client is watched from
    WATCH_AFTER seconds on: a short call pays for no watcher task (a disconnect that came
    earlier is still seen then: the server remembers it)."""
    loop = running_loop()
    current = asyncio.current_task(loop)
    assert current is not None
    receive = request.receive
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def disconnected() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                current.cancel()
                return

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(disconnected())
    timer = loop.call_later(WATCH_AFTER, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:      # ours, not the server's
            raise ApiError(499, "client_disconnected",
                           "the client went away; the call was cancelled") from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
