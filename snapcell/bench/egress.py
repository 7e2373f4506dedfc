"""Benchmarks of egress (issue 25): a JS ``fetch`` of one small GET to a loopback server — a whole
run of a warm code sandbox — against native node's ``fetch`` doing the same in a warm node
process, in interleaved blocks of the same run (docs/benchmarks.md). The server answers every
request with ``Connection: close``, so both clients open a connection per request (a snapcell
run closes what it opened when it ends)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

from ..code import CodeSandbox
from ..code.egress import NetworkPolicy
from .timing import batch_of, interleaved

SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""
NODE = r"""
const url = process.argv[1];
const rl = require("readline").createInterface({ input: process.stdin });
rl.on("line", async (line) => {
    const out = [];
    for (let i = 0; i < Number(line); i++) {
        const t = process.hrtime.bigint();
        const r = await fetch(url);
        if ((await r.text()) !== "ok") throw new Error("bad body");
        out.push(Number(process.hrtime.bigint() - t));
    }
    process.stdout.write(JSON.stringify(out) + "\n");
});
"""


def bench_fetch(quick: bool) -> dict[str, Any]:
    """Rows `code_run_js_fetch_small_get` and `peer_node_fetch_small_get` (empty without node)."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        return {}
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    peer = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/"
        peer = subprocess.Popen([node, "-e", NODE, url], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert peer.stdin is not None and peer.stdout is not None
        stdin, stdout = peer.stdin, peer.stdout

        def node_block(k: int) -> list[int]:
            stdin.write(f"{k}\n")
            stdin.flush()
            return list(json.loads(stdout.readline()))

        code = f"await (await fetch('{url}')).text()"
        with CodeSandbox("js", network=NetworkPolicy(allow=(f"127.0.0.1:{port}",))) as box:
            def fetch_once() -> None:
                r = box.run(code)
                if r.value != "ok":
                    raise RuntimeError(f"fetch benchmark: {r.error}")
            block = 50
            got = interleaved({}, block * (4 if quick else 20), block=block,
                              batches={"sandbox": batch_of(fetch_once), "node": node_block})
        out: dict[str, Any] = {}
        out["code_run_js_fetch_small_get"] = got["sandbox"]
        out["peer_node_fetch_small_get"] = got["node"]
        return out
    finally:
        for p in (peer, server):
            if p is not None:
                p.kill()
                p.wait()


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """JS fetch (a whole sandbox run) / node's fetch in a warm process (target ≤ 1.5)."""
    if "code_run_js_fetch_small_get" in r and "peer_node_fetch_small_get" in r:
        return {"js: fetch run (small GET, loopback) / node fetch in a warm process":
                r["code_run_js_fetch_small_get"]["median_us"]
                / r["peer_node_fetch_small_get"]["median_us"]}
    return {}
