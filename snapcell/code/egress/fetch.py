"""``net.fetch``: one HTTP(S) request the host performs for a code sandbox (JavaScript ``fetch``,
Lua ``http.request``), under the sandbox's network policy.

The guest sends ``[method, url, headers, body, options]``; every part is checked here (types,
RFC 9110 tokens, no CR/LF, the headers the host sets itself). Each hop — the first request and
every redirect, which the host follows itself — is decided by `EgressSession.destination` and
connected to the one address the policy checked (never re-resolved); TLS is verified on the host
against the system's CAs plus the policy's `ca_bundle`, the name checked against the
certificate. The request's bytes, the response's bytes, the run's deadline and the policy's
`connection_seconds` bound it all; the reply (status, headers, body, final URL) must fit the
sandbox's input buffer. Failures are errors the language shows (TypeError in JS), never raw.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

from ...errors import ConfigurationError
from ..netops import RunTimeLimitPassed
from ..warm import LAYOUT
from .policy import EgressLimitExceeded, normalise_host, parse_address
from .session import EgressSession, op

if TYPE_CHECKING:       # urllib3 and ssl load with the first request (import snapcell stays light)
    import ssl

    from urllib3.connection import HTTPConnection

MAX_REDIRECTS = 20
MAX_URL = 8192
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 << 10
MAX_REPLY = LAYOUT.input_size - 64          # what the dispatcher may hand back to the guest
CHUNK = 64 << 10
USER_AGENT = "snapcell-fetch"
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00\r\n]|[^\x00-\xff]")
# Set by the host (or meaningless through it): WHATWG's forbidden request headers that concern
# the connection and the framing of the message.
FORBIDDEN = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding",
                       "te", "trailer", "upgrade", "expect", "accept-encoding"})
FORBIDDEN_PREFIXES = ("proxy-", "sec-")
FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
NORMALISED_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"})
BODY_HEADERS = ("content-type", "content-encoding", "content-language", "content-location")
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(OSError):
    """A request that failed on the network side (connection, TLS, protocol, time)."""


@dataclass
class _Request:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes | None
    redirect: str
    timeout: float | None


# ---------------------------------------------------------------------- checking the guest's input
def _method(v: Any) -> str:
    if type(v) is not str or not TOKEN.match(v) or len(v) > 32:
        raise TypeError(f"fetch: {str(v)[:40]!r} is not a valid HTTP method")
    m = v.upper() if v.upper() in NORMALISED_METHODS else v
    if m.upper() in FORBIDDEN_METHODS:
        raise TypeError(f"fetch: the method {m} is not allowed")
    return m


def _url(v: Any) -> str:
    if type(v) is not str or not v or len(v) > MAX_URL:
        raise TypeError(f"fetch: the URL must be a string of 1 to {MAX_URL} characters")
    if any(c <= " " or c == "\x7f" for c in v):
        raise TypeError(f"fetch: the URL {v[:200]!r} contains spaces or control characters")
    return v


def header_pairs(v: Any) -> list[tuple[str, str]]:
    """The guest's headers ([[name, value], ...]) checked: RFC 9110 token names, values of
    bytes 0-255 without NUL/CR/LF (surrounding whitespace removed), none the host sets itself."""
    if v is None:
        return []
    if type(v) is not list or len(v) > MAX_HEADERS:
        raise TypeError(f"fetch: headers must be a list of at most {MAX_HEADERS} [name, value] "
                        "pairs")
    out, total = [], 0
    for pair in v:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str \
                or type(pair[1]) is not str:
            raise TypeError("fetch: each header must be a [name, value] pair of strings")
        name, value = pair[0], pair[1].strip(" \t")
        if not TOKEN.match(name):
            raise TypeError(f"fetch: {name[:100]!r} is not a valid HTTP header name")
        if _BAD_VALUE.search(value):
            raise TypeError(f"fetch: the value of header {name!r} contains NUL, CR, LF or a "
                            "character outside Latin-1")
        low = name.lower()
        if low in FORBIDDEN or low.startswith(FORBIDDEN_PREFIXES):
            raise TypeError(f"fetch: the header {name!r} is set by the sandbox's host and may "
                            "not be given")
        total += len(name) + len(value) + 4
        if total > MAX_HEADER_BYTES:
            raise TypeError(f"fetch: the request headers exceed {MAX_HEADER_BYTES} bytes")
        out.append((name, value))
    return out


def _request(args: Any) -> _Request:
    if type(args) is not list or not 2 <= len(args) <= 5:
        raise TypeError("fetch: expected [method, url, headers, body, options]")
    method, url = _method(args[0]), _url(args[1])
    headers = header_pairs(args[2] if len(args) > 2 else None)
    body = args[3] if len(args) > 3 else None
    if type(body) is str:                   # Lua strings that are valid UTF-8 arrive as text
        body = body.encode()
    if body is not None and type(body) is not bytes:
        raise TypeError("fetch: the body must be bytes, a string or null")
    if body is not None and method in ("GET", "HEAD"):
        raise TypeError(f"fetch: a {method} request cannot have a body")
    opts = args[4] if len(args) > 4 and args[4] is not None else {}
    if type(opts) is not dict or not set(opts) <= {"redirect", "timeout"}:
        raise TypeError("fetch: options are {redirect, timeout}")
    redirect = opts.get("redirect") or "follow"
    if redirect not in ("follow", "manual", "error"):
        raise TypeError(f"fetch: redirect must be 'follow', 'manual' or 'error', got "
                        f"{str(redirect)[:40]!r}")
    timeout = opts.get("timeout")
    if timeout is not None and (type(timeout) not in (int, float) or not timeout >= 0):
        raise TypeError("fetch: the timeout must be a number of seconds")
    return _Request(method, url, headers, body, redirect,
                    None if timeout is None else float(timeout))


@dataclass(frozen=True)
class Target:
    """A URL taken apart for one hop."""

    scheme: str
    host: str          # as written (no brackets), for the policy and TLS
    port: int
    path: str          # the request target: path and query, percent-encoded ASCII
    url: str           # the URL without its fragment

    @property
    def authority(self) -> str:
        """The Host header: the name, and the port when not the scheme's default."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return h if self.port == default else f"{h}:{self.port}"


