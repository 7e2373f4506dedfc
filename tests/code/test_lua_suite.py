"""Lua 5.4's own test suite (testes/ of the fetched sources) inside a code sandbox vs natively.

The sandbox has no debug, io or package library by design, so files that need them fail there
(at their first use, with a clear error); every other file must pass in both."""

from __future__ import annotations

from snapcell import CodeSandbox

from .lua_suite import run_native, sandbox_program, suite_files

PASS_IN_SANDBOX = {"api.lua", "big.lua", "bwcoercion.lua", "code.lua", "cstack.lua", "main.lua",
                   "math.lua", "pm.lua", "sort.lua", "tpack.lua", "tracegc.lua", "utf8.lua",
                   "vararg.lua", "verybig.lua"}
NEEDS = ("debug", "io", "package", "preload", "assertion failed")   # why the others fail


def test_lua_suite_in_sandbox_vs_native() -> None:
    files = suite_files()
    assert len(files) >= 30
    native = {f for f in files if run_native(f)}
    assert native == set(files)                # the native build passes every file
    passed, failed = set(), {}
    with CodeSandbox("lua", timeout=60, memory_limit=128 << 20, max_output=2 << 20) as box:
        for f in files:
            r = box.run(sandbox_program(f))
            if r.ok:
                passed.add(f)
            else:
                assert r.error is not None
                failed[f] = r.error.message
    assert passed == PASS_IN_SANDBOX, failed
    for f, msg in failed.items():
        assert any(n in msg for n in NEEDS), (f, msg)
