"""JavaScript ``fetch`` and Lua ``http.request``: requests the host performs under the sandbox's
network policy, against servers these tests start on loopback. Refusals are shown with
loopback destinations the policy does not name, and a listener there proves no connection was
attempted. No packet leaves loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import CodeSandbox
from snapcell.code.egress import NetworkPolicy, static_resolver

from .http_servers import Listener, LocalCA, Server, http_server, make_ca

REFUSED = "connection to {} refused by the sandbox's network policy{} (allowed: {})"
UNNAMED = ": that address is not named by a rule"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with http_server() as s:
        yield s


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_ca(Path(tmp_path_factory.mktemp("ca")))


@pytest.fixture
def other() -> Iterator[Listener]:
    """A listener on 127.0.0.2, which no policy here names: it must never see a connection."""
    lst = Listener("127.0.0.2")
    yield lst
    lst.close()


def js(box: CodeSandbox, code: str) -> object:
    r = box.run(code)
    assert r.error is None, r.error
    return r.value


def caught(box: CodeSandbox, call: str) -> list[str]:
    """[name, message] of the error `call` (awaited) rejects with."""
    value = js(box, f"let e = null; try {{ await {call} }} catch (x) {{ e = x }}; "
                    "e && [e.name, e.message]")
    assert isinstance(value, list), f"{call} did not fail"
    return value


def test_js_fetch_get_post_headers_and_status(server: Server) -> None:
    with CodeSandbox("js", network=NetworkPolicy(allow=[f"127.0.0.1:{server.port}"])) as box:
        got = js(box, f"""
const r = await fetch('{server.url}/echo?x=1', {{method: 'post', body: JSON.stringify({{a: 1}}),
    headers: {{'Content-Type': 'application/json', 'X-Test': ' yes '}}}});
const j = await r.json();
const t = await fetch(new Request('{server.url}/text'), null);
const missing = await fetch('{server.url}/status/404');
const head = await fetch('{server.url}/text', {{method: 'HEAD'}});
const bytes = new Uint8Array(await (await fetch('{server.url}/echo', {{method: 'PUT',
    body: new Uint8Array([104, 105])}})).arrayBuffer());
[r.status, r.ok, r.statusText, r.url, r.redirected, r.headers.get('X-MULTI'),
 r.headers.getSetCookie(), [...r.headers.keys()].includes('content-type'), r.bodyUsed,
 j.method, j.body, j.path, j.headers['x-test'], j.headers['content-type'], j.headers.host,
 await t.text(), t.headers.get('content-type'), missing.status, missing.ok,
 await missing.text(), head.status, await head.text(), JSON.parse(new TextDecoder().decode(bytes)).body,
 await (await fetch('{server.url}/gzip')).text().then(s => s.length)]""")
    assert got == [200, True, "OK", f"{server.url}/echo?x=1", False, "a", ["s=1"], True, True,
                   "POST", '{"a":1}', "/echo?x=1", "yes", "application/json",
                   f"127.0.0.1:{server.port}", "héllo wörld", "text/plain; charset=utf-8", 404,
                   False, "status 404", 200, "", "hi", 1000]


def test_js_fetch_over_tls_with_the_policys_ca(ca: LocalCA) -> None:
    with http_server(ca.context) as s:
        rules = [f"localhost:{s.port}", f"other.test:{s.port}", f"127.0.0.1:{s.port}"]
        resolver = static_resolver({"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        with CodeSandbox("js", network=NetworkPolicy(allow=rules, ca_bundle=ca.ca_pem),
                         resolver=resolver) as box:
            got = js(box, f"""
