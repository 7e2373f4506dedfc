"""Code contexts over HTTP (`/v1/contexts`), end to end: real `snapcell serve` processes on
127.0.0.1 sharing one context store, restarted and replaced while a conversation goes on."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT
from .test_serve import _start_server, error_of, stop_server

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef!"


class Replica:
    """One `snapcell serve` process on a shared store."""

    def __init__(self, store: Path, keys: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc, self.url = _start_server(
            ["--api-key-file", str(keys), "--context-store", str(store),
             "--cache-dir", str(store.parent / "cache"), *extra], env)

    def client(self, key: str = ALICE) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                            timeout=60)

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture
def shared(kvm_ok: None, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    keys = tmp_path / "keys"
    keys.write_text(f"alice {ALICE}\nbob {BOB}\n")
    yield tmp_path / "store", keys


def run(c: httpx.Client, cid: str, code: str, **extra: object) -> dict[str, object]:
    r = c.post(f"/v1/contexts/{cid}/run", json={"code": code, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    assert set(body) == {"value", "stdout", "stderr", "error", "files", "display", "duration_ms"}
    return body


def test_conversation_survives_two_restarts(shared: tuple[Path, Path]) -> None:
    store, keys = shared
    a = Replica(store, keys)
    try:
        with a.client() as c:
            r = c.post("/v1/contexts", json={"lang": "python"})
            assert r.status_code == 201, r.text
            cid = r.json()["id"]
            for i in range(7):
                body = run(c, cid, f"n{i} = {i}\n[globals()[f'n{{j}}'] for j in range({i + 1})]")
                assert body["value"] == list(range(i + 1)), body
    finally:
        a.stop()
    replicas = [Replica(store, keys), Replica(store, keys)]
    total = 7
    try:
        for k, rep in enumerate(replicas):
            with rep.client() as c:
                for i in range(total, total + 7 - k):
                    body = run(c, cid, f"n{i} = {i}\n[globals()[f'n{{j}}'] for j in range({i + 1})]")
                    assert body["error"] is None, body
                    assert body["value"] == list(range(i + 1))
                total += 7 - k
            rep.stop()
    finally:
        for rep in replicas:
            if rep.proc.poll() is None:
                rep.stop()
    assert total == 20


def test_pause_in_one_process_resume_in_another(shared: tuple[Path, Path]) -> None:
    store, keys = shared
    a, b = Replica(store, keys), Replica(store, keys)
    try:
        with a.client() as ca, b.client() as cb:
            cid = ca.post("/v1/contexts", json={"lang": "python"}).json()["id"]
            run(ca, cid, "import json\nstate = {'turns': 1}")
            paused = ca.post(f"/v1/contexts/{cid}/pause")
            assert paused.status_code == 200 and paused.json()["state"] == "paused"
            assert paused.json()["bytes"] > 0
            body = run(cb, cid, "state['turns'] += 1\njson.dumps(state)")
            assert body["value"] == '{"turns": 2}'
            assert cb.post(f"/v1/contexts/{cid}/pause").status_code == 200
            # a had the context paused: its next run resumes b's checkpoint
            assert run(ca, cid, "state['turns']")["value"] == 2
            # the checkpoint after a run reaches the other replica without a pause
            run(ca, cid, "state['turns'] = 10")
            for _ in range(100):
                if cb.get(f"/v1/contexts/{cid}").json()["version"] >= 3:
                    break
                subprocess.run(["sleep", "0.05"], check=True)
            assert run(cb, cid, "state['turns']")["value"] == 10
    finally:
        a.stop()
        b.stop()


def test_two_processes_never_run_one_context_at_once(shared: tuple[Path, Path]) -> None:
    """Runs of one context sent to two replicas at the same time: each replica takes it in
    turn (the other's checkpoint hands it over), so no run is lost or sees a stale state."""
    import concurrent.futures
    store, keys = shared
    a, b = Replica(store, keys), Replica(store, keys)
    try:
        with a.client() as ca:
            cid = ca.post("/v1/contexts", json={"lang": "python"}).json()["id"]
            run(ca, cid, "n = 0")

        def turns(rep: Replica) -> list[object]:
            with rep.client() as c:
                return [run(c, cid, "n += 1\nn")["value"] for _ in range(4)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            got = [v for f in [pool.submit(turns, r) for r in (a, b, a, b)] for v in f.result()]
        assert sorted(got) == list(range(1, 17)), got       # each increment seen once
        with b.client() as cb:
            assert run(cb, cid, "n")["value"] == 16
    finally:
        a.stop()
        b.stop()


def test_tenants_cannot_see_each_others_contexts(shared: tuple[Path, Path]) -> None:
    store, keys = shared
    a = Replica(store, keys)
    try:
        with a.client(ALICE) as alice, a.client(BOB) as bob:
            cid = alice.post("/v1/contexts", json={"lang": "python"}).json()["id"]
            run(alice, cid, "secret = 'alice'")
            for method, path, kw in (("POST", f"/v1/contexts/{cid}/run", {"json": {"code": "secret"}}),
                                     ("GET", f"/v1/contexts/{cid}", {}),
                                     ("POST", f"/v1/contexts/{cid}/fork", {}),
                                     ("POST", f"/v1/contexts/{cid}/reset", {}),
                                     ("GET", f"/v1/contexts/{cid}/files/a.txt", {}),
                                     ("PUT", f"/v1/contexts/{cid}/files/a.txt", {"content": b"x"}),
                                     ("DELETE", f"/v1/contexts/{cid}", {})):
                r = bob.request(method, path, **kw)  # type: ignore[arg-type]
                assert r.status_code == 404 and error_of(r)["type"] == "unknown_context", r.text
            assert bob.get("/v1/contexts").json() == {"contexts": []}
            assert [x["id"] for x in alice.get("/v1/contexts").json()["contexts"]] == [cid]
            assert run(alice, cid, "secret")["value"] == "alice"
            r = alice.post("/v1/contexts/ctx_../../etc/run", json={"code": "1"})
            assert r.status_code == 404
            r = alice.post("/v1/contexts/ctx_0123456789abcdef01234567/run", json={"code": "1"})
            assert r.status_code == 404 and error_of(r)["type"] == "unknown_context"
    finally:
        a.stop()


def test_context_operations(shared: tuple[Path, Path]) -> None:
    store, keys = shared
    data = ROOT / "build" / "images" / "data"
    assert (data / "index.json").is_file(), "the data image is not built: run `make data-image`"
    a = Replica(store, keys, "--max-contexts", "3", "--context-image", f"data={data}:latest")
    try:
        with a.client() as c:
            cid = c.post("/v1/contexts", json={"lang": "python"}).json()["id"]
            body = run(c, cid, "open('out.txt', 'w').write('hi')\nx = 5", files={"in.txt": "data"})
            assert body["files"] == {"out.txt": "hi"}
            assert run(c, cid, "open('in.txt').read()")["value"] == "data"
            png = b"\x89PNG\r\n\x1a\n"
            body = run(c, cid, f"class C:\n  def _repr_png_(self): return {png!r}\n"
                               "  def _repr_html_(self): return '<b>c</b>'\nC()")
            assert body["value"] is None and body["display"][0]["text/html"] == "<b>c</b>"
            assert base64.b64decode(body["display"][0]["image/png"]) == png
            assert run(c, cid, "1 + 1")["display"] == []
            # files API
            assert c.put(f"/v1/contexts/{cid}/files/sub/b.bin", content=b"\0\1\2").status_code == 204
            r = c.get(f"/v1/contexts/{cid}/files/sub/b.bin")
            assert r.status_code == 200 and r.content == b"\0\1\2"
            assert run(c, cid, "open('sub/b.bin','rb').read()")["value"] == {"base64": "AAEC"}
            assert c.get(f"/v1/contexts/{cid}/files/none.txt").status_code == 404
            for bad in ("%2E%2E/etc/passwd", "a//b", "x/%2E/y", "a" * 201):
                r = c.put(f"/v1/contexts/{cid}/files/{bad}", content=b"x")
                assert r.status_code in (400, 404), (bad, r.text)
            # fork, reset
            fork = c.post(f"/v1/contexts/{cid}/fork")
            assert fork.status_code == 201, fork.text
            fid = fork.json()["id"]
            run(c, fid, "x = 6")
            assert run(c, cid, "x")["value"] == 5 and run(c, fid, "x")["value"] == 6
            assert c.post(f"/v1/contexts/{cid}/reset").status_code == 200
            assert run(c, cid, "x")["error"]["type"] == "NameError"  # type: ignore[index]
            # a timeout resets the context to its last checkpoint and it goes on
            body = run(c, fid, "while True: pass", timeout=0.3)
            assert body["error"]["type"] == "TimeoutError"  # type: ignore[index]
            assert run(c, fid, "1")["value"] == 1
            # js and lua contexts keep state too
            jid = c.post("/v1/contexts", json={"lang": "js"}).json()["id"]
            run(c, jid, "globalThis.k = 40")
            assert run(c, jid, "k + 2")["value"] == 42
            # limits and bad requests
            r = c.post("/v1/contexts", json={"lang": "python"})
            assert r.status_code == 409 and error_of(r)["type"] == "context_limit"
            assert c.post("/v1/contexts", json={"lang": "cobol"}).status_code == 400
            assert c.post("/v1/contexts", json={"lang": "python", "x": 1}).status_code == 400
            assert c.post(f"/v1/contexts/{cid}/run", json={"code": 1}).status_code == 400
            assert c.post(f"/v1/contexts/{cid}/run", content=b"{").status_code == 400
            assert c.put(f"/v1/contexts/{jid}/files/a", content=b"x").status_code == 400
            assert c.delete(f"/v1/contexts/{jid}").status_code == 204
            assert c.post(f"/v1/contexts/{jid}/run", json={"code": "1"}).status_code == 404
            # a context on a package image the server offers, by name
            r = c.post("/v1/contexts", json={"lang": "python", "image": str(data)})
            assert r.status_code == 400 and "offers: data" in error_of(r)["message"]
            assert c.post("/v1/contexts", json={"lang": "lua", "image": "data"}).status_code == 400
            r = c.post("/v1/contexts", json={"lang": "python", "image": "data"})
            assert r.status_code == 201 and r.json()["image"] == "data", r.text
            iid = r.json()["id"]
            assert run(c, iid, "import numpy as np\nint(np.arange(5).sum())")["value"] == 10
            assert c.get(f"/v1/contexts/{iid}").json()["image"] == "data"
            # /v1/run gains files and display
            r = c.post("/v1/run", json={"lang": "python", "code": "open('o','w').write('z')\n"
                                        "display('hi')", "files": {"i": "1"}})
            assert r.status_code == 200, r.text
            assert r.json()["files"] == {"o": "z"}
            assert r.json()["display"] == [{"text/plain": "hi"}]
    finally:
        a.stop()


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, object]]]:
    """(event, data) pairs of a server-sent event stream."""
    import json
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            yield kind, json.loads(line[len("data: "):])


