"""Issue 28 item 6 (the Python guest): deep recursion fails fast and the same way every time,
CPython's C-API test modules cannot be imported; and the deepest value the real guests
marshal passes the host's checks (snapcell.code.validate)."""

from __future__ import annotations

import pytest

from snapcell import CodeSandbox

RECURSION = [
    "import sys\nsys.setrecursionlimit(100000)\ndef f(n): return f(n+1)\nf(0)",
    "import sys\nsys.setrecursionlimit(10**6)\ndef f(n): return f(n+1) + 1\nf(0)",
    "import sys\nsys.setrecursionlimit(10**6)\ndef f(n): return [f(n+1)]\nf(0)",
    "def f(n): return f(n+1)\nf(0)",
]


@pytest.mark.parametrize("memory_limit", [64 << 20, 8 << 20])
def test_deep_recursion_is_a_recursion_error_every_time(memory_limit: int) -> None:
    with CodeSandbox("python", timeout=30, memory_limit=memory_limit) as box:
        for code in RECURSION:
            for _ in range(3):
                r = box.run(code)
                assert r.error is not None and r.error.type == "RecursionError", r.error
                assert r.error.line == 3 or r.error.line == 1
                assert "Previous line repeated" in r.error.stack
        r = box.run("import sys\nsys.setrecursionlimit(10**9)\nsys.getrecursionlimit()")
        assert r.value == min(20000, memory_limit // 4096)
        assert box.run("import sys\nsys.setrecursionlimit(1500)\nsys.getrecursionlimit()").value == 1500
        r = box.run("import sys\nsys.setrecursionlimit(-1)")
        assert r.error is not None and r.error.type == "ValueError"


def test_c_level_recursion_ends_on_the_stack_guard_every_time() -> None:
    code = ("import sys\nsys.setrecursionlimit(10**6)\nclass A:\n"
            "    def __repr__(self): return repr(self)\nrepr(A())")
    with CodeSandbox("python", timeout=30) as box:
        for _ in range(3):
            r = box.run(code)
            assert r.error is not None and r.error.type == "InternalError"
            assert "stack overflow" in r.error.message
        assert box.run("1 + 1").value == 2


@pytest.mark.parametrize("module", ["_testcapi", "_testbuffer", "_testclinic", "_testinternalcapi"])
def test_capi_test_modules_are_not_importable(module: str) -> None:
    with CodeSandbox("python") as box:
        r = box.run(f"import {module}")
        assert r.error is not None and r.error.type == "ModuleNotFoundError"
        r = box.run(f"import sys, _imp\n'{module}' in sys.builtin_module_names")
        assert r.value is False


@pytest.mark.parametrize("lang,code", [
    ("js", "let v = 1; for (let i = 0; i < 64; i++) v = [v]; v"),
    ("lua", "local v = 1 for i = 1, 64 do v = {v} end return v"),
    ("python", "v = 1\nfor i in range(64): v = [v]\nv"),
])
def test_the_deepest_value_a_guest_marshals_comes_through(lang: str, code: str) -> None:
    with CodeSandbox(lang) as box:
        r = box.run(code)
        assert r.ok, r.error
        depth, v = 0, r.value
        while isinstance(v, list):
            depth, v = depth + 1, v[0]
        assert depth == 64 and v == 1
        deeper = code.replace("64", "65")
        r = box.run(deeper)
        assert r.error is not None and r.error.type != "InternalError"   # the guest refuses it
