"""The `/v1/contexts` endpoints of `snapcell serve` (docs/serving.md, "Code contexts")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..code.contexts import CodeContext, ContextBusy, ContextLimitExceeded, ContextNotFound
from ..errors import ArgumentError, ConfigurationError
from .code import CodeResult
from .contexts import ContextService
from .errors import ApiError, BodyTooLarge
from .streaming import OnOutput, event_stream, wants_stream

T = TypeVar("T")

CONTEXT_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["lang"], "properties": {
        "lang": {"type": "string", "description": "python, js or lua"},
        "image": {"type": "string", "description": "Python: a package image this server "
                  "offers (`snapcell serve --context-image NAME=LAYOUT:TAG`), by name"}},
    "additionalProperties": False}}}}
CONTEXT_RUN_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["code"], "properties": {
        "code": {"type": "string"},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
        "timeout": {"type": "number"}}, "additionalProperties": False}}}}


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    try:
        yield
    except ContextNotFound as e:
        raise ApiError(404, "unknown_context", str(e)) from None
    except ContextLimitExceeded as e:
        raise ApiError(409, "context_limit", str(e)) from None
    except ContextBusy as e:                 # another server process has runs to checkpoint
        raise ApiError(409, "context_busy", str(e)) from None
    except ConfigurationError as e:          # unknown language, interpreter not built
        raise ApiError(400, "bad_request", str(e)) from None
    except FileNotFoundError as e:
        raise ApiError(404, "file_not_found", f"no file {str(e)[:200]!r} under /tmp") from None


def result_json(r: Any) -> dict[str, Any]:
    """A run's JSON response."""
    return CodeResult.of(r).to_json()


def contexts_router(service: Any, contexts: ContextService, tenant_of: Callable[[Request], str],
                    _json_object: Callable[[Request, set[str]], Awaitable[dict[str, Any]]]
                    ) -> APIRouter:
    """The `/v1/contexts` endpoints (`_json_object(request, allowed fields)` reads a body)."""
    router = APIRouter(prefix="/v1/contexts", tags=["contexts"])

    @router.post("", status_code=201, openapi_extra={"requestBody": CONTEXT_BODY})
    async def create(request: Request) -> dict[str, Any]:
        """A new code context (a REPL whose state persists across runs and restarts)."""
        tenant = tenant_of(request)
        body = await _json_object(request, {"lang", "image"})
        lang, image = body.get("lang"), body.get("image")
        if not isinstance(lang, str):
            raise ArgumentError("lang must be a string (python, js or lua)")
        if image is not None and not isinstance(image, str):
            raise ArgumentError("image must be a string: the name of a package image this "
                                "server offers")
        with _api_errors():
            ctx = await contexts.create(lang, tenant, None if image == lang else image)
        return ctx.describe()

    @router.get("")
    async def listing(request: Request) -> dict[str, Any]:
        """The caller's contexts."""
        return {"contexts": await asyncio.to_thread(contexts.listing, tenant_of(request))}

    @router.get("/{cid}")
    async def get(cid: str, request: Request) -> dict[str, Any]:
        """One context."""
        tenant = tenant_of(request)
        with _api_errors():
            return contexts.describe(cid, tenant)

    @router.delete("/{cid}", status_code=204, response_class=Response)
    async def delete(cid: str, request: Request) -> Response:
        """Delete a context."""
        with _api_errors():
            await contexts.delete(cid, tenant_of(request))
        return Response(status_code=204)

    @router.post("/{cid}/run", openapi_extra={"requestBody": CONTEXT_RUN_BODY},
                 response_model=None)
    async def run(cid: str, request: Request) -> Response | dict[str, Any]:
        """Run code in the context's state → value, stdout, stderr, error, files, display,
        duration_ms (with `Accept: text/event-stream`: stdout/stderr events while it runs,
        then a result event)."""
        tenant = tenant_of(request)
        body = await _json_object(request, {"code", "files", "timeout"})
        code, files = body.get("code"), body.get("files")
        if not isinstance(code, str):
            raise ArgumentError("code must be a string")
        if files is not None and not (isinstance(files, dict)
                                      and all(isinstance(v, str) for v in files.values())):
            raise ArgumentError("files must be an object of file name → text")
        timeout = service.timeout(body.get("timeout"))
        if wants_stream(request):
            with _api_errors():                         # 404 before the stream starts
                await asyncio.to_thread(contexts.describe, cid, tenant)

            async def start(on_output: OnOutput) -> Any:
                with _api_errors():
                    return await contexts.run(cid, tenant, code, files=files, timeout=timeout,
                                              on_output=on_output)
            return event_stream(start, result_json)
        with _api_errors():
            r = await contexts.run(cid, tenant, code, files=files, timeout=timeout)
        return result_json(r)           # (rendered by the app's SafeJSONResponse)

    async def simple(cid: str, request: Request, op: Callable[[CodeContext], T]) -> T:
        with _api_errors():
            return await contexts.apply(cid, tenant_of(request), op)

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
        contexts.metrics.created.labels(child.lang).inc()
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