def test_streamed_runs(shared: tuple[Path, Path]) -> None:
    store, keys = shared
    a = Replica(store, keys)
    sse = {"Accept": "text/event-stream"}
    try:
        with a.client() as c:
            cid = c.post("/v1/contexts", json={"lang": "python"}).json()["id"]
            run(c, cid, "import time\nstate = 'kept'")
            c.post(f"/v1/contexts/{cid}/pause")
            # prints, sleeps, prints: the first chunk arrives while the run still sleeps. The
            # client then goes away, which kills the run: that the second half never ran
            # shows the first chunk was delivered before the run ended.
            code = "print('first', flush=True)\ntime.sleep(30)\nprint('second')\ndone = 1"
            with c.stream("POST", f"/v1/contexts/{cid}/run", json={"code": code},
                          headers=sse) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                first = next(_events(r.iter_lines()))
            assert first == ("stdout", {"text": "first\n"})
            body = run(c, cid, "(state, 'done' in globals())")
            assert body["value"] == ["kept", False], body
            # a whole streamed run: chunks in order, then the result
            with c.stream("POST", f"/v1/contexts/{cid}/run", headers=sse, json={
                    "code": "import sys\nprint('a')\nsys.stderr.write('b\\n')\nprint('c')\n7"}) as r:
                events = list(_events(r.iter_lines()))
            assert events[:3] == [("stdout", {"text": "a\n"}), ("stderr", {"text": "b\n"}),
                                  ("stdout", {"text": "c\n"})]
            assert events[3][0] == "result" and events[3][1]["value"] == 7
            assert events[3][1]["stdout"] == "a\nc\n" and len(events) == 4
            # /v1/run streams too; errors before the run are plain responses
            with c.stream("POST", "/v1/run", headers=sse,
                          json={"lang": "python", "code": "print(1)\nprint(2)"}) as r:
                events = list(_events(r.iter_lines()))
            assert [e for e, _ in events] == ["stdout", "stdout", "result"]
            r = c.post("/v1/contexts/ctx_0123456789abcdef01234567/run", headers=sse,
                       json={"code": "1"})
            assert r.status_code == 404 and error_of(r)["type"] == "unknown_context"
            with c.stream("POST", "/v1/run", headers=sse,
                          json={"lang": "js", "code": "console.log('j'); 2"}) as r:
                events = list(_events(r.iter_lines()))
            assert events == [("stdout", {"text": "j\n"}), ("result", events[1][1])]
    finally:
        a.stop()