def parse_target(url: str) -> Target:
    """An http(s) URL checked and taken apart; TypeError naming what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise TypeError(f"fetch: invalid URL {url[:200]!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TypeError(f"fetch: only http: and https: URLs can be fetched in the sandbox, got "
                        f"{url[:200]!r}")
    if parts.username is not None or parts.password is not None:
        raise TypeError("fetch: a URL with credentials (user:password@) cannot be fetched; "
                        "send an Authorization header instead")
    host = parts.hostname or ""
    if not host:
        raise TypeError(f"fetch: the URL {url[:200]!r} has no host")
    if parse_address(host) is None:
        try:
            host = normalise_host(host)              # IDNA: the name on the wire and in TLS
        except ConfigurationError:
            raise TypeError(f"fetch: {host[:100]!r} is not a valid host name") from None
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise TypeError(f"fetch: invalid port in {url[:200]!r}")
    safe = "".join(chr(c) for c in range(0x21, 0x7f) if chr(c) not in "#")
    path = quote(parts.path or "/", safe=safe)
    query = quote(parts.query, safe=safe)
    target = path + ("?" + query if query or url.split("#")[0].endswith("?") else "")
    h = f"[{host}]" if ":" in host else host
    netloc = h if port == (443 if scheme == "https" else 80) else f"{h}:{port}"
    return Target(scheme, host, port, target, f"{scheme}://{netloc}{target}")


# ---------------------------------------------------------------------- bounding time
class _Watchdog:
    """One daemon thread that shuts down the connection of a request past its deadline, so no
    read (a TLS handshake or headers dripped a byte at a time included) outlives it."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, HTTPConnection] = {}
        self._ids = itertools.count()
        self._pid = -1

    def arm(self, deadline: float, conn: HTTPConnection) -> int:
        """Shut `conn`'s socket down at `deadline` (time.monotonic()) unless disarmed first."""
        with self._cv:
            if self._pid != os.getpid():     # first use, or a forked child: no thread yet
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="snapcell-fetch-watchdog",
                                 daemon=True).start()
            key = next(self._ids)
            self._armed[key] = conn
            heapq.heappush(self._heap, (deadline, key))
            self._cv.notify()
        return key

    def disarm(self, key: int) -> None:
        """Forget `key` (its request finished)."""
        with self._cv:
            self._armed.pop(key, None)

    def _run(self) -> None:
        with self._cv:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                _, key = heapq.heappop(self._heap)
                sock = self._armed.pop(key).sock      # set before the TLS handshake
                if sock is not None:
                    try:        # the plain socket's shutdown: the reading thread sees EOF
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                    except OSError:
                        pass


_watchdog = _Watchdog()


