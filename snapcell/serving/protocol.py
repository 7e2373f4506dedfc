"""The HTTP/1.1 protocol of `snapcell serve`: uvicorn's httptools protocol (llhttp) with the
read deadlines, the limit on request heads and the connection cap uvicorn lacks (docs/serving.md,
"Connection limits and hostile clients"); a response leaves in one send (`CorkedTransport`).

Per connection, one deadline at a time, each a fixed point in time that arriving bytes do not
push back (so trickling a byte a second gains nothing):

- **head**: a request head must be complete within `header_timeout` of the connection's start,
  or of the first byte of a later request on a kept-alive connection; else 408 and close. Each
  head deadline is drawn between 75 and 100% of `header_timeout`, so that connections opened
  together (an attack's burst) expire, and come back, spread out rather than all at once;
- **body**: the body must be complete within `body_timeout` of its head; else 408 and close
  (the handler sees a disconnect);
- **idle**: a kept-alive connection is closed `keep_alive_timeout` after its last response,
  even if it is still sending the rest of a body the handler did not read (uvicorn's own
  keep-alive timer is cancelled by any arriving byte and never re-armed);
- none while the handler works (calls have their own time limits).

Beyond `max_connections` open connections, a new connection's request is answered `503` with a
JSON error (`connection_limit`) and `Connection: close`; beyond `max_connections +
REFUSING_SLOTS` a new connection is closed at once. Both are logged (at most once a second).
`fd_plan` sizes the open-file limit for that, and for asyncio's accept batches (`Server`)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("uvicorn.error")     # configured by uvicorn.Config

REFUSING_SLOTS = 128        # connections over the cap that still get a 503 before closing
REFUSE_HEAD_SECONDS = 1.0   # how long a refused connection may take to send its request head
HEAD_JITTER = 0.25          # head deadlines are drawn from [1 - HEAD_JITTER, 1] x header_timeout
FD_RESERVE = 1024           # descriptors kept for everything but connections (VMs, files, ...)
ACCEPT_BATCH = 128          # connections asyncio accepts per event-loop pass (uvicorn's backlog)
ACCEPT_PASSES = 4           # passes a refused connection's descriptor may live for
LISTEN_BACKLOG = 2048       # the kernel's queue of connections not yet accepted
MAX_HEAD = 16 * 1024        # bytes of a request head (its target and header lines); beyond: 400


@dataclass(frozen=True)
class ConnectionLimits:
    """Read deadlines and the connection cap (the `snapcell serve` connection flags)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 2048

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def error_response(status: int, reason: str, kind: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body, closing the
    connection (written straight to the transport, outside the parser's state machine)."""
    body = json.dumps({"error": {"type": kind, "status": status, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n")
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode("ascii") + b"\r\n" + body


async def _refuse(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a connection over the cap gets for its request."""
    body = json.dumps({"error": {"type": "connection_limit", "status": 503, "message":
                                 "too many open connections; retry later"}}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _RateLimitedLog:
    """A warning at most once a second, with how many events it stands for."""

    def __init__(self) -> None:
        self.last = 0.0
        self.count = 0

    def warn(self, message: str, *args: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= 1.0:
            log.warning(message + " (%d time(s) since the last such message)", *args, self.count)
            self.last, self.count = now, 0


_refusals = _RateLimitedLog()


class CorkedTransport:
    """A transport that holds a response head announcing its body's length until the body's
    first write, and sends both with one `send` (uvicorn writes them separately): one system
    call and one wake-up of the client instead of two, most of what a small response costs.
    What is held also leaves at `flush()` (the protocol calls it at the end of each response:
    the response to a HEAD request has no body write) and at `close()`. Every other write
    leaves at once, so a head without a length (a streamed response) is never held."""

    __slots__ = ("_transport", "_held")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Send `data`, or hold it if it is a response head with a Content-Length."""
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data[:5] == b"HTTP/" and b"\r\ncontent-length:" in data:
            self._held = data
            return
        if data:
            self._transport.write(data)

    def flush(self) -> None:
        """Send what is held."""
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C) with read deadlines, a limit on request
    heads and a connection cap (`limits`, set by `protocol_class`); its writes of one
    event-loop pass leave in one send (`CorkedTransport`)."""

    limits = ConnectionLimits()
    static: dict[bytes, bytes] = {}     # GET target → JSON body answered here (`/healthz`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answered = False          # the request being parsed was answered by `static`
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._seen_cycle: Any = None
        self._in_head = False           # a request head has begun and is not complete
        self._head_bytes = 0
        self._refusal: str | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.limits.max_connections
        open_now = len(self.connections)
        super().connection_made(transport)
        self.transport = CorkedTransport(transport)  # type: ignore[assignment]
        if open_now >= cap + REFUSING_SLOTS:
            _refusals.warn("closing a new connection at once: %d connections open "
                           "(--max-connections %d)", open_now, cap)
            transport.abort()
            return
        if open_now >= cap:
            _refusals.warn("refusing a new connection with 503: %d connections open "
                           "(--max-connections %d)", open_now, cap)
            self.app = _refuse
            self._arm("head", min(self.limits.header_timeout, REFUSE_HEAD_SECONDS))
            return
        self._arm("head", self._head_seconds())

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.parser is None or self.transport.is_closing():
            return
        if self._in_head:           # a head spread over reads: what the parser holds so far
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._refusal = f"the request head is larger than {MAX_HEAD // 1024} KiB"
                self.send_400_response(self._refusal)
                return
        self._update()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        body = self.static.get(self.url)
        if body is not None and self.parser.get_method() == b"GET" and self.app is not _refuse \
                and not self.pipeline \
                and (self.cycle is None or self.cycle.response_complete) \
                and self.parser.get_http_version() == "1.1":
            self._answer(body)
            return
        super().on_headers_complete()

    def _answer(self, body: bytes) -> None:
        """Answer a GET of a static route here, with no ASGI cycle: a fixed body, in order (no
        response of this connection is pending), as uvicorn would have framed it."""
        self._answered = True
        self._cancel()
        out = [b"HTTP/1.1 200 OK\r\n"]
        for name, value in self.server_state.default_headers:      # date
            out += [name, b": ", value, b"\r\n"]
        out.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        keep = self.parser.should_keep_alive()
        out += [b"\r\n" if keep else b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(out))
        self.transport.flush()  # type: ignore[attr-defined]
        self.server_state.total_requests += 1
        if not keep:
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        if not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._answered:
            self._answered = False
            return
        super().on_message_complete()

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD:
            self._refusal = f"the request head is larger than {MAX_HEAD // 1024} KiB"
            raise ValueError(self._refusal)     # stops the parser: data_received answers 400

    # ------------------------------------------------------------------ uvicorn hooks
    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
        self._update()

    def send_400_response(self, msg: str) -> None:
        """A malformed request (the parser refused it): a JSON 400, then close."""
        msg = self._refusal or msg
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True                   # its handler's writes go nowhere
            cycle.message_event.set()
            if cycle.response_started:                  # mid-response: cannot answer
                self.transport.close()
                return
        self.transport.write(error_response(400, "Bad Request", "bad_http", msg))
        self.transport.close()

    # ------------------------------------------------------------------ deadlines
    def _update(self) -> None:
        """Pick the deadline that applies after the events just handled."""
        cycle = self.cycle
        if self.transport is None or self.transport.is_closing():
            self._cancel()
            return
        if cycle is not self._seen_cycle:               # a new request head was completed
            self._seen_cycle = cycle
            self._cancel()
        if cycle is not None and not cycle.response_complete:
            if cycle.more_body:
                if self._phase != "body":
                    self._arm("body", self.limits.body_timeout)
            else:
                self._cancel()                          # the handler works
            return
        # no request in progress: a head arriving (the first one's deadline runs from the
        # connection's start), or idle after a response
        if self._in_head:
            if self._phase != "head":
                self._arm("head", self._head_seconds())
        elif self._phase not in ("idle", "head"):
            self._arm("idle", self.limits.keep_alive_timeout)

    def _head_seconds(self) -> float:
        return self.limits.header_timeout * (1 - HEAD_JITTER * random.random())

    def _arm(self, phase: str, seconds: float) -> None:
        self._cancel()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired, phase)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._phase = None

    def _expired(self, phase: str) -> None:
        self._timer = None
        self._phase = None
        transport = self.transport
        if transport.is_closing():
            return
        if phase == "idle":
            transport.close()
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:                  # cannot answer any more
                transport.close()
                return
            cycle.disconnected = True                   # the handler's reads see a disconnect
            cycle.message_event.set()
        if phase == "body" or self._in_head:            # a silent connection is just closed
            what = "request body" if phase == "body" else "request head"
            limit = self.limits.body_timeout if phase == "body" else self.limits.header_timeout
            transport.write(error_response(408, "Request Timeout", "request_timeout",
                                           f"the {what} did not arrive within {limit:g} s"))
        transport.close()


def protocol_class(limits: ConnectionLimits,
                   static: dict[str, bytes] | None = None) -> type[GuardedProtocol]:
    """A GuardedProtocol subclass with these limits and static routes (path → JSON body of a
    GET, answered without the app), for uvicorn's `http=` setting."""
    return type("SnapcellHttpProtocol", (GuardedProtocol,), {
        "limits": limits, "static": {k.encode("ascii"): v for k, v in (static or {}).items()}})


@dataclass(frozen=True)
class FdPlan:
    """How descriptors are shared: the nofile soft limit to set, the connection cap, and how
    many connections asyncio may accept per event-loop pass (uvicorn's `backlog`)."""

    soft: int
    max_connections: int
    accept_batch: int


def fd_plan(max_connections: int, soft: int, hard: int) -> FdPlan:
    """Enough descriptors for the cap, the refusing slots, the connections accepted but not yet
    refused (asyncio accepts a batch per pass and a refused connection's descriptor lives for
    a few passes: ACCEPT_PASSES batches) and FD_RESERVE — raising the soft limit up to the
    hard one; a smaller batch and cap if even the hard limit is too low."""
    batch = ACCEPT_BATCH
    need = max_connections + REFUSING_SLOTS + ACCEPT_PASSES * batch + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= need:
        return FdPlan(soft, max_connections, batch)
    new_soft = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if new_soft < need:
        batch = max(8, min(ACCEPT_BATCH, new_soft // 32))
        fit = (new_soft - REFUSING_SLOTS - ACCEPT_PASSES * batch
               - min(FD_RESERVE, new_soft // 2))
        max_connections = min(max_connections, max(16, fit))
    return FdPlan(new_soft, max_connections, batch)


def raise_nofile(limits: ConnectionLimits) -> tuple[ConnectionLimits, int]:
    """Raise this process's RLIMIT_NOFILE soft limit so that `limits.max_connections` fit
    (never above the hard limit). The limits to use — with a lower cap, and a warning, if they
    cannot fit — and the accept batch."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = fd_plan(limits.max_connections, soft, hard)
    if plan.soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
        log.info("raised the open-file soft limit from %d to %d", soft, plan.soft)
    if plan.max_connections != limits.max_connections:
        log.warning("open-file limit %d (hard %d) is too low for --max-connections %d: using %d; "
                    "raise it (e.g. LimitNOFILE= in the systemd unit)", plan.soft, hard,
                    limits.max_connections, plan.max_connections)
        limits = ConnectionLimits(limits.header_timeout, limits.body_timeout,
                                  limits.keep_alive_timeout, plan.max_connections)
    return limits, plan.accept_batch


class Server(uvicorn.Server):
    """uvicorn's server, its listening sockets' kernel backlog set to LISTEN_BACKLOG after
    start-up (uvicorn's `backlog` is also asyncio's accept batch, kept small: fd_plan)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then widen the kernel's accept queue."""
        await super().startup(sockets=sockets)
        for sock in sockets or ():
            sock.listen(LISTEN_BACKLOG)
