"""Python's sockets through the host under a NetworkPolicy (issue 25; docs/code-sandboxes.md
"Network"): real KVM guests against HTTP servers this module starts on 127.0.0.1. No test sends
a packet off loopback; refusals are shown with loopback destinations the policy does not name,
and "witness" listeners check that no connection was even attempted."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from snapcell import CodeSandbox
from snapcell.code.egress import EgressSession, NetworkPolicy, static_resolver

RELEASE = threading.Event()          # ends the hung handler at teardown


class Handler(BaseHTTPRequestHandler):
    """GET /x → 'hello /x'; /big?N → N bytes; /redirect?URL → 302 to URL; /hang → never
    answers; POST → the body reversed."""

    protocol_version = "HTTP/1.1"

    def _reply(self, body: bytes, status: int = 200, **headers: str) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path, _, query = self.path.partition("?")
        if path == "/big":
            self._reply(b"x" * int(query))
        elif path == "/redirect":
            self._reply(b"", 302, Location=query)
        elif path == "/hang":
            RELEASE.wait(20)
        else:
            self._reply(b"hello " + path.encode())

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(body[::-1])

    def log_message(self, *args: Any) -> None:
        pass


def _listener(host: str) -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen(8)
    s.setblocking(False)
    return s


def _no_connection(witness: socket.socket) -> None:
    """The refusal came before any connection attempt: nothing reached the witness."""
    with pytest.raises(BlockingIOError):
        witness.accept()[0].close()


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    RELEASE.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def witnesses() -> Iterator[dict[str, socket.socket]]:
    """Listeners the policy does not name: another port on 127.0.0.1, and 127.0.0.2."""
    w = {"port": _listener("127.0.0.1"), "other": _listener("127.0.0.2")}
    yield w
    for s in w.values():
        s.close()


def _policy(port: int, **bounds: Any) -> NetworkPolicy:
    return NetworkPolicy(allow=[f"127.0.0.1:{port}", f"api.test:{port}", f"rebind.test:{port}"],
                         **bounds)


RESOLVER = static_resolver({"api.test": ["127.0.0.1"], "rebind.test": ["127.0.0.2"]})


@pytest.fixture(scope="module")
def box(server: int) -> Iterator[CodeSandbox]:
    with CodeSandbox("python", network=_policy(server), resolver=RESOLVER, timeout=10.0) as b:
        yield b


def _ok(box: CodeSandbox, code: str) -> Any:
    r = box.run(code)
    assert r.error is None, (r.error, r.stdout)
    return r.value


def _connections_to(port: int) -> int:
    """Sockets of this process connected to 127.0.0.1:`port` (the host's side of the guest's
    connections; the server's own ends are not counted)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            with socket.socket(fileno=os.dup(int(fd))) as s:
                n += s.getpeername() == ("127.0.0.1", port)
        except OSError:
            pass
    return n


def test_get_and_post_with_http_client_and_urllib(box: CodeSandbox, server: int) -> None:
    assert _ok(box, f"import http.client\n"
                    f"c = http.client.HTTPConnection('127.0.0.1', {server}, timeout=5)\n"
                    f"c.request('GET', '/a')\nr = c.getresponse()\nfirst = r.read()\n"
                    f"c.request('POST', '/b', body=b'abc')\n"          # the same connection
                    f"[r.status, first, c.getresponse().read()]") == [200, b"hello /a", b"cba"]
    assert _ok(box, f"import urllib.request\n"
                    f"req = urllib.request.Request('http://api.test:{server}/p', data=b'xyz')\n"
                    f"[urllib.request.urlopen(req).read(), "
                    f"urllib.request.urlopen('http://api.test:{server}/g').read()]") \
        == [b"zyx", b"hello /g"]


def test_refusals_name_the_policy_and_come_before_any_connection(
        box: CodeSandbox, server: int, witnesses: dict[str, socket.socket]) -> None:
    allowed = f"allowed: 127.0.0.1:{server}, api.test:{server}, rebind.test:{server}"
    port = witnesses["port"].getsockname()[1]
    other = witnesses["other"].getsockname()[1]
    r = box.run(f"import socket\nsocket.create_connection(('127.0.0.2', {other}))")
    assert r.error is not None and r.error.type == "PermissionError"
    assert r.error.message == (f"connection to 127.0.0.2:{other} refused by the sandbox's network "
                               f"policy: that address is not named by a rule ({allowed})")
    r = box.run(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))")
    assert r.error is not None and r.error.type == "PermissionError"
    assert f"connection to 127.0.0.1:{port} refused" in r.error.message
    # a name the policy allows, resolved (by the test's resolver) to an address it does not name
    r = box.run(f"import urllib.request\nurllib.request.urlopen('http://rebind.test:{server}/')")
    assert r.error is not None and "rebind.test resolves to 127.0.0.2, which the policy does not " \
                                      "name" in r.error.message
    r = box.run(f"import socket\nsocket.getaddrinfo('evil.test', {server})")
    assert r.error is not None and r.error.type == "PermissionError"
    assert f"connection to evil.test:{server} refused" in r.error.message
    for w in witnesses.values():
        _no_connection(w)


