"""State isolation (between runs, between siblings), fresh randomness per sandbox, keep-state
sessions and forks, and hostile code: each attempt gets a clear error, the box recovers and
the next run sees a pristine interpreter."""

from __future__ import annotations

import pytest

from snapcell import CodeSandbox

G = {"js": "globalThis", "lua": "_G"}


def test_fresh_state_every_run(lang: str) -> None:
    with CodeSandbox(lang) as box:
        if lang == "js":
            assert box.run("globalThis.leak = 1; Array.prototype.evil = 1; Math.PI = 3; leak").value == 1
            assert box.run("[typeof leak, [].evil, Math.PI > 3.14]").value == ["undefined", None, True]
        else:
            assert box.run("leak = 1 string.rep = nil math.pi = 3 return leak").value == 1
            assert box.run("return {leak == nil, string.rep ~= nil, math.pi > 3.14}").value == [True] * 3


def test_siblings_are_isolated(lang: str) -> None:
    with CodeSandbox(lang, keep_state=True) as a, CodeSandbox(lang, keep_state=True) as b:
        a.run("x = 1")
        assert a.run("x").value == 1
        assert b.run("typeof x" if lang == "js" else "type(x)").value == "undefined" if lang == "js" \
            else b.run("type(x)").value == "nil"


def test_keep_state_session_and_fork(lang: str) -> None:
    with CodeSandbox(lang, keep_state=True) as box:
        box.run("var n = 10" if lang == "js" else "n = 10")
        box.run("n = n + 1")
        assert box.run("n").value == 11
        snap = box.snapshot()
        with CodeSandbox(lang, snapshot=snap, keep_state=True) as fork:
            fork.run("n = n * 2")
            assert fork.run("n").value == 22
        assert box.run("n").value == 11
        # a timeout resets the session to the base snapshot
        box.run("for(;;){}" if lang == "js" else "while true do end", timeout=0.1)
        assert box.run("typeof n" if lang == "js" else "type(n)").value in ("undefined", "nil")
        box.reset()


def test_siblings_draw_different_random_numbers(lang: str) -> None:
    code = "[Math.random(), Math.random()]" if lang == "js" else "{math.random(), math.random(1, 1 << 40)}"
    seen = set()
    boxes = [CodeSandbox(lang) for _ in range(4)]
    try:
        for b in boxes:
            seen.add(tuple(b.run(code).value))
            seen.add(tuple(b.run(code).value))       # each run restores: reseeded again
    finally:
        for b in boxes:
            b.close()
    assert len(seen) == 8


def test_keep_state_rng_continues(lang: str) -> None:
    """Within one session the PRNG is not reset between runs (only on restore/from_snapshot)."""
    code = "Math.random()" if lang == "js" else "math.random()"
    with CodeSandbox(lang, keep_state=True) as box:
        values = [box.run(code).value for _ in range(5)]
    assert len(set(values)) == 5


# ---- hostile code ----------------------------------------------------------------------------

