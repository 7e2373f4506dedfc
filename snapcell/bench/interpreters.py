"""The interpreters' own speed (issue 27): a realistic snippet (benchmarks/{python,js,lua}_snippet)
run in a code sandbox against a warm native process of the same interpreter, in alternating
blocks of one run (docs/benchmarks.md, "Interpreters").

Rows, per language, in **CPU µs per call** (the calling thread's CPU time: a KVM guest runs on
the thread that enters it, so for a sandbox this is the guest's work plus the host's part of
the call; CPU time keeps the ratios steady on a loaded machine, where wall times jitter):
- `interp_{lang}_snippet_repl_call`: `run(snippet)` in a `keep_state=True` sandbox (a warm
  REPL: nothing restored between calls), the issue's "warm call";
- `interp_{lang}_snippet_fresh_call`: the default sandbox (restore to the warm snapshot, then
  run);
- `interp_{lang}_trivial_repl_call`: `run("1 + 1")` in the same REPL sandbox: the fixed cost of
  a call (one exit, the run protocol), which a REPL call pays on top of the interpreter's work;
- `peer_{lang}_native_snippet_call`: a native process evaluating the snippet again and again,
  timing each evaluation itself: Debian's /usr/bin/python3 (the issue's peer), the native
  QuickJS-ng and Lua builds of the same sources (build/native/, `make native-interpreters`).
  Python also has `peer_python_native_snippet_call_cleared_re` (the regex cache cleared after
  each call, as a restore does) and `peer_python_static_build_snippet_call` (the guest's own
  static musl build with mimalloc, natively: the build's share of a gap, apart from the
  guest's)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..code import CodeSandbox
from ..errors import SnapcellError
from .timing import BatchProcess, batch_of, interleaved

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = {"python": ROOT / "benchmarks" / "python_snippet.py",
            "js": ROOT / "benchmarks" / "js_snippet.js",
            "lua": ROOT / "benchmarks" / "lua_snippet.lua"}
NATIVE = ROOT / "build" / "native"
# a call that does (almost) nothing: the fixed per-call cost inside a REPL call's time
TRIVIAL = {"python": "1 + 1", "js": "1 + 1", "lua": "return 1 + 1"}
# the guest's own static musl CPython, natively, with mimalloc as its allocator as in the guest
# (benchmarks/python_mimalloc.c; `make native-interpreters`)
STATIC_PYTHON = ROOT / "build" / "cpython" / "obj" / "python-mimalloc"
DEBIAN_PYTHON = "/usr/bin/python3"
BLOCK = 10        # samples per block (each after timing.BLOCK_WARMUP untimed calls)

# The native workers: for every line "k" on stdin, k evaluations of the snippet, answered as k
# pairs "wall_ns cpu_ns" on one line. Python runs it the way the guest's runner does (parse,
# the last expression evaluated apart, a fresh namespace, stdout captured).
PY_WORKER = """
import ast, builtins, io, re, sys, time
code = open(sys.argv[1]).read()
clear = sys.argv[2] == "clear"
def one():
    ns = {"__name__": "__main__", "__builtins__": builtins}
    out, sys.stdout = sys.stdout, io.StringIO()
    try:
        tree = ast.parse(code, "<code>", "exec")
        last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<code>", "exec"), ns)
        repr(eval(compile(last, "<code>", "eval"), ns))
    finally:
        sys.stdout = out
    if clear:
        re.purge()
for line in sys.stdin:
    got = []
    for _ in range(int(line)):
        w, c = time.perf_counter_ns(), time.thread_time_ns()
        one()
        got += [time.perf_counter_ns() - w, time.thread_time_ns() - c]
    print(*got, flush=True)