def test_a_redirect_to_a_destination_not_allowed_is_refused(
        box: CodeSandbox, server: int, witnesses: dict[str, socket.socket]) -> None:
    other = witnesses["other"].getsockname()[1]
    r = box.run(f"import urllib.request\n"
                f"urllib.request.urlopen('http://127.0.0.1:{server}/redirect?"
                f"http://127.0.0.2:{other}/')")
    assert r.error is not None and r.error.type == "URLError"
    assert f"connection to 127.0.0.2:{other} refused by the sandbox's network policy" \
        in r.error.message
    _no_connection(witnesses["other"])
    assert _ok(box, f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{server}"
                    f"/redirect?http://api.test:{server}/there').read()") == b"hello /there"


def test_request_and_byte_bounds(server: int) -> None:
    url = f"http://127.0.0.1:{server}"
    with CodeSandbox("python", network=_policy(server, max_requests=2, max_bytes_in=5000,
                                               max_bytes_out=2000), timeout=10.0) as b:
        r = b.run("import urllib.request\n"
                  f"for i in range(3):\n    urllib.request.urlopen('{url}/n').read()")
        assert r.error is not None and "allows at most 2 connections or requests per run" \
            in r.error.message
        r = b.run(f"import urllib.request\nurllib.request.urlopen('{url}/big?20000').read()")
        assert r.error is not None and "allows at most 5000 bytes in per run" in r.error.message
        r = b.run(f"import urllib.request\nurllib.request.urlopen('{url}/p', data=b'y' * 3000)")
        assert r.error is not None and "allows at most 2000 bytes out per run" in r.error.message
        assert b.run(f"import urllib.request\nurllib.request.urlopen('{url}/ok').read()").value \
            == b"hello /ok"                             # every run has a fresh budget


def test_a_hung_server_the_time_limit_still_ends_the_run(box: CodeSandbox, server: int) -> None:
    r = box.run(f"import http.client\nc = http.client.HTTPConnection('127.0.0.1', {server})\n"
                f"c.request('GET', '/hang')\nc.getresponse()", timeout=1.0)
    assert r.error is not None and r.error.type == "TimeoutError"
    assert _connections_to(server) == 0              # the connection was closed with the run
    assert _ok(box, f"import urllib.request\nurllib.request.urlopen("
                    f"'http://127.0.0.1:{server}/after').read()") == b"hello /after"


def test_nothing_stays_open_after_a_run_or_a_restore_mid_connection(server: int) -> None:
    with CodeSandbox("python", network=_policy(server), keep_state=True, timeout=10.0) as b:
        _ok(b, f"import socket\ns = socket.create_connection(('127.0.0.1', {server}))\n"
               "s.sendall(b'GET /k HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')")
        assert _connections_to(server) == 0          # closed at the run's end
        mid = b.snapshot()
        r = b.run("s.recv(100)")                     # the connection did not survive the run
        assert r.error is not None and r.error.type == "ConnectionResetError"
        b.restore(mid)
        r = b.run("s.recv(100)")
        assert r.error is not None and r.error.type == "ConnectionResetError"
        assert _ok(b, "s.close()\n1") == 1
        assert _connections_to(server) == 0


