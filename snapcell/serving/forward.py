"""Sessions under `snapcell serve --workers N`: any worker serves any session id.

A session is a live sandbox in the memory of the worker process that created it, so it cannot
move to another process with a request. Instead its id names its owner (`w<index>.<token>`,
sessions.py) and `SessionRouter`, in front of every worker's app, forwards a request for
another worker's session (`/v1/sessions/{id}` and everything under it) to that worker over its
private Unix socket (in the service's runtime directory, mode 0700) and relays the answer.
The owner checks the API key and the tenant as for any request: forwarding grants nothing.
`GET /v1/sessions` gathers the caller's sessions from every worker. A client that disconnects
from a forwarded call closes the forwarded connection, which cancels the call in the owner.
When the owner is gone (it crashed; the supervisor starts a new one, without its sessions) or
does not answer, the request gets 503 `worker_unavailable`; its sessions are then unknown
(404) to the new worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

import h11

from .errors import BodyTooLarge
from .limits import BodyLimit, read_body
from .sessions import session_owner

log = logging.getLogger("uvicorn.error")

LOCAL_HEADER = b"x-snapcell-local"       # set on gathering requests: answer for this worker only
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
        b"proxy-connection", b"content-length", b"host", b"expect", LOCAL_HEADER}
_PREFIX = "/v1/sessions/"
READ_CHUNK = 1 << 16


def worker_socket(runtime_dir: str, worker: int) -> str:
    """The path of worker `worker`'s private Unix socket."""
    return os.path.join(runtime_dir, f"worker-{worker}.sock")


class WorkerUnavailable(Exception):
    """The owner of a session did not answer."""


class SessionRouter:
    """Wrap a worker's ASGI `app` (see the module). `timeout`: seconds a forwarded request may
    take (the service's largest call time limit and a margin)."""

    def __init__(self, app: Any, *, worker: int, workers: int, runtime_dir: str,
                 max_body: int, timeout: float) -> None:
        self.app = app
        self.worker = worker
        self.workers = workers
        self.runtime_dir = runtime_dir
        self.timeout = timeout
        self._forward_limited = BodyLimit(self._forward, max_body)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(_PREFIX):
                owner = session_owner(path[len(_PREFIX):].partition("/")[0])
                if owner is not None and owner != self.worker and owner < self.workers:
                    scope["snapcell.owner"] = owner
                    return await self._forward_limited(scope, receive, send)
            elif path == "/v1/sessions" and scope["method"] == "GET" \
                    and not any(k == LOCAL_HEADER for k, _ in scope["headers"]):
                return await self._gather(scope, receive, send)
        await self.app(scope, receive, send)

    # ---------------------------------------------------------------- one session
    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body = await read_body(receive)
        except BodyTooLarge as e:
            return await _reply(send, 413, "body_too_large", str(e))
        if body is None:
            return                                  # the client went away
        exchange = asyncio.ensure_future(self._exchange(scope["snapcell.owner"], scope, body))

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
        watch = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({exchange, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            exchange.cancel()
            raise
        finally:
            watch.cancel()
        if not exchange.done():                     # the client left: so does the request
            exchange.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exchange
            return
        try:
            status, headers, data = exchange.result()
        except WorkerUnavailable as e:
            return await _reply(send, 503, "worker_unavailable", str(e))
        await send({"type": "http.response.start", "status": status, "headers": [
            (k, v) for k, v in headers if k not in _HOP]
            + [(b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _exchange(self, worker: int, scope: dict[str, Any], body: bytes,
                        local: bool = False) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request to `worker`'s Unix socket: (status, headers, body)."""
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP]
        headers += [(b"host", b"snapcell-worker"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]
        if local:
            headers.append((LOCAL_HEADER, b"1"))
        try:
            return await asyncio.wait_for(
                _http(worker_socket(self.runtime_dir, worker), scope["method"], target,
                      headers, body), self.timeout)
        except Exception as e:      # refused, reset, timed out, or not HTTP
            raise WorkerUnavailable(f"worker {worker}, which holds this session, did not "
                                    f"answer ({type(e).__name__}); retry later") from None

    # ---------------------------------------------------------------- the list
    async def _gather(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """This worker's answer, with the other workers' sessions added when it is a 200."""
        messages: list[dict[str, Any]] = []

        async def keep(message: dict[str, Any]) -> None:
            messages.append(message)
        await self.app(scope, receive, keep)
        start = messages[0] if messages else None
        if start is None or start.get("status") != 200:
            for m in messages:
                await send(m)
            return
        data = b"".join(m.get("body", b"") for m in messages[1:])
        sessions = json.loads(data)["sessions"]
        others = await asyncio.gather(*(self._exchange(w, scope, b"", local=True)
                                        for w in range(self.workers) if w != self.worker),
                                      return_exceptions=True)
        for got in others:
            try:
                if isinstance(got, BaseException):
                    raise got
                if got[0] == 200:
                    sessions.extend(json.loads(got[2])["sessions"])
            except Exception as e:      # that worker's sessions are left out
                log.warning("GET /v1/sessions: %s: %s", type(e).__name__, e)
        out = json.dumps({"sessions": sessions}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})


async def _http(path: str, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An HTTP/1.1 request over a Unix socket (h11), the response read to its end."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        conn = h11.Connection(h11.CLIENT)
        writer.write(conn.send(h11.Request(method=method, target=target, headers=headers))
                     + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, out_headers, parts = 0, [], []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_CHUNK)
                if not data and conn.their_state is h11.SEND_BODY:
                    raise EOFError("the worker closed the connection mid-response")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status, out_headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                if not status:
                    raise EOFError("the worker closed the connection without a response")
                return status, out_headers, b"".join(parts)
    finally:
        writer.close()


async def _reply(send: Any, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"type": kind, "status": status, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
