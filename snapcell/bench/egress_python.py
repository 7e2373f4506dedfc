"""Benchmarks of Python's network egress (issue 25, docs/benchmarks.md): one small HTTP GET to a loopback
server from Python in a warm code sandbox (its socket tunnelled through the host) against native
`python3` doing the same in a warm process, measured in the same run, blocks interleaved."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from ..code import CodeSandbox
from ..code.egress import NetworkPolicy

SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Length', '13')
        self.end_headers()
        self.wfile.write(b'hello, world\\n')
    def log_message(self, *a):
        pass
s = HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""
GET = """
import http.client, time
def get():
    c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)
    c.request('GET', '/')
    body = c.getresponse().read()
    c.close()
    return body
"""
GET_LOOP = GET + """
for _ in range(5):
    get()
out = []
for _ in range({blocks}):
    t = time.perf_counter_ns()
    for _ in range({n}):
        get()
    out.append((time.perf_counter_ns() - t) // {n})
"""


def egress_benchmarks(r: dict[str, Any], quick: bool,
                      stats: Callable[[list[int]], Any]) -> None:
    """Rows: `code_egress_python_http_get` (one GET from http.client — a new connection each —
    inside a warm Python sandbox; each sample is the mean of `n` GETs timed in the guest, as
    reading the clock is itself a VM exit), `peer_python3_http_get` (the same loop in a native
    python3 process, the blocks alternating) and `code_run_python_http_get` (restore + a run
    making one GET, importing http.client included)."""
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        blocks, n = (4, 25) if quick else (10, 50)
        loop = GET_LOOP.format(port=port, n=n, blocks=5)
        guest: list[int] = []
        native: list[int] = []
        policy = NetworkPolicy(allow=(f"127.0.0.1:{port}",), max_requests=1000)
        with CodeSandbox("python", network=policy, timeout=60.0) as box:
            for _ in range(blocks):
                res = box.run(loop + "out")
                assert res.error is None, res.error
                guest += res.value
                p = subprocess.run([sys.executable, "-c", loop + "print(out)"], check=True,
                                   capture_output=True, text=True)
                native += json.loads(p.stdout)
            one = GET.format(port=port) + "get()"
            runs = []
            for _ in range(blocks * 5):
                res = box.run(one)
                assert res.error is None, res.error
                runs.append(int(res.duration * 1e9))
        r["code_egress_python_http_get"] = stats(guest)
        r["peer_python3_http_get"] = stats(native)
        r["code_run_python_http_get"] = stats(runs)
    finally:
        server.kill()
        server.wait()


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """Egress row: GET in the sandbox / in native python3 (target ≤ 1.5)."""
    if "code_egress_python_http_get" not in r or "peer_python3_http_get" not in r:
        return {}
    return {"egress python: HTTP GET in the sandbox / native python3 (target <= 1.5)":
            r["code_egress_python_http_get"]["median_us"] / r["peer_python3_http_get"]["median_us"]}