const r = await fetch('https://localhost:{s.port}/echo', {{method: 'POST', body: 'plain'}});
const j = await r.json();
[r.status, j.body, j.headers.host, (await fetch('https://127.0.0.1:{s.port}/text')).status]""")
            assert got == [200, "plain", f"localhost:{s.port}", 200]
            # the certificate names localhost and 127.0.0.1, not other.test
            name, msg = caught(box, f"fetch('https://other.test:{s.port}/text')")
            assert name == "TypeError" and "TLS certificate does not match the host" in msg, msg
        # without the CA, the system's CAs do not trust the server
        with CodeSandbox("js", network=NetworkPolicy(allow=rules), resolver=resolver) as box:
            name, msg = caught(box, f"fetch('https://localhost:{s.port}/text')")
            assert name == "TypeError" and "TLS certificate verification failed" in msg


def test_a_destination_not_allowed_is_refused_before_any_connection(server: Server,
                                                                    other: Listener) -> None:
    allowed = f"127.0.0.1:{server.port}"
    with CodeSandbox("js", network=NetworkPolicy(allow=[allowed])) as box:
        assert caught(box, f"fetch('http://127.0.0.2:{other.port}/x')") == [
            "TypeError", REFUSED.format(f"127.0.0.2:{other.port}", UNNAMED, allowed)]
        assert caught(box, f"fetch('http://127.0.0.1:{server.port + 1}/')")[1] == \
            REFUSED.format(f"127.0.0.1:{server.port + 1}", UNNAMED, allowed)
        # a redirect is decided again: to 127.0.0.2 it is refused; within the policy it is
        # followed, a 303 after a POST becoming a GET
        to = f"http://127.0.0.2:{other.port}/"
        assert caught(box, f"fetch('{server.url}/redirect?to={to}')")[1] == \
            REFUSED.format(f"127.0.0.2:{other.port}", UNNAMED, allowed)
        got = js(box, f"""
const r = await fetch('{server.url}/redirect?code=303&to=/echo', {{method: 'POST', body: 'x'}});
const j = await r.json();
const m = await fetch('{server.url}/redirect?to=/echo', {{redirect: 'manual'}});
[r.redirected, r.url, j.method, j.body, j.headers['content-type'] === undefined, m.status,
 m.headers.get('location')]""")
        assert got == [True, f"{server.url}/echo", "GET", "", True, 302, "/echo"]
    # a name the (test) resolver maps to a loopback address the policy does not name
    resolver = static_resolver({"api.test": ["127.0.0.2"]})
    with CodeSandbox("js", network=NetworkPolicy(allow=[f"api.test:{other.port}"]),
                     resolver=resolver) as box:
        assert caught(box, f"fetch('http://api.test:{other.port}/')")[1] == REFUSED.format(
            f"api.test:{other.port}", ": api.test resolves to 127.0.0.2, which the policy does "
            "not name (addresses outside the public internet must be named by an address rule)",
            f"api.test:{other.port}")
    assert other.accepted == 0


def test_bounds_methods_and_the_reply_buffer(server: Server) -> None:
    allow = [f"127.0.0.1:{server.port}"]
    policy = NetworkPolicy(allow=allow, max_requests=2, max_bytes_in=5000, methods=["GET"])
    with CodeSandbox("js", network=policy) as box:
        got = js(box, f"""
const out = [];
for (const [url, init] of [['/text'], ['/echo', {{method: 'POST', body: 'x'}}], ['/big?n=6000'],
                           ['/text']]) {{
    try {{ out.push((await fetch('{server.url}' + url, init)).status) }}
    catch (e) {{ out.push(e.name + ': ' + e.message) }}
}}
out""")
        assert got[0] == 200
        assert got[1] == ("TypeError: HTTP method POST refused by the sandbox's network policy "
                          "(allowed: GET)")
        assert got[2] == ("TypeError: the sandbox's network policy allows at most 5000 bytes in "
                          "per run")
        assert got[3] == ("TypeError: the sandbox's network policy allows at most 2 connections "
                          "or requests per run")
        assert js(box, f"(await fetch('{server.url}/text')).status") == 200   # a fresh budget
    big = NetworkPolicy(allow=allow, max_bytes_in=8 << 20, max_bytes_out=1000)
    with CodeSandbox("js", network=big) as box:
        name, msg = caught(box, f"fetch('{server.url}/big?n={2 << 20}')")
        assert name == "TypeError" and "response body is larger than" in msg
        name, msg = caught(box, f"fetch('{server.url}/echo', {{method: 'POST', body: 'y'.repeat(2000)}})")
        assert msg == "the sandbox's network policy allows at most 1000 bytes out per run"


def test_bad_requests_are_type_errors(server: Server) -> None:
    with CodeSandbox("js", network=NetworkPolicy(allow=[f"127.0.0.1:{server.port}"])) as box:
        got = js(box, f"""
