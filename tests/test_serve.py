"""`snapcell serve` end to end: a real uvicorn process on an ephemeral 127.0.0.1 port (started
and stopped here), real KVM guests behind it, a real `docker-registry` for pulled snapshots."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapcell import Snapshot, UninitializedSandbox
from snapcell.bench.serving import stop_process

from .conftest import ROOT, make_host_functions
from .test_registry import Registry, _free_port, registry

_ = registry
ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef!"


@dataclass
class Server:
    """A running `snapcell serve`."""

    url: str
    proc: subprocess.Popen[str]
    registry: Registry
    pushed_ref: str
    pushed_digest: str
    dead_registry: str

    def client(self, key: str | None = ALICE, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
            if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
                return float(m.group(3))
        return 0.0


def _start_server(args: list[str], env: dict[str, str],
                  prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "snapcell", "serve", "--port", "0", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    if not m:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"snapcell serve did not start: {line!r} {err}")
    url = m.group(1)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("snapcell serve did not become healthy")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(kvm_ok: None, simpleguest: str, registry: Registry,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    with UninitializedSandbox(simpleguest, config=None, host_functions=make_host_functions()).evolve() as sb:
        sb.snapshot().save(str(tmp / "layout"), "v1")
    ref = f"{registry.host}/serve/simple:v1"
    digest = Snapshot.push(str(tmp / "layout"), ref, insecure=True, ref="v1")

    def host_extra() -> None:
        pass
    needy = make_host_functions().register("HostExtra", host_extra)    # not offered by the service
    with UninitializedSandbox(simpleguest, config=None, host_functions=needy).evolve() as sb:
        sb.snapshot().save(str(tmp / "needy"), "v1")
    Snapshot.push(str(tmp / "needy"), f"{registry.host}/serve/needy:v1", insecure=True, ref="v1")
    keys = tmp / "keys"
    keys.write_text(f"# tenants\nalice {ALICE}\nbob sha256:{hashlib.sha256(BOB.encode()).hexdigest()}\n")
    dead = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc, url = _start_server(
        ["--snapshot", f"simple={tmp / 'layout'}#v1", "--host-functions",
         "tests.conftest:make_host_functions", "--api-key-file", str(keys), "--pool-size", "2",
         "--max-queue", "2", "--max-body", "65536", "--idle-seconds", "0.3",
         "--cache-dir", str(tmp / "cache"), "--allow-registry", f"{registry.host}/serve",
         "--allow-registry", f"{dead}/", "--insecure-registry", "--call-timeout", "10",
         "--registry-timeout", "5"], env)
    yield Server(url, proc, registry, ref, digest, dead)
    stop_server(proc)


def stop_server(proc: subprocess.Popen[str]) -> None:
    """Stop a `snapcell serve` this test started (SIGTERM, then SIGKILL after 20 s)."""
    stop_process(proc, grace=20)


def call(c: httpx.Client, fn: str, *args: Any, ref: str = "simple", **extra: Any) -> httpx.Response:
    return c.post(f"/v1/snapshots/{ref}/call/{fn}", json={"args": list(args), **extra})


def retrying(c: httpx.Client, fn: str, *args: Any, **extra: Any) -> httpx.Response:
    """A call that waits and retries while the service answers 429 (as clients should)."""
    while (r := call(c, fn, *args, **extra)).status_code == 429:
        time.sleep(0.05)
    return r


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == r.status_code
    return body["error"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ calls
def test_calls_end_to_end(server: Server) -> None:
    with server.client() as c:
        r = call(c, "Add", 40, 2)
        assert r.status_code == 200 and r.json()["result"] == 42
        assert call(c, "Echo", "héllo").json()["result"] == "héllo"
        b = base64.b64encode(b"\x00\x01\xff").decode()
        assert call(c, "EchoBytes", b).json()["result"] == b
        assert call(c, "EchoF64", "NaN").json()["result"] == "NaN"
        assert call(c, "NoOp").json()["result"] is None
        # every call starts from the snapshot
        assert [call(c, "AddToStatic", 5).json()["result"] for _ in range(4)] == [5] * 4


def test_map_runs_batches(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/snapshots/simple/map/Add", json={"items": [[i, 1] for i in range(500)]})
        assert r.status_code == 200
        assert [x["result"] for x in r.json()["results"]] == [i + 1 for i in range(500)]
        r = c.post("/v1/snapshots/simple/map/AddToStaticAndFail", json={"items": [[], []]})
        assert [x["error"]["type"] for x in r.json()["results"]] == ["guest_error"] * 2
        assert r.json()["results"][0]["error"]["code"] == 1


def test_guest_errors_faults_and_timeouts_are_clear(server: Server) -> None:
    with server.client() as c:
        r = call(c, "AddToStaticAndFail")
        assert r.status_code == 422
        assert error_of(r)["type"] == "guest_error" and error_of(r)["code"] == 1
        r = call(c, "TriggerException")
        assert r.status_code == 422 and error_of(r)["class"] == "InvalidOpcode"
        r = call(c, "Spin", timeout=0.2)
        assert r.status_code == 504 and error_of(r)["type"] == "timeout"
        r = call(c, "Spin", timeout=1e9)
        assert r.status_code == 400 and "maximum" in error_of(r)["message"]


def test_a_fault_or_timeout_never_affects_other_requests(server: Server) -> None:
    def good(i: int) -> Any:
        out = []
        with server.client(BOB) as c:
            for j in range(10):
                r = retrying(c, "Add", i, j)
                assert r.status_code == 200, r.text
                out.append(r.json()["result"])
        return out

    def bad(fn: str) -> int:
        with server.client() as c:
            return retrying(c, fn, timeout=0.3).status_code
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        faults = [ex.submit(bad, fn) for fn in ("TriggerException", "Spin", "DivideByZero", "Spin")]
        goods = [ex.submit(good, i) for i in range(4)]
        assert sorted(f.result() for f in faults) == [422, 422, 504, 504]
        assert [g.result() for g in goods] == [[i + j for j in range(10)] for i in range(4)]
    with server.client() as c:
        assert call(c, "GetStatic").json()["result"] == 0


def test_concurrent_tenants(server: Server) -> None:
    def work(key: str, base: int) -> list[int]:
        with server.client(key) as c:
            return [retrying(c, "AddToStatic", base + k).json()["result"] for k in range(15)]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = {ex.submit(work, key, base): base for key, base in
                ((ALICE, 0), (BOB, 1000), (ALICE, 2000), (BOB, 3000))}
        for f, base in futs.items():
            assert f.result() == [base + k for k in range(15)]


def test_back_pressure_under_overload(server: Server) -> None:
    before = server.metric("snapcell_pool_rejected_total", pool="simple")

    def spin() -> httpx.Response:
        with server.client() as c:
            return call(c, "Spin", timeout=3.0)
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        statuses = [r.status_code for r in ex.map(lambda _: spin(), range(10))]
    # 2 sandboxes + 2 queue slots: the rest are refused at once
    assert statuses.count(429) >= 6 and set(statuses) <= {429, 504}, statuses
    assert server.metric("snapcell_pool_rejected_total", pool="simple") - before == statuses.count(429)
    with server.client() as c:
        r = call(c, "Spin", timeout=0.1)
        assert r.status_code == 504
        assert call(c, "Echo", "recovered").json()["result"] == "recovered"


def test_overloaded_response_is_retryable(server: Server) -> None:
    def spin() -> httpx.Response:
        with server.client() as c:
            return call(c, "Spin", timeout=2.0)
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda _: spin(), range(6)))
    refused = [r for r in rs if r.status_code == 429]
    assert refused
    assert refused[0].headers["retry-after"] == "1"
    assert error_of(refused[0])["type"] == "overloaded"


# ------------------------------------------------------------------------------ bad requests
def test_auth_failures(server: Server) -> None:
    with server.client(None) as c:
        r = call(c, "Echo", "x")
        assert r.status_code == 401 and error_of(r)["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/snapshots").status_code == 401
        assert c.post("/v1/sessions", json={"snapshot": "simple"}).status_code == 401
        assert c.get("/healthz").status_code == 200                 # open, for load balancers
    with server.client("wrong-key-0123456789abcdef") as c:
        r = call(c, "Echo", "x")
        assert r.status_code == 401 and "invalid" in error_of(r)["message"]
    r = httpx.post(server.url + "/v1/snapshots/simple/call/Echo", json={"args": ["k"]},
                   headers={"X-API-Key": BOB})
    assert r.status_code == 200 and r.json()["result"] == "k"


def test_malformed_requests(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/snapshots/simple/call/Add", content=b'{"args": [1,')
        assert r.status_code == 400 and error_of(r)["type"] == "malformed_json"
        r = c.post("/v1/snapshots/simple/call/Add", content=b'\xff\xfe')
        assert r.status_code == 400 and error_of(r)["type"] == "malformed_json"
        r = c.post("/v1/snapshots/simple/call/Add", json=[1, 2])
        assert r.status_code == 400 and "object" in error_of(r)["message"]
        r = c.post("/v1/snapshots/simple/call/Add", json={"args": [1, 2], "extra": 1})
        assert r.status_code == 400 and "extra" in error_of(r)["message"]
        r = call(c, "Add", 1, "two")
        assert r.status_code == 400 and error_of(r)["type"] == "invalid_arguments"
        assert "args[1]" in error_of(r)["message"]
        r = call(c, "Add", 1)
        assert r.status_code == 400 and "takes 2" in error_of(r)["message"]
        r = call(c, "EchoI32", 1 << 40)
        assert r.status_code == 400 and "out of range" in error_of(r)["message"]
        r = call(c, "EchoBytes", "not base64!")
        assert r.status_code == 400 and "base64" in error_of(r)["message"]
        r = call(c, "NoSuchFunction")
        assert r.status_code == 404 and error_of(r)["type"] == "unknown_function"
        r = c.get("/v1/nothing-here")
        assert r.status_code == 404 and error_of(r)["type"] == "not_found"
        r = c.get("/v1/snapshots/simple/call/Add")
        assert r.status_code == 405


def test_oversized_bodies(server: Server) -> None:
    big = "x" * 70000
    with server.client() as c:
        r = call(c, "Echo", big)
        assert r.status_code == 413 and error_of(r)["type"] == "body_too_large"

        def chunks() -> Iterator[bytes]:            # no Content-Length: chunked transfer
            yield b'{"args": ["'
            for _ in range(20):
                yield b"y" * 4096
            yield b'"]}'
        r = c.post("/v1/snapshots/simple/call/Echo", content=chunks())
        assert r.status_code == 413 and error_of(r)["type"] == "body_too_large"
        assert call(c, "Echo", "small").status_code == 200


def test_unknown_snapshot_refs(server: Server) -> None:
    with server.client() as c:
        r = call(c, "Echo", "x", ref="nope")
        assert r.status_code == 404 and error_of(r)["type"] == "unknown_snapshot"
        # registries not allowed, and local paths, are never reachable by tenants
        for ref in ("evil.example:5000/x/y:v1", "tmp/layout", "%2Fetc%2Fpasswd"):
            r = call(c, "Echo", "x", ref=ref)
            assert r.status_code == 404, (ref, r.text)
        r = call(c, "Echo", "x", ref=f"{server.registry.host}/serve/missing:v1")
        assert r.status_code == 404 and error_of(r)["type"] == "unknown_snapshot"


# ------------------------------------------------------------------------------ registry
def test_snapshot_pulled_from_a_registry_on_first_use(server: Server) -> None:
    with server.client() as c:
        r = call(c, "Add", 2, 3, ref=server.pushed_ref)
        assert r.status_code == 200 and r.json()["result"] == 5
        by_digest = f"{server.pushed_ref.split(':v1')[0]}@{server.pushed_digest}"
        assert call(c, "Echo", "d", ref=by_digest).json()["result"] == "d"
        listing = {s["ref"]: s for s in c.get("/v1/snapshots").json()["snapshots"]}
        assert listing[server.pushed_ref]["digest"] == server.pushed_digest
        assert "Add" in listing[server.pushed_ref]["functions"]
        assert listing["simple"]["pool"]["size"] == 2


def test_snapshot_needing_other_host_functions(server: Server) -> None:
    with server.client() as c:
        for _ in range(2):                      # a failed pool start is retried, not cached
            r = call(c, "Echo", "x", ref=f"{server.registry.host}/serve/needy:v1")
            assert r.status_code == 409 and error_of(r)["type"] == "snapshot_unusable"
            assert "HostExtra" in error_of(r)["message"]


def test_registry_down(server: Server) -> None:
    with server.client() as c:
        r = call(c, "Echo", "x", ref=f"{server.dead_registry}/serve/simple:v1")
        assert r.status_code == 502 and error_of(r)["type"] == "registry_error"
        assert "cannot reach" in error_of(r)["message"]
        assert call(c, "Echo", "still").json()["result"] == "still"


# ------------------------------------------------------------------------------ sessions
def test_sessions(server: Server) -> None:
    with server.client() as c, server.client(BOB) as other:
        r = c.post("/v1/sessions", json={"snapshot": "simple"})
        assert r.status_code == 201
        sid = r.json()["id"]
        url = f"/v1/sessions/{sid}"
        assert [c.post(f"{url}/call/AddToStatic", json={"args": [5]}).json()["result"]
                for _ in range(3)] == [5, 10, 15]
        assert c.get(url).json()["state"] == "active"
        time.sleep(1.5)                                  # idle: paused to a snapshot
        assert c.get(url).json()["state"] == "paused"
        r = c.post(f"{url}/call/AddToStatic", json={"args": [1]})
        assert r.json()["result"] == 16 and r.json()["session"]["state"] == "active"
        assert c.post(f"{url}/pause").json()["state"] == "paused"
        assert c.post(f"{url}/call/GetStatic").json()["result"] == 16
        # a fault resets the session to its last pause point
        assert c.post(f"{url}/call/TriggerException").status_code == 422
        assert c.post(f"{url}/call/GetStatic").json()["result"] == 16
        # another tenant sees nothing
        assert other.get(url).status_code == 404
        assert other.post(f"{url}/call/GetStatic").status_code == 404
        assert other.delete(url).status_code == 404
        assert sid not in [s["id"] for s in other.get("/v1/sessions").json()["sessions"]]
        assert sid in [s["id"] for s in c.get("/v1/sessions").json()["sessions"]]
        assert c.delete(url).status_code == 204
        assert c.get(url).status_code == 404
        r = c.post("/v1/sessions", json={"snapshot": "nope"})
        assert r.status_code == 404


# ------------------------------------------------------------------------------ disconnects
def _raw_request(server: Server, path: str, body: bytes) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + ALICE.encode() + b"\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def test_client_disconnect_cancels_the_guest_call(server: Server) -> None:
    cancelled = server.metric("snapcell_pool_cancelled_total", pool="simple")
    killed = server.metric("snapcell_pool_errors_total", pool="simple", kind="ExecutionCancelled")
    with server.client() as c:
        assert c.get("/status").json()["pools"]["simple"]["idle"] == 2
    s = _raw_request(server, "/v1/snapshots/simple/call/Spin", b'{"timeout": 50}')
    deadline = time.monotonic() + 10
    with server.client() as c:
        while c.get("/status").json()["pools"]["simple"]["idle"] != 1:
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.02)
        s.close()                                         # the client goes away mid-call
        deadline = time.monotonic() + 10
        while c.get("/status").json()["pools"]["simple"]["idle"] != 2:
            assert time.monotonic() < deadline, "the sandbox did not come back"
            time.sleep(0.02)
        assert server.metric("snapcell_pool_cancelled_total", pool="simple") == cancelled + 1
        assert server.metric("snapcell_pool_errors_total", pool="simple",
                             kind="ExecutionCancelled") == killed + 1
        # both sandboxes are clean
        for _ in range(4):
            assert call(c, "AddToStatic", 1).json()["result"] == 1


# ------------------------------------------------------------------------------ service
def test_run_code(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/run", json={"lang": "js", "code": "console.log('x'); [1, 'a', null]"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert {k: body[k] for k in ("value", "stdout", "stderr", "error", "files", "display")} \
            == {"value": [1, "a", None], "stdout": "x\n", "stderr": "", "error": None,
                "files": {}, "display": []}
        assert body["duration_ms"] > 0
        r = c.post("/v1/run", json={"lang": "lua", "code": "return 6 * 7"})
        assert r.json()["value"] == 42
        r = c.post("/v1/run", json={"lang": "js", "code": "while (true) {}", "timeout": 0.2})
        assert r.status_code == 200 and r.json()["error"]["type"] == "TimeoutError"
        r = c.post("/v1/run", json={"lang": "js", "code": "throw new TypeError('no')"})
        assert r.json()["error"]["type"] == "TypeError"
        r = c.post("/v1/run", json={"lang": "cobol", "code": "1"})
        assert r.status_code == 400 and "unknown language" in r.text


def test_openapi_metrics_and_health(server: Server) -> None:
    with server.client() as c:
        paths = c.get("/openapi.json").json()["paths"]
        for p in ("/v1/snapshots/{ref}/call/{function}", "/v1/sessions", "/v1/run", "/healthz", "/status",
                  "/metrics", "/v1/sessions/{session_id}/call/{function}"):
            assert p in paths, sorted(paths)
        text = c.get("/metrics").text
        for name in ("snapcell_pool_calls_total", "snapcell_pool_errors_total",
                     "snapcell_pool_queue_depth", "snapcell_pool_call_seconds_bucket",
                     "snapcell_sessions"):
            assert name in text
        h = c.get("/healthz").json()
        assert h == {"status": "ok", "worker": 0, "pid": server.proc.pid}
        st = c.get("/status").json()
        assert st["status"] == "ok" and st["pools"]["simple"]["size"] == 2
        assert c.post("/healthz").status_code == 405        # only GET is the static answer


def test_listens_on_loopback_only(server: Server) -> None:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in out.splitlines() if f"pid={server.proc.pid}," in line]
    assert mine, out
    for line in mine:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line


def test_refuses_other_addresses_without_api_keys(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "snapcell", "serve", "--host", "0.0.0.0", "--port", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "without --api-key-file" in r.stderr
    bad = tmp_path / "keys"
    bad.write_text("alice short\n")
    r = subprocess.run([sys.executable, "-m", "snapcell", "serve", "--port", "0", "--api-key-file",
                        str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "at least 16" in r.stderr
