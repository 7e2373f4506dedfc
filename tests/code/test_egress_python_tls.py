"""HTTPS from Python in a code sandbox (issue 25): TLS runs inside the guest (its `_ssl`), over
sockets tunnelled through the host, so the host carries only ciphertext to the destination it
allowed. A CA and a server certificate made by this module; servers on 127.0.0.1 only.

Needs the guest's `ssl` module (static OpenSSL, branch `tls`): these tests fail until it is
built in."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from snapcell import CodeSandbox
from snapcell.code.egress import OPS, NetworkPolicy, static_resolver

from .test_egress_python import DATA_IMAGE, Handler

CTX = "import ssl\nctx = ssl.create_default_context(cafile='ca.pem')\n"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificates() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate for api.test, server key), PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("snapcell test CA"))
          .issuer_name(_name("snapcell test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("api.test")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("api.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ca, cert, key = _certificates()
    d = tmp_path_factory.mktemp("pki")
    (d / "cert.pem").write_bytes(cert + ca)
    (d / "key.pem").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return {"ca": ca, "server_context": ctx}


@pytest.fixture(scope="module")
def https(pki: dict[str, Any]) -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.socket = pki["server_context"].wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def silent() -> Iterator[int]:
    """A TCP listener that never speaks TLS (a handshake with it hangs)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def box(https: int, silent: int) -> Iterator[CodeSandbox]:
    policy = NetworkPolicy(allow=[f"127.0.0.1:{https}", f"127.0.0.1:{silent}",
                                  f"api.test:{https}", f"other.test:{https}"])
    resolver = static_resolver({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with CodeSandbox("python", network=policy, resolver=resolver, timeout=20.0) as b:
        yield b


def _run(box: CodeSandbox, pki: dict[str, Any], code: str) -> Any:
    r = box.run(code, files={"ca.pem": pki["ca"]})
    assert r.error is None, (r.error, r.stdout)
    return r.value


def test_https_with_urllib_and_the_host_sees_only_ciphertext(
        box: CodeSandbox, pki: dict[str, Any], https: int, monkeypatch: pytest.MonkeyPatch) -> None:
    wire: list[bytes] = []
    send, recv, poll = OPS["net.send"], OPS["net.recv"], OPS["net.poll"]

    def seen(fn: Any, pick: Any) -> Any:
        def spy(session: Any, args: list[Any]) -> Any:
            out = fn(session, args)
            wire.extend(x for x in pick(args, out) if isinstance(x, bytes))
            return out
        return spy
    monkeypatch.setitem(OPS, "net.send", seen(send, lambda a, o: [a[1]]))
    monkeypatch.setitem(OPS, "net.recv", seen(recv, lambda a, o: [o]))
    monkeypatch.setitem(OPS, "net.poll", seen(poll, lambda a, o: [x[1] for x in o]))
    assert _run(box, pki, CTX + "import urllib.request\n"
                f"urllib.request.urlopen('https://api.test:{https}/secret-path', "
                "context=ctx).read()") == b"hello /secret-path"
    assert wire and not any(b"secret-path" in chunk for chunk in wire)


def test_https_with_http_client_blocking_with_a_timeout(
        box: CodeSandbox, pki: dict[str, Any], https: int) -> None:
    assert _run(box, pki, CTX + "import http.client\n"
                f"c = http.client.HTTPSConnection('api.test', {https}, timeout=5, context=ctx)\n"
                "c.request('POST', '/', body=b'abc')\nr = c.getresponse()\n"
                "[r.status, r.read(), c.sock.version().startswith('TLS')]") == [200, b"cba", True]


def test_https_non_blocking_with_asyncio(box: CodeSandbox, pki: dict[str, Any], https: int) -> None:
    assert _run(box, pki, CTX + "import asyncio\nasync def main():\n"
                f"    r, w = await asyncio.open_connection('api.test', {https}, ssl=ctx)\n"
                "    w.write(b'GET /tls HTTP/1.0\\r\\nHost: api.test\\r\\n\\r\\n')\n"
                "    data = await r.read()\n    w.close()\n"
                "    return data.rsplit(b'\\r\\n', 1)[-1]\nasyncio.run(main())") == b"hello /tls"


def test_a_certificate_for_another_name_is_refused_by_the_guest(
        box: CodeSandbox, pki: dict[str, Any], https: int) -> None:
    r = box.run(CTX + "import urllib.request\n"
                f"urllib.request.urlopen('https://other.test:{https}/', context=ctx)",
                files={"ca.pem": pki["ca"]})
    assert r.error is not None and "CERTIFICATE_VERIFY_FAILED" in r.error.message


def test_a_handshake_that_never_ends_times_out(box: CodeSandbox, pki: dict[str, Any],
                                               silent: int) -> None:
    r = box.run(CTX + "import socket\n"
                f"s = socket.create_connection(('127.0.0.1', {silent}), timeout=0.5)\n"
                "ctx.wrap_socket(s, server_hostname='api.test')", files={"ca.pem": pki["ca"]})
    assert r.error is not None and r.error.type in ("TimeoutError", "timeout"), r.error


@pytest.fixture(scope="module")
def data_box(https: int) -> Iterator[CodeSandbox]:
    assert (DATA_IMAGE / "index.json").is_file(), "the data image is not built: run " \
                                                  "`make data-image`"
    policy = NetworkPolicy(allow=[f"127.0.0.1:{https}", f"api.test:{https}"])
    with CodeSandbox("python", image=f"{DATA_IMAGE}:latest", network=policy,
                     resolver=static_resolver({"api.test": ["127.0.0.1"]}), timeout=30.0,
                     memory_limit=128 << 20) as b:
        yield b


def test_requests_over_https_in_the_data_image(data_box: CodeSandbox, pki: dict[str, Any],
                                               https: int) -> None:
    assert _run(data_box, pki, f"import requests\nr = requests.get('https://api.test:{https}/rq', "
                "verify='ca.pem')\n[r.status_code, r.text]") == [200, "hello /rq"]


def test_httpx_sync_and_async_in_the_data_image(data_box: CodeSandbox, pki: dict[str, Any],
                                                https: int) -> None:
    assert _run(data_box, pki, CTX + "import asyncio, httpx\n"
                f"sync = httpx.get('https://api.test:{https}/hx', verify=ctx).text\n"
                "async def main():\n"
                "    async with httpx.AsyncClient(verify=ctx) as c:\n"
                f"        r = await c.post('https://api.test:{https}/', content=b'abc')\n"
                "        return r.text\n"
                "[sync, asyncio.run(main())]") == ["hello /hx", "cba"]


def test_the_server_fixture_speaks_tls(pki: dict[str, Any], https: int) -> None:
    ctx = ssl.create_default_context(cadata=pki["ca"].decode())
    with socket.create_connection(("127.0.0.1", https), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="api.test") as t:
        t.sendall(b"GET /native HTTP/1.0\r\n\r\n")
        assert t.recv(4096).startswith(b"HTTP/1.")
