"""Real peers in `snapcell bench` (issue 27, docs/benchmarks.md): the sandboxes a user would
otherwise pick — isolated-vm, quickjs-emscripten, node:vm, workerd, Pyodide, bubblewrap +
python3, native python3, qjs and lua — installed on demand (snapcell/bench/peers_install.py)
and measured in the same run as snapcell's own rows, block by block, on the same questions:
a new box + `1+1`, a warm call of a realistic snippet, an HTTP request. Every row carries its
isolation kind. A peer that cannot be installed or started gets a row saying why."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .peers_install import (
    DATA,
    ROOT,
    PeerUnavailable,
    config,
    debian_binary,
    node,
    npm_modules,
    npm_version,
)
from .timing import BatchProcess

HARDWARE_VM = "hardware VM"
SNIPPETS = {"js": ROOT / "benchmarks" / "js_snippet.js", "python": ROOT / "benchmarks" / "python_snippet.py"}
NATIVE = ROOT / "build" / "native"
SYSTEM_PYTHON = Path("/usr/bin/python3")
NPM_PACKAGE = {"isolated-vm": "isolated-vm", "quickjs-emscripten": "quickjs-emscripten-core",
               "pyodide": "pyodide", "http": "workerd"}
Batch = Callable[[int], list[int]]


class ServedPeer(BatchProcess):
    """A driver process (js_peers.js, py_peer.py) serving batches: `batch(row)(k)` runs `row`
    k times there and returns the k times in ns it measured around each run."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self._err = tempfile.TemporaryFile()
        super().__init__(cmd, env, stderr=self._err)
        first = self.readline()
        try:
            hello = json.loads(first)
        except ValueError:
            hello = {"error": first or self._stderr()}
        if "error" in hello:
            self.close()
            raise PeerUnavailable(f"driver failed to start: {str(hello['error'])[:300]}")
        self.rows: list[str] = hello["rows"]
        self.version: str | None = hello.get("version")

    def _stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace").strip()[-300:]

    def batch(self, row: str) -> Batch:
        """The batch function of `row`."""
        def run(k: int) -> list[int]:
            got = self.ints(f"{row} {k}")
            if len(got) != k:
                raise PeerUnavailable(f"{row}: the driver answered {len(got)} samples, not {k} "
                                      f"{self._stderr()}")
            return got
        return run

    def close(self, timeout: float = 10.0) -> None:
        """End the driver (it ends when its stdin closes)."""
        super().close(timeout)
        self._err.close()


def process_batch(cmd: list[str], expect: str = "2") -> Batch:
    """A peer started as a new process per sample, timed from here (start to exit): `cmd`
    must print `expect`. Checked once first (PeerUnavailable when it fails)."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0 or done.stdout.strip() != expect:
        raise PeerUnavailable(f"{Path(cmd[0]).name} exited {done.returncode}: "
                              f"{(done.stderr or done.stdout).strip()[-200:]}")
    clock, devnull = time.perf_counter_ns, subprocess.DEVNULL

    def run(k: int) -> list[int]:
        out = []
        for _ in range(k):
            t = clock()
            subprocess.run(cmd, stdout=devnull, stderr=devnull, check=True)
            out.append(clock() - t)
        return out
    return run


def http_batch(port: int, method: str, path: str, body: bytes | None = None,
               expect: bytes = b"2") -> Batch:
    """Requests on one keep-alive connection (http.client), each timed from sending to the
    whole body read; the body must contain `expect`. The same client for every HTTP row."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    clock = time.perf_counter_ns

    def one() -> None:
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # the server closed the idle connection between two blocks (keep-alive timeout):
            # once more on a new one (the first runs of a block are warm-up, not counted)
            conn.close()
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200 or expect not in data:
            raise PeerUnavailable(f"{method} {path}: {resp.status} {data[:200]!r}")

    def run(k: int) -> list[int]:
        out = []
        for _ in range(k):
            t = clock()
            one()
            out.append(clock() - t)
        return out
    try:
        one()
    except OSError as e:
        raise PeerUnavailable(f"{method} {path}: {e}") from None
    return run