@functools.lru_cache(maxsize=16)
def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs plus `ca_bundle` (PEM) when given."""
    import ssl

    from urllib3.util.ssl_ import create_urllib3_context
    ctx = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    ctx.load_default_certs()
    if ca_bundle:
        ctx.load_verify_locations(cadata=ca_bundle)
    return ctx


# ---------------------------------------------------------------------- one hop
def _hop(session: EgressSession, req: _Request, t: Target, deadline: float,
         why: str) -> dict[str, Any]:
    """Decide, connect, send, read one response (redirects not followed)."""
    policy = session.policy
    session.check_method(req.method, f"{t.host}:{t.port}")
    dest = session.destination(t.host, t.port)        # refused before any connection
    given: dict[str, tuple[str, str]] = {"user-agent": ("User-Agent", USER_AGENT),
                                         "accept": ("Accept", "*/*")}
    seen = set()
    for name, value in req.headers:
        low = name.lower()
        given[low] = (given[low][0], f"{given[low][1]}, {value}") if low in seen \
            else (name, value)
        seen.add(low)
    headers = {"Host": t.authority, "Accept-Encoding": "gzip, deflate", "Connection": "close",
               **dict(given.values())}
    body = req.body
    if body is None and req.method in ("POST", "PUT", "PATCH"):
        body = b""
    session.sent(dest.label, len(body or b"") + sum(len(k) + len(v) + 4
                                                    for k, v in headers.items()))
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timeout(why)(f"fetch of {t.url[:200]}: {why} passed before the request")
    from urllib3.connection import HTTPConnection, HTTPSConnection
    conn: HTTPConnection | None = None
    key = None
    try:
        if t.scheme == "https":
            conn = HTTPSConnection(dest.address, t.port, timeout=remaining,
                                   server_hostname=t.host, assert_hostname=t.host,
                                   ssl_context=tls_context(policy.ca_bundle))
        else:
            conn = HTTPConnection(dest.address, t.port, timeout=remaining)
        key = _watchdog.arm(deadline, conn)
        conn.connect()
        conn.request(req.method, t.path, body=body, headers=headers, preload_content=False,
                     decode_content=True)
        resp = conn.getresponse()
        cap = MAX_REPLY - 512 - len(t.url) - len(resp.reason or "") - sum(
            len(k) + len(v) + 16 for k, v in resp.headers.iteritems())
        if cap < 0:
            raise FetchError(f"fetch of {t.url[:200]}: the response headers are too large for "
                             "the sandbox")
        chunks, size = [], 0
        while chunk := resp.read(min(CHUNK, cap - size + 1)):
            session.received(dest.label, len(chunk))
            size += len(chunk)
            if size > cap:
                raise FetchError(f"fetch of {t.url[:200]}: the response body is larger than "
                                 f"the {cap} bytes a fetch can return to the sandbox")
            chunks.append(chunk)
    except (EgressLimitExceeded, FetchError):
        raise
    except Exception as e:      # noqa: BLE001  (network, TLS, protocol: an error in the code)
        if time.monotonic() >= deadline - 0.001:
            raise _timeout(why)(f"fetch of {t.url[:200]}: {why} passed during the request") \
                from None
        raise FetchError(f"fetch of {t.url[:200]} failed: {_reason(e)}") from None
    finally:
        if key is not None:
            _watchdog.disarm(key)
        if conn is not None:
            conn.close()
        session.finished(dest.label)
    return {"status": resp.status, "statusText": resp.reason or "",
            "headers": [[k.lower(), v] for k, v in resp.headers.iteritems()],
            "body": b"".join(chunks), "url": t.url, "redirected": False}


def _reason(e: BaseException) -> str:
    """A short account of a network failure."""
    import ssl

    import urllib3
    from urllib3.util.ssl_match_hostname import CertificateError
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {e.verify_message or e}"
    if isinstance(e, CertificateError):
        return f"the TLS certificate does not match the host: {e}"
    if isinstance(e, (ssl.SSLError, urllib3.exceptions.SSLError)):
        return f"TLS failed: {e}"
    if isinstance(e, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(e, urllib3.exceptions.NewConnectionError):
        return f"could not connect: {e.__cause__ or e}"
    text = str(e) or type(e).__name__
    return text[:300]


RUN_LIMIT = "the run's time limit"


def _timeout(why: str) -> type[TimeoutError]:
    """The error of a request that ran out of time: the run's own limit ends the run."""
    return RunTimeLimitPassed if why == RUN_LIMIT else TimeoutError


# ---------------------------------------------------------------------- the operation
@op("fetch")
def fetch(session: EgressSession, args: list[Any]) -> dict[str, Any]:
    """``net.fetch``: [method, url, headers, body, options] → {status, statusText, headers
    ([[name, value]...], names lower-case), body (bytes), url (final), redirected}."""
    req = _request(args)
    t = parse_target(req.url)
    now = time.monotonic()
    limits = [(now + session.policy.connection_seconds,
               f"the network policy's connection_seconds ({session.policy.connection_seconds} s)")]
    remaining = session.remaining()
    if remaining is not None:
        limits.append((now + remaining, RUN_LIMIT))
    if req.timeout is not None:
        limits.append((now + req.timeout, f"the request's timeout ({req.timeout:g} s)"))
    deadline, why = min(limits)
    redirected = False
    for _ in range(MAX_REDIRECTS + 1):
        reply = _hop(session, req, t, deadline, why)
        status = reply["status"]
        location = next((v for k, v in reply["headers"] if k == "location"), None)
        if status not in REDIRECTS or location is None or req.redirect == "manual":
            reply["redirected"] = redirected
            return reply
        if req.redirect == "error":
            raise TypeError(f"fetch of {t.url[:200]}: redirected (status {status}) while "
                            "redirect is 'error'")
        nxt = parse_target(_url(urljoin(t.url, location.strip())))
        if (status == 303 and req.method not in ("GET", "HEAD")) or \
                (status in (301, 302) and req.method == "POST"):
            req.method, req.body = "GET", None
            req.headers = [(k, v) for k, v in req.headers if k.lower() not in BODY_HEADERS]
        if (nxt.scheme, nxt.host, nxt.port) != (t.scheme, t.host, t.port):
            req.headers = [(k, v) for k, v in req.headers if k.lower() != "authorization"]
        t, redirected = nxt, True
    raise TypeError(f"fetch: more than {MAX_REDIRECTS} redirects")