HOSTILE = {
    "deep recursion": ("function f(n) { return f(n + 1) + 1 } f(0)",
                       "local function f(n) return f(n + 1) + 1 end return f(0)",
                       {"RangeError", "InternalError"}, {"RuntimeError", "MemoryError"}),
    "deep parser nesting": ("'(' .repeat(1)" + "; eval('['.repeat(100000))",
                            "load(('('):rep(100000) .. '1' .. (')'):rep(100000))()",
                            {"InternalError", "RangeError", "SyntaxError"}, {"RuntimeError", "SyntaxError"}),
    "huge allocation": ("new ArrayBuffer(2 ** 40)", "return ('x'):rep(1 << 40)",
                        {"RangeError", "InternalError"}, {"RuntimeError", "MemoryError"}),
    "runaway string": ("let s = 'ab'; for (;;) s = s + s", "local s = 'ab' while true do s = s .. s end",
                       {"InternalError", "RangeError"}, {"MemoryError", "RuntimeError"}),
    "huge array": ("new Array(2 ** 31).fill(0)", "local t = table.pack(table.unpack({}, 1, 1e8))",
                   {"RangeError", "InternalError"}, {"RuntimeError", "MemoryError"}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_code_fails_cleanly(lang: str, case: str) -> None:
    js, lua, js_types, lua_types = HOSTILE[case]
    with CodeSandbox(lang, timeout=5.0, memory_limit=32 << 20) as box:
        r = box.run(js if lang == "js" else lua)
        assert r.error is not None, r
        assert r.error.type in (js_types if lang == "js" else lua_types), r.error
        after = box.run("[1, 2, 3].length" if lang == "js" else "#{1, 2, 3}")
        assert after.ok and after.value == 3


REACH_HOST = {
    "js": ["require('fs')", "import('os')", "process.exit(1)", "std.open('/etc/passwd')",
           "fetch('http://127.0.0.1/')", "new XMLHttpRequest()", "os.exec(['sh'])",
           "new Worker('x')"],
    "lua": ["io.open('/etc/passwd')", "os.execute('sh')", "os.exit(1)", "require('socket')",
            "dofile('/etc/passwd')", "loadfile('/etc/passwd')", "package.loadlib('libc.so.6', 'system')",
            "debug.getregistry()", "os.remove('/tmp/x')", "os.getenv('HOME')"],
}


def test_no_file_process_or_network_api(lang: str) -> None:
    with CodeSandbox(lang) as box:
        for code in REACH_HOST[lang]:
            r = box.run(code)
            assert r.error is not None, code
            assert r.error.type in ("ReferenceError", "TypeError", "SyntaxError", "RuntimeError"), \
                (code, r.error)
        assert box.run("1").value == 1


def test_lua_refuses_bytecode() -> None:
    with CodeSandbox("lua") as box:
        r = box.run("local f, err = load(string.dump(function() return 1 end)) return {f == nil, err}")
        assert r.ok and r.value[0] is True and "binary chunk" in r.value[1]
        r = box.run("local f, err = load('\\27Lua\\84\\0\\25\\147\\r\\n\\26\\ngarbage')\n"
                    "return {f == nil, err}")
        assert r.ok and r.value[0] is True and "binary chunk" in r.value[1]
        r = box.run("return type(load('return 1', 'x', 'b'))")   # mode is forced to text
        assert r.value == "function"


def test_js_has_no_bytecode_loader_or_host_objects() -> None:
    with CodeSandbox("js") as box:
        r = box.run("[typeof std, typeof os, typeof require, typeof process, typeof bjson]")
        assert r.value == ["undefined"] * 5
        # fetch exists, and without a network policy it rejects (tests/code/test_fetch.py)
        r = box.run("await fetch('http://127.0.0.1/')")
        assert r.error is not None and r.error.type == "TypeError" and "no network" in r.error.message


def test_state_left_for_the_next_run_is_gone(lang: str) -> None:
    with CodeSandbox(lang) as box:
        if lang == "js":
            box.run("Object.prototype.toString = () => 'pwned'; JSON.stringify = null; "
                    "console.log = () => { throw 1 }; globalThis.setup = true")
            r = box.run("console.log(String({})); [typeof JSON.stringify, typeof setup]")
            assert r.stdout == "[object Object]\n" and r.value == ["function", "undefined"]
        else:
            box.run("print = error; string.format = nil; "
                    "setmetatable(_G, {__index = function() error('x') end})")
            r = box.run("print('ok') return string.format('%d', 1)")
            assert r.stdout == "ok\n" and r.value == "1"


def test_crash_of_the_interpreter_recovers() -> None:
    """A guest fault (here: JS stack deeper than the guest stack, via a C-level recursion in
    JSON.stringify on a long chain, allowed by a raised limit) is a clean InternalError."""
    with CodeSandbox("js") as box:
        r = box.run("let o = {}; for (let i = 0; i < 1e6; i++) o = {o}; JSON.stringify(o).length")
        assert r.error is not None
        assert box.run("2 + 2").value == 4