@contextmanager
def workerd(modules: Path) -> Iterator[dict[str, int]]:
    """workerd serving peers/workerd.capnp on two listening sockets of 127.0.0.1 (the static
    trivial worker and the Worker Loader one); yields their ports."""
    exe = modules / "workerd" / "bin" / "workerd"
    socks = {name: socket.create_server(("127.0.0.1", 0)) for name in ("trivial", "loader")}
    args = [str(exe), "serve", "--experimental", str(DATA / "workerd.capnp")]
    for name, s in socks.items():
        args += ["--socket-fd", f"{name}={s.fileno()}"]
    proc = subprocess.Popen(args, pass_fds=[s.fileno() for s in socks.values()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield {name: s.getsockname()[1] for name, s in socks.items()}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for s in socks.values():
            s.close()


def _bwrap_python(bwrap: Path) -> list[str]:
    """python3 in a bubblewrap sandbox: the root file system read-only, new /dev, /proc and
    /tmp, every namespace unshared (user, pid, net, ipc, uts, cgroup), dies with its parent."""
    return [str(bwrap), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent", "--new-session",
            str(SYSTEM_PYTHON), "-c", "print(1 + 1)"]


class _Peers:
    """Starts what the rows need, each at most once, and remembers why one is unavailable (so
    that a failed `npm ci` is tried once, not once per row)."""

    def __init__(self, stack: ExitStack, install: bool) -> None:
        self.stack, self.install = stack, install
        self.made: dict[str, Any] = {}
        self.failed: dict[str, str] = {}
        self.versions: dict[str, str] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key in self.failed:
            raise PeerUnavailable(self.failed[key])
        if key not in self.made:
            try:
                self.made[key] = make()
            except PeerUnavailable as e:
                self.failed[key] = str(e)
                raise
        return self.made[key]

    def modules(self) -> Path:
        return Path(self._once("npm", lambda: npm_modules(self.install)))

    def driver(self, peer: str) -> ServedPeer:
        def start() -> ServedPeer:
            if peer == "python3":
                if not SYSTEM_PYTHON.exists():
                    raise PeerUnavailable(f"no {SYSTEM_PYTHON} (Debian's python3)")
                sp = ServedPeer([str(SYSTEM_PYTHON), "-I", str(DATA / "py_peer.py"),
                                 str(SNIPPETS["python"])])
            else:
                env = dict(os.environ)
                if peer in NPM_PACKAGE:
                    modules = self.modules()
                    self.versions[peer] = npm_version(modules, NPM_PACKAGE[peer])
                    env["NODE_PATH"] = str(modules)
                sp = ServedPeer([node(), str(DATA / "js_peers.js"), peer,
                                 str(SNIPPETS["js"]), str(SNIPPETS["python"])], env)
            self.stack.callback(sp.close)
            if sp.version:
                self.versions[peer] = sp.version
            return sp
        served: ServedPeer = self._once(f"driver {peer}", start)
        return served

    def workerd_port(self, which: str) -> int:
        def start() -> dict[str, int]:
            modules = self.modules()
            self.versions["http"] = npm_version(modules, "workerd")
            ports: dict[str, int] = self.stack.enter_context(workerd(modules))
            return ports
        return int(self._once("workerd", start)[which])

    def batch(self, spec: dict[str, Any]) -> Batch:
        peer, what = spec["peer"], spec["what"]
        if peer == "process":
            if what == "python3":
                return process_batch([str(SYSTEM_PYTHON), "-c", "print(1 + 1)"])
            if what == "bwrap-python3":
                return process_batch(_bwrap_python(debian_binary("bubblewrap", self.install)))
            exe = NATIVE / what
            if not exe.exists():
                raise PeerUnavailable(f"build/native/{what} is not built "
                                      f"(make build/native/{what})")
            return process_batch([str(exe), "1 + 1"] if what == "qjs"
                                 else [str(exe), "-e", "print(1 + 1)"])
        if peer == "http":
            return http_batch(self.workerd_port(what), "GET", "/")
        return self.driver(peer).batch(what)


def _snapcell_rows(stack: ExitStack) -> dict[str, tuple[Callable[[], Any], dict[str, str]]]:
    """snapcell's own rows on the same questions: a new code sandbox from the warm snapshot
    + `1+1` + close, and a warm box's run of the realistic snippet (restore included)."""
    from ..code import CodeSandbox, warm_snapshot
    rows: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {}
    for lang in ("js", "python", "lua"):
        snap = warm_snapshot(lang)

        def new_box(lang: str = lang, snap: Any = snap) -> None:
            with CodeSandbox(lang, snapshot=snap) as box:
                if box.run("1+1").value != 2:
                    raise RuntimeError(f"{lang}: 1+1 did not give 2")
        rows[f"snapcell_new_box_{lang}_run"] = new_box, {"lang": lang, "question": "new box"}
    for lang, path in SNIPPETS.items():
        box = stack.enter_context(CodeSandbox(lang))
        code = path.read_text()

        def snippet(box: Any = box, code: str = code) -> None:
            r = box.run(code)
            if r.error is not None:
                raise RuntimeError(f"the snippet failed: {r.error}")
        rows[f"snapcell_warm_snippet_{lang}"] = snippet, {"lang": lang, "question": "warm snippet"}
    return rows


def _snapcell_http(stack: ExitStack) -> dict[str, Batch]:
    """`snapcell serve` (default settings, its own cache) with the peers' HTTP client:
    `GET /healthz` and `POST /v1/run` of `1+1` in JS."""
    from .servers import start_serve, stop_process
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="snapcell-bench-peers-"))
    proc, url = start_serve(["--cache-dir", os.path.join(tmp, "cache")])
    stack.callback(stop_process, proc)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"lang": "js", "code": "1+1"}).encode()
    return {"snapcell_http_healthz": http_batch(port, "GET", "/healthz", expect=b"ok"),
            "snapcell_http_v1_run_js": http_batch(port, "POST", "/v1/run", body)}


