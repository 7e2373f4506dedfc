"""`snapcell serve --workers 2` end to end: a real supervisor and two real worker processes on
one 127.0.0.1 port (started and stopped here), real KVM guests behind them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapcell import UninitializedSandbox

from .conftest import make_host_functions
from .test_serve import ALICE, BOB, _start_server, stop_server


def _metric(url: str, name: str, **labels: str) -> float:
    """One series of `/metrics` (from whichever worker answers)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


@pytest.fixture(scope="module")
def served(kvm_ok: None, simpleguest: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    tmp = tmp_path_factory.mktemp("workers")
    with UninitializedSandbox(simpleguest, config=None,
                              host_functions=make_host_functions()).evolve() as sb:
        sb.snapshot().save(str(tmp / "layout"), "v1")
    keys = tmp / "keys"
    keys.write_text(f"alice {ALICE}\nbob {BOB}\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc, url = _start_server(
        ["--workers", "2", "--snapshot", f"simple={tmp / 'layout'}#v1", "--host-functions",
         "tests.conftest:make_host_functions", "--api-key-file", str(keys), "--pool-size", "1",
         "--cache-dir", str(tmp / "cache"), "--idle-seconds", "60"], env)
    yield url, proc
    stop_server(proc)


def _clients_by_worker(url: str, key: str = ALICE) -> dict[int, httpx.Client]:
    """One kept-alive connection to each worker (new connections land on either: the kernel
    spreads them over the workers' SO_REUSEPORT sockets)."""
    found: dict[int, httpx.Client] = {}
    spare: list[httpx.Client] = []
    for _ in range(200):
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        worker = c.get("/healthz").json()["worker"]
        if worker in found:
            spare.append(c)
        else:
            found[worker] = c
        if len(found) == 2:
            break
    for c in spare:
        c.close()
    assert sorted(found) == [0, 1], "new connections never reached both workers"
    return found


def test_both_workers_serve_and_metrics_add_up(served: tuple[str, subprocess.Popen[str]]) -> None:
    url, proc = served
    clients = _clients_by_worker(url)
    try:
        pids = {w: c.get("/healthz").json()["pid"] for w, c in clients.items()}
        assert len(set(pids.values())) == 2 and proc.pid not in pids.values()
        before = _metric(url, "snapcell_pool_calls_total", pool="simple", function="Add")
        for i in range(6):
            r = clients[i % 2].post("/v1/snapshots/simple/call/Add", json={"args": [i, 1]})
            assert r.status_code == 200 and r.json()["result"] == i + 1, r.text
        r = clients[1].post("/v1/run", json={"lang": "js", "code": "6 * 7"})
        assert r.status_code == 200 and r.json()["value"] == 42, r.text
        # every worker's scrape sums both workers' counters
        for c in clients.values():
            text = c.get("/metrics").text
            line = 'snapcell_pool_calls_total{function="Add",pool="simple"}'
            got = [float(x.rpartition(" ")[2]) for x in text.splitlines() if x.startswith(line)]
            assert got == [before + 6], text
        assert clients[0].post("/v1/snapshots/simple/call/Add", headers={"Authorization": ""},
                               json={"args": [1, 1]}).status_code == 401
    finally:
        for c in clients.values():
            c.close()


def test_sessions_are_served_by_every_worker(served: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = served
    clients = _clients_by_worker(url)
    others = _clients_by_worker(url, BOB)
    try:
        r = clients[0].post("/v1/sessions", json={"snapshot": "simple"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert sid.startswith("w0.")
        # the state carries over whichever worker the request reaches
        got = [clients[i % 2].post(f"/v1/sessions/{sid}/call/AddToStatic",
                                   json={"args": [5]}).json()["result"] for i in range(4)]
        assert got == [5, 10, 15, 20]
        assert clients[1].get(f"/v1/sessions/{sid}").json()["calls"] == 4
        assert clients[1].post(f"/v1/sessions/{sid}/pause").json()["state"] == "paused"
        assert clients[1].post(f"/v1/sessions/{sid}/call/GetStatic").json()["result"] == 20
        for c in clients.values():              # the list gathers every worker's sessions
            assert sid in [s["id"] for s in c.get("/v1/sessions").json()["sessions"]]
        for c in others.values():               # another tenant sees nothing, on any worker
            assert c.get(f"/v1/sessions/{sid}").status_code == 404
            assert c.post(f"/v1/sessions/{sid}/call/GetStatic").status_code == 404
            assert sid not in [s["id"] for s in c.get("/v1/sessions").json()["sessions"]]
        assert clients[1].get("/v1/sessions/w7.nope").status_code == 404
        assert clients[1].delete(f"/v1/sessions/{sid}").status_code == 204
        for c in clients.values():
            assert c.get(f"/v1/sessions/{sid}").status_code == 404
    finally:
        for c in (*clients.values(), *others.values()):
            c.close()


def test_a_dead_worker_is_replaced_and_stop_leaves_nothing(
        served: tuple[str, subprocess.Popen[str]]) -> None:
    url, proc = served
    clients = _clients_by_worker(url)
    try:
        pids = {w: c.get("/healthz").json()["pid"] for w, c in clients.items()}
        sid = clients[1].post("/v1/sessions", json={"snapshot": "simple"}).json()["id"]
        os.kill(pids[1], signal.SIGKILL)        # a worker this test's server started
        r = clients[0].get(f"/v1/sessions/{sid}")
        assert r.status_code in (503, 404), r.text       # its sessions went with it
        deadline = time.monotonic() + 30
        while True:
            fresh = _clients_by_worker(url)
            new = fresh[1].get("/healthz").json()["pid"]
            for c in fresh.values():
                c.close()
            if new != pids[1]:
                break
            assert time.monotonic() < deadline, "worker 1 was not started again"
        assert clients[0].get(f"/v1/sessions/{sid}").status_code == 404
        pids[1] = new
    finally:
        for c in clients.values():
            c.close()
    stop_server(proc)
    assert proc.returncode == 0
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _running_with(marker: str) -> list[int]:
    """The pids of processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_stop_during_start_up_leaves_no_worker(kvm_ok: None, tmp_path: Path) -> None:
    """SIGTERM as soon as the supervisor tells its address — while it forks the workers —
    stops every worker: none is forked without being recorded, so none outlives it."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    for i in range(4):
        marker = str(tmp_path / f"cache{i}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "snapcell", "serve", "--port", "0", "--workers", "2",
             "--cache-dir", marker], cwd=root, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        left: list[int] = []
        try:
            assert proc.stdout is not None and "listening on" in proc.stdout.readline()
            time.sleep(0.01 * i)            # at different points of the forks
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            deadline = time.monotonic() + 10
            while (left := _running_with(marker)) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for pid in _running_with(marker):   # (ours: they hold this test's marker)
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        assert left == [], f"worker(s) {left} outlived the supervisor"
