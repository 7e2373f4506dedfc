"""The hot routes of the service without the framework's per-request machinery.

FastAPI routes a request through its middleware stack, a linear match against every route,
dependency solving and (for a returned dict) response validation: several hundred
microseconds a request, more than the sandbox step of a small call. `FastRoutes` is a pure
ASGI middleware placed in front of that stack: a request whose method and path match one of
its few routes (`POST /v1/run`, `POST /v1/snapshots/{ref}/call/{function}`)
is handed straight to the same endpoint function the FastAPI route calls, under the same
request-body limits (`BodyLimit`), and its errors are rendered by the same error handler;
a GET of a static route (`/healthz`) is answered with its fixed body at once; every other
request (other methods, other paths, `/docs`, `/openapi.json`) goes on to FastAPI, which still
publishes these routes in the OpenAPI document."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import SnapcellError
from .errors import ApiError
from .limits import BodyLimit

log = logging.getLogger("uvicorn.error")

Endpoint = Callable[..., Awaitable[Any]]
Render = Callable[[Any], Response]
OnError = Callable[[Exception], Response]
INTERNAL = ApiError(500, "internal_error", "internal error (logged by the service)")


class FastRoutes:
    """Wrap an ASGI `app`: requests matching a registered route skip it (see the module)."""

    def __init__(self, app: Any, *, max_body: int, render: Render, on_error: OnError,
                 routes: list[tuple[str, str, Endpoint]],
                 static: dict[str, bytes] | None = None) -> None:
        self.app = app
        # GET path → a fixed JSON body, sent with nothing else done (`/healthz`); the
        # protocol answers them before any ASGI cycle (protocol.py), this where it does not
        self.static_bodies = dict(static or {})
        self._static = {path: (
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode("ascii"))]},
            {"type": "http.response.body", "body": body}) for path, body in (static or {}).items()}
        self._render = render
        self._on_error = on_error
        self._limited = BodyLimit(self._handle, max_body)
        # (method, path, endpoint): served as `endpoint(request=..., **path_params)`; `path` is
        # exact, or a regular expression with named groups when it holds one
        self._routes: dict[str, list[tuple[re.Pattern[str] | str, Endpoint]]] = {}
        for method, path, endpoint in routes:
            pattern: re.Pattern[str] | str = re.compile(path) if "(?P<" in path else path
            self._routes.setdefault(method, []).append((pattern, endpoint))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            fixed = self._static.get(path) if scope["method"] == "GET" else None
            if fixed is not None:
                await send(fixed[0])
                await send(fixed[1])
                return
            for pattern, endpoint in self._routes.get(scope["method"], ()):
                if pattern == path:
                    scope["snapcell.fast"] = (endpoint, {})
                    return await self._limited(scope, receive, send)
                if not isinstance(pattern, str):
                    m = pattern.fullmatch(path)
                    if m is not None:
                        scope["snapcell.fast"] = (endpoint, m.groupdict())
                        return await self._limited(scope, receive, send)
        await self.app(scope, receive, send)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        endpoint, params = scope["snapcell.fast"]
        try:
            result = await endpoint(request=Request(scope, receive), **params)
            response = result if isinstance(result, Response) else self._render(result)
        except (SnapcellError, ApiError) as e:
            response = self._on_error(e)
        except Exception:           # a bug: logged with its traceback, answered as JSON
            log.exception("unexpected error in %s %s", scope["method"], scope["path"][:200])
            response = self._on_error(INTERNAL)
        await response(scope, receive, send)