def _guarded(name: str, batch: Batch, broken: dict[str, str]) -> Batch:
    """`batch`, except that a failure during the run marks the row broken (reported as
    unavailable, its samples dropped) instead of ending the other rows' measurement."""
    def run(k: int) -> list[int]:
        if name not in broken:
            try:
                return batch(k)
            except (PeerUnavailable, OSError, subprocess.SubprocessError, ValueError) as e:
                broken[name] = str(e)[:300]
        return [1] * k          # placeholders: the row is replaced by its reason
    return run


def unavailable(reason: str) -> dict[str, Any]:
    """The row of a peer that could not be measured."""
    nan = float("nan")
    return {"n": 0, "median_us": nan, "p99_us": nan, "min_us": nan, "unavailable": reason}


def bench_real_peers(quick: bool, interleave: Callable[..., dict[str, Any]],
                     stats: Callable[[list[int]], dict[str, float]], install: bool = True,
                     rows: tuple[str, ...] | None = None, snapcell: bool = True,
                     samples: int | None = None) -> dict[str, Any]:
    """The peers of peers.toml (or those named in `rows`) and snapcell's rows on the same
    questions, interleaved block by block (`interleave` is timing.interleaved);
    Pyodide's new interpreter (seconds each) separately, a few samples (`stats`: the driver's
    _stats). Peers are installed
    when missing unless `install` is false. Each row notes its isolation kind, question and
    language, and for a peer its version or why it is unavailable. `samples` overrides the
    number of samples per row (tests)."""
    from ..errors import SnapcellError
    specs = {k: v for k, v in config()["row"].items() if rows is None or k in rows}
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        peers = _Peers(stack, install)
        batches: dict[str, Batch] = {}
        few: dict[str, Batch] = {}
        for name, spec in specs.items():
            try:
                (few if spec.get("few") else batches)[name] = peers.batch(spec)
            except (PeerUnavailable, OSError, subprocess.SubprocessError) as e:
                out[name] = unavailable(str(e))
        fns: dict[str, Callable[[], Any]] = {}
        meta: dict[str, dict[str, str]] = {}
        if snapcell:
            for name, (fn, m) in _snapcell_rows(stack).items():
                fns[name], meta[name] = fn, m
            try:
                for name, b in _snapcell_http(stack).items():
                    batches[name] = b
                    meta[name] = {"lang": "js", "question": "http"}
                meta["snapcell_http_healthz"]["isolation"] = "none"     # no sandbox step
            except (PeerUnavailable, RuntimeError, SnapcellError) as e:
                for name in ("snapcell_http_healthz", "snapcell_http_v1_run_js"):
                    out[name] = unavailable(str(e))
        n = samples or (40 if quick else 300)
        for name, b in few.items():
            try:
                out[name] = stats(b(1 if quick else 3))
            except PeerUnavailable as e:
                out[name] = unavailable(str(e))
        if batches or fns:
            broken: dict[str, str] = {}
            got = interleave(fns, n, block=10, warmup=10,
                             batches={k: _guarded(k, b, broken) for k, b in batches.items()})
            out.update(got)
            out.update({k: unavailable(f"failed during the run: {why}")
                        for k, why in broken.items()})
    for name, spec in specs.items():
        out[name].update(isolation=spec["isolation"], question=spec["question"],
                         lang=spec["lang"])
        version = peers.versions.get(spec["peer"])
        if version and "unavailable" not in out[name]:
            out[name]["version"] = version
    for name, m in meta.items():
        out.setdefault(name, unavailable("not measured")).update({"isolation": HARDWARE_VM, **m})
    return out


