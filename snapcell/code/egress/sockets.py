"""Tunnelled TCP: the host side of a Python code sandbox's sockets (guests/python/sockets.c).

The guest's socket system calls become reserved operations on the `CodeTool` channel:

- ``net.socket()`` — whether the sandbox has a network at all (asked once per run);
- ``net.getaddrinfo(host, port)`` → ``[address]``: the name decided under the policy and resolved
  by the host; the address is remembered for this run, so a connection to it is decided for that
  name with the address pinned (never resolved again: no DNS rebinding between check and use);
- ``net.connect(host, port, timeout)`` → ``[handle, pending]``: decided by
  `EgressSession.destination` *before* any socket exists, then a non-blocking connection to
  `Destination.address`;
- ``net.send(handle, data, timeout)`` → bytes sent; ``net.recv(handle, n, timeout)`` → bytes
  (empty at the end of the stream); ``net.poll([[handle, events], ...], timeout, read_ahead)``
  → ``[[revents, extra], ...]`` where `extra` is the data read ahead from a readable socket (or
  the outcome of a pending connection); ``net.shutdown(handle, how)``; ``net.close(handle)``;
  ``net.flush()``.

Every operation carries, as its last argument, what the guest left waiting since its previous
call, done first, in order: ``[handle, None]`` a close, ``[handle, [host, port]]`` a deferred
connection and ``[handle, data]`` bytes written (the guest keeps up to 128 KiB of writes for the
next call, so a request and the poll for its answer cost one host call; a failure to send them is
reported by that connection's next operation). A deferred connection is one the guest made
without a host call, to a destination the host connected in this run: it is decided and made
here exactly as by ``net.connect`` (the guest's `handle`, from LAZY_BASE up, names it), and when
it fails, the failure is that handle's: its next operation raises it, a poll reports it as
``[POLLERR, [errno, type, message]]``. ``net.connect`` tells the guest how many requests and open
connections the run has left, so that it defers only what the policy's bounds still admit.
A `timeout` of 0 never waits (the guest's socket is non-blocking), None waits as long as the
run and the connection may; every wait ends at the run's deadline and at the connection's
`connection_seconds`. Arguments are untrusted: a wrong one is an `OSError` with an errno
(EINVAL, EBADF...), which the guest raises as Python's own error; refusals and exceeded bounds
are `PermissionError`s naming the policy.
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import time
from typing import Any

from ..netops import builtin_name
from .policy import EgressLimitExceeded, EgressRefused, parse_address
from .session import EgressSession, op

MAX_CHUNK = 256 << 10
"""Bytes per send or recv (and per read-ahead): a reply fits the code sandbox's 1 MiB input
buffer with room to spare (tests/unit/test_egress_sockets.py checks it against LAYOUT)."""
MAX_POLL = 256
MAX_NAMES = 1024
LAZY_BASE = 1 << 40
"""The guest numbers its deferred connections from here (the host's handles are below)."""
_IN, _OUT = select.POLLIN, select.POLLOUT
_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


class Connection:
    """One tunnelled connection: the host's socket, its destination and its deadline."""

    __slots__ = ("sock", "dest", "session", "expires", "pending", "closed", "error")

    def __init__(self, sock: socket.socket, session: EgressSession, label: str) -> None:
        self.sock = sock
        self.session = session
        self.dest = label
        self.expires = time.monotonic() + session.policy.connection_seconds
        self.pending = False
        self.closed = False
        self.error = 0                  # a send the guest left waiting failed with this errno

    def close(self) -> None:
        """Close the socket and log the egress (once)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        finally:
            self.session.finished(self.dest)


# ---------------------------------------------------------------------------- arguments
def _args(args: list[Any], n: int, name: str) -> list[Any]:
    if len(args) != n:
        raise OSError(errno.EINVAL, f"net.{name} takes {n} arguments, got {len(args)}")
    return args


def _waiting(session: EgressSession, args: list[Any], n: int, name: str) -> list[Any]:
    """The `n` arguments of an operation, after doing what the guest left waiting, passed last:
    ``[handle, None]`` closes, ``[handle, [host, port]]`` deferred connections and
    ``[handle, data]`` sends (all of it, bounded like any wait; a failure is kept on the
    connection and reported by its next operation)."""
    if len(args) != n + 1 or not isinstance(args[-1], list) or len(args[-1]) > 2 * MAX_POLL:
        raise OSError(errno.EINVAL, f"net.{name} takes {n} arguments and the list of what "
                                    "waits")
    total = 0
    items = args[-1]
    if not all(isinstance(item, list) and len(item) == 2 for item in items):
        raise OSError(errno.EINVAL, "what waits is a list of [handle, data or None]")
    for i, (h, data) in enumerate(items):
        if data is None:
            session.drop(_int(h, "handle", 0, 2**63 - 1))
            continue
        if isinstance(data, list):          # a run of deferred connections: made together
            if i == 0 or not isinstance(items[i - 1][1], list):
                batch = []
                for item in items[i:]:
                    if not isinstance(item[1], list):
                        break
                    batch.append((item[0], item[1]))
                _deferred(session, batch)
            continue
        if not isinstance(data, bytes) or not data or (total := total + len(data)) > MAX_CHUNK:
            raise OSError(errno.EINVAL, f"data waiting must be bytes, at most {MAX_CHUNK} in all")
        if type(h) is int and h in session.failed:
            continue            # its deferred connection failed: its next operation says so
        c = _conn(session, h)
        if c.error:
            continue
        try:
            _send(session, c, data, None)
        except OSError as e:
            if isinstance(e, EgressRefused | EgressLimitExceeded):
                raise
            c.error = e.errno or errno.EIO
    return _args(args[:n], n, name)


def _deferred(session: EgressSession, batch: list[tuple[Any, Any]]) -> None:
    """Make the connections the guest deferred, numbered by the guest: decided and made as by
    net.connect, all under way at once (waiting as long as the run and each connection may); a
    failure is kept for its handle (its next operation raises it)."""
    seen: set[int] = set()
    for h, dest in batch:                   # all checked before any socket exists
        h = _int(h, "handle", LAZY_BASE, 2**63 - 1)
        if h in session.handles or h in session.failed or h in seen:
            raise OSError(errno.EINVAL, "a deferred connection's handle is already in use")
        if len(dest) != 2:
            raise OSError(errno.EINVAL, "a deferred connection is [host, port]")
        seen.add(h)
    started: list[tuple[int, tuple[Connection, int]]] = []
    for h, dest in batch:
        try:
            started.append((h, _start(session, dest[0], dest[1])))
        except OSError as e:
            session.fail(h, e)
    errors = _wait_connected(session, [s for _, s in started], None)
    for (h, (c, _)), error in zip(started, errors):
        if error is None:
            try:
                session.add(c, h)
                continue
            except OSError as e:
                error = e
        session.fail(h, error)


def _failed(c: Connection) -> None:
    if c.error:
        raise OSError(c.error, os.strerror(c.error))


def _timeout(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
        raise OSError(errno.EINVAL, f"timeout must be None or a number of seconds >= 0, got {v!r}")
    return float(v)


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise OSError(errno.EINVAL, f"{what} must be an int in {lo}..{hi}, got {v!r}"[:200])
    return v


def _conn(session: EgressSession, h: Any) -> Connection:
    failure = session.failed.get(h) if type(h) is int else None
    if failure is not None:     # a deferred connection that failed: this is its next operation
        raise failure.with_traceback(None)
    c = session.get(h)
    if not isinstance(c, Connection):
        raise OSError(errno.EBADF, "bad connection handle")
    return c


def _errno(e: OSError) -> int:
    return e.errno or (errno.EACCES if isinstance(e, PermissionError) else errno.EIO)


# ---------------------------------------------------------------------------- waiting
def _bound(session: EgressSession, conns: list[Connection], timeout: float | None
           ) -> tuple[float, str]:
    """How long a wait may last, and what ends it: 'timeout' (the guest's), 'run' (the run's
    deadline) or 'connection' (a connection's connection_seconds)."""
    now = time.monotonic()
    seconds, why = math.inf if timeout is None else timeout, "timeout"
    deadline = session.deadline
    if deadline is not None and deadline - now < seconds:
        seconds, why = deadline - now, "run"
    for c in conns:
        if c.expires - now < seconds:
            seconds, why = c.expires - now, "connection"
    return max(seconds, 0.0), why


def _expired(why: str, c: Connection | None = None) -> OSError:
    if why == "run":
        return OSError(errno.ETIMEDOUT, "the run's time limit passed while waiting on the network")
    where = f" to {c.dest}" if c is not None else ""
    return OSError(errno.ETIMEDOUT, f"the connection{where} reached the network policy's "
                                    "connection_seconds")


def _wait(c: Connection, events: int, timeout: float | None) -> None:
    """Wait until `c` is ready for `events`; ETIMEDOUT when a bound ends the wait first."""
    seconds, why = _bound(c.session, [c], timeout)
    p = select.poll()
    p.register(c.sock, events)
    if not p.poll(_ms(seconds)):
        raise _expired(why, c) if why != "timeout" else OSError(errno.ETIMEDOUT, "timed out")


def _ms(seconds: float) -> int:
    return min(math.ceil(seconds * 1000), 2**31 - 1)


# ---------------------------------------------------------------------------- operations
@op("socket")
def net_socket(session: EgressSession, args: list[Any]) -> bool:
    """Whether the sandbox has a network (the session exists only when it does)."""
    _waiting(session, args, 0, "socket")
    return True


@op("flush")
def net_flush(session: EgressSession, args: list[Any]) -> None:
    """Do what the guest left waiting (before a close with data written, and at a run's end)."""
    _waiting(session, args, 0, "flush")


@op("getaddrinfo")
def net_getaddrinfo(session: EgressSession, args: list[Any]) -> list[str]:
    """[address]: `host` decided under the policy (for `port`; None: 443, else 80) and resolved by
    the host. The address is remembered for this run."""
    host, port = _args(args, 2, "getaddrinfo")
    if not isinstance(host, str) or not 0 < len(host) <= 255:
        raise OSError(errno.EINVAL, "host must be a non-empty string of at most 255 characters")
    ports = (443, 80) if port is None else (_int(port, "port", 1, 65535),)
    if parse_address(host) is not None:
        session.destination(host, ports[0], count=False)
        return [str(parse_address(host))]
    refused: EgressRefused | None = None
    for p in ports:
        try:
            dest = session.destination(host, p, count=False)
        except EgressRefused as e:
            refused = refused or e
            continue
        if len(session.names) < MAX_NAMES:
            session.names[dest.address] = dest.host
        return [dest.address]
    assert refused is not None
    raise refused


@op("connect")
def net_connect(session: EgressSession, args: list[Any]) -> list[Any]:
    """[handle, pending, requests left, connections left]: a connection to `host` (an address; a
    name is resolved by the host), decided before anything is sent. `timeout` 0: return at once,
    pending if not yet made. The run's requests and open connections left let the guest defer
    its next connections to this destination (see the module's docstring)."""
    host, port, timeout = _waiting(session, args, 3, "connect")
    c = _open(session, host, port, _timeout(timeout))
    h = session.add(c)
    policy = session.policy
    return [h, c.pending, max(policy.max_requests - session.requests, 0),
            max(policy.max_connections - len(session.handles), 0)]


def _open(session: EgressSession, host: Any, port: Any, timeout: float | None) -> Connection:
    """A connection to `host`:`port`, decided under the policy and counted first."""
    started = _start(session, host, port)
    [error] = _wait_connected(session, [started], timeout)
    if error is not None:
        raise error
    return started[0]


def _start(session: EgressSession, host: Any, port: Any) -> tuple[Connection, int]:
    """Decide and count a connection to `host`:`port`, then start making it: the connection,
    and connect_ex's errno (EINPROGRESS: under way)."""
    if not isinstance(host, str) or not 0 < len(host) <= 255:
        raise OSError(errno.EINVAL, "host must be a non-empty string of at most 255 characters")
    if session.policy.methods is not None:
        raise EgressRefused("the sandbox's network policy restricts HTTP methods ("
                            f"{', '.join(sorted(session.policy.methods))}), which the host "
                            "cannot check on a connection the code opens itself (TLS runs in "
                            "the sandbox): sockets are refused")
    port = _int(port, "port", 1, 65535)
    name = None
    if session.names:
        ip = parse_address(host)
        name = session.names.get(str(ip)) if ip is not None else None
    if name is not None:        # resolved by net.getaddrinfo: decided for the name, address pinned
        dest = session.destination(name, port, pinned=host)
    else:
        dest = session.destination(host, port)
    sock = socket.socket(socket.AF_INET6 if ":" in dest.address else socket.AF_INET,
                         socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    c = Connection(sock, session, dest.label)
    try:
        return c, sock.connect_ex((dest.address, port))
    except BaseException:
        c.closed = True
        sock.close()
        raise


def _wait_connected(session: EgressSession, started: list[tuple[Connection, int]],
                    timeout: float | None) -> list[OSError | None]:
    """Wait for the connections under way, all at once (each wait bounded like any); per
    connection None (made, or pending when `timeout` is 0) or the error it failed with (its
    socket closed)."""
    waiting = {c.sock.fileno(): c for c, err in started if err == errno.EINPROGRESS}
    ready: set[int] = set()
    why = "timeout"
    if waiting:
        seconds, why = _bound(session, list(waiting.values()), timeout)
        end = time.monotonic() + seconds
        p = select.poll()
        for fd in waiting:
            p.register(fd, _OUT)
        while len(ready) < len(waiting):
            got = p.poll(_ms(max(end - time.monotonic(), 0.0)))
            if not got:
                break
            for fd, _ in got:
                ready.add(fd)
                p.unregister(fd)
    out: list[OSError | None] = []
    for c, err in started:
        try:
            if err == errno.EINPROGRESS:
                if c.sock.fileno() in ready:
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                elif timeout != 0:
                    raise _expired(why, c) if why != "timeout" else \
                        OSError(errno.ETIMEDOUT, f"connection to {c.dest} timed out")
                else:
                    c.pending = True
                    err = 0
            if err not in (0, errno.EISCONN):
                raise OSError(err, f"{os.strerror(err)} ({c.dest})")
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            out.append(None)
        except OSError as e:
            c.closed = True
            c.sock.close()
            out.append(e)
    return out


def _send(session: EgressSession, c: Connection, data: bytes, timeout: float | None) -> int:
    """Send `data` (timeout 0: what fits now, EAGAIN when nothing does; otherwise all of it,
    each wait bounded); bytes counted against the policy before they leave."""
    if session.bytes_out + len(data) > session.policy.max_bytes_out:
        session.sent(c.dest, len(data))             # raises EgressLimitExceeded
    view, total = memoryview(data), 0
    try:
        while total < len(data):
            try:
                total += c.sock.send(view[total:])
            except BlockingIOError:
                if timeout == 0:
                    break
                _wait(c, _OUT, timeout)
                continue
            if timeout == 0:
                break
    finally:
        if total:
            session.sent(c.dest, total)
    if total == 0 and data:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    return total


@op("send")
def net_send(session: EgressSession, args: list[Any]) -> int:
    """Bytes of `data` sent (timeout 0: what fits now, EAGAIN when nothing does; None: all)."""
    h, data, timeout = _waiting(session, args, 3, "send")
    c = _conn(session, h)
    if not isinstance(data, bytes) or len(data) > MAX_CHUNK:
        raise OSError(errno.EINVAL, f"data must be bytes, at most {MAX_CHUNK} per call")
    timeout = _timeout(timeout)
    if c.pending:
        raise OSError(errno.EAGAIN if timeout == 0 else errno.ENOTCONN, "not connected yet")
    _failed(c)
    return _send(session, c, data, timeout)


@op("recv")
def net_recv(session: EgressSession, args: list[Any]) -> bytes:
    """Up to `n` bytes (b'' at the end of the stream; timeout 0: EAGAIN when none is there)."""
    h, n, timeout = _waiting(session, args, 3, "recv")
    c = _conn(session, h)
    n = _int(n, "n", 1, MAX_CHUNK)
    timeout = _timeout(timeout)
    if c.pending:
        raise OSError(errno.EAGAIN if timeout == 0 else errno.ENOTCONN, "not connected yet")
    _failed(c)
    while True:
        try:
            data = c.sock.recv(n)
            break
        except BlockingIOError:
            if timeout == 0:
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable") from None
            _wait(c, _IN, timeout)
    if data:
        session.received(c.dest, len(data))
    return data


@op("poll")
def net_poll(session: EgressSession, args: list[Any]) -> list[list[Any]]:
    """[[revents, extra], ...] for [[handle, events], ...]: waits until one is ready or `timeout`
    passes. `extra`: up to `read_ahead` bytes read from a readable socket (b'': end of stream;
    an int: the errno it failed with), or a pending connection's outcome (0 or an errno)."""
    items, timeout, ahead = _waiting(session, args, 3, "poll")
    if not isinstance(items, list) or len(items) > MAX_POLL:
        raise OSError(errno.EINVAL, f"poll takes a list of at most {MAX_POLL} [handle, events]")
    timeout = _timeout(timeout)
    ahead = _int(ahead, "read_ahead", 0, MAX_CHUNK)
    asked: list[tuple[Connection, int]] = []
    failed: dict[int, OSError] = {}         # position → a deferred connection's failure
    for item in items:
        if not isinstance(item, list) or len(item) != 2:
            raise OSError(errno.EINVAL, "poll items are [handle, events]")
        ev = _int(item[1], "events", 0, 0xFFFF) & (_IN | _OUT)
        failure = session.failed.get(item[0]) if type(item[0]) is int else None
        if failure is not None:
            failed[len(failed) + len(asked)] = failure
            continue
        c = _conn(session, item[0])
        asked.append((c, _OUT if c.pending else ev))
    p = select.poll()
    for c, ev in asked:
        p.register(c.sock, ev)
    seconds, why = _bound(session, [c for c, _ in asked], timeout)
    if failed or any(c.error for c, _ in asked):
        seconds, why = 0.0, "timeout"           # a failure to report at once
    ready = dict(p.poll(_ms(seconds)))
    if not ready and why == "run":
        raise _expired(why)
    now = time.monotonic()
    out: list[list[Any]] = []
    for c, ev in asked:
        while len(out) in failed:
            e = failed[len(out)]
            out.append([select.POLLERR, [_errno(e), builtin_name(e), str(e)[:2000]]])
        rev = ready.get(c.sock.fileno(), 0)
        extra: Any = None
        if c.error:
            rev, extra = select.POLLERR, c.error
        elif not rev and now >= c.expires:
            rev, extra = select.POLLERR, errno.ETIMEDOUT       # past connection_seconds
        elif c.pending and rev:
            c.pending = False
            extra = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        elif rev & (_IN | _ERR) and ev & _IN and ahead:
            extra = _read_ahead(session, c, ahead)
            if extra is None:
                rev &= ~_IN
        out.append([rev, extra])
    while len(out) in failed:
        e = failed[len(out)]
        out.append([select.POLLERR, [_errno(e), builtin_name(e), str(e)[:2000]]])
    return out


def _read_ahead(session: EgressSession, c: Connection, n: int) -> bytes | int | None:
    """Up to `n` bytes from a socket found readable (None: nothing after all; an int: the errno
    it failed with). What arrived while the first part was read comes too (a reply's headers
    and body are often two segments: one host call then serves both)."""
    try:
        data = c.sock.recv(n)
    except BlockingIOError:
        return None
    except OSError as e:
        return e.errno or errno.EIO
    if data and len(data) < n:
        try:
            data += c.sock.recv(n - len(data))
        except OSError:
            pass                # its next recv reports a failure
    if data:
        session.received(c.dest, len(data))
    return data


@op("shutdown")
def net_shutdown(session: EgressSession, args: list[Any]) -> None:
    """Half-close the connection (`how`: socket.SHUT_RD/WR/RDWR)."""
    h, how = _waiting(session, args, 2, "shutdown")
    c = _conn(session, h)
    c.sock.shutdown(_int(how, "how", 0, 2))


@op("close")
def net_close(session: EgressSession, args: list[Any]) -> None:
    """Close the connection (nothing when the handle is not held)."""
    (h,) = _waiting(session, args, 1, "close")
    session.drop(_int(h, "handle", 0, 2**63 - 1))


__all__ = ["MAX_CHUNK", "Connection"]
