"""Egress in `snapcell serve`: a tenant's network policy per run, capped by the operator
(`--egress-cap`), and the per-tenant egress metrics. A real server process, a loopback HTTP
server started here, real JS guests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest

from snapcell.code.egress import NetworkPolicy
from snapcell.serving.egress import Egress
from snapcell.serving.errors import ApiError

from .code.http_servers import Server as HttpServer
from .code.http_servers import http_server
from .conftest import ROOT
from .test_serve import Server, _start_server, stop_server

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef!"


@pytest.fixture(scope="module")
def web() -> Iterator[HttpServer]:
    with http_server() as s:
        yield s


@pytest.fixture(scope="module")
def served(kvm_ok: None, web: HttpServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("egress-serve")
    (tmp / "keys").write_text(f"alice {ALICE}\nbob {BOB}\n")
    (tmp / "cap.json").write_text(json.dumps({"allow": ["127.0.0.0/8:*"], "max_requests": 3}))
    proc, url = _start_server(["--api-key-file", str(tmp / "keys"), "--cache-dir",
                               str(tmp / "cache"), "--egress-cap", str(tmp / "cap.json")],
                              dict(os.environ, PYTHONPATH=str(ROOT)))
    yield Server(url, proc, None, "", "", "")       # type: ignore[arg-type]
    stop_server(proc)


def run(s: Server, key: str, code: str, network: object = None) -> httpx.Response:
    body: dict[str, object] = {"lang": "js", "code": code}
    if network is not None:
        body["network"] = network
    with s.client(key) as c:
        return c.post("/v1/run", json=body)


def test_tenant_policy_within_the_cap_and_metrics(served: Server, web: HttpServer) -> None:
    fetch = f"(await fetch('{web.url}/text')).status"
    r = run(served, ALICE, fetch, {"allow": [f"127.0.0.1:{web.port}"], "max_requests": 50})
    assert r.status_code == 200 and r.json()["value"] == 200, r.text
    # the cap's bound wins: 3 requests per run
    r = run(served, ALICE, f"for (let i = 0; i < 4; i++) await fetch('{web.url}/text')",
            [f"127.0.0.1:{web.port}"])
    assert "at most 3 connections or requests per run" in r.json()["error"]["message"], r.text
    r = run(served, BOB, f"await fetch('http://127.0.0.1:{web.port + 1}/')", [f"127.0.0.1:{web.port}"])
    assert "refused by the sandbox's network policy" in r.json()["error"]["message"]
    r = run(served, BOB, f"await fetch('{web.url}/text', {{method: 'PUT', body: 'x'}})",
            {"allow": [f"127.0.0.1:{web.port}"], "methods": ["GET"]})
    assert "HTTP method PUT refused" in r.json()["error"]["message"]
    r = run(served, BOB, fetch)                   # asked for nothing: no network
    assert "this sandbox has no network" in r.json()["error"]["message"]
    assert served.metric("snapcell_egress_requests_total", tenant="alice") == 4
    assert served.metric("snapcell_egress_refusals_total", tenant="alice") == 1
    assert served.metric("snapcell_egress_refusals_total", tenant="bob") == 2
    assert served.metric("snapcell_egress_bytes_total", tenant="alice", direction="in") >= 4 * 13


def test_beyond_the_cap_or_malformed_is_a_4xx(served: Server) -> None:
    r = run(served, ALICE, "1", ["example.com:443"])
    assert r.status_code == 403, r.text
    assert r.json()["error"]["message"] == ("network: network rule 'example.com:443' is outside "
                                            "what this service allows (127.0.0.0/8:*)")
    for bad in ["x", {"allow": ["a:b:c"]}, {"allow": [], "bogus": 1}]:
        r = run(served, ALICE, "1", bad)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("network: "), r.text


def test_no_cap_allows_no_network() -> None:
    from prometheus_client import CollectorRegistry
    egress = Egress(None, CollectorRegistry())
    assert egress.for_run("t", None) is None and egress.for_run("t", []) is None
    with pytest.raises(ApiError, match="allows no network egress") as e:
        egress.for_run("t", ["127.0.0.1:80"])
    assert e.value.status == 403
    capped = Egress(NetworkPolicy(allow=["*.example.org:443"], methods=["GET"]),
                    CollectorRegistry())
    net = capped.for_run("t", {"allow": ["api.example.org:443"]})
    assert net is not None and net.policy.methods == frozenset({"GET"})