const out = [];
for (const [url, init] of [['ftp://127.0.0.1/'], ['{server.url}/', {{headers: {{Host: 'evil'}}}}],
        ['{server.url}/', {{headers: {{'Bad Name': 'x'}}}}], ['{server.url}/', {{method: 'TRACE'}}],
        ['{server.url}/', {{body: 'x'}}], ['http://u:p@127.0.0.1:{server.port}/'], ['not a url']]) {{
    try {{ await fetch(url, init); out.push('ok') }} catch (e) {{ out.push(e.name) }}
}}
out""")
        assert got == ["TypeError"] * 7
        assert server.seen[-1:] != [("GET", "/")]


def test_a_hung_server_ends_at_the_runs_limit_and_nothing_stays_open() -> None:
    hung = Listener()
    try:
        policy = NetworkPolicy(allow=[f"127.0.0.1:{hung.port}"])
        with CodeSandbox("js", network=policy, timeout=1.0) as box:
            # the request's own timeout (AbortSignal.timeout) ends it; then the run's limit does
            got = js(box, f"let e; try {{ await fetch('http://127.0.0.1:{hung.port}/', "
                          "{signal: AbortSignal.timeout(100)}) } catch (x) { e = x }; "
                          "[e.name, e instanceof DOMException]")
            assert got == ["TimeoutError", True]
            got = js(box, f"let e; try {{ await fetch('https://127.0.0.1:{hung.port}/', "
                          "{signal: AbortSignal.timeout(100)}) } catch (x) { e = x }; e.name")
            assert got == "TimeoutError"             # a TLS handshake that never ends
            r = box.run(f"await fetch('http://127.0.0.1:{hung.port}/')")
            assert r.error is not None and r.error.type == "TimeoutError", r.error
            assert hung.accepted == 3
            for conn, first in zip(hung._held, [b"GET /", b"\x16\x03", b"GET /"], strict=True):
                conn.settimeout(5)              # the host closed every connection
                assert conn.recv(1 << 16).startswith(first) and conn.recv(10) == b""
            assert js(box, "1 + 1") == 2
    finally:
        hung.close()


def test_without_a_policy_fetch_rejects(server: Server) -> None:
    with CodeSandbox("js") as box:
        assert caught(box, f"fetch('{server.url}/text')") == [
            "TypeError", "this sandbox has no network: its network policy allows no destination"]
    assert ("GET", "/text") not in server.seen[-1:]


def test_lua_http_request(server: Server, other: Listener) -> None:
    allowed = f"127.0.0.1:{server.port}"
    with CodeSandbox("lua", network=NetworkPolicy(allow=[allowed])) as box:
        r = box.run(f"""
local body, code, h, line = http.request('{server.url}/echo', {{method = 'PUT', body = 'abc',
                                         headers = {{['X-Y'] = '1'}}}})
local form, fcode = http.request('{server.url}/echo', 'k=v')
local none, err = http.request('http://127.0.0.2:{other.port}/')
return {{code, h['content-type'], line, body, fcode, form, none == nil, err}}""")
        assert r.error is None, r.error
        v = r.value
        echo, form = json.loads(v[3]), json.loads(v[5])
        assert v[0:3] == [200, "application/json", "HTTP/1.1 200 OK"]
        assert (echo["method"], echo["body"], echo["headers"]["x-y"]) == ("PUT", "abc", "1")
        assert (v[4], form["method"], form["body"]) == (200, "POST", "k=v")
        assert v[6] is True and v[7] == REFUSED.format(f"127.0.0.2:{other.port}", UNNAMED, allowed)
    assert other.accepted == 0


def test_the_loopback_guard() -> None:
    """The listener these tests use for refusals really is reachable (so 0 connections means
    none was attempted)."""
    lst = Listener("127.0.0.2")
    try:
        socket.create_connection(("127.0.0.2", lst.port), timeout=5).close()
        deadline = time.monotonic() + 10
        while not lst.accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lst.accepted >= 1
    finally:
        lst.close()


def test_cli_allow_net(server: Server, other: Listener) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "snapcell", "run", "--lang", "js", *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))

    p = run("--allow-net", f"127.0.0.1:{server.port}", "--allow-net", "api.example.com",
            f"console.log(await (await fetch('{server.url}/text')).text()); "
            f"await fetch('http://127.0.0.2:{other.port}/')")
    assert p.returncode == 1 and p.stdout == "héllo wörld\n", p.stderr
    assert REFUSED.format(f"127.0.0.2:{other.port}", UNNAMED,
                          f"127.0.0.1:{server.port}, api.example.com") in p.stderr
    p = run("--allow-net", "bad:rule:x", "1")
    assert p.returncode == 2 and "network rule 'bad:rule:x'" in p.stderr
    assert other.accepted == 0
