"""Request-body limits as a pure ASGI middleware: a declared Content-Length over the limit is
refused with 413 before the body is read; a body without one (chunked) is counted as it
arrives and the read fails with `BodyTooLarge` (which the app turns into 413)."""

from __future__ import annotations

import json
from typing import Any

from .errors import BodyTooLarge

Scope = dict[str, Any]


class BodyLimit:
    """Wrap an ASGI app so that no HTTP request body exceeds `max_body` bytes."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(send, 400, "bad_request", "malformed Content-Length")
                    return
                if declared > limit:
                    await _reply(send, 413, "body_too_large",
                                 f"request body of {declared} bytes exceeds the {limit}-byte limit")
                    return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body exceeds the {limit}-byte limit")
            return message

        await self.app(scope, limited, send)


async def read_body(receive: Any) -> bytes | None:
    """A request's whole body from ASGI `receive` (None when the client disconnected first):
    what Starlette's `Request.body()` does, with less machinery on the hot routes."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _reply(send: Any, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"type": kind, "status": status, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