def test_asyncio_streams(box: CodeSandbox, server: int) -> None:
    assert _ok(box, "import asyncio\nasync def get(path):\n"
                    f"    r, w = await asyncio.open_connection('api.test', {server})\n"
                    "    w.write(b'GET ' + path + b' HTTP/1.0\\r\\n\\r\\n')\n"
                    "    await w.drain()\n    data = await r.read()\n    w.close()\n"
                    "    await w.wait_closed()\n    return data.rsplit(b'\\r\\n', 1)[-1]\n"
                    "async def main():\n"
                    "    return await asyncio.gather(get(b'/1'), get(b'/2'))\n"
                    "asyncio.run(main())") == [b"hello /1", b"hello /2"]


def test_select_poll_and_selectors_on_a_socket(box: CodeSandbox, server: int) -> None:
    assert _ok(box, "import select, selectors, socket\n"
                    f"s = socket.create_connection(('127.0.0.1', {server}))\n"
                    "s.setblocking(False)\n"
                    "idle = select.select([s], [], [], 0.05)[0]\n"
                    "s.send(b'GET /sel HTTP/1.0\\r\\n\\r\\n')\n"
                    "p = select.poll()\np.register(s, select.POLLIN)\n"
                    "polled = [ev & select.POLLIN for fd, ev in p.poll(5000)]\n"
                    "r, w, _ = select.select([s], [s], [], 5)\n"
                    "sel = selectors.DefaultSelector()\nsel.register(s, selectors.EVENT_READ)\n"
                    "ready = len(sel.select(5))\n"
                    "try:\n    s.recv(1 << 20)\nexcept BlockingIOError:\n    pass\n"
                    "[idle, polled, len(r), len(w), ready]") \
        == [[], [1], 1, 1, 1]


def test_no_policy_no_network_with_a_clear_error() -> None:
    with CodeSandbox("python") as b:
        for code in ("import socket\nsocket.socket()",
                     "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')",
                     "import socket\nsocket.getaddrinfo('example.com', 80)"):
            r = b.run(code)
            assert r.error is not None and "the sandbox has no network" in r.error.message, code


@pytest.mark.parametrize("args", [
    ["net.connect", [1, 2, 3, []]], ["net.connect", ["127.0.0.1", 0, None, []]],
    ["net.connect", ["127.0.0.1", 80, -1, []]], ["net.connect", ["x" * 300, 80, None, []]],
    ["net.connect", []], ["net.connect", ["127.0.0.1", 9, None]],
    ["net.connect", ["127.0.0.1", 9, None, [[3, b"x"]]]],
    ["net.connect", ["127.0.0.1", 9, None, [[3]]]], ["net.flush", [[["3", None]]]],
    ["net.recv", [3, 1 << 30, 0, []]], ["net.recv", [99, 10, 0, []]],
    ["net.send", [3, "text", 0, []]], ["net.poll", [[[3, 1]] * 1000, 0, 0, []]],
    ["net.poll", [[["x", 1]], None, 0, []]], ["net.poll", [[], float("nan"), 0, []]],
    ["net.getaddrinfo", [None, 80]], ["net.close", [["3"], []]],
    ["net.shutdown", [3, 7, []]], ["net.nosuch", []],
    ["net.flush", [[[3, ["127.0.0.1", 9]]]]], ["net.flush", [[[1 << 40, ["127.0.0.1"]]]]],
    ["net.flush", [[[1 << 40, ["127.0.0.1", 9]], [1 << 40, ["127.0.0.1", 9]]]]],
])
def test_bad_arguments_from_the_guest_are_errors_with_an_errno(args: list[Any]) -> None:
    session = EgressSession(NetworkPolicy(allow=["127.0.0.1:9"]))
    session.begin(None)
    with pytest.raises(OSError) as e:
        session.handle(args[0], args[1])
    assert e.value.errno in (errno.EINVAL, errno.EBADF, errno.ENOSYS), e.value


def test_a_recv_reply_fits_the_input_buffer() -> None:
    from snapcell.code.egress.sockets import MAX_CHUNK
    from snapcell.code.warm import LAYOUT
    assert MAX_CHUNK + 4096 <= LAYOUT.input_size


