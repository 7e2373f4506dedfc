"""Servers the egress tests start on loopback only: an HTTP(S) echo server with a few routes,
a test CA for HTTPS (made with `cryptography`), and a bare listener that counts connections
(to show a refusal comes before any connection) or holds them without answering."""

from __future__ import annotations

import datetime
import gzip
import http.server
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain",
               extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _any(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.seen.append((self.command, self.path))        # type: ignore[attr-defined]
        if url.path == "/echo":
            data = {"method": self.command, "path": self.path, "body": body.decode("latin-1"),
                    "headers": {k.lower(): v for k, v in self.headers.items()}}
            self._reply(200, json.dumps(data).encode(), "application/json",
                        {"X-Multi": "a", "Set-Cookie": "s=1"})
        elif url.path == "/text":
            self._reply(200, "héllo wörld".encode(), "text/plain; charset=utf-8")
        elif url.path.startswith("/status/"):
            code = int(url.path.rsplit("/", 1)[1])
            self._reply(code, f"status {code}".encode())
        elif url.path == "/redirect":
            self._reply(int(q.get("code", "302")), b"", extra={"Location": q["to"]})
        elif url.path == "/big":
            self._reply(200, b"x" * int(q["n"]))
        elif url.path == "/gzip":
            self._reply(200, gzip.compress(b"z" * 1000), extra={"Content-Encoding": "gzip"})
        else:
            self._reply(404, b"not found")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str]] = []
        if ctx is not None:
            self.socket = ctx.wrap_socket(self.socket, server_side=True)


@dataclass
class Server:
    """A running server: its port, base URL and the requests it saw."""

    port: int
    url: str
    seen: list[tuple[str, str]]


@contextmanager
def http_server(ctx: ssl.SSLContext | None = None) -> Iterator[Server]:
    """An echo server on 127.0.0.1 (HTTPS when `ctx` is given), stopped afterwards."""
    srv = _Server(ctx)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    port = srv.server_address[1]
    try:
        yield Server(port, f"{'https' if ctx else 'http'}://127.0.0.1:{port}", srv.seen)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


@dataclass
class LocalCA:
    """A CA and a server certificate for `localhost` and 127.0.0.1."""

    ca_pem: str
    context: ssl.SSLContext
    tmp: Path = field(repr=False)


def make_ca(tmp: Path) -> LocalCA:
    """A fresh CA (EC P-256) and a server context whose certificate it signs."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "snapcell test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return LocalCA(ca.public_bytes(serialization.Encoding.PEM).decode(), ctx, tmp)


class Listener:
    """A bare TCP listener on a loopback address: counts connections, and holds them open
    without a byte of answer (a hung server)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.create_server((host, port))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        """Stop listening and drop every held connection."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join()
        for c in self._held:
            c.close()
