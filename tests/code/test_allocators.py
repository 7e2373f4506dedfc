"""The code guests' two allocators (guests/python/python_guest.c, guests/lua/lua_guest.c,
guests/js/js_guest.c): blocks of up to 128 KiB from mimalloc, larger ones from musl's malloc (the
JS guest's runs from a fresh mimalloc heap and fresh QuickJS arenas made after the warm-up).
Blocks that grow and shrink across that size move between them with their bytes, the memory
limit still holds, and the bench's snippets give the same value in a sandbox as natively
(snapcell/bench/interpreters.py)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from snapcell import CodeSandbox
from snapcell.bench.interpreters import (
    DEBIAN_PYTHON,
    LUA_WORKER,
    NATIVE,
    PY_WORKER,
    SNIPPETS,
    STATIC_PYTHON,
    NativeWorker,
    interpreter_ratios,
)

MIB = 1 << 20
# the guest's static CPython natively, with mimalloc as the guest has it (benchmarks/python_mimalloc.c)
MIMALLOC_PYTHON = STATIC_PYTHON.parent / "python-mimalloc"

# grow a block from a few bytes past 128 KiB and back, checking every byte on the way
CROSSING = {
    "python": """
b = bytearray()
for i in range(300):
    b += bytes([i % 251]) * 1000          # realloc: small -> large (mimalloc -> musl)
ok = all(b[i * 1000] == i % 251 and b[i * 1000 + 999] == i % 251 for i in range(300))
del b[2000:]                              # shrink: large -> small (musl -> mimalloc)
ok = ok and len(b) == 2000 and b[0] == 0 and b[1999] == 1
s = "x" * 200_000
ok and (s + "y")[-2:] == "xy" and len(bytes(b) * 100) == 200_000
""",
    "js": """(() => {
const t = [];
for (let i = 0; i < 40000; i++) t.push(i * 3);     // the elements grow past 128 KiB (realloc)
let ok = t.every((v, i) => v === i * 3);
const parts = [];
for (let i = 1; i <= 20000; i++) parts.push(String(i).padStart(5, "0"));
let s = parts.join("");                            // a 100 KB string, then a 200 KB one
s = s + s;
t.length = 10;                                     // shrink: large -> small
const u = new Uint8Array(300000).map((_, i) => i % 251);
return ok && s.length === 200000 && s.slice(0, 5) === "00001" && s.slice(-5) === "20000"
  && t[9] === 27 && u[299999] === 299999 % 251
  && JSON.stringify({a: [1, {b: "c"}]}) === '{"a":[1,{"b":"c"}]}';
})()
""",
    "lua": """
local t = {}
for i = 1, 40000 do t[i] = i * 3 end       -- the array part grows past 128 KiB
for i = 1, 40000 do if t[i] ~= i * 3 then return false end end
local parts = {}
for i = 1, 20000 do parts[i] = string.format("%05d", i) end
local s = table.concat(parts)             -- a 100 KB string, then a 200 KB one
s = s .. s
for i = 40000, 11, -1 do t[i] = nil end
collectgarbage()
return #s == 200000 and s:sub(1, 5) == "00001" and s:sub(-5) == "20000" and t[10] == 30
""",
}


@pytest.mark.parametrize("lang", sorted(CROSSING))
def test_blocks_crossing_the_small_size_keep_their_bytes(kvm_ok: None, lang: str) -> None:
    with CodeSandbox(lang, keep_state=True) as box:
        for _ in range(3):                # again in the same interpreter: freed blocks reused
            r = box.run(CROSSING[lang])
            assert r.error is None and r.value is True, r.error


@pytest.mark.parametrize("lang,code,error", [
    ("python", "x = [bytes(1000) for _ in range(100_000)]", "MemoryError"),   # ~100 MiB, small blocks
    ("lua", "local t = {} for i = 1, 2000000 do t[i] = tostring(i) .. 'abc' end return #t",
     "MemoryError"),
    ("js", "const a = []; for (let i = 0; i < 2000000; i++) a.push({i, s: 'abc' + i}); a.length",
     "InternalError"),
])
def test_small_blocks_count_against_the_memory_limit(kvm_ok: None, lang: str, code: str,
                                                     error: str) -> None:
    with CodeSandbox(lang, memory_limit=32 * MIB, timeout=60) as box:
        r = box.run(code)
        assert r.error is not None and r.error.type == error, r.error
        r = box.run("return 1 + 1" if lang == "lua" else "1 + 1")
        assert r.error is None and r.value == 2


def test_the_bench_snippets_give_the_same_value_natively(kvm_ok: None) -> None:
    """The native peers run the snippets the sandboxes run (so the bench compares one work)."""
    with CodeSandbox("python") as box:
        inside = box.run(SNIPPETS["python"].read_text()).value
    code = (f"exec(open({str(SNIPPETS['python'])!r}).read().rsplit(chr(10) + 'result', 1)[0]"
            " + chr(10) + 'import json; print(json.dumps(result))')")
    for exe in (DEBIAN_PYTHON, str(MIMALLOC_PYTHON)):
        native = subprocess.run([exe, "-I", "-c", code], capture_output=True, text=True,
                                check=True).stdout.splitlines()[-1]
        assert json.loads(json.dumps(inside)) == json.loads(native), exe


@pytest.mark.parametrize("lang", ["python", "python-mimalloc", "lua"])
def test_native_workers_answer_batches(lang: str) -> None:
    """(The JS worker, `qjs_native --serve`, is built by `make bench`, not by `make test`.)"""
    path = SNIPPETS[lang.split("-")[0]]
    if lang.startswith("python"):
        exe = DEBIAN_PYTHON if lang == "python" else str(MIMALLOC_PYTHON)
        w = NativeWorker([exe, "-I", "-c", PY_WORKER, str(path), "clear"])
    else:
        w = NativeWorker([str(NATIVE / "lua"), "-e", LUA_WORKER],
                         env=dict(os.environ, SNAPCELL_SNIPPET=str(path)))
    try:
        for k in (1, 4):
            got = w.batch(k)
            assert len(got) == k and all(t > 0 for t in got)
    finally:
        w.close()
    assert w.proc.returncode == 0


def test_interpreter_ratios() -> None:
    row = lambda us: {"median_us": us}  # noqa: E731
    r = {"peer_js_native_snippet_call": row(100.0), "interp_js_snippet_repl_call": row(150.0),
         "interp_js_snippet_fresh_call": row(200.0),
         "peer_python_native_snippet_call": row(1000.0),
         "peer_python_static_build_snippet_call": row(1500.0)}
    got = interpreter_ratios(r)
    assert got == {"js snippet: repl call / native (CPU)": 1.5,
                   "js snippet: fresh call / native (CPU)": 2.0,
                   "python snippet: the guest's static build natively / Debian python3 (CPU)": 1.5}