DATA_IMAGE = Path(__file__).resolve().parents[2] / "build" / "images" / "data"


def test_requests_and_urllib3_in_the_data_image(server: int,
                                                witnesses: dict[str, socket.socket]) -> None:
    assert (DATA_IMAGE / "index.json").is_file(), "the data image is not built: run " \
                                                  "`make data-image`"
    other = witnesses["other"].getsockname()[1]
    with CodeSandbox("python", image=f"{DATA_IMAGE}:latest", network=_policy(server),
                     resolver=RESOLVER, timeout=30.0, memory_limit=128 << 20) as b:
        assert _ok(b, "import requests, urllib3\n"
                      f"s = requests.Session()\nr = s.get('http://api.test:{server}/r')\n"
                      f"p = s.post('http://127.0.0.1:{server}/p', data=b'hello')\n"
                      f"u = urllib3.PoolManager().request('GET', 'http://api.test:{server}/u')\n"
                      "[r.status_code, r.text, p.content, u.data]") \
            == [200, "hello /r", b"olleh", b"hello /u"]
        r = b.run(f"import requests\nrequests.get('http://127.0.0.1:{server}/redirect?"
                  f"http://127.0.0.2:{other}/')")
        assert r.error is not None and r.error.type == "ConnectionError"
        assert f"connection to 127.0.0.2:{other} refused by the sandbox's network policy" \
            in r.error.message
        _no_connection(witnesses["other"])


def test_a_policy_restricting_methods_refuses_sockets(witnesses: dict[str, socket.socket]) -> None:
    port = witnesses["port"].getsockname()[1]
    session = EgressSession(NetworkPolicy(allow=[f"127.0.0.1:{port}"], methods=["GET"]))
    session.begin(None)
    with pytest.raises(PermissionError, match="restricts HTTP methods"):
        session.handle("net.connect", ["127.0.0.1", port, None, []])
    _no_connection(witnesses["port"])


def test_bytes_written_reach_the_server_without_a_read_after_them() -> None:
    """Writes wait in the guest for the next host call: a close, and the run's end, hand them
    over (nothing written is lost when no read follows)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        with CodeSandbox("python", network=NetworkPolicy(allow=[f"127.0.0.1:{port}"]),
                         timeout=10.0) as b:
            _ok(b, f"import socket\na = socket.create_connection(('127.0.0.1', {port}))\n"
                   "a.sendall(b'closed')\na.close()\n"
                   f"b = socket.create_connection(('127.0.0.1', {port}))\nb.sendall(b'open')")
            got = []
            for _ in range(2):
                conn = listener.accept()[0]
                with conn:
                    conn.settimeout(10)
                    got.append(b"".join(iter(lambda c=conn: c.recv(100), b"")))
            assert sorted(got) == [b"closed", b"open"]



def test_deferred_connections_fail_as_the_socket_s_error() -> None:
    """After a first connection to a destination, the guest defers the next ones to it (the
    host connects with its next call): a failure then is that socket's error, in words, from
    a blocking recv and from one with a timeout (poll) alike."""
    listener = _listener("127.0.0.1")
    port = listener.getsockname()[1]

    def stop() -> None:
        listener.close()

    with CodeSandbox("python", network=NetworkPolicy(allow=[f"127.0.0.1:{port}"]),
                     tools={"stop": stop}, timeout=10.0) as b:
        r = b.run("import socket\n"
                  f"a = socket.create_connection(('127.0.0.1', {port}))\na.close()\nstop()\n"
                  "out = []\n"
                  "for timeout in (None, 5):\n"
                  f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=timeout)\n"
                  "    s.sendall(b'x')\n"
                  "    try:\n        s.recv(10)\n"
                  "    except OSError as e:\n        out.append([type(e).__name__, str(e)])\n"
                  "    s.close()\n"
                  "out")
        assert r.error is None, r.error
        assert [t for t, _ in r.value] == ["ConnectionRefusedError"] * 2, r.value
        assert all(f"127.0.0.1:{port}" in m for _, m in r.value), r.value


def test_deferred_connections_keep_the_policy_s_bounds(server: int) -> None:
    with CodeSandbox("python", network=_policy(server, max_connections=2, max_requests=3),
                     timeout=10.0) as b:
        r = b.run("import socket\n"
                  f"s = [socket.create_connection(('127.0.0.1', {server})) for _ in range(3)]")
        assert r.error is not None and "allows at most 2 open connections" in r.error.message
        r = b.run("import socket\n"
                  f"for _ in range(4):\n    socket.create_connection(('127.0.0.1', {server})).close()")
        assert r.error is not None and "allows at most 3 connections or requests per run" \
            in r.error.message


def test_a_deferred_connection_is_decided_by_the_host(witnesses: dict[str, socket.socket]
                                                      ) -> None:
    """A guest that defers a connection the policy does not allow gets the refusal, in words,
    from that socket's next operation; nothing was attempted."""
    port = witnesses["port"].getsockname()[1]
    session = EgressSession(NetworkPolicy(allow=["127.0.0.1:9"]))
    session.begin(None)
    h = 1 << 40
    session.handle("net.flush", [[[h, ["127.0.0.1", port]], [h, b"GET / HTTP/1.0\r\n\r\n"]]])
    with pytest.raises(PermissionError, match=f"connection to 127.0.0.1:{port} refused"):
        session.handle("net.recv", [h, 100, None, []])
    [[_, (no, kind, message)]] = session.handle("net.poll", [[[h, 1]], 0, 100, []])
    assert (no, kind) == (errno.EACCES, "PermissionError") and "refused" in message
    session.handle("net.close", [h, []])
    with pytest.raises(OSError, match="bad connection handle"):
        session.handle("net.recv", [h, 100, None, []])
    _no_connection(witnesses["port"])


