"""Running the service with uvicorn on a socket bound here (so that `--port 0` works and the
actual address is known before the first request)."""

from __future__ import annotations

import ipaddress
import math
import socket
import sys
from typing import Any

from ..errors import ConfigurationError
from .protocol import ConnectionLimits, Server, protocol_class, raise_nofile
from .service import ServeOptions, Service

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8477          # below the Linux ephemeral range (32768-60999)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (`reuse_port`: SO_REUSEPORT, for several sockets
    on one port, one per worker process; the kernel spreads connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when their
    # proto says TCP (inherited from this socket); without it every keep-alive response waits
    # ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {e}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve(options: ServeOptions, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "warning", limits: ConnectionLimits | None = None) -> None:
    """Serve until SIGINT/SIGTERM. A non-loopback `host` needs API keys. `limits`: read
    deadlines and the connection cap (the open-file soft limit is raised to fit them).
    Several worker processes: `workers.serve_workers`."""
    limits = prepare(options, host, limits)
    if options.workers > 1:
        raise ConfigurationError("ServeOptions.workers is set by `serve_workers`")
    sock = bind(host, port)
    announce(host, sock.getsockname()[1])
    try:
        started = run(options, [sock], log_level, limits)
    finally:
        sock.close()
    if not started:
        sys.exit(1)


def prepare(options: ServeOptions, host: str, limits: ConnectionLimits | None) -> ConnectionLimits:
    """Checks and process-wide settings before serving; the connection limits to use."""
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
    if not is_loopback(host) and options.api_key_file is None:
        raise ConfigurationError(f"refusing to listen on {host} without --api-key-file: only "
                                 "loopback addresses may be served without API keys")
    return limits or ConnectionLimits()


def announce(host: str, port: int, workers: int = 1) -> None:
    """The line that tells the address (tests and scripts read it)."""
    shown = f"[{host}]" if ":" in host else host
    extra = f" ({workers} workers)" if workers > 1 else ""
    print(f"snapcell serve: listening on http://{shown}:{port}{extra}", flush=True)


def run(options: ServeOptions, sockets: list[socket.socket], log_level: str,
        limits: ConnectionLimits) -> bool:
    """Serve the app of `options` on `sockets` in this process until SIGINT/SIGTERM; whether
    it started."""
    import uvicorn

    from .app import asgi_app
    service = Service(options)
    app: Any = asgi_app(service)
    static = app.static_bodies
    if options.workers > 1 and options.runtime_dir is not None:
        from .forward import SessionRouter
        app = SessionRouter(app, worker=options.worker, workers=options.workers,
                            runtime_dir=options.runtime_dir, max_body=options.max_body,
                            timeout=options.max_timeout + 30)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            loop="uvloop", http="httptools", proxy_headers=False,
                            server_header=False,
                            timeout_graceful_shutdown=5,
                            timeout_keep_alive=max(1, math.ceil(limits.keep_alive_timeout)))
    # after Config, which sets up the uvicorn loggers raise_nofile writes to
    limits, config.backlog = raise_nofile(limits)
    config.http = protocol_class(limits, static)
    server = Server(config)
    server.run(sockets=sockets)
    return bool(server.started)
