"""`EgressSession`: the network side of one code sandbox — its policy, the run's budget, the
connections it holds, and the table of operations the guest may ask for.

The guest reaches the network only through the code sandbox's `CodeTool` channel, with reserved
operation names that are not identifiers (``net.connect``, ``net.fetch``...), so no user tool
can be called that way and no tool can shadow them. Each operation is a function registered in
`OPS` by the module that implements it (sockets.py for Python's tunnelled TCP, fetch.py for the
requests the host makes for JS ``fetch`` and Lua). Every run starts with a fresh budget, and
everything opened during a run is closed when it ends, whatever the guest did.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..netops import OP_PREFIX
from .policy import (
    NO_NETWORK,
    Destination,
    EgressLimitExceeded,
    EgressRefused,
    NetworkPolicy,
    Resolver,
)

log = logging.getLogger("snapcell.egress")
Op = Callable[["EgressSession", list[Any]], Any]
OPS: dict[str, Op] = {}
"""Reserved operation name → implementation; filled by the modules that implement them."""

_run_ids = itertools.count(1)
MAX_FAILED = 64


def _pinned(address: str) -> Resolver:
    return lambda _host, _port: [address]


class Closeable(Protocol):
    """Anything a run opens and the session closes at its end."""

    def close(self) -> None: ...


class EgressObserver(Protocol):
    """Receives every egress event (for metrics); the service passes one per tenant."""

    def __call__(self, event: str, destination: str, nbytes: int) -> None: ...


def op(name: str) -> Callable[[Op], Op]:
    """Register `fn` as the implementation of ``net.<name>``."""
    def register(fn: Op) -> Op:
        OPS[OP_PREFIX + name] = fn
        return fn
    return register


class EgressSession:
    """The network state of one code sandbox (one per `CodeSandbox`, reused run after run)."""

    def __init__(self, policy: NetworkPolicy = NO_NETWORK, resolver: Resolver | None = None,
                 observer: EgressObserver | None = None, label: str = "") -> None:
        if not isinstance(policy, NetworkPolicy):
            raise TypeError(f"network must be a NetworkPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.resolver = resolver
        self.observer = observer
        self.label = label
        self.lock = threading.Lock()
        self.run_id = ""
        self.deadline: float | None = None
        self.requests = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.refusals = 0
        self.handles: dict[int, Closeable] = {}
        self.failed: dict[int, OSError] = {}
        """Deferred connections that failed, by the guest's handle: their next operation raises
        the error (at most MAX_FAILED are kept; this run only)."""
        self._decided: dict[tuple[str, int, str | None], Destination] = {}
        self.names: dict[str, str] = {}
        """Address → the name it was resolved for (net.getaddrinfo), this run: a connection to
        it is decided for that name, the address pinned (never resolved again)."""
        self._next_handle = itertools.count(3)

    # ------------------------------------------------------------------ a run's life
    def begin(self, deadline: float | None) -> None:
        """A run starts: a fresh budget, bounded by the run's `deadline` (time.monotonic())."""
        self.end()
        self.run_id = f"{self.label or 'run'}-{next(_run_ids)}"
        self.deadline = deadline
        self.requests = self.bytes_out = self.bytes_in = self.refusals = 0
        self.names = {}
        self._decided = {}

    def end(self) -> None:
        """A run ended (or the sandbox was restored or closed): close everything it opened."""
        with self.lock:
            handles, self.handles = self.handles, {}
            self.failed = {}
        for h in handles.values():
            try:
                h.close()
            except Exception:       # noqa: BLE001  (closing is best effort; the fd is gone)
                log.debug("closing an egress handle failed", exc_info=True)

    def remaining(self) -> float | None:
        """Seconds left before the run's deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    # ------------------------------------------------------------------ decisions and budget
    def destination(self, host: str, port: int, resolver: Resolver | None = None,
                    count: bool = True, pinned: str | None = None) -> Destination:
        """Decide a new connection or request under the policy and count it; EgressRefused or
        EgressLimitExceeded when it may not happen (nothing has been sent then). `resolver`
        replaces the sandbox's for this decision; `pinned`: the name resolves to that address
        only (one net.getaddrinfo found for it this run); `count=False` decides without
        counting a request (a name lookup). A decision made with the sandbox's resolver is
        kept for the rest of the run (so a name resolves once per run, and its address stays
        the one checked); a refusal is decided again each time."""
        key = (host, port, pinned)
        dest = self._decided.get(key) if resolver is None else None
        if dest is None:
            if pinned is not None:
                resolver = _pinned(pinned)
            try:
                dest = self.policy.resolve(host, port, resolver or self.resolver)
            except EgressRefused:
                self.refusals += 1
                self._observe("refused", f"{host}:{port}", 0)
                log.info("egress refused run=%s destination=%s:%s", self.run_id, host, port)
                raise
            if resolver is None or pinned is not None:
                self._decided[key] = dest
        if not count:
            return dest
        if self.requests >= self.policy.max_requests:
            self.refusals += 1
            self._observe("refused", dest.label, 0)
            raise EgressLimitExceeded(f"the sandbox's network policy allows at most "
                                      f"{self.policy.max_requests} connections or requests per run")
        self.requests += 1
        self._observe("request", dest.label, 0)
        return dest

    def check_method(self, method: str, dest: str) -> None:
        """Refuse (and count) an HTTP method the policy does not allow, for a request to
        `dest`."""
        try:
            self.policy.check_method(method)
        except EgressRefused:
            self.refusals += 1
            self._observe("refused", dest, 0)
            raise

    def sent(self, dest: str, n: int) -> None:
        """Count `n` bytes about to be sent; EgressLimitExceeded past the policy's bound."""
        if self.bytes_out + n > self.policy.max_bytes_out:
            raise EgressLimitExceeded(f"the sandbox's network policy allows at most "
                                      f"{self.policy.max_bytes_out} bytes out per run")
        self.bytes_out += n
        self._observe("bytes_out", dest, n)

    def received(self, dest: str, n: int) -> None:
        """Count `n` bytes received; EgressLimitExceeded past the policy's bound."""
        self.bytes_in += n
        self._observe("bytes_in", dest, n)
        if self.bytes_in > self.policy.max_bytes_in:
            raise EgressLimitExceeded(f"the sandbox's network policy allows at most "
                                      f"{self.policy.max_bytes_in} bytes in per run")

    def add(self, handle: Closeable, number: int | None = None) -> int:
        """Keep `handle` open until the run ends; its number for the guest (`number`: the one
        the guest chose, for a deferred connection). EgressLimitExceeded (and `handle` closed)
        past the policy's bound on open connections."""
        with self.lock:
            if len(self.handles) >= self.policy.max_connections:
                handle.close()
                raise EgressLimitExceeded(f"the sandbox's network policy allows at most "
                                          f"{self.policy.max_connections} open connections")
            n = next(self._next_handle) if number is None else number
            self.handles[n] = handle
        return n

    def fail(self, number: int, error: OSError) -> None:
        """Keep `error` as the outcome of the guest's deferred connection `number` (the oldest
        kept is forgotten past MAX_FAILED: its handle is then unknown)."""
        with self.lock:
            if len(self.failed) >= MAX_FAILED:
                del self.failed[next(iter(self.failed))]
            self.failed[number] = error

    def get(self, n: Any) -> Closeable:
        """The handle numbered `n`; OSError (EBADF) for one this run does not hold."""
        h = self.handles.get(n) if type(n) is int else None
        if h is None:
            raise OSError(9, "bad connection handle")
        return h

    def drop(self, n: Any) -> None:
        """Close and forget handle `n` (nothing when it is not held)."""
        with self.lock:
            h = self.handles.pop(n, None) if type(n) is int else None
            if h is None and type(n) is int:
                self.failed.pop(n, None)
        if h is not None:
            h.close()

    def finished(self, dest: str) -> None:
        """Log one egress (info level: run, destination and bytes; never bodies)."""
        log.info("egress run=%s destination=%s bytes_out=%d bytes_in=%d", self.run_id, dest,
                 self.bytes_out, self.bytes_in)

    def _observe(self, event: str, dest: str, n: int) -> None:
        if self.observer is not None:
            try:
                self.observer(event, dest, n)
            except Exception:       # noqa: BLE001  (metrics never break a run)
                log.debug("egress observer failed", exc_info=True)

    # ------------------------------------------------------------------ the guest's requests
    def handle(self, name: str, args: list[Any]) -> Any:
        """Serve the reserved operation `name` with `args`; raises the error the code sees."""
        fn = OPS.get(name)
        if fn is None:
            raise OSError(38, f"the sandbox has no network operation {name!r}")
        if not self.policy.enabled:
            raise EgressRefused("this sandbox has no network: its network policy allows no "
                                "destination (see NetworkPolicy in docs/code-sandboxes.md)")
        return fn(self, args)