def test_socket_timeouts_without_reading_the_clock(box: CodeSandbox, server: int) -> None:
    """A socket with a timeout waits through the host (the guest reads no clock for it): a
    silent server still times out with socket.timeout's own words, a reply is read in small
    pieces from what the host read ahead, and a body larger than what the guest keeps for the
    next host call is sent whole."""
    assert _ok(box, "import socket, time\n"
                    f"s = socket.create_connection(('127.0.0.1', {server}), timeout=0.3)\n"
                    "s.sendall(b'GET /hang HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
                    "t = time.monotonic()\n"
                    "try:\n    s.recv(10)\n    out = 'no timeout'\n"
                    "except TimeoutError as e:\n    out = [str(e), time.monotonic() - t >= 0.29]\n"
                    "s.close()\n"
                    f"s = socket.create_connection(('127.0.0.1', {server}), timeout=5)\n"
                    "body = bytes(range(256)) * 1200\n"
                    "s.sendall(b'POST /p HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n"
                    "\\r\\n' % len(body) + body)\n"
                    "f = s.makefile('rb')\n"
                    "while f.readline() != b'\\r\\n':\n    pass\n"
                    "got = f.read(len(body))\n"
                    "[out, got == body[::-1]]") == [["timed out", True], True]


def test_deferred_connections_are_made_together() -> None:
    """The deferred connections one host call carries are under way at once; one that fails
    does not stop the others, nor the bytes written after them."""
    with socket.socket() as listener, socket.socket() as gone:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(10)
        gone.bind(("127.0.0.1", 0))                  # bound, never listening: refused
        port, refused = listener.getsockname()[1], gone.getsockname()[1]
        session = EgressSession(NetworkPolicy(allow=[f"127.0.0.1:{port}",
                                                     f"127.0.0.1:{refused}"]))
        session.begin(None)
        a, b, c = 1 << 40, (1 << 40) + 1, (1 << 40) + 2
        session.handle("net.flush", [[[a, ["127.0.0.1", port]], [b, ["127.0.0.1", refused]],
                                      [c, ["127.0.0.1", port]], [a, b"to a"], [c, b"to c"]]])
        with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{refused}"):
            session.handle("net.recv", [b, 10, None, []])
        got = []
        for _ in range(2):
            conn = listener.accept()[0]
            with conn:
                conn.settimeout(10)
                got.append(conn.recv(10))
        assert sorted(got) == [b"to a", b"to c"] and session.requests == 3
        session.end()