"""
# Lua has no sub-second wall clock: its pairs carry the CPU time twice. Like the guest, the
# chunk is tried as "return <code>" first.
LUA_WORKER = """
local f = assert(io.open(os.getenv("SNAPCELL_SNIPPET"), "rb"))
local code = f:read("a")
f:close()
print = function() end
for line in io.lines() do
  local out = {}
  for _ = 1, tonumber(line) do
    local c = os.clock()
    local fn = load("return " .. code, "=main.lua", "t") or assert(load(code, "=main.lua", "t"))
    fn()
    local ns = math.floor((os.clock() - c) * 1e9)
    out[#out + 1] = ns .. " " .. ns
  end
  io.write(table.concat(out, " "), "\\n")
  io.flush()
end
"""


class NativeWorker(BatchProcess):
    """A native interpreter process serving batches of timed snippet evaluations."""

    def batch(self, k: int) -> list[int]:
        """k evaluations now; their CPU times in ns."""
        got = self.ints(str(k))
        if len(got) != 2 * k:
            raise SnapcellError(f"{self.cmd[0]} answered {len(got) // 2} samples, not {k} "
                                "(did the snippet fail natively?)")
        return got[1::2]


def _sandbox_batch(box: CodeSandbox, code: str) -> Callable[[int], list[int]]:
    def run() -> None:
        r = box.run(code)
        if r.error is not None:
            raise SnapcellError(f"the bench snippet failed in the sandbox: {r.error}")
    return batch_of(run, time.thread_time_ns)


def _peers(lang: str, path: Path) -> dict[str, NativeWorker]:
    """The native peers of `lang` that exist on this machine."""
    out: dict[str, NativeWorker] = {}
    if lang == "python":
        for row, exe, mode in (("peer_python_native_snippet_call", DEBIAN_PYTHON, "keep"),
                               ("peer_python_native_snippet_call_cleared_re", DEBIAN_PYTHON, "clear"),
                               ("peer_python_static_build_snippet_call", str(STATIC_PYTHON), "keep")):
            if os.path.exists(exe):
                out[row] = NativeWorker([exe, "-I", "-c", PY_WORKER, str(path), mode])
    elif lang == "js" and (NATIVE / "qjs").exists():
        out["peer_js_native_snippet_call"] = NativeWorker([str(NATIVE / "qjs"), "--serve", str(path)])
    elif lang == "lua" and (NATIVE / "lua").exists():
        out["peer_lua_native_snippet_call"] = NativeWorker(
            [str(NATIVE / "lua"), "-e", LUA_WORKER], env=dict(os.environ, SNAPCELL_SNIPPET=str(path)))
    return out


def bench_interpreters(quick: bool = False) -> dict[str, dict[str, Any]]:
    """The rows of the module docstring, for every language, `n` samples each, taken in
    alternating blocks of BLOCK (timing.interleaved)."""
    n = 60 if quick else 300
    r: dict[str, dict[str, Any]] = {}
    for lang, path in SNIPPETS.items():
        code = path.read_text()
        peers = _peers(lang, path)
        try:
            with CodeSandbox(lang, keep_state=True, timeout=60) as repl, \
                    CodeSandbox(lang, timeout=60) as fresh:
                rows: dict[str, Callable[[int], list[int]]] = {
                    f"interp_{lang}_snippet_repl_call": _sandbox_batch(repl, code),
                    f"interp_{lang}_snippet_fresh_call": _sandbox_batch(fresh, code),
                    f"interp_{lang}_trivial_repl_call": _sandbox_batch(repl, TRIVIAL[lang]),
                    **{k: w.batch for k, w in peers.items()}}
                got = interleaved({}, n, block=BLOCK, batches=rows)
        finally:
            for w in peers.values():
                w.close()
        r.update({k: dict(v, note="CPU µs") for k, v in got.items()})
    return r


def interpreter_ratios(r: dict[str, Any]) -> dict[str, float]:
    """Sandbox call / native call per language (issue 27's target: ≤ 1.1 for the REPL call)."""
    out: dict[str, float] = {}
    for lang in SNIPPETS:
        native = r.get(f"peer_{lang}_native_snippet_call")
        if native is None:
            continue
        for kind in ("repl", "fresh"):
            row = r.get(f"interp_{lang}_snippet_{kind}_call")
            if row is not None:
                out[f"{lang} snippet: {kind} call / native (CPU)"] = (row["median_us"]
                                                                    / native["median_us"])
    cleared, fresh = (r.get("peer_python_native_snippet_call_cleared_re"),
                      r.get("interp_python_snippet_fresh_call"))
    if cleared and fresh:
        out["python snippet: fresh call / native with the regex cache cleared (CPU)"] = (
            fresh["median_us"] / cleared["median_us"])
    static, native = (r.get("peer_python_static_build_snippet_call"),
                      r.get("peer_python_native_snippet_call"))
    if static and native:
        out["python snippet: the guest's static build natively / Debian python3 (CPU)"] = (
            static["median_us"] / native["median_us"])
    return out