def test_idle_contexts_are_paused_and_resume(shared: tuple[Path, Path]) -> None:
    store, keys = shared
    a = Replica(store, keys, "--context-idle-seconds", "0.2")
    try:
        with a.client() as c:
            cid = c.post("/v1/contexts", json={"lang": "lua"}).json()["id"]
            run(c, cid, "t = {1, 2, 3}")
            assert c.get(f"/v1/contexts/{cid}").json()["state"] == "live"
            for _ in range(600):                 # the sweeper pauses it (polled, not timed)
                if c.get(f"/v1/contexts/{cid}").json()["state"] == "paused":
                    break
                subprocess.run(["sleep", "0.05"], check=True)
            desc = c.get(f"/v1/contexts/{cid}").json()
            assert desc["state"] == "paused" and desc["version"] >= 1 and desc["bytes"] > 0
            assert run(c, cid, "return #t")["value"] == 3
            assert [x["state"] for x in c.get("/v1/contexts").json()["contexts"]] == ["live"]
            run(c, cid, "error('no')")
            m = _metrics(c.get("/metrics").text)
            assert m[("snapcell_contexts_created_total", (("lang", "lua"),))] == 1
            assert m[("snapcell_contexts_paused_total", ())] >= 1
            assert m[("snapcell_contexts_resumed_total", (("lang", "lua"),))] >= 1
            assert m[("snapcell_contexts_resume_seconds_count", ())] >= 1
            assert m[("snapcell_contexts_checkpoints_total", (("outcome", "ok"),))] >= 1
            runs = "snapcell_context_run_seconds_count"
            assert m[(runs, (("lang", "lua"), ("outcome", "ok")))] == 2
            assert m[(runs, (("lang", "lua"), ("outcome", "error")))] == 1
            assert m[("snapcell_contexts_live", ())] == 1
            assert m[("snapcell_contexts_stored", (("tenant", "alice"),))] == 1
            assert m[("snapcell_contexts_stored_bytes", (("tenant", "alice"),))] > 0
    finally:
        a.stop()


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value of a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