# (snapcell row, peer row) pairs whose ratio the report gives: issue 27's comparisons
RATIOS = (
    ("snapcell_new_box_js_run", "peer_isolated_vm_new_context_run"),
    ("snapcell_new_box_js_run", "peer_isolated_vm_new_isolate_run"),
    ("snapcell_new_box_js_run", "peer_quickjs_emscripten_new_runtime_run"),
    ("snapcell_new_box_js_run", "peer_quickjs_emscripten_new_context_run"),
    ("snapcell_new_box_js_run", "peer_node_vm_new_context_run"),
    ("snapcell_new_box_js_run", "peer_qjs_native_process"),
    ("snapcell_new_box_python_run", "peer_pyodide_same_interpreter_run"),
    ("snapcell_new_box_python_run", "peer_python3_worker_same_interpreter_run"),
    ("snapcell_new_box_python_run", "peer_python3_c_process"),
    ("snapcell_new_box_python_run", "peer_bubblewrap_python3_process"),
    ("snapcell_new_box_python_run", "peer_pyodide_new_interpreter"),
    ("snapcell_new_box_lua_run", "peer_lua_native_process"),
    ("snapcell_warm_snippet_js", "peer_isolated_vm_warm_snippet"),
    ("snapcell_warm_snippet_js", "peer_quickjs_emscripten_warm_snippet"),
    ("snapcell_warm_snippet_js", "peer_node_vm_warm_snippet"),
    ("snapcell_warm_snippet_python", "peer_python3_worker_warm_snippet"),
    ("snapcell_warm_snippet_python", "peer_pyodide_warm_snippet"),
    ("snapcell_http_healthz", "peer_workerd_static_trivial_worker"),
    ("snapcell_http_v1_run_js", "peer_workerd_static_trivial_worker"),
    ("snapcell_http_v1_run_js", "peer_workerd_worker_loader_new_isolate"),
)


def peer_ratios(r: dict[str, Any]) -> dict[str, float]:
    """snapcell / peer for each pair of RATIOS measured in this run (both rows present)."""
    out: dict[str, float] = {}
    for mine, theirs in RATIOS:
        a, b = r.get(mine), r.get(theirs)
        if a and b and a.get("n") and b.get("n"):
            out[f"{mine} / {theirs} [{b['isolation']}]"] = a["median_us"] / b["median_us"]
    return out
